"""Training batches from pre-encoded latent shards: one bucket per batch, a fixed image:video batch ratio,
shards split over data-parallel ranks, deterministic for a seed, and resumable from `state_dict()`.

Reads the shards with its own random-access tar reader over `index/<shard>.json` (member byte offsets
written by pre-encoding), not through megatron-energon: bucket grouping and the image:video ratio are
planned from that index without opening a sample, and the position is just (epoch, batch) so a restore is
exact and costs nothing. The same shards are a valid energon CrudeWebdataset for other tools.

Epoch e: shards are shuffled with (seed, e) and dealt round-robin to ranks; each rank shuffles its samples,
cuts each bucket into batches (a bucket's incomplete last batch waits for the next epoch), shuffles image and
video batches, and interleaves them so that the first k batches hold floor(k * image_fraction) image batches.
The epoch ends when the kind due next runs out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from megatron_moviegen.conditioning import Conditioning
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.utils.io import read_json_file
from megatron_moviegen.data.shards import INDEX_DIR, META_DIR, ShardIndex, decode_sample, read_member


@dataclass
class Batch:
    latents: torch.Tensor  # (b, 16, t, h, w), the stored dtype (bf16 by default)
    conditioning: Conditioning  # batch-first
    bucket: str
    is_image: bool
    keys: list[str]
    fps: torch.Tensor  # (b,) sampling fps; 0 for images
    captions: list[str]


class DamagedShardError(ValueError):
    """A shard's bytes do not hold the sample its index says they do."""


SampleRef = tuple[str, dict]  # (shard name, the sample's record in its shard index)
log = logging.getLogger("megatron_moviegen.data")


def index_fingerprint(shards: dict[str, list[dict]]) -> dict[str, dict]:
    """Per shard: its sample count and a sha256 of its index records (keys, buckets, member offsets and sizes), so a
    resume can tell an unchanged dataset from one whose shards were added, removed or rewritten without reading a
    sample."""
    return {name: {"samples": len(records),
                   "sha256": hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()}
            for name, records in shards.items()}


def index_change(saved: dict[str, dict | None], now: dict[str, dict]) -> str | None:
    """What differs between two `index_fingerprint`s, in words, or None. A saved entry of None (a loader state from
    before fingerprints) is compared by name only."""
    added, removed = sorted(now.keys() - saved.keys()), sorted(saved.keys() - now.keys())
    rewritten = [f"{name}: {saved[name]['samples']} -> {now[name]['samples']} samples"
                 for name in sorted(saved.keys() & now.keys()) if saved[name] not in (None, now[name])]
    parts = [f"{len(names)} shard(s) {what} ({_listed(names)})"
             for what, names in (("added", added), ("removed", removed), ("rewritten", rewritten)) if names]
    if not parts:
        return None
    if all(saved.values()):
        parts.append(f"{_total(saved)} -> {_total(now)} samples in all")
    return "; ".join(parts)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _total(index: dict[str, dict]) -> int:
    return sum(entry["samples"] for entry in index.values())


class LatentLoader:
    """An endless iterator of `Batch`es for one data-parallel rank."""

    def __init__(self, shards_dir: str | Path, batch_size: int, image_fraction: float, seed: int,
                 dp_rank: int = 0, dp_size: int = 1, allow_changed_shards: bool = False):
        if not 0 <= dp_rank < dp_size:
            raise ConfigError(f"dp_rank: got {dp_rank}, must be in [0, dp_size={dp_size})")
        self.dir = Path(shards_dir)
        self.batch_size, self.image_fraction, self.seed = batch_size, image_fraction, seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.shards = self._read_indexes()
        self.index = index_fingerprint(self.shards)  # once: the feeder takes a state after every batch
        self.allow_changed_shards = allow_changed_shards
        if len(self.shards) < dp_size:
            raise ConfigError(f"{self.dir}: {len(self.shards)} shards cannot be split over {dp_size} data-parallel ranks")
        self.epoch, self.step = 0, 0
        self._plan: tuple[int, list[list[SampleRef]]] | None = None

    def _read_indexes(self) -> dict[str, list[dict]]:
        info_path = self.dir / META_DIR / ".info.json"
        if not info_path.exists():
            raise FileNotFoundError(f"{self.dir}: no {META_DIR}/.info.json; pre-encoding has not finished here")
        names = sorted(read_json_file(info_path, "energon shard list")["shard_counts"])
        return {name: ShardIndex.read(self.dir / INDEX_DIR / f"{name}.json").samples for name in names}

    def prompt_fps(self) -> list[int]:
        """The FPS-n prefix values of every video in the shards (all ranks' shards), ascending."""
        return sorted({r["prompt_fps"] for records in self.shards.values() for r in records
                       if r.get("prompt_fps") is not None})

    def epoch_plan(self, epoch: int) -> list[list[SampleRef]]:
        """This rank's batches for `epoch`, as lists of sample references (nothing is read)."""
        rng = random.Random(f"{self.seed}/{epoch}")
        shards = sorted(self.shards)
        rng.shuffle(shards)
        samples = [(shard, record) for shard in shards[self.dp_rank :: self.dp_size] for record in self.shards[shard]]
        rng.shuffle(samples)
        by_bucket: dict[str, list[SampleRef]] = {}
        for ref in samples:
            by_bucket.setdefault(ref[1]["bucket"], []).append(ref)
        images, videos = [], []
        for bucket in sorted(by_bucket):
            refs = by_bucket[bucket]
            full = len(refs) - len(refs) % self.batch_size
            batches = [refs[i : i + self.batch_size] for i in range(0, full, self.batch_size)]
            (images if refs[0][1]["is_image"] else videos).extend(batches)
        rng.shuffle(images)
        rng.shuffle(videos)
        plan = self._interleave(images, videos)
        if not plan:
            raise ValueError(
                f"rank {self.dp_rank}: epoch {epoch} has no batches ({len(images)} image and {len(videos)} video "
                f"batches of {self.batch_size}, image_fraction {self.image_fraction})"
            )
        return plan

    def _interleave(self, images: list, videos: list) -> list:
        plan, used = [], {True: 0, False: 0}
        for k in range(len(images) + len(videos)):
            want_image = math.floor((k + 1) * self.image_fraction) > math.floor(k * self.image_fraction)
            source = images if want_image else videos
            if used[want_image] == len(source):
                break
            plan.append(source[used[want_image]])
            used[want_image] += 1
        return plan

    def __iter__(self) -> Iterator[Batch]:
        while True:
            plan = self._plan_for(self.epoch)
            while self.step < len(plan):
                refs = plan[self.step]
                self.step += 1
                yield self.read_batch(refs)
            self.epoch, self.step = self.epoch + 1, 0

    def _plan_for(self, epoch: int) -> list[list[SampleRef]]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.epoch_plan(epoch))
        return self._plan[1]

    def read_batch(self, refs: list[SampleRef]) -> Batch:
        samples = [self.read_sample(shard, record) for shard, record in refs]
        return Batch(
            latents=torch.stack([s["latents"] for s in samples]),
            conditioning=Conditioning.stack([s["conditioning"] for s in samples]),
            bucket=refs[0][1]["bucket"],
            is_image=refs[0][1]["is_image"],
            keys=[record["key"] for _, record in refs],
            fps=torch.tensor([0.0 if s["meta"]["is_image"] else s["meta"]["fps"] for s in samples]),
            captions=[s["meta"]["caption"] for s in samples],
        )

    def read_sample(self, shard: str, record: dict) -> dict:
        """One sample; a shard cut short or a sample whose bytes do not decode is a DamagedShardError naming both."""
        try:
            members = {suffix: read_member(self.dir / shard, offset, size)
                       for suffix, (offset, size) in record["members"].items()}
            return decode_sample(members)
        except Exception as exc:  # OSError (short read), safetensors' / json's decode errors
            raise DamagedShardError(
                f"{self.dir / shard}: sample {record['key']} cannot be read ({type(exc).__name__}: {exc}); the shard "
                "is damaged (cut short or overwritten). Restore it, or pre-encode its videos again into a new "
                "folder; training resumes from the last checkpoint") from exc

    def sample_names(self, keys: list[str]) -> list[str]:
        """'<shard>/<key> (<source video>)' for sample keys of these shards: how errors name a sample."""
        names = []
        for key in keys:
            shard, record = next((s, r) for s, records in self.shards.items() for r in records if r["key"] == key)
            source = json.loads(read_member(self.dir / shard, *record["members"]["json"])).get("source", "?")
            names.append(f"{shard}/{key} ({source})")
        return names

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "dp_rank": self.dp_rank,
                "dp_size": self.dp_size, "batch_size": self.batch_size, "image_fraction": self.image_fraction,
                "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the last batch the saved loader yielded; the settings must match, and so must the
        shard index unless `allow_changed_shards` (then, warning, at the same epoch and batch of the new index's plan)."""
        mine = self.state_dict()
        for key in ("seed", "dp_rank", "dp_size", "batch_size", "image_fraction"):
            if state[key] != mine[key]:
                raise ConfigError(f"{key}: saved loader state has {state[key]!r}, {mine[key]!r} here; cannot resume "
                                  "exactly")
        change = index_change(state.get("index") or dict.fromkeys(state["shards"]), self.index)
        if change is not None and not self.allow_changed_shards:
            raise ConfigError(
                f"data.shards {self.dir}: the shard index changed since the checkpoint: {change}; resuming would not "
                "continue its data order. Point data.shards at the checkpoint's shards, or set "
                "data.allow_changed_shards=true to go on with these from the same epoch and batch")
        if change is not None:
            log.warning("data.shards %s: the shard index changed since the checkpoint: %s; data.allow_changed_shards "
                        "is set, so going on at epoch %d, batch %d of the new index's order (not the saved run's)",
                        self.dir, change, state["epoch"], state["step"])
        self.epoch, self.step = state["epoch"], state["step"]
