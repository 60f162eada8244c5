"""Toy encoders for tests and the CPU quickstart: real computations with fixed random weights (seeded), with the
shapes of the TAE and the text encoders, not their quality. Plus the TAE behind pre-encoding's VideoEncoder
protocol.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_moviegen.conditioning import Tokens
from megatron_moviegen.text.prompts import byt5_text


class TinyVideoEncoder:
    """A fixed random Conv3d with kernel = stride = 8 and 16 output channels: the TAE's shapes, not its quality.

    The clip is padded in front to a multiple of 8 frames by repeating its first frame, so t frames give
    ceil(t/8) latent frames and an image gives one (like the TAE's causal treatment of a 1-frame video).
    """

    def __init__(self, latent_channels: int = 16, compression: int = 8, seed: int = 0, device: str = "cpu"):
        gen = torch.Generator().manual_seed(seed)
        k = compression
        fan_in = 3 * k**3
        self.weight = (torch.randn(latent_channels, 3, k, k, k, generator=gen) / fan_in**0.5).to(device)
        self.bias = (0.1 * torch.randn(latent_channels, generator=gen)).to(device)
        self.compression = k

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = pixels.shape
        k = self.compression
        if c != 3 or h % k or w % k:
            raise ValueError(f"TinyVideoEncoder: got pixels {tuple(pixels.shape)}, need (b, 3, t, h, w) with h, w % {k} == 0")
        pad = (-t) % k
        if pad:
            pixels = torch.cat([pixels[:, :, :1].expand(b, c, pad, h, w), pixels], dim=2)
        return F.conv3d(pixels.to(self.weight), self.weight, self.bias, stride=k)  # (b, 16, ceil(t/8), h/8, w/8)


class TinyTextEncoders:
    """Per encoder, a fixed random embedding table over UTF-8 bytes plus a learned-position-like table.

    Each encoder reads what its real counterpart reads: "byt5" the prompt's quoted text (`byt5_text`; no quote,
    an all-False mask), the others the whole prompt with its FPS prefix. The text is truncated to the encoder's
    max_length bytes and right-padded; the mask marks real bytes.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], seed: int = 0):
        """shapes: {encoder name: (width, max_length)}; `for_model` takes them from a DiT config."""
        self.shapes = dict(shapes)
        gen = torch.Generator().manual_seed(seed)
        self.tables = {}
        for name, (width, max_length) in self.shapes.items():
            self.tables[name] = (torch.randn(256, width, generator=gen), 0.1 * torch.randn(max_length, width, generator=gen))

    @classmethod
    def for_model(cls, model, seed: int = 0) -> "TinyTextEncoders":
        """Shaped to a `DiTConfig`'s text encoders (the one source of their widths and lengths)."""
        return cls({name: (enc.width, enc.max_length) for name, enc in model.text_encoders.items()}, seed)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, Tokens]:
        return {name: embed_bytes([byt5_text(p) if name == "byt5" else p for p in prompts], *self.tables[name])
                for name in self.shapes}


def embed_bytes(texts: list[str], byte_table: torch.Tensor, positions: torch.Tensor) -> Tokens:
    """Texts -> Tokens((b, max_length, width), (b, max_length) bool): each UTF-8 byte's row of `byte_table` (256,
    width) plus its position's row of `positions` (max_length, width), truncated to max_length, padding zeroed."""
    max_length = positions.shape[0]
    tokens = torch.zeros(len(texts), max_length, dtype=torch.long)
    mask = torch.zeros(len(texts), max_length, dtype=torch.bool)
    for i, text in enumerate(texts):
        data = list(text.encode("utf-8"))[:max_length]
        tokens[i, : len(data)] = torch.tensor(data, dtype=torch.long)
        mask[i, : len(data)] = True
    return Tokens((byte_table[tokens] + positions) * mask.unsqueeze(-1), mask)


class TAEVideoEncoder:
    """The project's TAE behind the `VideoEncoder` protocol: the posterior mean, with temporal/spatial tiling,
    normalised by the TAE's latent_shift / latent_scale (the DiT's latent space). `dtype` is the encode's autocast
    (data.tae_dtype): "bfloat16" runs it under bf16 autocast, "float32" without, "auto" bf16 on CUDA only."""

    def __init__(self, tae, tiled: bool = True, dtype: str = "auto"):
        if dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"TAEVideoEncoder dtype: got {dtype!r}, expected 'auto', 'bfloat16' or 'float32'")
        self.tae = tae
        self.tiled = tiled
        self.dtype = dtype

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, 3, t, h, w) in [-1, 1] -> float32 latents (b, 16, ceil(t/8), h/8, w/8)."""
        param = next(self.tae.parameters())
        bf16 = self.dtype == "bfloat16" or (self.dtype == "auto" and param.device.type == "cuda")
        with torch.autocast(param.device.type, dtype=torch.bfloat16, enabled=bf16):
            latents = self.tae.encode(pixels.to(param.device, param.dtype), tiled=self.tiled).mode()
        return self.tae.normalize_latents(latents.float())
