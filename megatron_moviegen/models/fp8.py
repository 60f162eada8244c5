"""FP8 in the DiT's blocks, entered as Megatron's TransformerBlock enters it (`model.fp8`, `model.fp8_recipe`).

    outer = whole_pass_context(config)            # the delayed recipe: one fp8_autocast around every block
    with outer:
        for layer in layers:
            run = partial(run_in_fp8, config, layer)         # other recipes: one fp8_autocast per block
            hidden = recompute(config, run, ...) or run(...)  # TE's checkpoint under FP8 (it replays the FP8 state)

What runs in FP8: the TransformerEngine linears of every block (self-attention qkv and out, cross-attention q, kv
and out, the MLP's fc1 and fc2), except blocks Megatron keeps in bf16 (`first_last_layers_bf16`). What stays bf16:
core attention (both; TE's FP8 attention is not switched on), the norms and adaLN modulation inside blocks, and
every module around the blocks: patch embedding, time and task embedding, the context projections (and a PT2V
vision tower), the position tables, the final norm and projection, and LoRA adapters (plain matmuls beside the TE
linears).

FP8 GEMMs need row counts aligned to 16 (32 for MXFP8): each rank's video tokens must be, and the cross-attention
context is padded with masked tokens to that many rows per rank (`context_multiple`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.enums import Fp8Recipe
from megatron.core.fp8_utils import get_fp8_align_size, get_fp8_context
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.utils.checkpoint import checkpoint

from megatron_moviegen.config import ConfigError


def te_checkpoint(*args, **kwargs):
    """Megatron's wrapper of TransformerEngine's activation checkpoint (imported when used: TE is GPU-only)."""
    from megatron.core.extensions.transformer_engine import te_checkpoint as checkpoint_with_te

    return checkpoint_with_te(*args, **kwargs)


def check_fp8(fp8: str | None, fp8_recipe: str, transformer_impl: str, bf16: bool,
              device_capability: tuple[int, int] | None) -> None:
    """Refuse an FP8 setting that would silently run in bf16, or not at all: FP8 needs TransformerEngine layers and
    bf16 weights; MXFP8 needs a Blackwell GPU (compute capability 10.x or later). `device_capability` is None off
    GPU."""
    if fp8 is None:
        return
    if transformer_impl != "transformer_engine":
        raise ConfigError(f"model.fp8: {fp8!r} needs TransformerEngine layers, got transformer_impl "
                          f"{transformer_impl!r} (install transformer_engine on a CUDA machine, or unset model.fp8)")
    if not bf16:
        raise ConfigError(f"model.fp8: {fp8!r} trains bf16 weights in FP8 GEMMs; set train.precision=bf16 (or auto "
                          "on a GPU)")
    if fp8_recipe == "mxfp8" and (device_capability is None or device_capability[0] < 10):
        found = "no GPU" if device_capability is None else f"compute capability {device_capability[0]}.{device_capability[1]}"
        raise ConfigError(f"model.fp8_recipe: 'mxfp8' needs a Blackwell GPU (compute capability >= 10.0), found "
                          f"{found}; use 'tensorwise', 'delayed' or 'blockwise' on Hopper")


def whole_pass_context(config: TransformerConfig):
    """The delayed-scaling recipe's one FP8 context around all blocks (per-block contexts would reduce amax
    histories at every exit); a null context for the other recipes and without FP8."""
    if config.fp8 and config.fp8_recipe == Fp8Recipe.delayed:
        return get_fp8_context(config)
    return nullcontext()


def block_context(config: TransformerConfig, layer_number: int):
    """The per-block FP8 context of the non-delayed recipes (bf16 for blocks Megatron keeps in bf16)."""
    if config.fp8 and config.fp8_recipe != Fp8Recipe.delayed:
        return get_fp8_context(config, layer_number - 1)  # Megatron's global, 0-based layer index
    return nullcontext()


def run_in_fp8(config: TransformerConfig, layer: torch.nn.Module, *args):
    """`layer(*args)` inside its FP8 context: called again as is when a checkpointed block is recomputed."""
    with block_context(config, layer.layer_number):
        return layer(*args)


def recompute(config: TransformerConfig, function, *args):
    """Activation checkpoint of `function(*args)`: TransformerEngine's under FP8 (it restores the FP8 scaling state
    for the recompute and does not update the amax history twice), torch's otherwise."""
    if config.fp8:
        return te_checkpoint(function, False, tensor_parallel.random.get_cuda_rng_tracker,
                             parallel_state.get_tensor_model_parallel_group(), *args)
    return checkpoint(function, *args, use_reentrant=False)


def context_multiple(config: TransformerConfig) -> int:
    """What the whole context length must be a multiple of: the TP size under sequence parallelism (the context is
    scattered over TP), times the FP8 GEMM row alignment under FP8 (each rank's share)."""
    tp = config.tensor_model_parallel_size if config.sequence_parallel else 1
    return tp * (get_fp8_align_size(config.fp8_recipe) if config.fp8 else 1)


def check_token_alignment(config: TransformerConfig, rows: int) -> None:
    """Each rank's video tokens x batch are the rows of every FP8 GEMM: they must be aligned."""
    if config.fp8:
        align = get_fp8_align_size(config.fp8_recipe)
        if rows % align:
            raise ValueError(f"model.fp8: this rank's {rows} video token rows (tokens per rank x micro batch) are not a "
                             f"multiple of {align}, which FP8 GEMMs need; choose buckets whose token count per rank "
                             "is, or train this shape without FP8")
