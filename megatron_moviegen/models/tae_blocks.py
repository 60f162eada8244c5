"""2.5D building blocks of the temporal autoencoder (SPEC section 3).

An LDM image-VAE layer followed by its temporal partner: every 3x3 spatial conv is followed by a 1D temporal
conv (kernel 3, symmetric replicate padding), every spatial attention by a temporal attention. Spatial layers
keep the names and weight shapes of diffusers' AutoencoderKL so its weights copy over one to one. Tensors are
(b, c, t, h, w) at every block boundary; GroupNorm and spatial layers act on each frame independently.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(b, c, t, h, w) -> (b*t, c, h, w)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def from_frames(x: torch.Tensor, t: int) -> torch.Tensor:
    """(b*t, c, h, w) -> (b, c, t, h, w)."""
    bt, c, h, w = x.shape
    return x.reshape(bt // t, t, c, h, w).transpose(1, 2)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (c, h, w) of each frame, as the image VAE normalises each image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t, h, w)
        return from_frames(super().forward(to_frames(x)), x.shape[2])


class TemporalConv(nn.Module):
    """1D conv over time (kernel 3, replicate padding 1 on both ends); stride 2 halves t, rounding up."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), stride=(stride, 1, 1))
        self.init_identity()

    def init_identity(self) -> None:
        """Centre tap = identity matrix, other taps and bias zero: the layer returns its input (every stride-th frame)."""
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1, 0, 0].copy_(torch.eye(self.conv.out_channels))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t, h, w) -> (b, c, ceil(t / stride), h, w)
        return self.conv(F.pad(x, (0, 0, 0, 0, 1, 1), mode="replicate"))


class Conv2Plus1d(nn.Module):
    """3x3 spatial conv on each frame, then a temporal conv. `spatial` is the image VAE's conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.spatial = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.temporal = TemporalConv(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c_in, t, h, w) -> (b, c_out, t, h, w)
        return self.temporal(from_frames(self.spatial(to_frames(x)), x.shape[2]))


class PointwiseConv(nn.Conv2d):
    """1x1 conv (shortcuts, quant convs): mixes channels only, so it needs no temporal partner."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c_in, t, h, w) -> (b, c_out, t, h, w)
        return from_frames(super().forward(to_frames(x)), x.shape[2])


class ResnetBlock(nn.Module):
    """LDM ResnetBlock2D (norm, SiLU, conv, norm, SiLU, conv, + shortcut) with 2.5D convs."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = FrameGroupNorm(norm_groups, in_channels, eps=1e-6)
        self.conv1 = Conv2Plus1d(in_channels, out_channels)
        self.norm2 = FrameGroupNorm(norm_groups, out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2Plus1d(out_channels, out_channels)
        self.conv_shortcut = PointwiseConv(in_channels, out_channels) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c_in, t, h, w) -> (b, c_out, t, h, w)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class SelfAttention(nn.Module):
    """Single-head self-attention with a GroupNorm in front and a residual, as in the LDM VAE mid block."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:  # (n, s, c) already normalised -> (n, s, c)
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (n, 1, s, c)
        return self.to_out(F.scaled_dot_product_attention(q, k, v).squeeze(1))


class SpatialAttention(SelfAttention):
    """Attention among the h*w positions of each frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t, h, w)
        b, c, t, h, w = x.shape
        frames = self.group_norm(to_frames(x))  # (b*t, c, h, w)
        tokens = frames.reshape(b * t, c, h * w).transpose(1, 2)  # (b*t, h*w, c)
        out = self.attend(tokens).transpose(1, 2).reshape(b * t, c, h, w)
        return x + from_frames(out, t)


class TemporalAttention(SelfAttention):
    """Attention among the t frames at each spatial position; output projection starts at zero (a no-op)."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__(channels, norm_groups)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t, h, w)
        b, c, t, h, w = x.shape
        normed = from_frames(self.group_norm(to_frames(x)), t)  # (b, c, t, h, w)
        tokens = normed.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)  # (b*h*w, t, c)
        out = self.attend(tokens).reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return x + out


class Attention2Plus1d(nn.Module):
    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.spatial = SpatialAttention(channels, norm_groups)
        self.temporal = TemporalAttention(channels, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t, h, w)
        return self.temporal(self.spatial(x))


class MidBlock(nn.Module):
    """resnet -> (spatial + temporal attention) -> resnet at the lowest resolution."""

    def __init__(self, channels: int, norm_groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, norm_groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention2Plus1d(channels, norm_groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """2x down in h, w (the image VAE's zero-pad right/bottom + stride-2 3x3 conv) and 2x down in t (stride-2 conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.spatial = nn.Conv2d(channels, channels, kernel_size=3, stride=2)
        self.temporal = TemporalConv(channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, t, h, w) -> (b, c, ceil(t/2), h/2, w/2)
        frames = self.spatial(F.pad(to_frames(x), (0, 1, 0, 1)))
        return self.temporal(from_frames(frames, x.shape[2]))


class Upsample(nn.Module):
    """Nearest 2x in h, w + 3x3 conv (the image VAE's), then nearest 2x in t + temporal conv (SPEC section 3)."""

    def __init__(self, channels: int):
        super().__init__()
        self.spatial = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.temporal = TemporalConv(channels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(b, c, t, h, w) -> (b, c, num_frames, 2h, 2w), num_frames in {2t - 1, 2t}."""
        t = x.shape[2]
        frames = self.spatial(F.interpolate(to_frames(x), scale_factor=2.0, mode="nearest"))
        x = from_frames(frames, t).repeat_interleave(2, dim=2)[:, :, :num_frames]
        return self.temporal(x)


def upsampled_lengths(num_frames: int, num_upsamples: int) -> list[int]:
    """Frame counts after each temporal upsampling that end at `num_frames`: the encoder's ceil-halvings reversed."""
    return [math.ceil(num_frames / 2 ** (num_upsamples - 1 - i)) for i in range(num_upsamples)]
