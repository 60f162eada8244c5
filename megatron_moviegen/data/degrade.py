"""The spatial upsampler's input (SPEC section 5): a high-res clip made low-res (downscale, optional blur or
noise, or the paper's Real-ESRGAN-style second-order degradations: blur, resize, noise and JPEG or H.264 compression,
twice in a random order; 8-bit rounding as in a decoded low-res video), then bilinearly upsampled back to the high-res
grid.

    low = degrade(pixels, UpsampleConfig(low_resolution_factor=2.0))     # (b, 3, t, h/2, w/2)
    condition = upsample_bilinear(low, pixels.shape[-2], pixels.shape[-1])  # (b, 3, t, h, w), what the TAE encodes

Pre-encoding (training pairs) and the upsampling pipeline (an existing low-res video) share these two functions,
so the model sees at sampling time exactly the kind of input it was trained on.
"""

from __future__ import annotations

from typing import Optional

import io
import random

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from megatron_moviegen.data.config import SecondOrderConfig, UpsampleConfig
from megatron_moviegen.utils.video_io import to_uint8_frames


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
    if cfg.degradation == "second_order":
        frames = second_order(frames.float(), b, cfg.second_order, generator)
    low = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    if cfg.degradation == "blur":
        low = _gaussian_blur(low, cfg.blur_sigma)
    elif cfg.degradation == "noise":
        noise = torch.randn(low.shape, generator=generator, dtype=low.dtype)
        low = low + cfg.noise_std * noise.to(low.device)
    elif cfg.degradation not in ("bilinear", "second_order"):
        raise ValueError(f"degradation: got {cfg.degradation!r}, expected bilinear, blur, noise or second_order")
    low = ((low.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0  # a decoded 8-bit low-res video
    return _video(low, b)


def condition_pixels(pixels: torch.Tensor, cfg: UpsampleConfig, generator: Optional[torch.Generator] = None
                     ) -> torch.Tensor:
    """High-res (b, 3, t, h, w) -> its degraded low-res version bilinearly upsampled back to (h, w): the pixels
    whose latents condition the upsampler."""
    return upsample_bilinear(degrade(pixels, cfg, generator), pixels.shape[-2], pixels.shape[-1])


def second_order(frames: torch.Tensor, b: int, cfg: SecondOrderConfig,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(b * t, 3, h, w) in [-1, 1] -> the same clips after two rounds of Real-ESRGAN's degradations, each round a
    blur, a resize, noise and a compression in an order drawn per round (sizes change; the caller resizes to the
    low-res size). All draws come from `generator` (CPU), so a sample's degradation is reproducible."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rng = random.Random(seed)
    noise_generator = torch.Generator().manual_seed(seed)
    for _ in range(2):
        steps = ["blur", "resize", "noise", "compress"]
        rng.shuffle(steps)
        for step in steps:
            if rng.random() < cfg.skip_prob:
                continue
            if step == "blur":
                frames = _gaussian_blur(frames, rng.uniform(*cfg.blur_sigma))
            elif step == "resize":
                scale = rng.uniform(*cfg.resize_scale)
                size = [max(8, 2 * round(side * scale / 2)) for side in frames.shape[-2:]]
                frames = F.interpolate(frames, size=size, mode=rng.choice(["bilinear", "bicubic", "area"]))
            elif step == "noise":
                std = rng.uniform(*cfg.noise_std)
                frames = frames + std * torch.randn(frames.shape, generator=noise_generator).to(frames.device)
            elif rng.random() < cfg.video_compression_prob:
                frames = _h264(frames, b, rng.randint(*cfg.h264_crf))
            else:
                frames = _jpeg(frames, rng.randint(*cfg.jpeg_quality))
            frames = frames.clamp(-1.0, 1.0)
    return frames


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(n, 3, h, w) in [-1, 1] -> (n, h, w, 3) uint8, as videos are written."""
    return to_uint8_frames(frames.transpose(0, 1))


def _from_uint8(images: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(like.device, like.dtype) / 127.5 - 1


def _jpeg(frames: torch.Tensor, quality: int) -> torch.Tensor:
    """Each frame through JPEG at `quality` (PIL)."""
    out = []
    for image in _to_uint8(frames):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return _from_uint8(np.stack(out), frames)


def _h264(frames: torch.Tensor, b: int, crf: int) -> torch.Tensor:
    """Each of the b clips through H.264 (libx264 yuv420p at `crf`, in memory); sizes are even (the resize keeps them
    so, and an odd input is cropped by one pixel and padded back by replication)."""
    h, w = frames.shape[-2:]
    even = frames[..., : h - h % 2, : w - w % 2]
    clips = _to_uint8(even).reshape(b, -1, even.shape[-2], even.shape[-1], 3)
    out = []
    for clip in clips:
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="h264") as container:
            stream = container.add_stream("libx264", rate=24, options={"crf": str(crf), "preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
            for image in clip:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        with av.open(io.BytesIO(buffer.getvalue()), format="h264") as container:
            out.extend(frame.to_ndarray(format="rgb24") for frame in container.decode(video=0))
    decoded = _from_uint8(np.stack(out), frames)
    return F.pad(decoded, (0, w % 2, 0, h % 2), mode="replicate")
