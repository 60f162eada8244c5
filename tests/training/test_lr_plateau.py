"""The LR plateau rule on Megatron's schedule: when it lowers the LR, its floor, and its saved state."""

import math

import pytest
import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_moviegen.config import ConfigError
from megatron_moviegen.recipes import load_config
from megatron_moviegen.training.config import LRPlateauConfig
from megatron_moviegen.training.lr_plateau import PlateauLR


def _schedule(style="constant", warmup=0, lr=1e-3, min_lr=0.0) -> OptimizerParamScheduler:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return OptimizerParamScheduler(optimizer, init_lr=0.0 if warmup else lr, max_lr=lr, min_lr=min_lr,
                                   lr_warmup_steps=warmup, lr_decay_steps=100, lr_decay_style=style, start_wd=0.0,
                                   end_wd=0.0, wd_incr_steps=100, wd_incr_style="constant")


def _lr(scheduler) -> float:
    return scheduler.schedule.optimizer.param_groups[0]["lr"]


def test_the_lr_halves_after_patience_validations_without_improvement_and_not_before():
    plateau = PlateauLR(_schedule(), LRPlateauConfig(factor=0.5, patience=3, threshold=0.01))
    # 1.0 is the first best; 0.995, 0.992, 0.991 do not improve on it by 1%; 0.9 does, and 0.85 on 0.9 (which
    # resets the count), then 0.9, 0.86, 0.85 do not improve on 0.85 by 1%.
    losses = [1.0, 0.995, 0.992, 0.991, 0.9, 0.95, 0.85, 0.9, 0.86, 0.85]
    lowered, lrs = [], []
    for loss in losses:
        lowered.append(plateau.observe(loss))
        lrs.append(_lr(plateau))
    assert lowered == [False, False, False, True, False, False, False, False, False, True]
    assert lrs == pytest.approx([1e-3] * 3 + [5e-4] * 6 + [2.5e-4])
    assert plateau.best == 0.85 and plateau.bad == 0


def test_the_first_validation_is_the_best_whatever_the_threshold():
    plateau = PlateauLR(_schedule(), LRPlateauConfig(patience=1, threshold=10.0))  # nothing improves after it
    assert [plateau.observe(loss) for loss in (1.0, 0.1)] == [False, True]


def test_the_lr_is_not_lowered_below_min_lr():
    plateau = PlateauLR(_schedule(), LRPlateauConfig(factor=0.5, patience=1, min_lr=3e-4))
    lowered = [plateau.observe(1.0) for _ in range(5)]
    assert lowered == [False, True, True, False, False]
    assert _lr(plateau) == pytest.approx(3e-4)


def test_the_scale_applies_to_every_later_lr_of_the_schedule():
    plain, plateau = _schedule("cosine", warmup=5), PlateauLR(_schedule("cosine", warmup=5),
                                                              LRPlateauConfig(factor=0.5, patience=1))
    plateau.observe(1.0)
    plateau.observe(1.0)  # halved
    for _ in range(20):
        plain.step(1)
        plateau.step(1)
        assert _lr(plateau) == pytest.approx(0.5 * plain.optimizer.param_groups[0]["lr"], rel=1e-12)


def test_the_rule_state_survives_a_state_dict_round_trip():
    rule = LRPlateauConfig(factor=0.5, patience=2)
    plateau = PlateauLR(_schedule(), rule)
    for loss in (1.0, 1.0, 1.0, 0.5, 0.7):  # halved at the third; best 0.5, one bad validation since
        plateau.observe(loss)
    plateau.step(7)
    restored = PlateauLR(_schedule(), rule)
    restored.load_state_dict(plateau.state_dict())
    assert (restored.scale, restored.best, restored.bad) == (0.5, 0.5, 1)
    assert _lr(restored) == _lr(plateau) == pytest.approx(5e-4)
    assert restored.observe(0.6) and _lr(restored) == pytest.approx(2.5e-4)  # the saved bad count carried on


def test_a_checkpoint_saved_without_the_rule_loads_with_a_fresh_one():
    schedule = _schedule()
    schedule.step(3)
    plateau = PlateauLR(_schedule(), LRPlateauConfig())
    plateau.load_state_dict(schedule.state_dict())
    assert (plateau.scale, plateau.best, plateau.bad) == (1.0, math.inf, 0)
    assert plateau.schedule.num_steps == 3 and _lr(plateau) == pytest.approx(1e-3)


def test_the_rule_needs_validation_shards():
    with pytest.raises(ConfigError, match="lr_plateau: set, but validation_shards is not"):
        load_config("tiny", ["train.lr_plateau.patience=2"])
    with pytest.raises(ConfigError, match="factor: got 1.5"):
        load_config("tiny", ["train.validation_shards=/v", "train.lr_plateau.factor=1.5"])
