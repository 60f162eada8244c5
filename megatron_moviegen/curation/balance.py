"""Concept balance: k-means over clip embeddings (a small colour thumbnail of the middle frame), then sampling
weights that raise rare clusters and lower common ones, (mean cluster size / cluster size) ** power, scaled to a
mean of 1 over the clips."""

from __future__ import annotations

import cv2
import numpy as np

THUMBNAIL = (8, 6)  # (w, h) of the embedding's thumbnail: 8 * 6 * 3 = 144 numbers


def frame_embedding(frames: np.ndarray) -> list[float]:
    """(t, h, w, 3) uint8 -> the middle frame as a unit-norm, mean-centred thumbnail: 144 floats (4 decimals)."""
    thumb = cv2.resize(frames[len(frames) // 2], THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float64)
    thumb = thumb.ravel() - thumb.mean()
    return [round(float(v), 4) for v in thumb / max(np.linalg.norm(thumb), 1e-8)]


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding: (n, d) float -> (n,) cluster index in [0, min(k, n))."""
    rng = np.random.default_rng(seed)
    k = min(k, len(points))
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        nearest = ((points[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(axis=1)
        total = nearest.sum()
        centres.append(points[rng.choice(len(points), p=nearest / total)] if total > 0 else points[len(centres)])
    centres = np.array(centres)
    labels = np.zeros(len(points), dtype=int)
    for _ in range(iterations):
        labels = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(axis=1)
        moved = np.array([points[labels == c].mean(axis=0) if (labels == c).any() else centres[c] for c in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return labels


def balance_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """(n,) cluster labels -> (n,) sampling weights, mean 1: a clip of a cluster half the mean size gets
    2 ** power times the weight of one in a cluster of mean size."""
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    weights = (sizes.mean() / sizes[inverse]) ** power
    return weights / weights.mean()
