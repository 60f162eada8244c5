"""Motion from dense optical flow (OpenCV's Farneback) between consecutive analysis samples: how much moves
(static video, motion magnitude), the camera's global motion (pan/tilt speed, zoom rate) and its jitter.

Global motion per step is the least-squares fit of the flow to a translation plus a uniform scaling about the
frame centre: u = dx + zoom * x, v = dy + zoom * y (x, y centred, in frame widths).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Motion:
    """A clip's motion: speeds in frame widths per second, zoom in relative scale change per second."""

    motion: float  # mean flow speed over all pixels (objects and camera)
    jitter: float  # mean |change of the global translation velocity| between steps
    pan: float  # mean horizontal translation of the content (+: content moves right)
    tilt: float  # mean vertical translation of the content (+: content moves down)
    zoom: float  # mean scale rate (+: content grows, the camera zooms in)


def grey_small(frame: np.ndarray, width: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> (h * width / w, width) uint8 grey."""
    height = max(8, round(frame.shape[0] * width / frame.shape[1]))
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (width, height), interpolation=cv2.INTER_AREA)


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Farneback flow from grey `a` to grey `b`: (h, w, 2) pixels."""
    return cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3,
                                        poly_n=5, poly_sigma=1.2, flags=0)


def global_step(field: np.ndarray) -> tuple[float, float, float, float]:
    """One flow field (h, w, 2) in pixels -> (dx, dy, zoom, mean speed), in frame widths (zoom: relative). The fit
    leaves out an eighth of the frame at each edge, where content entering or leaving has no match."""
    h, w = field.shape[:2]
    top, left = h // 8, w // 8
    inner = field[top:h - top, left:w - left]
    u, v = inner[..., 0] / w, inner[..., 1] / w
    y, x = np.mgrid[top:h - top, left:w - left].astype(np.float64)
    x, y = (x - (w - 1) / 2) / w, (y - (h - 1) / 2) / w
    zoom = float((u * x + v * y).sum() / (x * x + y * y).sum())
    return float(u.mean()), float(v.mean()), zoom, float(np.hypot(u, v).mean())


def clip_motion(frames: np.ndarray, times: np.ndarray, flow_width: int) -> Motion:
    """Motion of (t, h, w, 3) uint8 samples taken at `times` (s); a clip of one sample has no motion."""
    if len(frames) < 2:
        return Motion(0.0, 0.0, 0.0, 0.0, 0.0)
    grey = [grey_small(frame, flow_width) for frame in frames]
    dt = np.diff(times)
    steps = np.array([global_step(flow(a, b)) for a, b in zip(grey[:-1], grey[1:])]) / dt[:, None]
    velocity = steps[:, :2]  # (steps, 2) widths per second
    jitter = float(np.linalg.norm(np.diff(velocity, axis=0), axis=1).mean()) if len(steps) > 1 else 0.0
    dx, dy, zoom, speed = steps.mean(axis=0)
    return Motion(float(speed), jitter, float(dx), float(dy), float(zoom))
