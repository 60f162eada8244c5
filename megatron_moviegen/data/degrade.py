"""The spatial upsampler's input (SPEC section 5): a high-res clip made low-res (downscale, optional blur or
noise, 8-bit rounding as in a decoded low-res video), then bilinearly upsampled back to the high-res grid.

    low = degrade(pixels, UpsampleConfig(low_resolution_factor=2.0))     # (b, 3, t, h/2, w/2)
    condition = upsample_bilinear(low, pixels.shape[-2], pixels.shape[-1])  # (b, 3, t, h, w), what the TAE encodes

Pre-encoding (training pairs) and the upsampling pipeline (an existing low-res video) share these two functions,
so the model sees at sampling time exactly the kind of input it was trained on.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from megatron_moviegen.data.config import UpsampleConfig


def low_resolution_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """The low-res (height, width) of a high-res frame: each side divided by `factor`, rounded, at least 1."""
    return max(1, round(height / factor)), max(1, round(width / factor))


def _frames(pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(b, 3, t, h, w) -> (b * t, 3, h, w) and b, to undo it."""
    if pixels.ndim != 5 or pixels.shape[1] != 3:
        raise ValueError(f"pixels: got shape {tuple(pixels.shape)}, expected (b, 3, t, h, w)")
    b, c, t, h, w = pixels.shape
    return pixels.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), b


def _video(frames: torch.Tensor, b: int) -> torch.Tensor:
    """(b * t, 3, h, w) -> (b, 3, t, h, w)."""
    return frames.reshape(b, -1, *frames.shape[1:]).permute(0, 2, 1, 3, 4)


def upsample_bilinear(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(b, 3, t, h, w) in [-1, 1] -> (b, 3, t, height, width), bilinear (half-pixel centres, no antialias)."""
    frames, b = _frames(pixels)
    up = F.interpolate(frames.float(), size=(height, width), mode="bilinear", align_corners=False)
    return _video(up, b).clamp(-1.0, 1.0)


def _gaussian_blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=frames.dtype, device=frames.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = frames.shape[1]
    padded = F.pad(frames, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def degrade(pixels: torch.Tensor, cfg: UpsampleConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """High-res (b, 3, t, h, w) in [-1, 1] -> the low-res clip (b, 3, t, h', w') in [-1, 1] on 8-bit levels:
    antialiased bilinear downscale by cfg.low_resolution_factor, then cfg.degradation. `generator` seeds the
    noise (CPU generator; needed only for "noise")."""
    frames, b = _frames(pixels)
    size = low_resolution_size(frames.shape[-2], frames.shape[-1], cfg.low_resolution_factor)
    low = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    if cfg.degradation == "blur":
        low = _gaussian_blur(low, cfg.blur_sigma)
    elif cfg.degradation == "noise":
        noise = torch.randn(low.shape, generator=generator, dtype=low.dtype)
        low = low + cfg.noise_std * noise.to(low.device)
    elif cfg.degradation != "bilinear":
        raise ValueError(f"degradation: got {cfg.degradation!r}, expected bilinear, blur or noise")
    low = ((low.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0  # a decoded 8-bit low-res video
    return _video(low, b)


def condition_pixels(pixels: torch.Tensor, cfg: UpsampleConfig, generator: Optional[torch.Generator] = None
                     ) -> torch.Tensor:
    """High-res (b, 3, t, h, w) -> its degraded low-res version bilinearly upsampled back to (h, w): the pixels
    whose latents condition the upsampler."""
    return upsample_bilinear(degrade(pixels, cfg, generator), pixels.shape[-2], pixels.shape[-1])
