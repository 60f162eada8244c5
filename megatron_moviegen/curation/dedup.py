"""Near-duplicate clips: a 64-bit perceptual hash (imagehash's pHash) of a few frames per clip; two clips are
duplicates when their hashes differ in at most `max_duplicate_distance` bits on average over those frames."""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

from megatron_moviegen.curation.filters import evenly_spaced


def frame_hashes(frames: np.ndarray, count: int) -> list[str]:
    """pHash (hex) of `count` evenly spaced frames of (t, h, w, 3) uint8; the clip's first one repeated when
    it has fewer frames, so every clip's list has `count` entries."""
    picked = evenly_spaced(frames, count)
    hashes = [str(imagehash.phash(Image.fromarray(frame))) for frame in picked]
    return hashes + hashes[:1] * (count - len(hashes))


def hash_bits(hashes: list[list[str]]) -> np.ndarray:
    """Clips' hex hashes -> (clips, frames, 64) bool."""
    as_int = np.array([[int(h, 16) for h in clip] for clip in hashes], dtype=np.uint64)  # (clips, frames)
    return ((as_int[..., None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(bool)


def duplicate_of(hashes: list[list[str]], keep: list[bool], max_distance: float) -> list[int | None]:
    """For each clip in order, the index of an earlier kept, non-duplicate clip it nearly repeats (mean Hamming
    distance <= max_distance bits), else None. Clips with keep False are neither checked nor matched."""
    bits = hash_bits(hashes) if hashes else np.zeros((0, 1, 64), bool)
    originals: list[int] = []
    out: list[int | None] = []
    for i, kept in enumerate(keep):
        match = None
        if kept and originals:
            distance = (bits[originals] != bits[i]).sum(axis=2).mean(axis=1)  # (originals,)
            nearest = int(np.argmin(distance))
            match = originals[nearest] if distance[nearest] <= max_distance else None
        if kept and match is None:
            originals.append(i)
        out.append(match)
    return out
