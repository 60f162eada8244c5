"""Reading a video or a soundtrack of the procedural world (data/world.py) back into facts: which colours are there,
each one's shape, track, direction and speed, the camera's pan, and when sounds start. Checked on rendered (and
H.264-encoded) scenes, where they must be right (tests/data/test_world.py), before they judge generated ones.

    found = find_objects(frames)              # frames (t, h, w, 3) uint8 -> {colour: Track}
    found["red"].shape_class(), found["red"].direction(), found["red"].speed(fps)
    score_scene(frames, scene, fps)           # per object of the truth: present, shape, direction right?
    onsets(waveform, 48000)                   # seconds where a sound starts

A colour is recognised by hue and saturation (the backgrounds are grey), an object's shape by how it tapers (a
triangle, apex up, is much narrower in its top third than in its bottom third) and how much of its bounding box it
fills (square 1, circle pi/4). Positions are fractions of the frame's width and height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from megatron_moviegen.data.world import COLOURS, DIRECTIONS, Scene

MIN_AREA = 0.004  # of the frame: smaller colour patches are noise, not an object
SQUARE_FILL = (1.0 + math.pi / 4) / 2  # between a square's fill and a circle's
TRIANGLE_TAPER = 0.6  # a triangle's top third is ~1/4 as wide as its bottom third; a circle's ~3/4, a square's 1


def _hue_sat(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 3) uint8 RGB -> hue in degrees, saturation and value in [0, 1]."""
    rgb = frames.astype(np.float32) / 255.0
    high, low = rgb.max(-1), rgb.min(-1)
    chroma = high - low
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    return hue, np.where(high > 0, chroma / np.maximum(high, 1e-6), 0.0), high


PALETTE_HUES = {name: _hue_sat(np.array(rgb, dtype=np.uint8))[0].item() for name, rgb in COLOURS.items()}


def colour_masks(frames: np.ndarray, min_saturation: float = 0.45) -> dict[str, np.ndarray]:
    """(t, h, w, 3) uint8 -> {colour: (t, h, w) bool}: saturated pixels, each given to the palette hue nearest its own."""
    hue, saturation, value = _hue_sat(frames)
    names = list(PALETTE_HUES)
    distance = np.stack([np.minimum(abs(hue - h), 360 - abs(hue - h)) for h in PALETTE_HUES.values()])
    nearest = distance.argmin(0)
    coloured = (saturation >= min_saturation) & (value > 0.25) & (distance.min(0) < 20)
    return {name: coloured & (nearest == i) for i, name in enumerate(names)}


@dataclass
class Track:
    """One colour's blob per frame: centres (t, 2) as (x, y) fractions of width and height (NaN where absent),
    areas (t,) as fractions of the frame, fills (t,) of the bounding box and tapers (t,): the mean width of its top
    third of rows over that of its bottom third."""

    centres: np.ndarray
    areas: np.ndarray
    fills: np.ndarray
    tapers: np.ndarray

    @property
    def present(self) -> np.ndarray:
        return self.areas >= MIN_AREA

    def shape_class(self) -> str:
        """triangle when it tapers upwards, else square or circle by how much of its box it fills (medians over the
        frames it is present in)."""
        if float(np.median(self.tapers[self.present])) < TRIANGLE_TAPER:
            return "triangle"
        return "square" if float(np.median(self.fills[self.present])) > SQUARE_FILL else "circle"

    def displacement(self) -> np.ndarray:
        """(dx, dy) from the first to the last frame it is present in (fractions of width and height)."""
        seen = np.flatnonzero(self.present)
        return self.centres[seen[-1]] - self.centres[seen[0]]

    def direction(self) -> str:
        """left, right, up or down: the axis it moved most along (frame coordinates)."""
        dx, dy = self.displacement()
        return min(DIRECTIONS, key=lambda d: -(DIRECTIONS[d][0] * dx + DIRECTIONS[d][1] * dy))

    def speed(self, fps: float) -> float:
        """Distance moved per second, in frame heights (the world's units when the camera holds)."""
        seen = np.flatnonzero(self.present)
        if len(seen) < 2:
            return 0.0
        return float(np.hypot(*self.displacement())) / ((seen[-1] - seen[0]) / fps)


def find_objects(frames: np.ndarray) -> dict[str, Track]:
    """{colour: Track} of every palette colour covering at least MIN_AREA of some frame."""
    frames = np.asarray(frames)
    t, h, w, _ = frames.shape
    found = {}
    for name, mask in colour_masks(frames).items():
        areas = mask.reshape(t, -1).mean(1)
        if not (areas >= MIN_AREA).any():
            continue
        centres, fills, tapers = np.full((t, 2), np.nan), np.zeros(t), np.ones(t)
        for f in np.flatnonzero(areas >= MIN_AREA):
            rows, cols = np.nonzero(mask[f])
            centres[f] = ((cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h)
            top, bottom = rows.min(), rows.max()
            box = (bottom - top + 1) * (cols.max() - cols.min() + 1)
            fills[f] = len(rows) / box
            widths = mask[f, top : bottom + 1].sum(1)  # pixels per row of the box
            third = max(1, len(widths) // 3)
            tapers[f] = widths[:third].mean() / max(widths[-third:].mean(), 1)
        found[name] = Track(centres, areas, fills, tapers)
    return found


def camera_pan(frames: np.ndarray) -> float:
    """The background's mean horizontal shift per frame, in fractions of the width (> 0: the view moves right,
    the picture left), from phase correlation of consecutive grey frames."""
    grey = np.asarray(frames).astype(np.float32).mean(-1)
    shifts = []
    for a, b in zip(grey[:-1], grey[1:]):
        cross = np.fft.fft2(a - a.mean()) * np.conj(np.fft.fft2(b - b.mean()))
        peak = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-9)).real
        _, col = np.unravel_index(peak.argmax(), peak.shape)
        shifts.append(col if col <= grey.shape[2] // 2 else col - grey.shape[2])
    return float(np.mean(shifts)) / grey.shape[2] if shifts else 0.0


def score_scene(frames: np.ndarray, scene: Scene, fps: float) -> list[dict]:
    """Per object of `scene` (plain objects; characters are textured): is its colour there, is its shape and its
    direction (when the camera holds) the truth's, and its measured speed against the truth's."""
    found = find_objects(frames)
    rows = []
    for obj in scene.objects:
        if obj.character is not None:
            continue
        track = found.get(obj.colour)
        row = {"colour": obj.colour, "present": track is not None}
        if track is not None:
            direction = track.direction()
            if scene.flipped and direction in ("left", "right"):
                direction = "left" if direction == "right" else "right"
            row.update(shape=track.shape_class() == obj.shape, measured_shape=track.shape_class(),
                       direction=direction == obj.direction, measured_direction=direction,
                       speed=track.speed(fps), true_speed=math.hypot(*obj.velocity))
        rows.append(row)
    return rows


def onsets(waveform: np.ndarray, sample_rate: int, hop_s: float = 0.005, threshold: float = 0.02,
           min_gap_s: float = 0.06) -> list[float]:
    """Seconds where a sound starts: the 5 ms RMS envelope crossing `threshold` upwards (and 4x above the frame before),
    at most one onset per `min_gap_s`. waveform: (n,) or (channels, n) in [-1, 1]."""
    mono = np.asarray(waveform, dtype=np.float64).reshape(-1, np.shape(waveform)[-1]).mean(0)
    hop = max(1, round(hop_s * sample_rate))
    frames = len(mono) // hop
    envelope = np.sqrt((mono[: frames * hop].reshape(frames, hop) ** 2).mean(1))
    times, last = [], -math.inf
    for i in range(1, frames):
        rising = envelope[i] >= threshold and envelope[i] > 4 * envelope[i - 1]
        if rising and i * hop_s - last >= min_gap_s:
            times.append(i * hop / sample_rate)
            last = i * hop_s
    return times
