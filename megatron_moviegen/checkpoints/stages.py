"""Moving from one training stage to the next (SPEC section 4): load the previous stage's weights and grow
the position tables (256 px -> 2x for the joint stage -> 3x at 768 px; the temporal table as configured).

A grown table is the old table linearly interpolated to the new length, so the learned positions keep their
relative meaning; the optimizer and LR schedule start fresh.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor

from megatron_moviegen.checkpoints.distributed import resolve_checkpoint

log = logging.getLogger(__name__)

POSITION_TABLES = {"t": "max_frames", "h": "max_height", "w": "max_width"}


def grow_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """(n, d) -> (length, d) by linear interpolation along n (identity when the length is unchanged)."""
    if table.shape[0] == length:
        return table
    if length < table.shape[0]:
        raise ValueError(f"position table shrinks from {table.shape[0]} to {length}; stages only grow tables")
    grown = F.interpolate(table.T[None].float(), size=length, mode="linear", align_corners=True)[0].T
    return grown.to(table.dtype)


PATCH_EMBED_WEIGHT = "patch_embed.proj.weight"


def _holder(current: ShardedTensor, shape: tuple[int, ...]) -> ShardedTensor:
    """A whole (replicated) tensor of the saved `shape` to load `current`'s key into."""
    return ShardedTensor.from_rank_offsets(current.key, torch.empty(shape, dtype=current.data.dtype),
                                           replica_id=current.replica_id)


def load_weights_for_new_stage(path: str, model_chunks) -> None:
    """Load every weight of a previous stage's checkpoint into `model_chunks`: position tables grow (`grow_table`),
    the patch embedding's new condition channels start at zero (so zero-valued conditions change nothing), and
    modules the previous stage did not have (a task table, an extra context projection) keep their
    initialisation. Any other shape difference is refused, naming the tensor."""
    path = resolve_checkpoint(path)
    saved = dist_checkpointing.load_tensors_metadata(str(path))
    saved_shapes = {key: tuple(getattr(meta, "global_shape", ())) for key, meta in saved.items()}
    for index, chunk in enumerate(model_chunks):
        chunk = getattr(chunk, "module", chunk)
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        state = chunk.sharded_state_dict()
        new = {name: state.pop(name) for name in list(state) if state[name].key not in saved_shapes}
        reshaped = {f"position_embedding.{name}" for name in POSITION_TABLES} | {PATCH_EMBED_WEIGHT}
        reshaped = {name: state.pop(name) for name in reshaped if name in state}
        for name, tensor in state.items():  # factories (SwiGLU's fc1) are checked by the load itself
            if isinstance(tensor, ShardedTensor) and saved_shapes[tensor.key] != tuple(tensor.global_shape):
                raise ValueError(f"{path}: {tensor.key} has shape {saved_shapes[tensor.key]}, the new stage's model "
                                 f"{tuple(tensor.global_shape)}; only position tables and input channels may grow")
        loaded = dist_checkpointing.load({key: state}, str(path))[key]
        old = dist_checkpointing.load(
            {key: {name: _holder(t, saved_shapes[t.key]) for name, t in reshaped.items()}}, str(path))[key]
        for name in POSITION_TABLES:
            table = f"position_embedding.{name}"
            loaded[table] = grow_table(old[table], reshaped[table].data.shape[0])
        if PATCH_EMBED_WEIGHT in reshaped:
            loaded[PATCH_EMBED_WEIGHT] = grow_input_channels(old[PATCH_EMBED_WEIGHT],
                                                             reshaped[PATCH_EMBED_WEIGHT].data.shape[1])
        loaded.update({name: tensor.data for name, tensor in new.items()})
        chunk.load_state_dict(loaded, strict=True)
        if new:
            log.info("new stage: %s keep their initialisation (not in %s)", sorted(new), path)


def grow_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """Patch-embedding conv weight (d, c_old, pt, ph, pw) -> (d, channels, pt, ph, pw), new channels zero."""
    if weight.shape[1] > channels:
        raise ValueError(f"patch embedding input channels shrink from {weight.shape[1]} to {channels}")
    grown = weight.new_zeros((weight.shape[0], channels) + tuple(weight.shape[2:]))
    grown[:, : weight.shape[1]] = weight
    return grown
