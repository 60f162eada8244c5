"""Edits that can be computed, for video-editing training pairs made from plain clips (Movie Gen Edit, SPEC
section 6): each is a pixel function with the instruction that asks for it.

    pairs = write_edit_pairs(["clip.mp4"], ["flip", "invert"], "pairs/", seconds=2.0)   # -> pairs/manifest.jsonl
    target = EDITS["grayscale"].apply(frames)                                           # (t, h, w, 3) uint8

The paper makes its video-editing pairs with models (image edits animated, back-translation); these are the
ones whose true result is known exactly, so the whole path (manifest -> pre-encoding -> training -> generate
--edit-video) runs on the bundled clips and an edit's output can be scored against the truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from megatron_moviegen.data.decode import ClipRequest, PyAVDecoder
from megatron_moviegen.utils.io import atomic_write_text
from megatron_moviegen.utils.video_io import write_media

Frames = np.ndarray  # (t, h, w, 3) uint8 RGB


def _grayscale(frames: Frames) -> Frames:
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601
    return np.repeat(np.round(luma).clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _invert(frames: Frames) -> Frames:
    return 255 - frames


def _flip(frames: Frames) -> Frames:
    return np.ascontiguousarray(frames[:, :, ::-1])


def _swap_red_blue(frames: Frames) -> Frames:
    return np.ascontiguousarray(frames[..., ::-1])


def _brighten(frames: Frames) -> Frames:
    return (frames.astype(np.int16) + 60).clip(0, 255).astype(np.uint8)


def _zoom(frames: Frames) -> Frames:
    """The centre 2/3 of each frame, bilinearly enlarged back to the frame's size."""
    t, h, w, _ = frames.shape
    crop_h, crop_w = round(h * 2 / 3), round(w * 2 / 3)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    crop = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + crop_h, left : left + crop_w]))
    crop = crop.permute(0, 3, 1, 2).float()
    up = torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _caption_box(frames: Frames) -> Frames:
    """A white box over the bottom quarter of each frame (at least 14 px) with "HELLO" centred in it, in black
    (PIL's built-in font)."""
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        h, w = frame.shape[:2]
        top = h - min(h, max(14, h // 4))
        draw.rectangle((0, top, w, h), fill=(255, 255, 255))
        left, upper, right, lower = draw.textbbox((0, 0), "HELLO")
        draw.text(((w - (right - left)) // 2 - left, (top + h - (lower - upper)) // 2 - upper), "HELLO",
                  fill=(0, 0, 0))
        out.append(np.asarray(image))
    return np.stack(out)


@dataclass(frozen=True)
class Edit:
    name: str
    instruction: str
    apply: Callable[[Frames], Frames]  # (t, h, w, 3) uint8 -> the same shape, uint8


EDITS = {edit.name: edit for edit in (
    Edit("grayscale", "make it black and white", _grayscale),
    Edit("invert", "invert the colours", _invert),
    Edit("flip", "flip it horizontally", _flip),
    Edit("swap_red_blue", "swap the red and blue colours", _swap_red_blue),
    Edit("brighten", "make it brighter", _brighten),
    Edit("zoom", "zoom in on the centre", _zoom),
    Edit("caption_box", 'add a white caption box reading "HELLO" at the bottom', _caption_box),
)}


def get_edit(name: str) -> Edit:
    if name not in EDITS:
        raise ValueError(f"edit: got {name!r}, expected one of {sorted(EDITS)}")
    return EDITS[name]


def _to_pixels(frames: Frames) -> torch.Tensor:
    """(t, h, w, 3) uint8 -> (3, t, h, w) in [-1, 1], what write_video/write_image take."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def pair_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """A clip's (height, width) scaled down to `max_side` on its longer side (never up), both sides even (H.264)."""
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    return max(2, int(height * scale) // 2 * 2), max(2, int(width * scale) // 2 * 2)


@dataclass(frozen=True)
class Motion:
    """A camera move over a still: at the clip's end, zoomed by `zoom`, shifted by (dx, dy) (fractions of the
    frame) and turned by `degrees`; each frame is the linear blend from none of it to all of it."""

    zoom: float
    dx: float
    dy: float
    degrees: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Motion":
        """The paper's "animated frame editing" draws a random affine motion per pair: zoom 1-1.3x, a pan of up to
        10 % of the frame each way, a turn of up to 8 degrees."""
        return cls(float(rng.uniform(1.0, 1.3)), float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1)),
                   float(rng.uniform(-8.0, 8.0)))


def animate(frame: np.ndarray, motion: Motion, num_frames: int) -> Frames:
    """(h, w, 3) uint8 still -> (num_frames, h, w, 3) uint8: `motion` applied progressively (bilinear, edges
    repeated), frame 0 the still itself."""
    import torch.nn.functional as F

    height, width, _ = frame.shape
    progress = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    scale = 1.0 / (1.0 + (motion.zoom - 1.0) * progress)  # sampling a smaller window zooms in
    angle = torch.deg2rad(motion.degrees * progress)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    aspect = height / width  # rotation in pixel units on normalised coordinates
    theta = torch.stack([torch.stack([cos, -sin * aspect, 2 * motion.dx * progress], -1),
                         torch.stack([sin / aspect, cos, 2 * motion.dy * progress], -1)], 1).float()
    still = torch.from_numpy(frame).permute(2, 0, 1).float()[None].expand(num_frames, -1, -1, -1)
    grid = F.affine_grid(theta, [num_frames, 3, height, width], align_corners=False)
    moved = F.grid_sample(still, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_edit_pairs(clips: list[str | Path], edits: list[str], out_dir: str | Path, seconds: float = 2.0,
                     start_s: float = 0.0, fps: float | None = None, frames: int | None = None,
                     task: str = "video_edit", max_side: int | None = None, crf: int = 10,
                     animate_frames: int | None = None, seed: int = 0) -> Path:
    """For each clip: its window [start_s, start_s + seconds) at `fps` (default: native), written as
    `<stem>/source.mp4`, and each edit of it as `<stem>/<edit>.mp4`; `frames=1` writes one frame as PNGs
    (image-editing pairs). Both files of a pair hold the same frames at the same times, so pre-encoding decodes
    them alike. `max_side` shrinks larger clips to that longer side (aspect kept, even sides). With
    `animate_frames` (the paper's animated frame editing, stage II): the window's first frame and each edit of it
    are both animated by one random `Motion` per clip (drawn from `seed`) into `animate_frames` frames, so a pair
    of videos comes from an image edit. Returns `<out_dir>/manifest.jsonl`: one {"path": target, "source",
    "caption": instruction, "task"} per (clip, edit); existing pairs are rewritten (every file atomically)."""
    chosen = [get_edit(name) for name in edits]
    if not chosen:
        raise ValueError("edits: need at least one")
    out_dir = Path(out_dir)
    decoder = PyAVDecoder()
    requests = {}  # every clip's window, checked before anything is written
    for clip in clips:
        info = decoder.probe(clip)
        rate = fps or info.fps
        if animate_frames and not rate > 0:
            raise ValueError(f"{clip}: an image has no frame rate; give fps (--fps) for its animated pairs")
        count = 1 if animate_frames else frames if frames is not None else int(round(seconds * rate))
        if not info.is_image and start_s + (count - 1) / rate > info.duration_s:
            raise ValueError(f"{clip}: {count} frames at {rate:g} fps from {start_s} s need "
                             f"{start_s + (count - 1) / rate:.2f} s, the clip lasts {info.duration_s:.2f} s")
        requests[clip] = ClipRequest(start_s, rate, count, *pair_size(info.height, info.width, max_side))
    lines = []
    rng = np.random.default_rng(seed)
    for clip, request in tqdm(requests.items(), desc="edit pairs", unit="clip"):
        source = decoder.clip_frames(clip, request).numpy()
        count, rate = request.num_frames, request.fps
        pairs = [("source", source)] + [(e.name, e.apply(source)) for e in chosen]
        if animate_frames:
            motion = Motion.random(rng)
            pairs = [(name, animate(pixels[0], motion, animate_frames)) for name, pixels in pairs]
            count = animate_frames
        folder = out_dir / Path(clip).stem
        suffix = ".png" if count == 1 else ".mp4"
        written = {}
        for name, pixels in pairs:
            path = folder / f"{name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_media(path, _to_pixels(pixels), fps=rate, crf=crf)
            written[name] = path
        for edit in chosen:
            lines.append({"path": str(written[edit.name].relative_to(out_dir)),
                          "source": str(written["source"].relative_to(out_dir)),
                          "caption": edit.instruction, "task": task, "edit": edit.name})
    manifest = out_dir / "manifest.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    return manifest
