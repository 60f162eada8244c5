"""Training in the precision a cluster trains in (bf16 weights and compute, float32 main params in the optimizer),
on 2 gloo ranks at TP=2 + SP: the loss is finite and falls on real clips, a resumed run repeats the uninterrupted
one bit for bit, and the checkpoint exports and generates."""

import shutil

import pytest
import torch

from megatron_moviegen.generate import generate
from tests.harness import run_distributed
from tests.training.test_pretrain import TP2_SP, _in_turn, _losses, _overrides, _train

BF16 = ["train.precision=bf16", *TP2_SP]
# Validation every 2 steps and sample videos at step 4 (one prompt, 3 Euler steps), in every run alike.
EVAL = ["train.validate_every=2", "train.validation_batches=1", 'train.samples.prompts=["a red ball"]',
        "train.samples.every=4", "train.samples.tae=toy-tae", "train.samples.text_encoders=toy",
        "train.samples.num_frames=8", "train.samples.height=64", "train.samples.width=64", "train.samples.steps=3"]


def _bf16(shards, ckpt, steps):
    return _overrides(shards, ckpt, steps, [*BF16, *EVAL, f"train.validation_shards={shards}"])


def _dtypes(rank, world_size, overrides):
    """The dtypes of the model's weights and of the optimizer's params after building a bf16 run's pieces."""
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.ddp import wrap_ddp
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.training.optimizer import build_optimizer

    cfg = load_config("tiny", overrides)
    runtime = Runtime.for_config(cfg)
    init_model_parallel(cfg.parallel, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    optimizer = build_optimizer(wrap_ddp(chunks, use_distributed_optimizer=False), cfg.train, runtime)
    result = {"model": {p.dtype for p in chunks[0].parameters()},
              "optimizer": {p.dtype for group in optimizer.param_groups for p in group["params"]}}
    destroy()
    return result


@pytest.fixture(scope="module")
def bf16_runs(tiny_shards, tmp_path_factory):
    """One launch: the dtypes, 4 uninterrupted steps, and a 2-step run (its checkpoint at step 2); then a launch
    resuming a copy of the 2-step run to step 4. Each validates and samples as EVAL says."""
    root = tmp_path_factory.mktemp("bf16")
    dtypes, whole, _ = run_distributed(_in_turn, 2, args=([
        (_dtypes, (BF16,)),
        (_train, (_bf16(tiny_shards, root / "whole", 4),)),
        (_train, (_bf16(tiny_shards, root / "two_steps", 2),)),
    ],))[0]
    shutil.copytree(root / "two_steps", root / "resumed")
    resumed = run_distributed(_train, 2, args=(_bf16(tiny_shards, root / "resumed", 4),))[0]
    return {"root": root, "dtypes": dtypes, "whole": whole, "resumed": resumed}


def test_bf16_weights_are_stepped_through_float32_main_params(bf16_runs):
    assert bf16_runs["dtypes"] == {"model": {torch.bfloat16}, "optimizer": {torch.float32}}


def test_bf16_loss_is_finite_and_falls_on_real_clips(bf16_runs):
    losses = _losses(bf16_runs["whole"])
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(loss)) for loss, _ in losses.values())
    assert losses[4][0] < losses[1][0]


def test_bf16_validation_and_sample_videos_run(bf16_runs):
    validation = [row["val_loss"] for row in bf16_runs["whole"]["history"] if "val_loss" in row]
    assert len(validation) == 2 and all(torch.isfinite(torch.tensor(validation)))
    videos = list((bf16_runs["root"] / "whole" / "samples" / "iter_0000004").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0


def test_bf16_resume_repeats_the_uninterrupted_run_bit_for_bit(bf16_runs):
    resumed, whole = _losses(bf16_runs["resumed"]), _losses(bf16_runs["whole"])
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == whole[step]  # (loss, grad norm): floats compared exactly


def _export_and_generate(rank, world_size, checkpoint, export, out):
    from megatron_moviegen.checkpoints.export import export_training_checkpoint

    export_training_checkpoint(checkpoint, export)  # bf16 safetensors, the default
    return [str(p) for p in generate(["--checkpoint", str(export), "--tae", "toy-tae", "--text-encoders", "toy",
                                      "--prompt", "a white rabbit in a meadow", "--frames", "8", "--height", "64",
                                      "--width", "64", "--fps", "16", "--steps", "3", "--precision", "bf16",
                                      "--output-dir", str(out)])]


def test_a_bf16_checkpoint_exports_and_generates_in_bf16(bf16_runs):
    from megatron_moviegen.upsample import read_video

    root = bf16_runs["root"]
    paths = run_distributed(_export_and_generate, 1, args=(root / "whole", root / "export", root / "videos"))[0]
    pixels = read_video(paths[0], 0.0, 16, 8, 64, 64)
    assert pixels.shape == (1, 3, 8, 64, 64) and torch.isfinite(pixels).all() and pixels.std() > 0
