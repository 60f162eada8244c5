"""The Movie Gen DiT in plain torch as a diffusers model (`ModelMixin` + `ConfigMixin`): the same computation as
`models/dit.py` on one device, with the block's fused Megatron linears split into separate q / k / v and SwiGLU
gate / up projections, in diffusers' (b, s, d) layout.

    transformer = MovieGenTransformer3DModel.from_pretrained("out/transformer")
    velocity = transformer(latents, timestep, encoder_hidden_states, encoder_attention_mask).sample

`hf/diffusers_format.py` converts tensor names both ways. The modules around the blocks (patch embedding,
position tables, flow-time embedding, context projection, unpatchify) are the training model's own plain-torch
modules, so only the block is written twice; the pipeline-parity test checks the two stay the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401  (diffusers finds the loading method of a component through it)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _check_attention_backend_requirements,
    dispatch_attention_fn,
)
from diffusers.utils import BaseOutput
from torch import nn

from megatron_moviegen.conditioning import Tokens
from megatron_moviegen.models.dit_config import ContextSource, DiTConfig
from megatron_moviegen.models.embeddings import (
    ContextProjection,
    FactorizedPositionEmbedding,
    PatchEmbed,
    TimestepEmbedding,
    Unpatchify,
    unpatchify_tokens,
)


@dataclass
class Transformer3DModelOutput(BaseOutput):
    sample: torch.Tensor  # (b, 16, t, h, w) velocity


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim, in float32 (as models/local_layers.RMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class Attention(nn.Module):
    """Multi-head attention with separate q, k, v; self-attention normalises q and k per head (QK RMSNorm).
    `backend`: a diffusers attention backend for unmasked (self-)attention (None: torch's SDPA); masked
    cross-attention always runs torch's SDPA, since some backends drop a mask they do not support."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.heads = heads
        self.backend = None
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.norm_q = RMSNorm(dim // heads, eps) if qk_norm else None
        self.norm_k = RMSNorm(dim // heads, eps) if qk_norm else None

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (b, s, d); context (b, n, d) and its mask (b, n) bool, True = real (None: self-attention)."""
        source = x if context is None else context
        b = x.shape[0]
        q, k, v = (proj(inp).unflatten(-1, (self.heads, -1)) for proj, inp in
                   ((self.to_q, x), (self.to_k, source), (self.to_v, source)))  # (b, s|n, heads, hn)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        if context_mask is None and self.backend is not None:
            out = dispatch_attention_fn(q, k, v, backend=self.backend)  # (b, s, heads, hn)
            return self.to_out(out.flatten(2))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (b, heads, s|n, hn)
        keep, has_keys = None, None
        if context_mask is not None:
            keep = context_mask[:, None, None, :]  # (b, 1, 1, n)
            has_keys = keep.any(dim=-1, keepdim=True)
            keep = keep | ~has_keys  # a sample with no text attends anywhere, then outputs zeros
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        if has_keys is not None:
            out = out * has_keys.to(out.dtype)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3]))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MovieGenTransformerBlock(nn.Module):
    """models/dit_layer.py's block: position added, adaLN self-attention, cross-attention, adaLN SwiGLU."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps)
        self.attn1 = Attention(dim, heads, qk_norm, eps)
        self.norm2 = RMSNorm(dim, eps)
        self.attn2 = Attention(dim, heads, False, eps)
        self.norm3 = RMSNorm(dim, eps)
        self.ff = FeedForward(dim, ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.zeros(6, dim))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                position: torch.Tensor) -> torch.Tensor:
        """x (b, s, d); modulation (b, 6, d); context (b, n, d), mask (b, n) True = real; position (1, s, d)."""
        x = x + position
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            (modulation + self.scale_shift_table).to(x.dtype)[:, :, None].unbind(dim=1))  # (b, 1, d) each
        x = x + gate_msa * self.attn1(self.norm1(x) * (1 + scale_msa) + shift_msa)
        x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + gate_mlp * self.ff(self.norm3(x) * (1 + scale_mlp) + shift_mlp)


def dit_config_of(config) -> DiTConfig:
    """A transformer config (its `config`, or the same fields as a dict) -> the training model's `DiTConfig`."""
    c = dict(config)
    sources = {name: ContextSource(width=width, max_length=length) for name, width, length in c.pop("text_encoders")}
    fields = {k: v for k, v in c.items() if not k.startswith("_")}
    return DiTConfig(**{**fields, "patch_size": tuple(fields["patch_size"]),
                        "trained_fps": tuple(fields["trained_fps"])}, text_encoders=sources,
                     transformer_impl="local")


class MovieGenTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Text-to-video Movie Gen DiT. Config: the `DiTConfig` fields a text-to-video model uses; `text_encoders` is
    [[name, width, max_length], ...] in context order (the DiT's `context_sources()`). LoRA adapters load through
    diffusers' PEFT integration (`load_lora_adapter`; hf/lora.py writes a LoRA run's adapters in its names)."""

    _supports_gradient_checkpointing = False
    _no_split_modules = ["MovieGenTransformerBlock"]

    @register_to_config
    def __init__(self, num_layers: int = 48, hidden_size: int = 6144, ffn_hidden_size: int = 16384,
                 num_attention_heads: int = 48, latent_channels: int = 16, patch_size: tuple = (1, 2, 2),
                 max_frames: int = 32, max_height: int = 64, max_width: int = 64,
                 text_encoders: tuple = (("ul2", 4096, 300), ("metaclip", 1024, 256), ("byt5", 1536, 100)),
                 trained_fps: tuple = (), timestep_embedding_dim: int = 256, qk_norm: bool = True,
                 norm_epsilon: float = 1e-6):
        super().__init__()
        cfg = dit_config_of(dict(
            num_layers=num_layers, hidden_size=hidden_size, ffn_hidden_size=ffn_hidden_size,
            num_attention_heads=num_attention_heads, latent_channels=latent_channels, patch_size=patch_size,
            max_frames=max_frames, max_height=max_height, max_width=max_width, text_encoders=text_encoders,
            trained_fps=trained_fps, timestep_embedding_dim=timestep_embedding_dim, qk_norm=qk_norm,
            norm_epsilon=norm_epsilon))
        self.patch_embed = PatchEmbed(cfg)
        self.time_embedding = TimestepEmbedding(cfg)
        self.context_projection = ContextProjection(cfg)
        self.position_embedding = FactorizedPositionEmbedding(cfg, std=cfg.init_std)
        self.blocks = nn.ModuleList(
            MovieGenTransformerBlock(hidden_size, ffn_hidden_size, num_attention_heads, qk_norm, norm_epsilon)
            for _ in range(num_layers))
        self.unpatchify = Unpatchify(cfg)

    def set_attention_backend(self, backend: str) -> None:
        """Self-attention (the s x s part) through diffusers' attention backend `backend` (e.g. "flash",
        "sage", "_native_math"), on this model only; masked cross-attention stays on torch's SDPA. An unknown
        or unusable backend (its package missing) raises, naming it."""
        name = AttentionBackendName(backend.lower())
        _check_attention_backend_requirements(name)
        for block in self.blocks:
            block.attn1.backend = name

    def reset_attention_backend(self) -> None:
        """Back to torch's SDPA (what the training model computes)."""
        for block in self.blocks:
            block.attn1.backend = None

    @property
    def dit_config(self) -> DiTConfig:
        """The training model's config for this transformer (what `models/dit.py` builds)."""
        return dit_config_of(self.config)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: dict[str, torch.Tensor], encoder_attention_mask: dict[str, torch.Tensor],
                return_dict: bool = True):
        """hidden_states (b, 16, t, h, w) noisy latents X_t; timestep (b,) flow time in [0, 1] (0 = noise);
        encoder_hidden_states {encoder: (b, max_length, width)} with masks {encoder: (b, max_length) bool, True =
        real}. Returns the velocity (b, 16, t, h, w)."""
        grid = self.token_grid(hidden_states.shape)
        x = self.patch_embed(hidden_states).transpose(0, 1)  # (b, s, d)
        time_embedding, modulation = self.time_embedding(timestep)
        tokens = {name: Tokens(encoder_hidden_states[name], encoder_attention_mask[name])
                  for name, _, _ in self.config.text_encoders}
        context, real = self.context_projection(tokens)  # (n, b, d), (b, n)
        context = context.transpose(0, 1)  # (b, n, d)
        position = self.position_embedding(grid).transpose(0, 1).to(x.dtype)  # (1, s, d)
        for block in self.blocks:
            x = block(x, modulation, context, real, position)
        patches = self.unpatchify(x.transpose(0, 1), time_embedding)  # (s, b, 16 * pt * ph * pw)
        velocity = unpatchify_tokens(patches, grid, tuple(self.config.patch_size))
        return Transformer3DModelOutput(sample=velocity) if return_dict else (velocity,)

    def token_grid(self, latent_shape) -> tuple[int, int, int]:
        """(b, 16, t, h, w) -> the (t', h', w') token grid."""
        if len(latent_shape) != 5 or latent_shape[1] != self.config.latent_channels:
            raise ValueError(f"hidden_states must be (b, {self.config.latent_channels}, t, h, w), got "
                             f"{tuple(latent_shape)}")
        patch = tuple(self.config.patch_size)
        if any(size % p for size, p in zip(latent_shape[2:], patch)):
            raise ValueError(f"latent shape {tuple(latent_shape[2:])} is not divisible by patch_size {patch}")
        return tuple(size // p for size, p in zip(latent_shape[2:], patch))
