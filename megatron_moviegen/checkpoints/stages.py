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
from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

from megatron_moviegen.checkpoints.distributed import (
    check_complete,
    check_model_matches,
    read_saved_config,
    resolve_checkpoint,
)
from megatron_moviegen.checkpoints.tp_shards import local_name

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


PATCH_EMBED_WEIGHT = "patch_embed.proj.weight"


def _holder(current: ShardedTensor, shape: tuple[int, ...]) -> ShardedTensor:
    """A whole (replicated) tensor of the saved `shape` to load `current`'s key into."""
    return ShardedTensor.from_rank_offsets(current.key, torch.empty(shape, dtype=current.data.dtype),
                                           replica_id=current.replica_id)


def load_weights_for_new_stage(path: str, model_chunks, resolution: Optional[int] = None) -> set[str]:
    """Load every weight of a previous stage's checkpoint into `model_chunks`. Position tables grow (`grow_table`;
    `resolution` is the new stage's data.buckets.resolution, the spatial tables are resampled at the ratio), the
    patch embedding's new condition channels start at zero (so zero-valued conditions change nothing), and
    modules the previous stage did not have (a task table, an extra context projection) keep their
    initialisation. Anything else must match the saved model (`check_model_matches`: no other shape change, no
    saved tensor dropped). Returns the names of the tensors that kept their initialisation."""
    path = resolve_checkpoint(path)
    check_complete(path)
    scale = spatial_scale(read_saved_config(path), resolution)
    saved_shapes = {key: tuple(getattr(meta, "global_shape", ()))
                    for key, meta in dist_checkpointing.load_tensors_metadata(str(path)).items()}
    chunks = [getattr(chunk, "module", chunk) for chunk in model_chunks]
    states = [chunk.sharded_state_dict() for chunk in chunks]
    new_of, grown_of = [], []
    for state in states:
        new_of.append({name: state.pop(name) for name in list(state) if state[name].key not in saved_shapes})
        grown = [f"position_embedding.{name}" for name in POSITION_TABLES] + [PATCH_EMBED_WEIGHT]
        grown_of.append({name: state.pop(name) for name in grown if name in state})
    check_model_matches(path, states, chunks[0].dit_config,
                        loaded_apart=frozenset(t.key for grown in grown_of for t in grown.values()))
    for index, (chunk, state, new, grown) in enumerate(zip(chunks, states, new_of, grown_of)):
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        loaded = dist_checkpointing.load({key: state}, str(path))[key]
        old = dist_checkpointing.load(
            {key: {name: _holder(t, saved_shapes[t.key]) for name, t in grown.items()}}, str(path))[key]
        for name in POSITION_TABLES:
            table = f"position_embedding.{name}"
            if table in grown:
                table_scale = scale if name in SPATIAL_TABLES else 1.0
                loaded[table] = grow_table(old[table], grown[table].data.shape[0], table_scale)
        if PATCH_EMBED_WEIGHT in grown:
            channels = grown[PATCH_EMBED_WEIGHT].data.shape[1]
            loaded[PATCH_EMBED_WEIGHT] = grow_input_channels(old[PATCH_EMBED_WEIGHT], channels)
        loaded.update({name: tensor.data for name, tensor in new.items()})
        chunk.load_state_dict({local_name(k, chunk.layer_offset): v for k, v in loaded.items()}, strict=True)
    kept = sorted({name for new in new_of for name, value in new.items() if not isinstance(value, ShardedObject)})
    if kept:
        listed = kept if len(kept) <= 8 else kept[:4] + [f"... {len(kept) - 4} more"]
        log.info("new stage: %d tensors keep their initialisation (not in %s): %s", len(kept), path,
                 ", ".join(listed))
    return set(kept)


def grow_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """Patch-embedding conv weight (d, c_old, pt, ph, pw) -> (d, channels, pt, ph, pw), new channels zero."""
    if weight.shape[1] > channels:
        raise ValueError(f"patch embedding input channels shrink from {weight.shape[1]} to {channels}")
    grown = weight.new_zeros((weight.shape[0], channels) + tuple(weight.shape[2:]))
    grown[:, : weight.shape[1]] = weight
    return grown
