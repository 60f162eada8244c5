"""The curation recipe: how videos are analysed (shots, sampled frames, camera motion) and the thresholds each
training stage keeps clips by. Loaded from `configs/curation/<name>.yaml` with dotted overrides.

Scores are computed once per clip under `shots`, `analysis` and `camera`; `thresholds` and `stages` only decide
which recorded scores pass, so changing them re-runs nothing but the merge.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megatron_moviegen.config.schema import ConfigError, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "curation"


@dataclass
class ShotConfig:
    """Scene cuts (PySceneDetect's ContentDetector on every frame) and how shots become clips."""

    threshold: float = 27.0  # ContentDetector's score (mean HSV change, 0-255) at which a frame starts a shot
    min_shot_frames: int = 8  # no two cuts closer than this
    trim_s: float = 0.25  # cut off each end of a shot (transitions, flashes)
    min_s: float = 4.0  # shorter shots (after trimming) give no clip; the paper's buckets start at 4 s
    max_s: float = 16.0  # longer shots are split into equal clips of at most this

    def validate(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ConfigError(f"min_s, max_s: got {self.min_s}, {self.max_s}, need 0 < min_s <= max_s")
        if self.max_s < 2 * self.min_s:
            raise ConfigError(f"max_s: got {self.max_s}, need at least 2 * min_s = {2 * self.min_s} so that a "
                              "split shot's parts are each at least min_s long")
        if self.trim_s < 0 or self.min_shot_frames < 1:
            raise ConfigError(f"trim_s, min_shot_frames: got {self.trim_s}, {self.min_shot_frames}, need >= 0, >= 1")


@dataclass
class AnalysisConfig:
    """The frames scores are computed on: sampled at `fps`, resized so the short side is `short_side`."""

    fps: float = 4.0
    short_side: int = 144
    flow_width: int = 128  # optical flow runs on frames resized to this width
    ocr_frames: int = 3  # frames per clip read by the OCR (evenly spaced)
    hash_frames: int = 3  # frames per clip hashed for near-duplicates
    aesthetic: Optional[str] = None  # "package.module:function" scoring (t, h, w, 3) uint8 -> float; None: absent
    captioner: Optional[str] = None  # a transformers image-text-to-text folder for clips without a sidecar caption
    caption_prompt: str = "Describe this video frame in one detailed paragraph."
    caption_tokens: int = 120  # most new tokens a model caption has

    def validate(self) -> None:
        if self.fps <= 0 or self.short_side < 16 or self.flow_width < 16:
            raise ConfigError(f"fps, short_side, flow_width: got {self.fps}, {self.short_side}, {self.flow_width}, "
                              "need fps > 0 and sizes >= 16 px")
        if min(self.ocr_frames, self.hash_frames, self.caption_tokens) < 1:
            raise ConfigError(f"ocr_frames, hash_frames, caption_tokens: got {self.ocr_frames}, {self.hash_frames}, "
                              f"{self.caption_tokens}, need >= 1")


@dataclass
class CameraConfig:
    """Camera-motion labels from the clip's global flow (speeds in frame widths per second)."""

    static_speed: float = 0.02  # below this pan/tilt speed and zoom rate: static
    handheld_jitter: float = 0.15  # above this jitter: handheld


@dataclass
class Thresholds:
    """What a clip needs to pass: `min_*` scores at least, `max_*` at most (units in `filters.SCORES`)."""

    min_short_side: int = 360
    min_aspect: float = 0.5
    max_aspect: float = 2.5
    max_border: float = 0.08
    max_text: float = 0.02
    min_sharpness: float = 60.0
    min_motion: float = 0.01
    max_motion: float = 1.0
    max_jitter: float = 0.25
    min_aesthetic: float = 0.0  # applied only when an aesthetic scorer is configured
    max_duplicate_distance: int = 6  # Hamming bits (of 64) between perceptual hashes: at most this is a duplicate

    def tightened(self, changes: dict[str, float], where: str) -> "Thresholds":
        """A copy with `changes` applied; each must be at least as strict as the value it replaces."""
        names = {f.name for f in dataclasses.fields(self)}
        for name, value in changes.items():
            if name not in names:
                raise ConfigError(f"{where}.{name}: not a threshold; thresholds are {sorted(names)}")
            old = getattr(self, name)
            # a wider duplicate radius removes more clips: like the min_* thresholds, higher is stricter
            higher_is_stricter = name.startswith("min_") or name == "max_duplicate_distance"
            if (value < old) if higher_is_stricter else (value > old):
                raise ConfigError(f"{where}.{name}: got {value}, looser than the previous stage's {old}")
        return dataclasses.replace(self, **changes)


@dataclass
class StageConfig:
    """A training stage's subset: the previous stage's thresholds (or `thresholds` for the first) made stricter."""

    name: str
    stricter: dict[str, float] = field(default_factory=dict)


@dataclass
class BalanceConfig:
    """Concept balance: k-means over frame embeddings; clusters resampled by (mean size / size) ** power."""

    clusters: int = 8
    power: float = 0.5
    seed: int = 0


@dataclass
class CurationConfig:
    shots: ShotConfig = field(default_factory=ShotConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig("all")])
    balance: BalanceConfig = field(default_factory=BalanceConfig)

    def validate(self) -> None:
        names = [stage.name for stage in self.stages]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"stages: got names {names}, need at least one stage and distinct names")
        self.stage_thresholds()

    def stage_thresholds(self) -> dict[str, Thresholds]:
        """Each stage's thresholds, each stage stricter than (or as strict as) the one before."""
        out, current = {}, self.thresholds
        for i, stage in enumerate(self.stages):
            current = current.tightened(stage.stricter, f"stages[{i}].stricter")
            out[stage.name] = current
        return out

    def analysis_record(self) -> dict:
        """The settings scores depend on: a recorded video is re-analysed when these change."""
        return {"shots": dataclasses.asdict(self.shots), "analysis": dataclasses.asdict(self.analysis),
                "camera": dataclasses.asdict(self.camera)}


def load_curation_config(recipe: str | Path = "default", overrides: list[str] | None = None) -> CurationConfig:
    """A recipe named in configs/curation/ (or a YAML path), with `section.field=value` overrides."""
    return load_recipe(CurationConfig, recipe, RECIPES, overrides)
