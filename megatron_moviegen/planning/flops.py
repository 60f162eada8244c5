"""FLOP accounting for the DiT, attention included (SPEC section 8: at 73,728 tokens it is ~60% of the total).

A matmul of (m x k) by (k x n) costs 2*m*k*n FLOPs. Per block and per sample, with s video tokens, n text
tokens, width d and FFN width f (SwiGLU: two input projections):

    self-attention  projections 8*s*d^2 (qkv + out)          scores and weighted sum 4*s^2*d
    cross-attention projections 4*s*d^2 + 4*n*d^2 (q, out; kv) scores and weighted sum 4*s*n*d
    SwiGLU MLP      6*s*d*f                                    (a non-gated MLP, model.gated_mlp false: 4*s*d*f)

Backward costs twice the forward, so training costs 3x. Norms, adaLN and embeddings are O(s*d) and left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_moviegen.models.dit_config import DiTConfig

TAE_COMPRESSION = (8, 8, 8)  # SPEC section 3: 8x in t, h and w


@dataclass(frozen=True)
class FlopCount:
    matmul: float  # projections and MLP, forward + backward
    attention: float  # QK^T and softmax(.)V of self- and cross-attention, forward + backward

    @property
    def total(self) -> float:
        return self.matmul + self.attention

    @property
    def attention_fraction(self) -> float:
        return self.attention / self.total


def latent_shape(frames: int, height: int, width: int, channels: int = 16) -> tuple[int, int, int, int]:
    """Pixel video size -> TAE latent (c, t, h, w): ceil(t/8) latent frames, h/8, w/8 (an image is 1 frame)."""
    ct, ch, cw = TAE_COMPRESSION
    if height % ch or width % cw:
        raise ValueError(f"height {height} and width {width} must be divisible by {ch}")
    return channels, math.ceil(frames / ct), height // ch, width // cw


def num_tokens(cfg: DiTConfig, frames: int, height: int, width: int) -> int:
    _, t, h, w = latent_shape(frames, height, width, cfg.latent_channels)
    pt, ph, pw = cfg.patch_size
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent grid (t={t}, h={h}, w={w}) is not divisible by patch_size {cfg.patch_size}")
    return (t // pt) * (h // ph) * (w // pw)


def dit_training_flops(cfg: DiTConfig, tokens: int, text_tokens: int | None = None, num_layers: int | None = None
                       ) -> FlopCount:
    """Forward + backward FLOPs of one sample of `tokens` video tokens through `num_layers` blocks."""
    s, d, f = tokens, cfg.hidden_size, cfg.ffn_hidden_size
    n = cfg.context_length if text_tokens is None else text_tokens
    layers = cfg.num_layers if num_layers is None else num_layers
    matmul = 8 * s * d * d + 4 * s * d * d + 4 * n * d * d + (6 if cfg.gated_mlp else 4) * s * d * f
    attention = 4 * s * s * d + 4 * s * n * d
    return FlopCount(matmul=3.0 * layers * matmul, attention=3.0 * layers * attention)
