"""Lower the LR when the validation loss plateaus (paper stage 3: halved, 6e-5 -> 1e-5), on top of Megatron's
OptimizerParamScheduler.

The schedule still sets every LR each step from its own curve (warmup, decay); `PlateauLR` multiplies those LRs
by a scale that the rule lowers by `factor` after `patience` validations without a relative improvement of
`threshold` on the best loss, never below min_lr / max_lr. Its state (scale, best loss, bad validations) rides in
the scheduler's state dict, so a checkpoint restores it and a resumed run lowers the LR exactly when an
uninterrupted one would. A checkpoint saved without the rule loads with a fresh one (scale 1).
"""

from __future__ import annotations

import math

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_moviegen.training.config import LRPlateauConfig


class PlateauLR:
    """`schedule` (stepped and saved through this wrapper) with its LRs scaled by the plateau rule."""

    def __init__(self, schedule: OptimizerParamScheduler, rule: LRPlateauConfig):
        self.schedule, self.rule = schedule, rule
        self.min_scale = rule.min_lr / schedule.max_lr
        self.scale, self.best, self.bad = 1.0, math.inf, 0

    def step(self, increment: int) -> None:
        self.schedule.step(increment)
        for group in self.schedule.optimizer.param_groups:
            group["lr"] *= self.scale

    def observe(self, val_loss: float) -> bool:
        """Count one validation loss; True when it lowered the LR."""
        if self.best == math.inf or val_loss < self.best * (1.0 - self.rule.threshold):
            self.best, self.bad = val_loss, 0
            return False
        self.bad += 1
        if self.bad < self.rule.patience:
            return False
        self.bad = 0
        scale = max(self.scale * self.rule.factor, self.min_scale)
        lowered = scale < self.scale
        self.scale = scale
        self.step(increment=0)
        return lowered

    def state_dict(self) -> dict:
        return {**self.schedule.state_dict(), "lr_plateau": {"scale": self.scale, "best": self.best, "bad": self.bad}}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state)
        saved = state.get("lr_plateau", {"scale": 1.0, "best": math.inf, "bad": 0})
        self.scale, self.best, self.bad = saved["scale"], saved["best"], saved["bad"]
        self.step(increment=0)


def with_lr_plateau(schedule: OptimizerParamScheduler, rule: LRPlateauConfig | None):
    """`schedule` itself when `rule` is None, else wrapped in `PlateauLR`."""
    return schedule if rule is None else PlateauLR(schedule, rule)
