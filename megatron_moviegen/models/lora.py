"""LoRA on the DiT's attention and MLP linears, for fine-tuning a trained model on one subject.

    y = W x + (alpha / rank) * B (A x)          A (rank, in) random, B (out, rank) zero: a new adapter changes nothing

An adapter is a module beside the linear it adapts (`self_attention.linear_qkv_lora` next to
`self_attention.linear_qkv`) and adds its output through a forward hook on that linear, so the linear, its weights
and their checkpoint names are untouched, and the same code adapts Megatron's local linears and TransformerEngine's.
It follows the linear's tensor parallelism:
- column-parallel (qkv, q, kv, fc1): A whole on every TP rank, B split by output rows like W. Sequence parallel: A
  sees this rank's tokens, then A x is all-gathered (reduce-scattered back); A's grad is partial over TP.
- row-parallel (proj, fc2): A split by input columns like W, B whole; A x is summed over TP (reduce-scattered over
  the tokens with sequence parallelism; B's grad is then partial over TP).
Grads partial over TP are marked `sequence_parallel`, so Megatron's finalize_model_grads all-reduces them as it does
the norms'. With LoRA on, every other parameter is frozen and checkpoints hold only the adapters (the base model is
`train.load_from`); `merge_lora` folds them into W for export.

Why not peft: its Megatron support (`LoraParallelLinear`) wraps only Megatron's own ColumnParallelLinear /
RowParallelLinear (not TransformerEngine's), does not mark the sequence-parallel partial grads, and renames the
base weights (`base_layer.weight`), which breaks loading the base model's distributed checkpoint.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.models.dit_config import COLUMN, LINEARS, ROW, LoRAConfig, linear_sizes

ADAPTER_SUFFIX = "_lora"


def is_adapter_name(name: str) -> bool:
    """A parameter or checkpoint key of an adapter (`...linear_qkv_lora.a`)."""
    return f"{ADAPTER_SUFFIX}." in name


class LoRAAdapter(MegatronModule):
    """The low-rank update of one linear, split over TP as that linear is (see the module docstring).
    `in_features` / `out_features` are the linear's whole sizes; `seed_name` seeds A (the same whole A under any
    layout, so every layout starts from the same adapter)."""

    def __init__(self, config, mode: str, in_features: int, out_features: int, lora: LoRAConfig, seed_name: str,
                 swiglu: bool = False):
        super().__init__(config=config)
        if mode not in (COLUMN, ROW):
            raise ValueError(f"mode: got {mode!r}, expected {COLUMN!r} or {ROW!r}")
        tp = config.tensor_model_parallel_size
        split = out_features if mode == COLUMN else in_features
        if split % tp:
            raise ConfigError(f"model.lora: {seed_name} has {split} {'outputs' if mode == COLUMN else 'inputs'}, "
                              f"not divisible by tensor_model_parallel_size {tp}")
        self.mode, self.scale, self.swiglu = mode, lora.scale, swiglu
        self.sequence_parallel = config.sequence_parallel
        tp_rank = parallel_state.get_tensor_model_parallel_rank() if tp > 1 else 0
        gen = torch.Generator().manual_seed(zlib.crc32(seed_name.encode()))
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) of a Linear(in_features, rank)
        a = (torch.rand(lora.rank, in_features, generator=gen) * 2 - 1) * bound
        if mode == ROW:
            a = a.chunk(tp, dim=1)[tp_rank]
            b = torch.zeros(out_features, lora.rank)
        else:
            b = torch.zeros(out_features // tp, lora.rank)
        dtype = config.params_dtype
        self.a = torch.nn.Parameter(a.to(dtype).contiguous())
        self.b = torch.nn.Parameter(b.to(dtype))
        split_param, partial_param = (self.b, self.a) if mode == COLUMN else (self.a, self.b)
        set_tensor_model_parallel_attributes(split_param, is_parallel=True, dim=0 if mode == COLUMN else 1, stride=1)
        # Grads summed over this rank's tokens only: all-reduced over TP by finalize_model_grads.
        partial_param.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: the linear's input, (s, b, in) (column: s/tp tokens with SP; row: in/tp features). Returns the update
        to add to the linear's output: column (s, b, out/tp); row (s, b, out), s/tp tokens with SP."""
        h = F.linear(x, self.a.to(x.dtype))  # (s, b, rank)
        if self.mode == COLUMN:
            if self.sequence_parallel:
                h = tensor_parallel.gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=True)
            else:
                h = tensor_parallel.copy_to_tensor_model_parallel_region(h)
        elif self.sequence_parallel:
            h = tensor_parallel.reduce_scatter_to_sequence_parallel_region(h)
        else:
            h = tensor_parallel.reduce_from_tensor_model_parallel_region(h)
        return F.linear(h, self.b.to(x.dtype)) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """This rank's share of scale * B A, shaped like this rank's shard of W."""
        return (self.b.float() @ self.a.float()) * self.scale

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        axis = {"b": 0} if self.mode == COLUMN else {"a": 1}
        state = make_sharded_tensors_for_checkpoint(self.state_dict(prefix="", keep_vars=True), prefix, axis,
                                                    sharded_offsets)
        if self.swiglu:  # B's rows are [gate_r; up_r] like fc1's: saved as whole gate and up (any TP loads it)
            key = f"{prefix}b"
            state[key] = apply_swiglu_sharded_factory(state[key], sharded_offsets,
                                                      (metadata or {}).get("singleton_local_shards", False))
        return state


def _add_update(adapter: LoRAAdapter):
    def hook(_linear, args, output):
        out, bias = output
        return out + adapter(args[0]).to(out.dtype), bias
    return hook


def block_linear_sizes(config) -> dict[str, tuple[int, int]]:
    """`linear_sizes` of a Megatron TransformerConfig (K and V per query group)."""
    groups = config.num_query_groups or config.num_attention_heads
    return linear_sizes(config.hidden_size, config.ffn_hidden_size, config.kv_channels * config.num_attention_heads,
                        config.kv_channels * groups, config.gated_linear_unit)


def attach_lora(layers, lora: LoRAConfig, layer_offset: int = 0) -> list[str]:
    """Add an adapter to each targeted linear of each DiT layer, freeze nothing (see `freeze_all_but_adapters`).
    Returns the adapters' names (local to `layers`)."""
    names = []
    for index, layer in enumerate(layers):
        config = layer.config
        sizes = block_linear_sizes(config)
        for target in lora.targets:
            parent_name, linear_name = target.split(".")
            parent, mode = getattr(layer, parent_name), LINEARS[target]
            linear = getattr(parent, linear_name)
            in_features, out_features = sizes[target]
            adapter = LoRAAdapter(config, mode, in_features, out_features, lora,
                                  seed_name=f"layers.{layer_offset + index}.{target}",
                                  swiglu=target == "mlp.linear_fc1" and config.gated_linear_unit)
            parent.add_module(linear_name + ADAPTER_SUFFIX, adapter)
            adapter.hook = linear.register_forward_hook(_add_update(adapter))
            names.append(f"{index}.{target}{ADAPTER_SUFFIX}")
    return names


def freeze_all_but_adapters(model: torch.nn.Module) -> tuple[int, int]:
    """requires_grad only on the adapters; returns (trainable, total) parameter counts of `model` (this rank)."""
    trainable = total = 0
    for name, param in model.named_parameters():
        param.requires_grad = is_adapter_name(name)
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


@torch.no_grad()
def merge_lora(layers) -> int:
    """Fold every adapter into the weight of its linear (W += scale B A, this rank's shard) and remove it, so the
    layers compute what they computed with the adapters, as plain layers. Returns the number merged."""
    merged = 0
    for layer in layers:
        for target in LINEARS:
            parent_name, linear_name = target.split(".")
            parent = getattr(layer, parent_name)
            adapter = getattr(parent, linear_name + ADAPTER_SUFFIX, None)
            if adapter is None:
                continue
            weight = getattr(parent, linear_name).weight
            weight.add_(adapter.delta_weight().to(weight.dtype))
            adapter.hook.remove()
            delattr(parent, linear_name + ADAPTER_SUFFIX)
            merged += 1
    return merged
