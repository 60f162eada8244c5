"""EMA of the weights (train.ema_decay)."""

import pytest
import torch
from torch import nn

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.recipes import load_config
from megatron_moviegen.training.ema import ModelEMA


def _model(value):
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_ema_update_is_decay_times_ema_plus_the_rest_times_the_weights():
    model = _model(1.0)
    ema = ModelEMA([model], decay=0.9)
    for value in (2.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update()
    # 0.9 * (0.9 * 1 + 0.1 * 2) + 0.1 * 4 = 1.39
    assert torch.allclose(ema.shadow["0.weight"], torch.full((1, 2), 1.39))
    assert ema.num_updates == 2 and torch.equal(model.weight, torch.full((1, 2), 4.0))


def test_applied_puts_the_ema_weights_in_and_restores_the_trained_ones():
    model = _model(1.0)
    ema = ModelEMA([model], decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update()  # 2.0
    with ema.applied():
        assert torch.equal(model.weight, torch.full((1, 2), 2.0))
    assert torch.equal(model.weight, torch.full((1, 2), 3.0))


def test_state_round_trips_and_refuses_another_layout():
    ema = ModelEMA([_model(1.0)], decay=0.99)
    ema.shadow["0.weight"].fill_(5.0)
    other = ModelEMA([_model(0.0)], decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["0.weight"], torch.full((1, 2), 5.0))
    with pytest.raises(ValueError, match=r"0.weight has shape \(1, 2\), the model.s shard \(1, 4\)"):
        ModelEMA([nn.Linear(4, 1, bias=False)], 0.99).load_state_dict(ema.state_dict())


def test_ema_decay_out_of_range_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"ema_decay: got 1.0"):
        load_config("tiny", ["train.ema_decay=1.0"])
    assert load_config("tiny", ["train.ema_decay=0.999"]).train.ema_decay == 0.999
