"""What surrounds the DiT blocks: patchify, position tables, the flow-time embedding and the text projections."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from megatron_moviegen.models.dit_config import DiTConfig


def mark_replicated(module: nn.Module, acts_on_sequence_shard: bool) -> None:
    """Parameters held whole on every pipeline stage and every TP rank.

    `pipeline_parallel` makes Megatron all-reduce their grads over PP (they are replicated on every stage,
    config.has_cond_embedder). `sequence_parallel` makes it all-reduce them over TP when SP is on: needed
    when the module's output meets only this rank's sequence shard, so its grads are partial.
    """
    for param in module.parameters():
        param.pipeline_parallel = True
        param.sequence_parallel = acts_on_sequence_shard


class PatchEmbed(nn.Module):
    """3D conv patchify, kernel = stride = patch_size: (b, c, t, h, w) -> (t'*h'*w', b, d) tokens."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.patch_size = tuple(cfg.patch_size)
        self.proj = nn.Conv3d(cfg.latent_channels, cfg.hidden_size, kernel_size=self.patch_size,
                              stride=self.patch_size)

    def grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        _, _, t, h, w = latents.shape
        pt, ph, pw = self.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent shape (t={t}, h={h}, w={w}) is not divisible by patch_size {self.patch_size}")
        return t // pt, h // ph, w // pw

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.proj(latents)  # (b, d, t', h', w')
        return x.flatten(2).permute(2, 0, 1).contiguous()  # (s, b, d)


class Unpatchify(nn.Module):
    """Final adaLN norm + linear to patch pixels, and the inverse of PatchEmbed's token order."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.patch_size = tuple(cfg.patch_size)
        self.channels = cfg.latent_channels
        self.norm_eps = cfg.norm_epsilon
        self.modulation = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.latent_channels * math.prod(self.patch_size))
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """(s, b, d) tokens, (b, d) time embedding -> (s, b, c*pt*ph*pw) patch values."""
        shift, scale = self.modulation(F.silu(time_embedding)).chunk(2, dim=-1)  # (b, d) each
        x = F.layer_norm(x.float(), x.shape[-1:], eps=self.norm_eps).to(x.dtype)
        return self.proj(x * (1 + scale) + shift)

    def to_latents(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(s, b, c*pt*ph*pw) -> (b, c, t, h, w)."""
        t, h, w = grid
        pt, ph, pw = self.patch_size
        b = tokens.shape[1]
        x = tokens.permute(1, 0, 2).reshape(b, t, h, w, self.channels, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (b, c, t, pt, h, ph, w, pw)
        return x.reshape(b, self.channels, t * pt, h * ph, w * pw)


def patchify_target(latents: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """(b, c, t, h, w) -> (s, b, c*pt*ph*pw): the token layout Unpatchify.proj produces."""
    b, c, t, h, w = latents.shape
    pt, ph, pw = patch_size
    x = latents.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(2, 4, 6, 0, 1, 3, 5, 7)  # (t', h', w', b, c, pt, ph, pw)
    return x.reshape((t // pt) * (h // ph) * (w // pw), b, c * pt * ph * pw)


class FactorizedPositionEmbedding(nn.Module):
    """Learnable t, h and w tables, summed per token (SPEC: added to the tokens at every block)."""

    def __init__(self, cfg: DiTConfig, std: float):
        super().__init__()
        self.max_grid = (cfg.max_frames, cfg.max_height, cfg.max_width)
        self.t = nn.Parameter(torch.randn(cfg.max_frames, cfg.hidden_size) * std)
        self.h = nn.Parameter(torch.randn(cfg.max_height, cfg.hidden_size) * std)
        self.w = nn.Parameter(torch.randn(cfg.max_width, cfg.hidden_size) * std)

    def forward(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(t', h', w') token grid -> (t'*h'*w', 1, d), in PatchEmbed's token order."""
        t, h, w = grid
        for size, limit, name in zip(grid, self.max_grid, ("max_frames", "max_height", "max_width")):
            if size > limit:
                raise ValueError(
                    f"token grid (t={t}, h={h}, w={w}) exceeds the position table: {size} > model.{name}={limit}"
                )
        pos = self.t[:t, None, None] + self.h[None, :h, None] + self.w[None, None, :w]  # (t, h, w, d)
        return pos.reshape(t * h * w, 1, -1)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(b,) flow times in [0, 1] -> (b, dim); times are scaled by 1000 as in DiT/PixArt."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """Flow time t -> (time embedding (b, d), shared adaLN modulation (b, 6, d)) (SPEC: one MLP giving 6*D)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.frequency_dim = cfg.timestep_embedding_dim
        self.mlp = nn.Sequential(
            nn.Linear(cfg.timestep_embedding_dim, cfg.hidden_size), nn.SiLU(), nn.Linear(cfg.hidden_size, cfg.hidden_size)
        )
        self.adaln = nn.Linear(cfg.hidden_size, 6 * cfg.hidden_size)
        nn.init.zeros_(self.adaln.weight)  # adaLN-Zero: blocks start as identity
        nn.init.zeros_(self.adaln.bias)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.mlp(sinusoidal_embedding(t, self.frequency_dim).to(self.adaln.weight.dtype))  # (b, d)
        modulation = self.adaln(F.silu(emb)).unflatten(-1, (6, -1))  # (b, 6, d)
        return emb, modulation


class TextProjection(nn.Module):
    """Per encoder Linear + LayerNorm to the model width; outputs concatenated along the sequence (SPEC)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.names = list(cfg.text_encoders)
        self.max_lengths = {name: enc.max_length for name, enc in cfg.text_encoders.items()}
        self.proj = nn.ModuleDict({name: nn.Linear(enc.width, cfg.hidden_size) for name, enc in cfg.text_encoders.items()})
        self.norm = nn.ModuleDict({name: nn.LayerNorm(cfg.hidden_size) for name in self.names})

    def forward(self, embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]):
        """{name: (b, n_i, d_i)}, {name: (b, n_i) bool, True = real token} -> (n, b, d), (b, n) bool."""
        missing = [n for n in self.names if n not in embeddings or n not in masks]
        if missing:
            raise KeyError(f"text embeddings/masks missing for encoder(s) {missing}; expected {self.names}")
        tokens, keep = [], []
        for name in self.names:
            emb, mask = embeddings[name], masks[name]
            if emb.shape[1] != self.max_lengths[name] or mask.shape != emb.shape[:2]:
                raise ValueError(
                    f"text encoder {name!r}: embeddings {tuple(emb.shape)} / mask {tuple(mask.shape)} do not match "
                    f"(b, {self.max_lengths[name]}, width)"
                )
            tokens.append(self.norm[name](self.proj[name](emb.to(self.proj[name].weight.dtype))))
            keep.append(mask.bool())
        return torch.cat(tokens, dim=1).transpose(0, 1).contiguous(), torch.cat(keep, dim=1)
