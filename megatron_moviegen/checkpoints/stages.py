"""Moving from one training stage to the next (SPEC section 4): load the previous stage's weights and grow
the position tables to the new recipe's sizes; the optimizer and LR schedule start fresh.

A table row is a position in tokens, and what a token spans in the scene depends on the resolution. So a
spatial table is resampled at the resolution ratio, as ViT does when fine-tuning at a higher resolution:
new row j takes the old table at position (j + 0.5) / scale - 0.5 (token centres; linear between rows).
- Same resolution (scale 1; e.g. a table grown for wider buckets): the learned rows are kept exactly, so a
  square 256 px image sees the same positions as before. Stretching 16 rows over 32, as a plain interpolation
  to the new length did, would give it the positions of the top-left quarter of a stage-1 image.
- 256 -> 768 px (scale 3): a 768 px token at row 3k sits where a 256 px token at row k did.
Rows past the last learned position copy the last learned row (no untrained noise enters the sum). The
temporal table is kept row for row: every stage samples at 16 fps, so a latent frame means the same time.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor

from megatron_moviegen.checkpoints.distributed import read_saved_config, resolve_checkpoint

log = logging.getLogger(__name__)

POSITION_TABLES = {"t": "max_frames", "h": "max_height", "w": "max_width"}
SPATIAL_TABLES = ("h", "w")


def grow_table(table: torch.Tensor, length: int, scale: float = 1.0) -> torch.Tensor:
    """(n, d) -> (length, d): row j = table at position (j + 0.5) / scale - 0.5, linear between rows, clamped to
    [0, n - 1]. `scale` = new resolution / old resolution. Identity when nothing changes."""
    n = table.shape[0]
    if length == n and scale == 1.0:
        return table
    if length < n:
        raise ValueError(f"position table shrinks from {n} to {length}; stages only grow tables")
    if scale < 1.0:
        raise ValueError(f"position table scale: got {scale}, stages only keep or raise the resolution")
    pos = ((torch.arange(length, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(0, n - 1)
    low = pos.floor().long()
    high = (low + 1).clamp(max=n - 1)
    frac = (pos - low).to(torch.float32)[:, None]
    grown = table.float()[low] * (1 - frac) + table.float()[high] * frac
    return grown.to(table.dtype)


def spatial_scale(saved_config: dict, resolution: Optional[int]) -> float:
    """New resolution / the saved stage's `data.buckets.resolution` (1.0 when either is unknown)."""
    saved = saved_config.get("data", {}).get("buckets", {}).get("resolution")
    if resolution is None or saved is None:
        log.warning("growing position tables at scale 1 (resolution %s -> %s unknown); pass resolution= when "
                    "the new stage changes it", saved, resolution)
        return 1.0
    return resolution / saved


def load_weights_for_new_stage(path: str, model_chunks, resolution: Optional[int] = None) -> None:
    """Load every weight of a previous stage's checkpoint into `model_chunks`, growing position tables;
    `resolution` is the new stage's data.buckets.resolution (the spatial tables are resampled at the ratio)."""
    path = resolve_checkpoint(path)
    saved = read_saved_config(path)
    saved_model = saved["model"]
    scale = spatial_scale(saved, resolution)
    for index, chunk in enumerate(model_chunks):
        chunk = getattr(chunk, "module", chunk)
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        state = chunk.sharded_state_dict()
        tables = {name: state.pop(f"position_embedding.{name}") for name in POSITION_TABLES}
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
            table_scale = scale if name in SPATIAL_TABLES else 1.0
            loaded[f"position_embedding.{name}"] = grow_table(old[name], tables[name].data.shape[0], table_scale)
        chunk.load_state_dict(loaded, strict=True)
