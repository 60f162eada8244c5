"""LoRA fine-tuning through the training loop at TP=2 + SP: checkpoints hold only the adapters, a resumed run repeats
the uninterrupted one exactly (the frozen base reloaded from train.load_from), and the merged export computes what
the adapted model did."""

import pytest
import torch
from megatron.core import dist_checkpointing

from tests.harness import run_distributed
from tests.training.test_pretrain import (
    TP2_SP,
    _export,
    _fixed_velocity,
    _in_turn,
    _losses,
    _overrides,
    _train,
    _train_expecting_error,
    _velocity_from_export,
)

LORA = ["model.lora.rank=4", "train.lr=5e-3"]


def _adapted_velocity(rank, world_size, overrides, base, checkpoint):
    """The fixed input's velocity of the LoRA model: the base from `base`, the adapters from `checkpoint`."""
    from megatron_moviegen.checkpoints.distributed import load_checkpoint
    from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime

    cfg = load_config("tiny", overrides)
    init_model_parallel(cfg.parallel, Runtime.resolve())
    model = build_dit_chunks(cfg, Runtime.resolve())
    load_weights_for_new_stage(base, model)
    load_checkpoint(checkpoint, model)
    out = _fixed_velocity(cfg, model[0])
    destroy()
    return out


@pytest.fixture(scope="module")
def lora_runs(tiny_shards, tmp_path_factory):
    """Launch 1: a 2-step T2V base; LoRA on it for 4 steps (saves at 2 and 4); the same for 2 steps; a LoRA run
    without train.load_from. Launch 2: the 2-step LoRA run resumed to 4; the adapted model's velocity; the 4-step
    run exported (merged, float32) and the velocity of the export loaded at TP=1."""
    root = tmp_path_factory.mktemp("lora")
    base = root / "base"
    lora = lambda name, steps: _overrides(tiny_shards, root / name, steps,  # noqa: E731
                                          TP2_SP + LORA + [f"train.load_from={base}"])
    first = run_distributed(_in_turn, 2, args=([
        (_train, (_overrides(tiny_shards, base, 2, TP2_SP),)),
        (_train, (lora("whole", 4),)),
        (_train, (lora("half", 2),)),
        (_train_expecting_error, (_overrides(tiny_shards, root / "no_base", 2, TP2_SP + LORA),)),
    ],))[0]
    second = run_distributed(_in_turn, 2, args=([
        (_train, (lora("half", 4),)),
        (_adapted_velocity, (TP2_SP + LORA, str(base), root / "whole")),
        (_export, (root / "whole", root / "export")),
        (_velocity_from_export, (root / "export",)),
    ],))[0]
    return {"root": root, "whole": first[1], "refused": first[3], "resumed": second[0], "adapted": second[1],
            "from_export": second[3]}


def test_lora_checkpoints_hold_only_the_adapters(lora_runs):
    saved = dist_checkpointing.load_tensors_metadata(str(lora_runs["root"] / "whole" / "iter_0000004"))
    model_keys = {key for key in saved if not key.startswith("optimizer.")}
    assert len(model_keys) == 4 * 7 * 2 and all(key.endswith(("_lora.a", "_lora.b")) for key in model_keys)
    base = dist_checkpointing.load_tensors_metadata(str(lora_runs["root"] / "base" / "iter_0000002"))
    assert "layers.0.mlp.linear_fc1.weight" in base and "layers.0.mlp.linear_fc1.weight" not in saved


def test_a_resumed_lora_run_repeats_the_uninterrupted_run_exactly(lora_runs):
    whole, resumed = _losses(lora_runs["whole"]), _losses(lora_runs["resumed"])
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == whole[step]
    assert whole[4][0] != whole[1][0]  # the adapters moved


def test_the_merged_export_computes_what_the_adapted_model_did(lora_runs):
    from megatron_moviegen.checkpoints.export import read_export_tensors, read_exported_config

    adapted, from_export = lora_runs["adapted"], lora_runs["from_export"]
    assert torch.allclose(from_export, adapted, rtol=1e-5, atol=1e-5), (from_export - adapted).abs().max()
    exported = read_export_tensors(lora_runs["root"] / "export")
    assert not [key for key in exported if "_lora." in key]
    assert read_exported_config(lora_runs["root"] / "export").model.lora.rank == 0


def test_lora_without_a_base_checkpoint_is_refused(lora_runs):
    assert lora_runs["refused"].startswith("ConfigError") and "train.load_from is not set" in lora_runs["refused"]
