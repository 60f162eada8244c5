"""Movie Gen temporal autoencoder (TAE, SPEC section 3): pixels (b, 3, t, h, w) in [-1, 1] <-> latents
(b, 16, ceil(t/8), h/8, w/8).

An LDM image VAE inflated to 2.5D (see tae_blocks.py). Every spatial downsampling also halves time (stride-2
temporal conv, rounding up), so a 1-frame video (an image) stays one frame all the way through.

    tae = tae_from_image_vae("flux_vae/")            # tae_inflate.py: a diffusers AutoencoderKL, 16 latent channels
    posterior = tae.encode(video, tiled=True)        # DiagonalGaussian over (b, 16, T, h/8, w/8)
    video = tae.decode(posterior.mode(), num_frames=t, tiled=True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.models.tae_blocks import (
    Conv2Plus1d,
    Downsample,
    FrameGroupNorm,
    MidBlock,
    PointwiseConv,
    ResnetBlock,
    Upsample,
    upsampled_lengths,
)
from megatron_moviegen.models.pretrained import (  # noqa: F401 (the file names, re-exported)
    CONFIG_NAME,
    WEIGHTS_NAME,
    WEIGHTS_NAMES,
    PretrainedAutoencoder,
    check_latent_stats,
)


@dataclass
class TAEConfig:
    """Architecture and tiling of the TAE. Defaults are the LDM/FLUX VAE shape with 16 latent channels."""

    in_channels: int = 3
    latent_channels: int = 16
    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    mid_attention: bool = True
    use_quant_conv: bool = True
    # Temporal tiling (SPEC section 3): encoder tiles of 32 frames, no overlap; decoder tiles of 4 latent
    # frames overlapping by 2, blended linearly.
    encoder_tile_frames: int = 32
    decoder_tile_latent_frames: int = 4
    decoder_tile_overlap_latent_frames: int = 2
    # Spatial tiling, in pixels; tiles overlap and are blended linearly.
    spatial_tile_size: int = 256
    spatial_tile_overlap: int = 64
    # Per-channel statistics of the encoder's latents (`data/latent_stats.py`): the latents the DiT sees are
    # (z - latent_shift) / latent_scale, so its flow from N(0, I) starts at their scale. Empty: identity.
    latent_shift: tuple[float, ...] = ()
    latent_scale: tuple[float, ...] = ()

    @property
    def compression(self) -> int:
        """Downsampling factor in t, h and w (8 for four resolution levels)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def block_channels(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_multipliers]

    def validate(self) -> None:
        for name in ("in_channels", "latent_channels", "base_channels", "num_res_blocks", "norm_groups",
                     "encoder_tile_frames", "decoder_tile_latent_frames", "spatial_tile_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if not self.channel_multipliers or any(m < 1 for m in self.channel_multipliers):
            raise ConfigError(f"channel_multipliers: got {self.channel_multipliers}, need positive entries")
        for channels in self.block_channels:
            if channels % self.norm_groups:
                raise ConfigError(f"norm_groups: {self.norm_groups} does not divide block width {channels}")
        if self.encoder_tile_frames % self.compression:
            raise ConfigError(f"encoder_tile_frames: got {self.encoder_tile_frames}, must be a multiple of "
                              f"the compression {self.compression}")
        if not 0 <= self.decoder_tile_overlap_latent_frames < self.decoder_tile_latent_frames:
            raise ConfigError(f"decoder_tile_overlap_latent_frames: got {self.decoder_tile_overlap_latent_frames}, "
                              f"must be in [0, decoder_tile_latent_frames={self.decoder_tile_latent_frames})")
        for name in ("spatial_tile_size", "spatial_tile_overlap"):
            if getattr(self, name) % self.compression:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be a multiple of {self.compression}")
        check_latent_stats(self)
        if not 0 <= self.spatial_tile_overlap < self.spatial_tile_size:
            raise ConfigError(f"spatial_tile_overlap: got {self.spatial_tile_overlap}, must be in "
                              f"[0, spatial_tile_size={self.spatial_tile_size})")


class DiagonalGaussian:
    """The encoder's posterior over latents: mean and log-variance, each (b, c, T, h', w')."""

    def __init__(self, moments: torch.Tensor):  # (b, 2c, T, h', w')
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), averaged over every latent element (a scalar)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean()


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, norm_groups: int, downsample: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.resnets = nn.ModuleList(ResnetBlock(i, o, norm_groups) for i, o in zip(widths, widths[1:]))
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, norm_groups: int, upsample: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList(ResnetBlock(i, o, norm_groups) for i, o in zip(widths, widths[1:]))
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if upsample else [])

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for upsampler in self.upsamplers:
            x = upsampler(x, num_frames)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: TAEConfig):
        super().__init__()
        widths = cfg.block_channels
        self.conv_in = Conv2Plus1d(cfg.in_channels, widths[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(widths[max(i - 1, 0)], widths[i], cfg.num_res_blocks, cfg.norm_groups, i < len(widths) - 1)
            for i in range(len(widths))
        )
        self.mid_block = MidBlock(widths[-1], cfg.norm_groups, cfg.mid_attention)
        self.conv_norm_out = FrameGroupNorm(cfg.norm_groups, widths[-1], eps=1e-6)
        self.conv_out = Conv2Plus1d(widths[-1], 2 * cfg.latent_channels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (b, 3, t, h, w) -> (b, 2c, ceil(t/8), h/8, w/8)
        x = self.conv_in(pixels)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: TAEConfig):
        super().__init__()
        widths = cfg.block_channels[::-1]
        self.conv_in = Conv2Plus1d(cfg.latent_channels, widths[0])
        self.mid_block = MidBlock(widths[0], cfg.norm_groups, cfg.mid_attention)
        self.up_blocks = nn.ModuleList(
            UpBlock(widths[max(i - 1, 0)], widths[i], cfg.num_res_blocks, cfg.norm_groups, i < len(widths) - 1)
            for i in range(len(widths))
        )
        self.conv_norm_out = FrameGroupNorm(cfg.norm_groups, widths[-1], eps=1e-6)
        self.conv_out = Conv2Plus1d(widths[-1], cfg.in_channels)

    def forward(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(b, c, T, h', w') -> (b, 3, num_frames, 8h', 8w'); needs ceil(num_frames / 8) == T."""
        lengths = upsampled_lengths(num_frames, len(self.up_blocks) - 1) + [num_frames]
        x = self.mid_block(self.conv_in(latents))
        for block, length in zip(self.up_blocks, lengths):
            x = block(x, length)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of length `tile` (the last may be shorter) stepping by tile - overlap to cover `size`."""
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + tile - overlap)
    return starts


def _ramp(length: int, overlap_before: int, overlap_after: int, like: torch.Tensor) -> torch.Tensor:
    """Blend weights of one spatial tile along one axis: rising over the leading overlap, falling over the trailing."""
    weights = torch.ones(length, dtype=like.dtype, device=like.device)
    if overlap_before:
        weights[:overlap_before] = (torch.arange(overlap_before, dtype=like.dtype) + 0.5) / overlap_before
    if overlap_after:
        weights[length - overlap_after:] = (overlap_after - 0.5 - torch.arange(overlap_after, dtype=like.dtype)) / overlap_after
    return weights


class TAE(PretrainedAutoencoder, nn.Module):
    config_class, display_name = TAEConfig, "TAE"

    def __init__(self, cfg: TAEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = PointwiseConv(2 * cfg.latent_channels, 2 * cfg.latent_channels) if cfg.use_quant_conv else None
        self.post_quant_conv = PointwiseConv(cfg.latent_channels, cfg.latent_channels) if cfg.use_quant_conv else None

    # ---- shapes -------------------------------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        return math.ceil(num_frames / self.cfg.compression)

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.ndim != 5 or pixels.shape[1] != self.cfg.in_channels:
            raise ValueError(f"pixels: got shape {tuple(pixels.shape)}, expected (b, {self.cfg.in_channels}, t, h, w)")
        h, w = pixels.shape[-2:]
        if h % self.cfg.compression or w % self.cfg.compression:
            raise ValueError(f"pixels: height {h} and width {w} must both be divisible by {self.cfg.compression}")

    def _check_latents(self, latents: torch.Tensor, num_frames: int) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"latents: got shape {tuple(latents.shape)}, "
                             f"expected (b, {self.cfg.latent_channels}, T, h, w)")
        if self.latent_frames(num_frames) != latents.shape[2]:
            raise ValueError(f"num_frames: got {num_frames}, which encodes to {self.latent_frames(num_frames)} "
                             f"latent frames, but latents have {latents.shape[2]}")

    # ---- untiled ------------------------------------------------------------------------------------------
    def _encode_moments(self, pixels: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(pixels)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents, num_frames)

    # ---- public -------------------------------------------------------------------------------------------
    def encode(self, pixels: torch.Tensor, tiled: bool = False) -> DiagonalGaussian:
        """Pixels (b, 3, t, h, w) in [-1, 1] -> posterior over latents (b, 16, ceil(t/8), h/8, w/8)."""
        self._check_pixels(pixels)
        if not tiled:
            return DiagonalGaussian(self._encode_moments(pixels))
        tile = self.cfg.encoder_tile_frames
        moments = [self._encode_spatially_tiled(pixels[:, :, s:s + tile]) for s in range(0, pixels.shape[2], tile)]
        return DiagonalGaussian(torch.cat(moments, dim=2))

    def decode(self, latents: torch.Tensor, num_frames: int | None = None, tiled: bool = False) -> torch.Tensor:
        """Latents (b, 16, T, h', w') -> pixels (b, 3, num_frames, 8h', 8w'); num_frames defaults to 8T."""
        num_frames = latents.shape[2] * self.cfg.compression if num_frames is None else num_frames
        self._check_latents(latents, num_frames)
        if not tiled:
            return self._decode(latents, num_frames)
        return torch.cat(list(self.decode_tiles(latents, num_frames)), dim=2)

    def forward(self, pixels: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct pixels (b, 3, t, h, w); returns (reconstruction, posterior)."""
        posterior = self.encode(pixels)
        latents = posterior.sample() if sample else posterior.mode()
        return self.decode(latents, num_frames=pixels.shape[2]), posterior

    # ---- tiling -------------------------------------------------------------------------------------------
    def decode_tiles(self, latents: torch.Tensor, num_frames: int) -> Iterator[torch.Tensor]:
        """Yield the decoded video (b, 3, *, h, w) chunk by chunk along time, from overlapping latent tiles.

        Tiles of `decoder_tile_latent_frames` latents step by (tile - overlap); across the overlap of N pixel
        frames the later tile gets weight j/N and the earlier 1 - j/N (SPEC section 3). Only one tile and the
        pending overlap are alive at once, so memory does not grow with video length.
        """
        self._check_latents(latents, num_frames)
        k = self.cfg.compression
        tile, overlap = self.cfg.decoder_tile_latent_frames, self.cfg.decoder_tile_overlap_latent_frames
        starts = _tile_starts(latents.shape[2], tile, overlap)
        pending = None  # the previous tile's frames that overlap the current tile
        for i, start in enumerate(starts):
            end = min(start + tile, latents.shape[2])
            frames = min(end * k, num_frames) - start * k
            out = self._decode_spatially_tiled(latents[:, :, start:end], frames)
            if pending is not None:
                n = pending.shape[2]
                w = (torch.arange(n, dtype=out.dtype, device=out.device) / n).view(1, 1, n, 1, 1)
                out = torch.cat([pending * (1 - w) + out[:, :, :n] * w, out[:, :, n:]], dim=2)
            keep = (starts[i + 1] - start) * k if i + 1 < len(starts) else out.shape[2]
            pending = out[:, :, keep:]
            yield out[:, :, :keep]

    def _spatial_tiles(self, size: int) -> list[tuple[int, int]]:
        """(start, end) of spatial tiles along one axis, in latent units."""
        k = self.cfg.compression
        tile, overlap = self.cfg.spatial_tile_size // k, self.cfg.spatial_tile_overlap // k
        return [(s, min(s + tile, size)) for s in _tile_starts(size, tile, overlap)]

    def _blend_spatial_tiles(self, x: torch.Tensor, fn, in_scale: int, out_scale: int) -> torch.Tensor:
        """Apply `fn` to overlapping (h, w) tiles of x and blend the outputs with linear ramps over the overlaps.

        Tile positions are in latent units; x is indexed at `in_scale` and the output at `out_scale` per unit.
        """
        rows, cols = (self._spatial_tiles(x.shape[d] // in_scale) for d in (-2, -1))
        if len(rows) == 1 and len(cols) == 1:
            return fn(x)
        out = weight = None
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                y = fn(x[..., r0 * in_scale:r1 * in_scale, c0 * in_scale:c1 * in_scale])
                if out is None:
                    shape = (*y.shape[:-2], rows[-1][1] * out_scale, cols[-1][1] * out_scale)
                    out, weight = y.new_zeros(shape), y.new_zeros(shape[-2:])
                top = (rows[i - 1][1] - r0) * out_scale if i else 0
                bottom = (r1 - rows[i + 1][0]) * out_scale if i + 1 < len(rows) else 0
                left = (cols[j - 1][1] - c0) * out_scale if j else 0
                right = (c1 - cols[j + 1][0]) * out_scale if j + 1 < len(cols) else 0
                mask = torch.outer(_ramp(y.shape[-2], top, bottom, y), _ramp(y.shape[-1], left, right, y))
                out[..., r0 * out_scale:r1 * out_scale, c0 * out_scale:c1 * out_scale] += y * mask
                weight[r0 * out_scale:r1 * out_scale, c0 * out_scale:c1 * out_scale] += mask
        return out / weight

    def _encode_spatially_tiled(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._blend_spatial_tiles(pixels, self._encode_moments, self.cfg.compression, 1)

    def _decode_spatially_tiled(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self._blend_spatial_tiles(latents, lambda z: self._decode(z, num_frames), 1, self.cfg.compression)
