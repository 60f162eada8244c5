"""An exponential moving average of the DiT weights (train.ema_decay), kept by each rank for the parameter
shards it holds (whatever the TP/PP layout), in float32:

    ema_t = decay * ema_{t-1} + (1 - decay) * theta_t        after every optimizer step

    ema = ModelEMA(chunks, cfg.train.ema_decay)
    ema.update()                       # after optimizer.step()
    with ema.applied():                # the EMA weights in the model, e.g. for export_dit(chunks, folder)
        export_dit(chunks, folder)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model_chunks: list[nn.Module], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay: got {decay}, must be in [0, 1)")
        self.decay = decay
        self.params = {f"{i}.{name}": p for i, chunk in enumerate(model_chunks)
                       for name, p in getattr(chunk, "module", chunk).named_parameters()}
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}
        self.num_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - self.decay)
        self.num_updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The EMA weights copied into the model for the block; the trained weights restored after it."""
        saved = {name: p.detach().clone() for name, p in self.params.items()}
        try:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(self.shadow[name].to(param.dtype))
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(saved[name])

    def state_dict(self) -> dict:
        """This rank's shards: {"decay", "num_updates", "shadow": {"<chunk>.<param name>": fp32 tensor}}."""
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise ValueError(f"EMA state: parameters differ, extra {sorted(set(shadow) - set(self.shadow))[:4]}, "
                             f"missing {sorted(set(self.shadow) - set(shadow))[:4]}")
        for name, tensor in shadow.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(f"EMA state: {name} has shape {tuple(tensor.shape)}, the model's shard "
                                 f"{tuple(self.shadow[name].shape)} (saved under another layout?)")
            self.shadow[name].copy_(tensor)
        self.num_updates = state["num_updates"]
