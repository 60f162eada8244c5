"""Moving from one training stage to the next (SPEC section 4): load the previous stage's weights and grow
the position tables (256 px -> 2x for the joint stage -> 3x at 768 px; the temporal table as configured).

A grown table is the old table linearly interpolated to the new length, so the learned positions keep their
relative meaning; the optimizer and LR schedule start fresh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor

from megatron_moviegen.checkpoints.tp_shards import local_name
from megatron_moviegen.checkpoints.distributed import (
    check_complete,
    check_model_matches,
    read_saved_config,
    resolve_checkpoint,
)

POSITION_TABLES = {"t": "max_frames", "h": "max_height", "w": "max_width"}


def grow_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """(n, d) -> (length, d) by linear interpolation along n (identity when the length is unchanged)."""
    if table.shape[0] == length:
        return table
    if length < table.shape[0]:
        raise ValueError(f"position table shrinks from {table.shape[0]} to {length}; stages only grow tables")
    grown = F.interpolate(table.T[None].float(), size=length, mode="linear", align_corners=True)[0].T
    return grown.to(table.dtype)


def load_weights_for_new_stage(path: str, model_chunks) -> None:
    """Load every weight of a previous stage's checkpoint into `model_chunks`, growing position tables."""
    path = resolve_checkpoint(path)
    check_complete(path)
    saved_model = read_saved_config(path)["model"]
    chunks = [getattr(chunk, "module", chunk) for chunk in model_chunks]
    states = [chunk.sharded_state_dict() for chunk in chunks]
    tables_of = [{name: state.pop(f"position_embedding.{name}") for name in POSITION_TABLES} for state in states]
    check_model_matches(path, states, chunks[0].dit_config,
                        loaded_apart=frozenset(f"position_embedding.{name}" for name in POSITION_TABLES))
    for index, (chunk, state, tables) in enumerate(zip(chunks, states, tables_of)):
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        loaded = dist_checkpointing.load({key: state}, str(path))[key]
        old_tables = {}
        for name, field in POSITION_TABLES.items():
            current: ShardedTensor = tables[name]
            shape = (saved_model[field], current.data.shape[1])
            holder = ShardedTensor.from_rank_offsets(current.key, torch.empty(shape, dtype=current.data.dtype),
                                                     replica_id=current.replica_id)
            old_tables[name] = holder
        old = dist_checkpointing.load({key: old_tables}, str(path))[key]
        for name in POSITION_TABLES:
            loaded[f"position_embedding.{name}"] = grow_table(old[name], tables[name].data.shape[0])
        chunk.load_state_dict({local_name(k, chunk.layer_offset): v for k, v in loaded.items()}, strict=True)
