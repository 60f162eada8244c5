"""Long-prompt MetaCLIP: a CLIP text tower whose learned position table is extended (77 -> 256 tokens).

The original rows are kept unchanged and rows 77.. are the tail of the whole table stretched by linear
interpolation to the new length (Long-CLIP's stretching, but without touching the trained rows). CLIP's text
attention is causal, so token i only ever sees positions 0..i: a prompt of at most 77 tokens therefore
encodes exactly as with the original model, and the new rows only matter beyond 77 tokens (where the model
is meant to be fine-tuned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel


def extend_position_table(table: torch.Tensor, new_length: int) -> torch.Tensor:
    """(n, d) -> (new_length, d): rows 0..n-1 are `table`; row p >= n is `table` linearly interpolated at
    the fractional position p * (n - 1) / (new_length - 1)."""
    n, _ = table.shape
    if new_length <= n:
        raise ValueError(f"new_length: got {new_length}, must exceed the table's {n} rows")
    stretched = F.interpolate(
        table.T[None].double(), size=new_length, mode="linear", align_corners=True
    )[0].T  # (new_length, d)
    return torch.cat([table, stretched[n:].to(table.dtype)])


@torch.no_grad()
def extend_clip_context(model: CLIPTextModel, new_length: int) -> CLIPTextModel:
    """Give `model` a position table of `new_length` rows (in place); a model that has them already is
    returned unchanged. Updates the position_ids buffer and config.max_position_embeddings with it."""
    embeddings = getattr(model, "text_model", model).embeddings  # transformers 4.x nests it in text_model
    old = embeddings.position_embedding.weight  # (n, d)
    if old.shape[0] >= new_length:
        return model
    table = nn.Embedding(new_length, old.shape[1], device=old.device, dtype=old.dtype)
    table.weight.copy_(extend_position_table(old, new_length))
    table.requires_grad_(old.requires_grad)
    embeddings.position_embedding = table
    embeddings.position_ids = torch.arange(new_length, device=old.device)[None]  # (1, new_length)
    model.config.max_position_embeddings = new_length
    return model
