"""Clips for TAE training, decoded and resized exactly as pre-encoding does (data/decode.py): swscale area
resize to cover the size, then a crop (random, or the centre crop pre-encoding takes), scaled to [-1, 1]. A TAE
trained here therefore sees the pixels it will encode.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import torch

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.decode import DecodeError, PyAVDecoder, cover_rgb, to_unit_range
from megatron_moviegen.utils.frames import crop_offsets


def read_frames(path: str | Path, start: int, num_frames: int, size: int) -> np.ndarray:
    """Frames [start, start + num_frames) resized to cover (size, size): uint8 (t, cover_h, cover_w, 3); fewer
    frames if the video ends first."""
    frames = []
    for index, frame in enumerate(PyAVDecoder().decoded_frames(path)):
        if index >= start + num_frames:
            break
        if index >= start:
            frames.append(cover_rgb(frame, size, size))
    if not frames:
        raise ValueError(f"{path}: no frames at or after frame {start}")
    return np.stack(frames)


def to_pixels(frames: np.ndarray, size: int, crop_top: float = 0.5, crop_left: float = 0.5) -> torch.Tensor:
    """uint8 (t, h, w, 3) covering (size, size) -> float (3, t, size, size) in [-1, 1], cropped at the relative
    offset (crop_top, crop_left) in [0, 1]."""
    top, left = crop_offsets(frames.shape[1], frames.shape[2], size, size, crop_top, crop_left)
    return to_unit_range(torch.from_numpy(np.ascontiguousarray(frames[:, top:top + size, left:left + size])))


def read_clip(path: str | Path, num_frames: int, size: int, start: int = 0) -> torch.Tensor:
    """A centre-cropped clip (3, t, size, size) in [-1, 1]; t = num_frames unless the video is shorter."""
    return to_pixels(read_frames(path, start, num_frames, size), size)


def readable_videos(paths: list[str | Path], max_frames: int, size: int, min_frames: int) -> list[np.ndarray]:
    """The frames (as `read_frames`) of each video that decodes to at least `min_frames` frames; each other one is
    left out with a warning naming it and why, as pre-encoding rejects it. Raises ConfigError when none is left."""
    videos, problems = [], []
    for path in paths:
        try:
            frames = read_frames(path, 0, max_frames, size)
        except (DecodeError, OSError, ValueError, IndexError) as exc:
            problems.append(f"{path}: cannot be decoded ({type(exc).__name__}: {exc})")
            continue
        if len(frames) < min_frames:
            problems.append(f"{path}: {len(frames)} frames, fewer than the {min_frames} of a training clip")
            continue
        videos.append(frames)
    for problem in problems:
        warnings.warn(f"TAE training leaves out {problem}", stacklevel=2)
    if not videos:
        raise ConfigError(f"data.videos: none of the {len(paths)} videos can be trained on: {'; '.join(problems)}")
    return videos


class ClipSampler:
    """Random clips of a fixed length and size from a list of videos, the frames of each video decoded once; a
    video that does not decode, or is shorter than `min_frames`, is left out with a warning (`readable_videos`)."""

    def __init__(self, paths: list[str | Path], max_frames: int, size: int, seed: int, random_crop: bool = True,
                 min_frames: int = 1):
        self.videos = readable_videos(paths, max_frames, size, min_frames)
        self.size = size
        self.random_crop = random_crop
        self.rng = random.Random(seed)

    def sample(self, batch_size: int, num_frames: int) -> torch.Tensor:
        """(batch_size, 3, num_frames, size, size) in [-1, 1]: random video and start per item, random or centre crop."""
        clips = []
        for _ in range(batch_size):
            frames = self.rng.choice(self.videos)
            if len(frames) < num_frames:
                raise ValueError(f"a video has {len(frames)} frames, fewer than num_frames={num_frames}")
            start = self.rng.randrange(len(frames) - num_frames + 1)
            top, left = (self.rng.random(), self.rng.random()) if self.random_crop else (0.5, 0.5)
            clips.append(to_pixels(frames[start:start + num_frames], self.size, top, left))
        return torch.stack(clips)
