"""One Movie Gen transformer block, assembled from Megatron `ModuleSpec`s (see dit_layer_specs.py).

    x = x + pos                                                   (SPEC: position added at every block)
    x = x + gate_msa * SelfAttn(norm(x) * (1 + scale_msa) + shift_msa)
    x = x + CrossAttn(norm(x), text)
    x = x + gate_mlp * SwiGLU(norm(x) * (1 + scale_mlp) + shift_mlp)

shift/scale/gate = shared t-MLP output (b, 6, d) + this block's learned (6, d) table (PixArt-alpha style).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig


@dataclass
class MovieGenDiTLayerSubmodules:
    self_attn_norm: Union[ModuleSpec, type]
    self_attention: Union[ModuleSpec, type]
    cross_attn_norm: Union[ModuleSpec, type]
    cross_attention: Union[ModuleSpec, type]
    mlp_norm: Union[ModuleSpec, type]
    mlp: Union[ModuleSpec, type]


def cp_comm_type_of_layer(config: TransformerConfig, layer_number: int) -> str | None:
    """How self-attention exchanges K/V under context parallelism (`parallel.cp_comm_type`, one for all layers or
    one per layer, as Megatron's TransformerLayer reads it); None without CP."""
    if config.context_parallel_size == 1 or config.cp_comm_type is None:
        return None
    if isinstance(config.cp_comm_type, list):
        return config.cp_comm_type[layer_number - 1]
    return config.cp_comm_type


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(s, b, d) * (1 + (b, d)) + (b, d)."""
    return x * (1 + scale) + shift


class MovieGenDiTLayer(MegatronModule):
    def __init__(self, config: TransformerConfig, submodules: MovieGenDiTLayerSubmodules, layer_number: int = 1):
        super().__init__(config=config)
        self.layer_number = layer_number
        norm_args = dict(config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon)
        self.self_attn_norm = build_module(submodules.self_attn_norm, **norm_args)
        self.self_attention = build_module(submodules.self_attention, config=config, layer_number=layer_number,
                                           cp_comm_type=cp_comm_type_of_layer(config, layer_number))
        self.cross_attn_norm = build_module(submodules.cross_attn_norm, **norm_args)
        self.cross_attention = build_module(submodules.cross_attention, config=config, layer_number=layer_number)
        self.mlp_norm = build_module(submodules.mlp_norm, **norm_args)
        self.mlp = build_module(submodules.mlp, config=config)
        table = torch.randn(6, config.hidden_size, dtype=config.params_dtype) / config.hidden_size**0.5
        self.modulation_table = torch.nn.Parameter(table)
        # Acts on every token of the (sequence-parallel) shard: grads are partial per TP rank.
        self.modulation_table.sequence_parallel = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        modulation: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        position_embedding: torch.Tensor,
    ) -> torch.Tensor:
        """hidden (s, b, d); modulation (b, 6, d); context (n, b, d); context_mask (b, 1, 1, n) True = masked;
        position_embedding (s, 1, d). Returns (s, b, d)."""
        x = hidden_states + position_embedding
        mod = (modulation + self.modulation_table).to(x.dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(dim=1)  # (b, d) each

        attn, _ = self.self_attention(modulate(self.self_attn_norm(x), shift_msa, scale_msa), attention_mask=None)
        x = x + gate_msa * attn
        attn, _ = self.cross_attention(self.cross_attn_norm(x), attention_mask=context_mask, key_value_states=context)
        x = x + attn
        out, _ = self.mlp(modulate(self.mlp_norm(x), shift_mlp, scale_mlp))
        return x + gate_mlp * out
