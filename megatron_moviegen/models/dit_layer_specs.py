"""The DiT block as Megatron `ModuleSpec`s: a TransformerEngine spec for GPUs and a local (torch) spec.

The block code (dit_layer.py) is the same for both; only the modules plugged into it differ. The spec is
chosen at run time by `get_dit_layer_spec(runtime.transformer_impl)` (runtime.py resolves "auto": TE when TE and
CUDA are both present).
"""

from __future__ import annotations

from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import (
    CrossAttention,
    CrossAttentionSubmodules,
    SelfAttention,
    SelfAttentionSubmodules,
)
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_moviegen.models.dit_layer import MovieGenDiTLayer, MovieGenDiTLayerSubmodules
from megatron_moviegen.models.local_layers import RMSNorm, SDPACoreAttention


def _layer_spec(norm, column, row, self_core_attention, qk_norm: bool) -> ModuleSpec:
    qk = norm if qk_norm else IdentityOp
    return ModuleSpec(
        module=MovieGenDiTLayer,
        submodules=MovieGenDiTLayerSubmodules(
            self_attn_norm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.no_mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=column, core_attention=self_core_attention, linear_proj=row,
                    q_layernorm=qk, k_layernorm=qk,
                ),
            ),
            cross_attn_norm=norm,
            # Cross-attention keys are the ~650 text tokens, whole on every CP rank: torch SDPA with a
            # key-padding mask on both paths (TE's CP attention is for the split video sequence).
            cross_attention=ModuleSpec(
                module=CrossAttention,
                params={"attn_mask_type": AttnMaskType.padding},
                submodules=CrossAttentionSubmodules(
                    linear_q=column, linear_kv=column, core_attention=SDPACoreAttention, linear_proj=row,
                ),
            ),
            mlp_norm=norm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=column, linear_fc2=row)),
        ),
    )


def get_dit_layer_local_spec(qk_norm: bool = True) -> ModuleSpec:
    """Megatron tensor-parallel linears, our RMSNorm (sequence-parallel aware) and torch SDPA attention."""
    return _layer_spec(RMSNorm, ColumnParallelLinear, RowParallelLinear, SDPACoreAttention, qk_norm)


def get_dit_layer_te_spec(qk_norm: bool = True) -> ModuleSpec:
    """TransformerEngine linears, norms and fused attention (FP8-capable; TE's own context parallelism)."""
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear,
        TEDotProductAttention,
        TENorm,
        TERowParallelLinear,
    )

    return _layer_spec(TENorm, TEColumnParallelLinear, TERowParallelLinear, TEDotProductAttention, qk_norm)


def get_dit_layer_spec(transformer_impl: str, qk_norm: bool = True) -> ModuleSpec:
    """The block spec for a resolved implementation (`Runtime.transformer_impl`): "transformer_engine" or "local"."""
    if transformer_impl == "transformer_engine":
        return get_dit_layer_te_spec(qk_norm)
    if transformer_impl == "local":
        return get_dit_layer_local_spec(qk_norm)
    raise ValueError(f"transformer_impl: got {transformer_impl!r}, expected 'local' or 'transformer_engine' "
                     "(resolve 'auto' with Runtime.resolve)")
