"""Map whole (single-process) DiT tensors to a rank's tensor/pipeline-parallel shards, and back.

Used to load an exported single-file checkpoint under any TP/PP layout, to export one, and by the parity
tests. Megatron marks TP-split parameters with `tensor_model_parallel` and `partition_dim`; the SwiGLU fc1
weight is special: its output is [gate; up], and each TP rank holds [gate_r; up_r]. A model without SwiGLU
(`DiTConfig.gated_mlp` false: the audio model's GELU MLP) splits its fc1 like any column-parallel linear, so every
function here takes `swiglu`, the model's `gated_mlp` (`swiglu_rows(model)`).
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
from megatron.core import parallel_state

_LAYER = re.compile(r"^layers\.(\d+)\.")


def swiglu_rows(model: torch.nn.Module) -> bool:
    """Whether `model` (a DiT chunk) has SwiGLU MLPs, whose fc1 rows are [gate; up]."""
    return model.dit_config.gated_mlp


def is_swiglu_fc1(name: str, swiglu: bool) -> bool:
    """fc1's weight and bias, and its LoRA B (models/lora.py), of a SwiGLU model: rows [gate; up]."""
    return swiglu and name.endswith(("mlp.linear_fc1.weight", "mlp.linear_fc1.bias", "mlp.linear_fc1_lora.b"))


def global_name(local_name: str, layer_offset: int) -> str:
    """`layers.<local i>.` -> `layers.<offset + i>.` (pipeline stages hold a slice of the layers)."""
    return _LAYER.sub(lambda m: f"layers.{int(m.group(1)) + layer_offset}.", local_name)


def local_name(name: str, layer_offset: int) -> str:
    """`layers.<global i>.` -> `layers.<i - offset>.`: the inverse of `global_name`."""
    return _LAYER.sub(lambda m: f"layers.{int(m.group(1)) - layer_offset}.", name)


def tp_partition_dim(param: torch.nn.Parameter) -> int | None:
    if getattr(param, "tensor_model_parallel", False):
        return param.partition_dim
    return None


def shard_index(name: str, full_shape: tuple[int, ...], partition_dim: int | None, rank: int, world: int, *,
                swiglu: bool) -> list[tuple[slice, ...]]:
    """Index tuples whose pieces, concatenated along dim 0, are TP rank `rank`'s shard of the whole tensor:
    one piece, or two for the SwiGLU fc1 ([gate_r; up_r]). Works on tensors and on safetensors slices alike."""
    whole = [slice(None)] * len(full_shape)
    if partition_dim is None or world == 1:
        return [tuple(whole)]
    halves = 2 if is_swiglu_fc1(name, swiglu) else 1
    rows = full_shape[0] // halves
    split = rows if partition_dim == 0 else full_shape[partition_dim]
    if split % world:
        raise ValueError(f"{name}: dim {partition_dim} of {tuple(full_shape)} does not split over TP={world}")
    size = split // world
    pieces = []
    for half in range(halves):
        index = list(whole)
        index[0] = slice(half * rows, (half + 1) * rows)
        base = half * rows if partition_dim == 0 else 0
        index[partition_dim] = slice(base + rank * size, base + (rank + 1) * size)
        pieces.append(tuple(index))
    return pieces


def shard_tensor(name: str, full: torch.Tensor, partition_dim: int | None, rank: int, world: int, *,
                 swiglu: bool) -> torch.Tensor:
    pieces = [full[index] for index in shard_index(name, tuple(full.shape), partition_dim, rank, world,
                                                   swiglu=swiglu)]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)


def unshard_tensor(name: str, shards: list[torch.Tensor], partition_dim: int | None, *, swiglu: bool
                   ) -> torch.Tensor:
    if partition_dim is None or len(shards) == 1:
        return shards[0]
    if is_swiglu_fc1(name, swiglu):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([torch.cat([h[i] for h in halves], dim=partition_dim) for i in range(2)], dim=0)
    return torch.cat(shards, dim=partition_dim)


class ShapeMismatch(ValueError):
    """Whole tensors that do not belong to this model; the message names the tensor and both shapes."""


def full_shape(name: str, param: torch.nn.Parameter, world: int) -> tuple[int, ...]:
    """The whole (unsharded) shape of a rank's parameter."""
    shape = list(param.shape)
    split = tp_partition_dim(param)
    if split is not None:
        shape[split] *= world
    return tuple(shape)


@torch.no_grad()
def load_full_state_dict(model: torch.nn.Module, full: dict[str, torch.Tensor], layer_offset: int = 0) -> set[str]:
    """Copy whole tensors (keyed by global names) into this rank's shards of `model`; returns the keys used."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_world = parallel_state.get_tensor_model_parallel_world_size()
    used = set()
    for name, param in model.named_parameters():
        key = global_name(name, layer_offset)
        needed = full_shape(name, param, tp_world)
        if key not in full:
            raise ShapeMismatch(f"checkpoint has no tensor {key!r}; this model needs it with shape {needed}")
        if tuple(full[key].shape) != needed:
            raise ShapeMismatch(f"tensor {key!r} is {tuple(full[key].shape)} in the checkpoint but {needed} in "
                                "this model")
        param.copy_(shard_tensor(key, full[key], tp_partition_dim(param), tp_rank, tp_world,
                                 swiglu=swiglu_rows(model)))
        used.add(key)
    return used


def gather_full_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], layer_offset: int = 0
                        ) -> dict[str, torch.Tensor]:
    """{local param name: local tensor (weight or grad)} -> {global name: whole tensor}, gathered over TP."""
    group = parallel_state.get_tensor_model_parallel_group()
    world = parallel_state.get_tensor_model_parallel_world_size()
    params = dict(model.named_parameters())
    out = {}
    for name, local in tensors.items():
        split = tp_partition_dim(params[name])
        key = global_name(name, layer_offset)
        if split is None or world == 1:
            out[key] = local.detach().clone()
            continue
        shards = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(shards, local.detach().contiguous(), group=group)
        out[key] = unshard_tensor(key, shards, split, swiglu=swiglu_rows(model))
    return out
