"""From recorded clip scores to each stage's subset: which filter removes a clip (the first one it fails, in
`FILTERS` order), near-duplicates among the clips that pass the rest, then concept-balance weights over what is
left. Nothing here decodes video: changing thresholds or stages only re-runs this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from megatron_moviegen.curation.balance import balance_weights, kmeans
from megatron_moviegen.curation.camera import with_camera_prefix
from megatron_moviegen.curation.config import BalanceConfig, Thresholds
from megatron_moviegen.curation.dedup import duplicate_of

Check = Callable[[dict, Thresholds], bool]
FILTERS: dict[str, Check] = {
    "resolution": lambda s, t: s["short_side"] >= t.min_short_side,
    "aspect": lambda s, t: t.min_aspect <= s["aspect"] <= t.max_aspect,
    "border": lambda s, t: s["border"] <= t.max_border,
    "text": lambda s, t: s["text"] <= t.max_text,
    "blur": lambda s, t: s["sharpness"] >= t.min_sharpness,
    "static": lambda s, t: s["motion"] >= t.min_motion,
    "motion": lambda s, t: s["motion"] <= t.max_motion,
    "jitter": lambda s, t: s["jitter"] <= t.max_jitter,
    "aesthetic": lambda s, t: s["aesthetic"] is None or s["aesthetic"] >= t.min_aesthetic,
}
REMOVALS = (*FILTERS, "caption", "duplicate")  # every reason a clip can be removed, in the order checked


def failed_filters(clip: dict, thresholds: Thresholds) -> list[str]:
    """Every score filter the clip fails, and "caption" when it has none."""
    failed = [name for name, passes in FILTERS.items() if not passes(clip["scores"], thresholds)]
    return failed + ([] if clip["caption"] is not None else ["caption"])


@dataclass
class StageResult:
    """One stage over all clips (in order): why each was removed (None: kept), whom it duplicates, its weight."""

    removed_by: list[Optional[str]]
    duplicate_of: list[Optional[int]]
    failed: list[list[str]]
    weights: dict[int, float]  # kept clip index -> sampling weight
    clusters: dict[int, int]  # kept clip index -> concept cluster

    def funnel(self) -> dict[str, int]:
        """{"in": clips, <removal>: count for each of REMOVALS, "out": kept}."""
        counts = {"in": len(self.removed_by)}
        counts.update({name: self.removed_by.count(name) for name in REMOVALS})
        counts["out"] = self.removed_by.count(None)
        return counts


def run_stage(clips: list[dict], thresholds: Thresholds, balance: BalanceConfig) -> StageResult:
    """Apply one stage's thresholds, near-duplicate removal and concept balance to recorded clips."""
    failed = [failed_filters(clip, thresholds) for clip in clips]
    passing = [not f for f in failed]
    duplicates = duplicate_of([clip["hashes"] for clip in clips], passing, thresholds.max_duplicate_distance)
    removed_by = [f[0] if f else ("duplicate" if d is not None else None) for f, d in zip(failed, duplicates)]
    kept = [i for i, reason in enumerate(removed_by) if reason is None]
    weights, clusters = {}, {}
    if kept:
        labels = kmeans(np.array([clips[i]["embedding"] for i in kept]), balance.clusters, balance.seed)
        for i, label, weight in zip(kept, labels, balance_weights(labels, balance.power)):
            weights[i], clusters[i] = round(float(weight), 4), int(label)
    return StageResult(removed_by, duplicates, failed, weights, clusters)


def manifest_record(clip: dict, weight: float, cluster: int) -> dict:
    """A kept clip as pre-encoding reads it (`path`, `caption`, `start`, `end`) plus its scores and provenance."""
    return {
        "path": clip["video"], "caption": with_camera_prefix(clip["caption"], clip["camera_motion"]),
        "start": clip["start"], "end": clip["end"], "clip": clip["clip"], "camera_motion": clip["camera_motion"],
        "scores": clip["scores"], "captioner": clip["captioner"], "weight": weight, "cluster": cluster,
    }
