"""Clips for TAE training: decode frames with PyAV, resize the short side, crop, scale to [-1, 1].

A small self-contained reader; the project's full decoding stack (bucketing, GPU decode) lives elsewhere.
"""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F


def read_frames(path: str | Path, start: int, num_frames: int) -> np.ndarray:
    """Frames [start, start + num_frames) of a video as uint8 (t, h, w, 3); fewer if the video ends first."""
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= start + num_frames:
                break
            if index >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path}: no frames at or after frame {start}")
    return np.stack(frames)


def to_pixels(frames: np.ndarray, size: int, crop_top: float = 0.5, crop_left: float = 0.5) -> torch.Tensor:
    """uint8 (t, h, w, 3) -> float (3, t, size, size) in [-1, 1]: resize the short side to `size`, then crop
    at the relative offset (crop_top, crop_left) in [0, 1]."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (t, 3, h, w)
    h, w = video.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = round((new_h - size) * crop_top), round((new_w - size) * crop_left)
    video = video[:, :, top:top + size, left:left + size]
    return (video / 127.5 - 1.0).clamp(-1.0, 1.0).transpose(0, 1).contiguous()


def read_clip(path: str | Path, num_frames: int, size: int, start: int = 0) -> torch.Tensor:
    """A centre-cropped clip (3, t, size, size) in [-1, 1]; t = num_frames unless the video is shorter."""
    return to_pixels(read_frames(path, start, num_frames), size)


class ClipSampler:
    """Random clips of a fixed length and size from a list of videos, the frames of each video decoded once."""

    def __init__(self, paths: list[str | Path], max_frames: int, size: int, seed: int, random_crop: bool = True):
        self.videos = [read_frames(p, 0, max_frames) for p in paths]
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
