"""The validation loss: deterministic for fixed weights, equal across layouts; the LR plateau rule end to end."""

import json

import pytest

from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed
from tests.training.test_pretrain import TP2_SP, _in_turn, _overrides, _train


def _validated(shards, ckpt, steps, extra=()):
    return _overrides(shards, ckpt, steps, ["train.validate_every=1", f"train.validation_shards={shards}",
                                            "train.validation_batches=2", *extra])


def _validation_loss_after_load(rank, world_size, overrides, checkpoint):
    from megatron_moviegen.checkpoints.distributed import load_checkpoint
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.parallel.layout import SequenceLayout
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.training.validation import ValidationSet

    cfg = load_config("tiny", overrides)
    runtime = Runtime.resolve()
    init_model_parallel(cfg.parallel, runtime)
    layout = SequenceLayout.from_parallel_state(cfg.parallel.sequence_parallel)
    model = build_dit_chunks(cfg, runtime, layout)
    load_checkpoint(checkpoint, model)
    validation = ValidationSet(cfg, runtime.device)
    losses = [validation.loss(model, layout) for _ in range(2)]
    destroy()
    return losses


def test_validation_loss_is_deterministic_and_the_same_at_tp2_and_on_one_process(tiny_shards, tmp_path):
    overrides = _validated(tiny_shards, tmp_path, 2, ["train.validate_every=2"])
    trained = run_distributed(_train, 2, args=(overrides + TP2_SP,))
    tp2 = [row["val_loss"] for row in trained[-1]["history"] if "val_loss" in row]
    assert len(tp2) == 1 and trained[0]["history"][-1]["val_loss"] == tp2[0]  # every rank has the same number
    one_process = run_distributed(_validation_loss_after_load, 1, args=(overrides, tmp_path / "iter_0000002"))[0]
    assert one_process[0] == one_process[1]
    assert one_process[0] == pytest.approx(tp2[0], abs=1e-5, rel=0)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row for row in logged if "val_loss" in row] == [{"step": 2, "val_loss": tp2[0]}]


PLATEAU = ["train.lr_plateau.factor=0.5", "train.lr_plateau.patience=2",
           "train.lr_plateau.threshold=10.0"]  # no validation after the first improves on the best by 1000%


def _rows(result):
    return {row["step"]: row for row in result["history"]}


def test_the_plateau_rule_halves_the_lr_across_a_resume_as_without_one(tiny_shards, tmp_path):
    whole, _ = run_distributed(_in_turn, 1, args=([  # one launch: the 4 steps first, then the 2 to resume from
        (_train, (_validated(tiny_shards, tmp_path / "a", 4, PLATEAU),)),
        (_train, (_validated(tiny_shards, tmp_path / "b", 2, PLATEAU),)),
    ],))[0]
    resumed = run_distributed(_train, 1, args=(_validated(tiny_shards, tmp_path / "b", 4, PLATEAU),))[0]
    rows = _rows(whole)
    # Validation 1 sets the best, 2 is the first without improvement, 3 the second: the LR halves after step 3.
    assert [rows[s]["lr_lowered"] for s in (1, 2, 3, 4)] == [False, False, True, False]
    assert [rows[s]["lr_scale"] for s in (1, 2, 3, 4)] == [1.0, 1.0, 0.5, 0.5]
    assert [rows[s]["lr"] for s in (1, 2, 3, 4)] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])  # the LR of the next step
    assert sorted(_rows(resumed)) == [3, 4]
    for step in (3, 4):  # the resumed run kept the bad count of step 2, so it halves at step 3 too
        for key in ("loss", "grad_norm", "lr", "val_loss", "lr_scale", "lr_lowered"):
            assert _rows(resumed)[step][key] == rows[step][key], (step, key)
