"""Reconstruction quality numbers shared by the TAE trainer, decode checks and evaluation."""

from __future__ import annotations

import math

import torch


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two same-shape tensors whose values span `data_range`
    (255 for uint8 frames, 2 for pixels in [-1, 1]); inf when identical."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = torch.mean((a.detach().double().cpu() - b.detach().double().cpu()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)
