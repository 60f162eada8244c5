"""What surrounds the DiT blocks: patchify, position tables, the flow-time (and task) embedding and the
projections of the cross-attention context (text encoders, then any extra source)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron_moviegen.conditioning import Images, Tokens
from megatron_moviegen.models.dit_config import DiTConfig
from megatron_moviegen.models.vision_tower import build_vision_tower, tower_tokens


def mark_replicated_on_every_stage(module: nn.Module, grads_partial_over_tp: bool) -> None:
    """Flag parameters held whole on every pipeline stage and every TP rank for Megatron's grad reduction.

    `pipeline_parallel` makes Megatron all-reduce their grads over PP (they are replicated on every stage,
    config.has_cond_embedder). `sequence_parallel` makes it all-reduce them over TP when SP is on: needed
    when the module's output meets only this rank's sequence shard, so its grads are partial.
    """
    for param in module.parameters():
        param.pipeline_parallel = True
        param.sequence_parallel = grads_partial_over_tp


class PatchEmbed(nn.Module):
    """3D conv patchify, kernel = stride = patch_size: (b, c, t, h, w) -> (t'*h'*w', b, d) tokens. c is the
    latent's channels followed by the condition channels (DiTConfig.input_channels)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.patch_size = tuple(cfg.patch_size)
        self.proj = nn.Conv3d(cfg.input_channels, cfg.hidden_size, kernel_size=self.patch_size,
                              stride=self.patch_size)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.proj(latents.to(self.proj.weight.dtype))  # (b, d, t', h', w')
        return x.flatten(2).permute(2, 0, 1).contiguous()  # (s, b, d)


class Unpatchify(nn.Module):
    """Final adaLN norm + linear to patch values, in `patchify_latents` token layout."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm_eps = cfg.norm_epsilon
        self.modulation = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.latent_channels * math.prod(cfg.patch_size))
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """(s, b, d) tokens, (b, d) time embedding -> (s, b, c*pt*ph*pw) patch values."""
        shift, scale = self.modulation(F.silu(time_embedding)).chunk(2, dim=-1)  # (b, d) each
        x = F.layer_norm(x.float(), x.shape[-1:], eps=self.norm_eps).to(x.dtype)
        return self.proj(x * (1 + scale) + shift)



def patchify_latents(latents: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """(b, c, t, h, w) -> (s, b, c*pt*ph*pw): the token layout Unpatchify.proj produces (for targets)."""
    b, c, t, h, w = latents.shape
    pt, ph, pw = patch_size
    x = latents.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(2, 4, 6, 0, 1, 3, 5, 7)  # (t', h', w', b, c, pt, ph, pw)
    return x.reshape((t // pt) * (h // ph) * (w // pw), b, c * pt * ph * pw)


def unpatchify_tokens(tokens: torch.Tensor, grid: tuple[int, int, int], patch_size: tuple[int, int, int]
                      ) -> torch.Tensor:
    """(s, b, c*pt*ph*pw) whole-sequence tokens on a (t', h', w') grid -> (b, c, t'*pt, h'*ph, w'*pw); the
    inverse of `patchify_latents`."""
    t, h, w = grid
    pt, ph, pw = patch_size
    b = tokens.shape[1]
    x = tokens.permute(1, 0, 2).reshape(b, t, h, w, -1, pt, ph, pw)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (b, c, t, pt, h, ph, w, pw)
    return x.reshape(b, -1, t * pt, h * ph, w * pw)


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
    """Flow time t (and a task index) -> (time embedding (b, d), shared adaLN modulation (b, 6, d)) (SPEC: one
    MLP giving 6*D). The task table (editing's task embedding) starts at zero, so a model given one adds
    nothing until it is trained."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.frequency_dim = cfg.timestep_embedding_dim
        self.mlp = nn.Sequential(
            nn.Linear(cfg.timestep_embedding_dim, cfg.hidden_size), nn.SiLU(), nn.Linear(cfg.hidden_size, cfg.hidden_size)
        )
        self.adaln = nn.Linear(cfg.hidden_size, 6 * cfg.hidden_size)
        nn.init.zeros_(self.adaln.weight)  # adaLN-Zero: blocks start as identity
        nn.init.zeros_(self.adaln.bias)
        self.task = nn.Embedding(cfg.num_tasks, cfg.hidden_size) if cfg.num_tasks else None
        if self.task is not None:
            nn.init.zeros_(self.task.weight)

    def forward(self, t: torch.Tensor, task: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """t (b,) in [0, 1], task (b,) long or None."""
        emb = self.mlp(sinusoidal_embedding(t, self.frequency_dim).to(self.adaln.weight.dtype))  # (b, d)
        if (task is None) != (self.task is None):
            raise ValueError(f"task: got {'none' if task is None else 'task ids'}, the model has "
                             f"{'no task table' if self.task is None else f'{self.task.num_embeddings} tasks'}")
        if task is not None:
            if int(task.min()) < 0 or int(task.max()) >= self.task.num_embeddings:
                raise ValueError(f"task: ids {task.tolist()} outside [0, {self.task.num_embeddings})")
            emb = emb + self.task(task)
        modulation = self.adaln(F.silu(emb)).unflatten(-1, (6, -1))  # (b, 6, d)
        return emb, modulation


class Float32LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose statistics are computed in float32 whatever the dtype of its input and weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class ContextProjection(nn.Module):
    """Per source (text encoder, reference image) Linear + LayerNorm to the model width; outputs concatenated
    along the sequence in `DiTConfig.context_sources()` order (SPEC: one projection per text encoder).

    An extra source (model.extra_context) whose tokens are masked in every sample of the batch is left out of the
    context rather than attended as masked keys: a personalized model given no reference computes exactly what the
    text-to-video model it started from computes (the same keys, the same reductions), not merely up to rounding.
    The DiT pads the concatenated context to what its layout needs (`dit.pad_context`)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        sources = cfg.context_sources()
        self.max_lengths = {name: source.max_length for name, source in sources.items()}
        self.optional = frozenset(cfg.extra_context)
        # Trainable encoders in the model (a reference image's vision tower): their tokens come from images.
        self.encoders = nn.ModuleDict({name: build_vision_tower(source.encoder)
                                       for name, source in sources.items() if source.encoder is not None})
        self.proj = nn.ModuleDict({name: nn.Linear(source.width, cfg.hidden_size) for name, source in sources.items()})
        self.norm = nn.ModuleDict({name: Float32LayerNorm(cfg.hidden_size) for name in sources})
        # Emu Edit: each task's learned context tokens (num_tasks, task_tokens, d), after the sources.
        self.task_tokens = (nn.Parameter(torch.randn(cfg.num_tasks, cfg.task_tokens, cfg.hidden_size) * cfg.init_std)
                            if cfg.task_tokens else None)

    def forward(self, tokens: dict[str, Tokens], images: Optional[dict[str, Images]] = None,
                task: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """{source: Tokens((b, n_i, d_i), (b, n_i) bool)} (and, for a source with an in-model encoder, its
        {source: Images((b, 3, s, s), (b,) bool)} instead), task (b,) long (with task tokens) -> context (n, b, d),
        mask (b, n) bool, True = real."""
        images = images or {}
        given = set(tokens) | set(images)
        if given != set(self.max_lengths) or set(images) != set(self.encoders):
            raise KeyError(f"context tokens: got sources {sorted(tokens)} and images {sorted(images)}, the model "
                           f"expects tokens of {sorted(set(self.max_lengths) - set(self.encoders))} and images of "
                           f"{sorted(self.encoders)}")
        context, real = [], []
        for name, max_length in self.max_lengths.items():
            if name in self.encoders:
                if not images[name].present.any():
                    continue  # no sample has an image: left out, as masked tokens are
                pixels = images[name].pixels.to(next(self.encoders[name].parameters()).dtype)
                emb, mask = tower_tokens(self.encoders[name], pixels, max_length, images[name].present)
            else:
                emb, mask = tokens[name].embeddings, tokens[name].mask
            if emb.shape[1] != max_length or mask.shape != emb.shape[:2]:
                raise ValueError(
                    f"context source {name!r}: embeddings {tuple(emb.shape)} / mask {tuple(mask.shape)} do not match "
                    f"(b, {max_length}, width)"
                )
            if name in self.optional and not mask.any():
                continue  # no sample has these tokens: as if the source did not exist (see the class docstring)
            context.append(self.norm[name](self.proj[name](emb.to(self.proj[name].weight.dtype))))
            real.append(mask.bool())
        if self.task_tokens is not None:
            if task is None:
                raise ValueError(f"task: none given, the model has {self.task_tokens.shape[1]} context tokens per task")
            context.append(self.task_tokens[task].to(context[0].dtype))  # (b, task_tokens, d)
            real.append(torch.ones(task.shape[0], self.task_tokens.shape[1], dtype=torch.bool, device=task.device))
        return torch.cat(context, dim=1).transpose(0, 1).contiguous(), torch.cat(real, dim=1)
