"""Reconstruction quality numbers shared by the TAE trainer, decode checks and evaluation: PSNR and SSIM."""

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


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()  # (size,), sums to 1; the 2D window is its outer product


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0, window_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (Wang et al. 2004) between two same-shape tensors (..., h, w) whose values span
    `data_range`: an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2, the SSIM map over
    valid window positions of every leading (frame, channel) plane, averaged. 1 when identical. In float64, the
    window applied as two 1D passes (the same sums as the 2D window, 4x faster at 256 px)."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    h, w = a.shape[-2:]
    if h < window_size or w < window_size:
        raise ValueError(f"ssim: planes of {h}x{w}, need at least the {window_size}x{window_size} window")
    x = a.detach().double().cpu().reshape(-1, 1, h, w)
    y = b.detach().double().cpu().reshape(-1, 1, h, w)
    g = _gaussian(window_size, sigma)
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (planes, 5, h, w)
    moments = torch.nn.functional.conv2d(moments, g.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    mu_x, mu_y, xx, yy, xy = torch.nn.functional.conv2d(moments, g.view(1, 1, -1, 1).expand(5, 1, -1, 1),
                                                        groups=5).unbind(1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()
