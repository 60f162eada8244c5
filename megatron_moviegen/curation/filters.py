"""Per-clip visual scores: resolution and aspect ratio, sharpness, black borders, burned-in text, and an optional
aesthetic plug-in. Frames are the analysis samples, (t, h, w, 3) uint8 RGB.

Each score's unit is in `SCORES`; which ones pass is decided later, from the recorded numbers (`stages.py`).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Callable, Optional

import cv2
import numpy as np

from megatron_moviegen.config.schema import ConfigError

SCORES = {
    "short_side": "pixels, the source's shorter side",
    "aspect": "width / height of the source",
    "border": "fraction of the height (or width) that is black bars, letterbox or pillarbox",
    "text": "largest fraction of a frame's area covered by text the OCR finds",
    "sharpness": "variance of the Laplacian of the grey frame at the analysis size, mean over frames",
    "motion": "mean optical-flow speed, frame widths per second",
    "jitter": "mean change of the global translation between samples, frame widths per second",
    "aesthetic": "the configured scorer's number (null: no scorer)",
}
DARK = 24  # a border row/column has no pixel brighter than this in any sampled frame


def evenly_spaced(frames: np.ndarray, count: int) -> np.ndarray:
    """`count` frames spread over the clip (all of them if it has fewer): (k, h, w, 3)."""
    if len(frames) <= count:
        return frames
    return frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]


def sharpness(frames: np.ndarray) -> float:
    """Variance of the Laplacian of each grey frame, averaged: low for blurred video."""
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    return float(np.mean([cv2.Laplacian(g, cv2.CV_64F).var() for g in grey]))


def _dark_run(bright: np.ndarray) -> int:
    """How many leading entries of a boolean 'has a bright pixel' profile are False."""
    lit = np.flatnonzero(bright)
    return int(lit[0]) if len(lit) else len(bright)


def border_fraction(frames: np.ndarray) -> float:
    """The larger of the letterbox (top + bottom rows) and pillarbox (left + right columns) fractions: rows or
    columns at the edges with no pixel brighter than DARK in any frame."""
    peak = frames.max(axis=(0, 3))  # (h, w): brightest value each pixel reaches
    rows, cols = peak.max(axis=1) > DARK, peak.max(axis=0) > DARK
    letterbox = min(1.0, (_dark_run(rows) + _dark_run(rows[::-1])) / len(rows))
    pillarbox = min(1.0, (_dark_run(cols) + _dark_run(cols[::-1])) / len(cols))
    return float(max(letterbox, pillarbox))


@lru_cache(maxsize=1)
def ocr_engine():
    """RapidOCR with the ONNX weights its wheel ships (no download); one per process. Frames are read at their own
    size (up to 2048 px), not upscaled to the 736 px short side RapidOCR defaults to."""
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(det_limit_side_len=2048, det_limit_type="max")


def text_fraction(frames: np.ndarray) -> float:
    """The largest fraction of a frame covered by the OCR's text boxes (boxes filled, overlaps counted once). Only
    boxes the recogniser reads with confidence count: the detector alone takes blurred edges for text."""
    worst = 0.0
    for frame in frames:
        found, _ = ocr_engine()(np.ascontiguousarray(frame[..., ::-1]), use_cls=False)  # BGR, as OpenCV reads
        mask = np.zeros(frame.shape[:2], np.uint8)
        for box, _text, _confidence in found or []:
            cv2.fillPoly(mask, [np.asarray(box, np.int32)], 1)
        worst = max(worst, float(mask.mean()))
    return worst


@lru_cache(maxsize=None)
def load_scorer(spec: Optional[str]) -> Optional[Callable[[np.ndarray], float]]:
    """analysis.aesthetic ("package.module:function", frames (t, h, w, 3) uint8 -> float) or None (absent)."""
    if spec is None:
        return None
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"analysis.aesthetic: cannot import {spec!r} ({exc})") from None
    if not callable(function):
        raise ConfigError(f"analysis.aesthetic: {spec!r} is not callable")
    return function
