"""Torch-only layers for the local layer spec (CPU, or GPU without TransformerEngine).

- `RMSNorm`: Megatron's torch norm wrapper refuses sequence parallelism; this one accepts it and marks its
  weight `sequence_parallel` so Megatron's finalize_model_grads all-reduces it over the TP group.
- `SDPACoreAttention`: Megatron's core-attention interface on top of `torch.nn.functional.scaled_dot_product_attention`
  (flash / memory-efficient kernels on GPU). Self-attention all-gathers K/V over the context-parallel group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_moviegen.parallel.context_parallel import all_gather_sequence


class RMSNorm(torch.nn.Module):
    """y = x / rms(x) * weight over the last dim; computed in float32."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **_unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class SDPACoreAttention(MegatronModule):
    """Core attention: (sq, b, np, hn) q and (sk, b, np, hn) k/v -> (sq, b, np*hn).

    `attention_mask` follows Megatron's convention: a bool tensor broadcastable to (b, np, sq, sk) where
    True means "masked out". Rows whose keys are all masked (a sample with no text) output zeros.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if attn_mask_type == AttnMaskType.causal:
            raise ValueError("SDPACoreAttention: Movie Gen attention is bidirectional; causal masks are not used")
        self.attention_type = attention_type
        self.cp_comm_type = cp_comm_type  # recorded: this module always all-gathers K/V over CP (exact)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale
        cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None
        if cp_group is None and parallel_state.model_parallel_is_initialized():
            cp_group = parallel_state.get_context_parallel_group()
        # Only self-attention spans the split video sequence; cross-attention keys are the (whole) text.
        self.cp_group = cp_group if attention_type == "self" else None

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention supports neither packed sequences nor attention bias")
        key = all_gather_sequence(key, self.cp_group)
        value = all_gather_sequence(value, self.cp_group)
        # (s, b, np, hn) -> (b, np, s, hn)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        keep, has_keys = None, None
        if attention_mask is not None:
            keep = ~attention_mask.bool()
            has_keys = keep.any(dim=-1, keepdim=True)  # (b, 1|np, 1|sq, 1)
            keep = keep | ~has_keys  # attend anywhere in fully masked rows; zeroed below
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.dropout_p if self.training else 0.0, scale=self.softmax_scale
        )
        if has_keys is not None:
            out = out * has_keys.to(out.dtype)
        b, heads, sq, hn = out.shape
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * hn)  # (sq, b, np*hn)
