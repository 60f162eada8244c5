"""Bucketing (SPEC section 4): each sample goes to its nearest aspect-ratio x duration bucket; batches hold one.

Aspect: nearest in log ratio. Duration: the longest bucket the clip can fill at its sampling fps. A source
too short for the shortest bucket, or too small to cover its bucket without enlarging it more than
`max_upscale`, is rejected with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from megatron_moviegen.data.config import BucketConfig, parse_aspect_ratio
from megatron_moviegen.data.decode import ClipRequest, MediaInfo


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


def bucket_size(aspect_ratio: float, resolution: int, multiple: int) -> tuple[int, int]:
    """(height, width) with about resolution**2 pixels at `aspect_ratio` = width / height, multiples of `multiple`."""
    height = max(multiple, round(resolution / math.sqrt(aspect_ratio) / multiple) * multiple)
    width = max(multiple, round(resolution * math.sqrt(aspect_ratio) / multiple) * multiple)
    return height, width


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

    def sampling_fps(self, native_fps: float) -> float:
        fps = max(native_fps, self.config.min_fps)
        return min(fps, self.config.max_fps) if self.config.max_fps is not None else fps

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
        fps = self.sampling_fps(info.fps)
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
