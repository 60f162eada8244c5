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


def _train_then_export(rank, world_size, shards, root):
    """Two data-parallel ranks: 2 steps of the tiny recipe with an EMA, then its export with --ema (and the same at
    TP=2, refused), then the plain export."""
    from megatron_moviegen.checkpoints.distributed import finalize_async_saves
    from megatron_moviegen.checkpoints.export import export_training_checkpoint
    from megatron_moviegen.training.pretrain import pretrain

    pretrain(load_config("tiny", [f"data.shards={shards}", f"train.checkpoint_dir={root / 'run'}", "train.steps=2",
                                  "train.global_batch_size=2", "train.save_every=2", "train.lr=1e-2",
                                  "train.ema_decay=0.5", "train.progress_bar=false", "data.image_fraction=0.0"]))
    finalize_async_saves()
    export_training_checkpoint(root / "run", root / "ema", dtype=torch.float32, ema=True)
    try:
        export_training_checkpoint(root / "run", root / "refused", ["parallel.tensor_model_parallel_size=2"],
                                   dtype=torch.float32, ema=True)
        refused = None
    except ConfigError as exc:
        refused = str(exc)
    export_training_checkpoint(root / "run", root / "plain", dtype=torch.float32)
    return refused


def test_export_with_ema_writes_the_averaged_weights_and_refuses_another_layout(tiny_shards, tmp_path):
    from megatron_moviegen.checkpoints.export import read_export_tensors
    from tests.harness import run_distributed

    refused = run_distributed(_train_then_export, 2, args=(str(tiny_shards), tmp_path))
    assert refused[0].startswith("--ema: the EMA was saved per rank at TP=1, PP=1, and this export runs at TP=2")
    shadow = torch.load(tmp_path / "run" / "iter_0000002" / "rank_state" / "ema00000.pt")["shadow"]
    ema, plain = read_export_tensors(tmp_path / "ema"), read_export_tensors(tmp_path / "plain")
    assert set(ema) == set(plain) == {name[len("0."):] for name in shadow}  # one chunk at TP=PP=1: same names
    assert all(torch.equal(ema[name], shadow[f"0.{name}"]) for name in ema)
    # decay 0.5 over 2 steps at lr 1e-2: every tensor differs from the trained weights
    assert all(not torch.equal(ema[name], plain[name]) for name in ema)


def test_the_ema_file_of_each_stage_and_tp_rank_follows_megatrons_rank_order():
    from megatron_moviegen.checkpoints.export import ema_training_rank

    # TP=2, PP=2 and 2 data-parallel ranks: 8 ranks; stage 1's TP ranks 0 and 1 were global ranks 4 and 5.
    assert [ema_training_rank(t, p, 2, 2, 8) for p in (0, 1) for t in (0, 1)] == [0, 1, 4, 5]
    assert ema_training_rank(1, 0, 2, 1, 2) == 1
