"""Bucketing (SPEC section 4): each sample goes to its nearest aspect-ratio x duration bucket; batches hold one.

Aspect: nearest in log ratio. Duration: the longest bucket the clip can fill at its sampling fps. A source
too short for the shortest bucket, or too small to cover its bucket without enlarging it more than
`max_upscale`, is rejected with the reason.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Union

from megatron_moviegen.data.config import AudioDataConfig, BucketConfig, parse_aspect_ratio
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.decode import ClipRequest, MediaInfo
from megatron_moviegen.models.dit_config import DiTConfig
from megatron_moviegen.parallel.config import ParallelConfig
from megatron_moviegen.planning.flops import latent_shape


@dataclass(frozen=True)
class Bucket:
    aspect_ratio: str  # width:height
    height: int
    width: int
    num_frames: int  # 1 for images

    @property
    def name(self) -> str:
        return f"{self.num_frames}x{self.height}x{self.width}"

    @property
    def is_image(self) -> bool:
        return self.num_frames == 1


@dataclass(frozen=True)
class Assignment:
    """A sample's bucket and the clip to decode for it."""

    bucket: Bucket
    clip: ClipRequest


@dataclass(frozen=True)
class Rejection:
    reason: str


@functools.lru_cache(maxsize=None)
def bucket_size(aspect_ratio: float, resolution: int, multiple: int) -> tuple[int, int]:
    """(height, width), multiples of `multiple`, at most resolution**2 pixels, nearest `aspect_ratio` = width / height.

    Never more pixels than the square bucket, so no aspect ratio has more tokens per frame than 1:1 (rounding
    each side to the nearest multiple gave the 768 px 4:3 bucket 672x880: 73,920 tokens at 16 s, above 73,728).
    Among equally near ratios the larger area wins.
    """
    area = resolution * resolution
    sides = range(multiple, area // multiple + 1, multiple)

    def other(side: int) -> int:  # the largest multiple with side * other <= area
        return area // side // multiple * multiple

    candidates = [(h, other(h)) for h in sides] + [(other(w), w) for w in sides]
    fits = [(h, w) for h, w in candidates if h >= multiple and w >= multiple]
    return min(fits, key=lambda hw: (round(abs(math.log(hw[1] / hw[0] / aspect_ratio)), 12), -hw[0] * hw[1]))


class BucketTable:
    """The buckets of one resolution, and the rule that assigns a sample to one of them."""

    def __init__(self, config: BucketConfig):
        config.validate()
        self.config = config
        self.aspects = [(text, parse_aspect_ratio(text)) for text in config.aspect_ratios]
        self.frame_counts = sorted(round(d * config.frame_rate) for d in config.durations_s)

    def buckets(self) -> list[Bucket]:
        counts = ([1] if self.config.include_images else []) + self.frame_counts
        return [self._bucket(text, ratio, n) for text, ratio in self.aspects for n in counts]

    def _bucket(self, text: str, ratio: float, num_frames: int) -> Bucket:
        height, width = bucket_size(ratio, self.config.resolution, self.config.size_multiple)
        return Bucket(text, height, width, num_frames)

    def sampling_fps(self, native_fps: float, span_s: float = math.inf) -> float:
        """The rate to sample a clip of `span_s` seconds at (see BucketConfig.min_fps and sample_fps)."""
        if not self.config.sample_fps:
            fps = max(native_fps, self.config.min_fps)
            return min(fps, self.config.max_fps) if self.config.max_fps is not None else fps
        rates = sorted(self.config.sample_fps)
        rates = [r for r in rates if r <= native_fps + 1e-6] or rates[:1]  # no rate above native, if avoidable
        longest = {r: max([n for n in self.frame_counts if n / r <= span_s + 1e-6], default=0) for r in rates}
        if not max(longest.values()):
            return rates[-1]  # too short at every rate: the rejection reports the rate giving the most frames
        return min(r for r in rates if longest[r] == max(longest.values()))  # the most seconds of the clip

    def assign(self, info: MediaInfo, start_s: float = 0.0, end_s: Optional[float] = None) -> Union[Assignment, Rejection]:
        text, ratio = min(self.aspects, key=lambda a: abs(math.log(info.width / info.height) - math.log(a[1])))
        if info.is_image:
            if not self.config.include_images:
                return Rejection("image, and buckets.include_images is false")
            return self._fit(info, self._bucket(text, ratio, 1), ClipRequest(0.0, 0.0, 1, 0, 0))
        if not self.frame_counts:
            return Rejection("video, and buckets.durations_s is empty")
        end = info.duration_s if end_s is None else min(end_s, info.duration_s)
        span = end - start_s
        fps = self.sampling_fps(info.fps, span)
        fitting = [n for n in self.frame_counts if n / fps <= span + 1e-6]
        if not fitting:
            return Rejection(
                f"too short: {span:.2f}s at {fps:g} fps gives {math.floor(span * fps + 1e-6)} frames; "
                f"the shortest bucket needs {self.frame_counts[0]}"
            )
        return self._fit(info, self._bucket(text, ratio, fitting[-1]), ClipRequest(start_s, fps, fitting[-1], 0, 0))

    def _fit(self, info: MediaInfo, bucket: Bucket, clip: ClipRequest) -> Union[Assignment, Rejection]:
        upscale = max(bucket.height / info.height, bucket.width / info.width)
        if upscale > self.config.max_upscale + 1e-9:
            return Rejection(
                f"too small: {info.width}x{info.height} must be enlarged {upscale:.2f}x to cover the "
                f"{bucket.width}x{bucket.height} bucket (max_upscale {self.config.max_upscale:g})"
            )
        sized = ClipRequest(clip.start_s, clip.fps, clip.num_frames, bucket.height, bucket.width)
        return Assignment(bucket, sized)


def token_grid(bucket: Bucket, model: DiTConfig) -> tuple[int, int, int]:
    """A bucket's (t, h, w) token grid after the TAE (8x in t, h, w) and the DiT's patchify."""
    _, t, h, w = latent_shape(bucket.num_frames, bucket.height, bucket.width, model.latent_channels)
    pt, ph, pw = model.patch_size
    if t % pt or h % ph or w % pw:
        raise ConfigError(f"data.buckets: bucket {bucket.aspect_ratio} {bucket.name} has latent grid (t={t}, h={h}, "
                          f"w={w}), not divisible by model.patch_size {tuple(model.patch_size)}")
    return t // pt, h // ph, w // pw


def check_buckets_fit_model(buckets: BucketConfig, model: DiTConfig) -> None:
    """Every bucket's token grid within the position tables and its token count within model.max_video_tokens."""
    for bucket in BucketTable(buckets).buckets():
        grid = token_grid(bucket, model)
        for size, field in zip(grid, ("max_frames", "max_height", "max_width")):
            if size > getattr(model, field):
                raise ConfigError(
                    f"model.{field}: {getattr(model, field)} is smaller than the token grid (t, h, w) = {grid} of "
                    f"bucket {bucket.aspect_ratio} {bucket.name} (frames x height x width) in data.buckets"
                )
        if math.prod(grid) > model.max_video_tokens:
            raise ConfigError(
                f"model.max_video_tokens: bucket {bucket.aspect_ratio} {bucket.name} in data.buckets has "
                f"{math.prod(grid):,} tokens (grid {grid}), above the budget {model.max_video_tokens:,}"
            )


def check_buckets_split_evenly(buckets: BucketConfig, model: DiTConfig, parallel: ParallelConfig) -> None:
    """Every bucket's token count divides into the sequence chunks of the layout (context parallel x sequence-
    parallel TP ranks; parallel/layout.py), so no bucket fails mid-run when it first comes up."""
    chunks = parallel.sequence_chunks
    for bucket in BucketTable(buckets).buckets():
        grid = token_grid(bucket, model)
        if math.prod(grid) % chunks:
            raise ConfigError(
                f"parallel.context_parallel_size: bucket {bucket.aspect_ratio} {bucket.name} in data.buckets has "
                f"{math.prod(grid)} tokens (grid {grid}), not divisible by context_parallel_size "
                f"{parallel.context_parallel_size} x sequence-parallel TP size "
                f"{chunks // parallel.context_parallel_size}"
            )


def check_audio_buckets(audio: AudioDataConfig, model: DiTConfig, parallel: ParallelConfig) -> None:
    """Audio samples are (c, T, 1, 1) latents: the model patches 1 x 1 x 1, its temporal table and token budget hold
    every duration's T, and the layout's sequence chunks divide each T."""
    if tuple(model.patch_size) != (1, 1, 1):
        raise ConfigError(f"model.patch_size: got {list(model.patch_size)}, but data.audio latents are one token per "
                          "latent frame: [1, 1, 1]")
    for frames in audio.latent_frames():
        if frames > model.max_frames or frames > model.max_video_tokens:
            raise ConfigError(f"model.max_frames / max_video_tokens: {model.max_frames} / {model.max_video_tokens}, "
                              f"but data.audio.durations_s has {frames / audio.latent_rate:g} s = {frames} latent frames")
        if frames % parallel.sequence_chunks:
            raise ConfigError(f"parallel.context_parallel_size: {frames / audio.latent_rate:g} s of audio in "
                              f"data.audio.durations_s has {frames} tokens, not divisible by context_parallel_size "
                              f"{parallel.context_parallel_size} x sequence-parallel TP size "
                              f"{parallel.sequence_chunks // parallel.context_parallel_size}")
