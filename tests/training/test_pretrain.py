"""The pretraining loop: exact resume, layout-independent checkpoints, preemption, early config errors."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from megatron_moviegen.conditioning import Conditioning, Tokens
from megatron_moviegen.config import ConfigError
from megatron_moviegen.models.embeddings import unpatchify_tokens
from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed

TP2_SP = ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"]


def _overrides(shards, ckpt, steps, extra=()):
    return [f"data.shards={shards}", f"train.checkpoint_dir={ckpt}", f"train.steps={steps}",
            "train.global_batch_size=2", "train.save_every=2", "train.lr=1e-3", "train.progress_bar=false",
            "data.image_fraction=0.0", *extra]


def _train(rank, world_size, overrides):
    from megatron_moviegen.checkpoints.distributed import finalize_async_saves
    from megatron_moviegen.training.pretrain import pretrain

    result = pretrain(load_config("tiny", overrides))
    finalize_async_saves()  # as megatron_moviegen.train does before exiting
    return {"history": result.history, "step": result.step}


def _in_turn(rank, world_size, calls):
    """`fn(rank, world_size, *args)` for each `(fn, args)` of `calls`, one after another on these ranks: several
    runs for one launch (torch and Megatron imported once). Each run builds its own model, optimizer and loader
    (pretrain sets up Megatron's groups and seeds afresh); the first runs in a fresh process. A resume that is
    compared with an uninterrupted run still gets a launch of its own: the state must come from the checkpoint."""
    return [fn(rank, world_size, *args) for fn, args in calls]


def _losses(result):
    return {row["step"]: (row["loss"], row["grad_norm"]) for row in result["history"]}


@pytest.fixture(scope="module")
def tp2_runs(tiny_shards, tmp_path_factory):
    """At TP=2 with SP, in one launch: 4 uninterrupted steps, first; then a 2-step run (folder `two_steps`, its
    checkpoint at step 2: where the resume test starts and what the load and export tests read); then the fixed
    input's velocity from that checkpoint, loaded into a newly built TP=2 model."""
    root = tmp_path_factory.mktemp("tp2")
    ranks = run_distributed(_in_turn, 2, args=([
        (_train, (_overrides(tiny_shards, root / "whole", 4, TP2_SP),)),
        (_train, (_overrides(tiny_shards, root / "two_steps", 2, TP2_SP),)),
        (_velocity_after_load, (TP2_SP, root / "two_steps" / "iter_0000002")),
    ],))
    return {"whole": ranks[-1][0], "two_steps": root / "two_steps", "tp2_velocity": ranks[0][2]}


def test_resumed_run_repeats_the_uninterrupted_run_exactly(tiny_shards, tp2_runs, tmp_path):
    whole = tp2_runs["whole"]
    shutil.copytree(tp2_runs["two_steps"], tmp_path / "b")  # resumed in a copy: other tests read the 2-step one
    resumed = run_distributed(_train, 2, args=(_overrides(tiny_shards, tmp_path / "b", 4, TP2_SP),))[-1]
    assert sorted(_losses(resumed)) == [3, 4]
    for step in (3, 4):
        assert _losses(resumed)[step] == _losses(whole)[step]
    # And the loss falls on real clips.
    assert _losses(whole)[4][0] < _losses(whole)[1][0]
    # TensorBoard is on by default: the logging rank's loss of each step in <checkpoint_dir>/tensorboard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tp2_runs["two_steps"] / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx({step: loss for step, (loss, _) in _losses(whole).items() if step <= 2})


@pytest.fixture(scope="module")
def dp2_runs(tiny_shards, tmp_path_factory):
    """On 2 ranks at TP=1 (DP=2): 4 steps saving synchronously, and 2 + 2 resumed steps saving asynchronously
    and keeping the last step only."""
    root = tmp_path_factory.mktemp("dp2")
    later = ["train.async_save=true", "train.keep_last=1"]
    whole, _ = run_distributed(_in_turn, 2, args=([  # one launch: the 4 steps first, then the first 2 of 2 + 2
        (_train, (_overrides(tiny_shards, root / "sync", 4),)),
        (_train, (_overrides(tiny_shards, root / "async", 2, later),)),
    ],))[-1]
    resumed = run_distributed(_train, 2, args=(_overrides(tiny_shards, root / "async", 4, later),))
    return root, whole, resumed[-1]


def test_data_parallel_replicas_share_the_checkpoint_writing(dp2_runs):
    root, _, _ = dp2_runs
    # torch_dist names each rank's files __<rank>_<n>.distcp. Unwrapped, DP rank 1 holds only replicas and
    # writes (almost) nothing; the fully parallel strategy gives it about half of the bytes.
    for step_dir in (root / "sync" / "iter_0000002", root / "async" / "iter_0000004"):
        written = {rank: sum(f.stat().st_size for f in step_dir.glob(f"__{rank}_*.distcp")) for rank in (0, 1)}
        assert min(written.values()) > 0.35 * sum(written.values()), (step_dir, written)


def test_async_saves_are_published_before_exit_and_resume_exactly(dp2_runs):
    root, whole, resumed = dp2_runs
    assert (root / "async" / "latest").read_text() == "iter_0000004"
    # keep_last=1: step 2, the resume's `latest`, deleted once step 4 was published, at the exit; no .tmp left
    assert sorted(p.name for p in (root / "async").glob("*iter_*")) == ["iter_0000004"]
    assert sorted(p.name for p in (root / "sync").glob("iter_*")) == ["iter_0000002", "iter_0000004"]  # keep all
    assert sorted(_losses(resumed)) == [3, 4]
    for step in (3, 4):
        assert _losses(resumed)[step] == _losses(whole)[step]


def test_bucketed_grad_reduce_overlapped_with_backward_trains_exactly_as_one_reduce(tiny_shards, dp2_runs, tmp_path):
    """parallel.overlap_grad_reduce with small buckets (Megatron DDP reduces each bucket asynchronously as the
    backward fills it) gives the losses and grad norms of the unoverlapped run, bit for bit."""
    _, whole, _ = dp2_runs
    overlap = ["parallel.overlap_grad_reduce=true", "parallel.ddp_bucket_size=5000"]
    overlapped = run_distributed(_train, 2, args=(_overrides(tiny_shards, tmp_path, 4, overlap),))[-1]
    assert _losses(overlapped) == _losses(whole)


def _velocity_after_load(rank, world_size, overrides, checkpoint):
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.checkpoints.distributed import load_checkpoint

    cfg = load_config("tiny", overrides)
    init_model_parallel(cfg.parallel, Runtime.resolve())
    model = build_dit_chunks(cfg, Runtime.resolve())
    load_checkpoint(checkpoint, model)
    out = _fixed_velocity(cfg, model[0])
    destroy()
    return out


def _fixed_velocity(cfg, dit) -> torch.Tensor:
    """The full velocity prediction for one fixed random input."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 8, 8, generator=gen)
    tokens = {n: Tokens(torch.randn(1, e.max_length, e.width, generator=gen),
                        torch.ones(1, e.max_length, dtype=torch.bool))
              for n, e in cfg.model.text_encoders.items()}
    with torch.no_grad():
        whole = dit.layout.gather(dit(latents, torch.tensor([0.3]), Conditioning(tokens)))
    return unpatchify_tokens(whole, dit.token_grid(latents.shape), tuple(cfg.model.patch_size))


@pytest.fixture(scope="module")
def tp2_checkpoint_on_one_process(tp2_runs, tmp_path_factory):
    """In one process, from the 2-step TP=2 checkpoint: the fixed input's velocity loaded at TP=1; the checkpoint
    exported (float32) to a new folder; the velocity of the model loaded from that export."""
    checkpoint, export = tp2_runs["two_steps"], tmp_path_factory.mktemp("tp2_export") / "export"
    tp1, _, from_export = run_distributed(_in_turn, 1, args=([(_velocity_after_load, ([], checkpoint)),
                                                             (_export, (checkpoint, export)),
                                                             (_velocity_from_export, (export,))],))[0]
    return {"tp1_velocity": tp1, "export": export, "velocity_from_export": from_export}


def test_a_tp2_checkpoint_loads_at_tp1_with_equal_outputs(tp2_runs, tp2_checkpoint_on_one_process):
    tp2, tp1 = tp2_runs["tp2_velocity"], tp2_checkpoint_on_one_process["tp1_velocity"]
    assert torch.allclose(tp1, tp2, rtol=1e-5, atol=1e-6)


def _train_in_own_session(shards, ckpt, extra=()):
    """`python -m megatron_moviegen.train` on the tiny config in a new process group, logging every step, saving
    every 2 steps (so Megatron's checkpoint-writer helper exists before any signal)."""
    cmd = [sys.executable, "-m", "megatron_moviegen.train", "--config", "tiny",
           *_overrides(shards, ckpt, 10_000, ["train.save_every=2", "train.log_every=1", *extra])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)


def _read_until(proc, prefix):
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            break
    return lines


def test_sigterm_to_the_process_group_saves_a_loadable_checkpoint_and_exits_cleanly(tiny_shards, tmp_path):
    # SLURM, torchrun and Ctrl-C signal the whole group: the checkpoint writer's helper process gets it too.
    proc = _train_in_own_session(tiny_shards, tmp_path)
    lines = _read_until(proc, "step 3/")
    os.killpg(proc.pid, signal.SIGTERM)
    output = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 0, output
    assert "after a preemption signal" in output and "BrokenPipeError" not in output
    latest = (tmp_path / "latest").read_text().strip()
    saved_step = int(latest.split("_")[1])
    assert saved_step >= 3
    resumed = run_distributed(_train, 1, args=(_overrides(tiny_shards, tmp_path, saved_step + 1),))[0]
    assert [row["step"] for row in resumed["history"]] == [saved_step + 1]


def test_a_killed_run_leaves_no_helper_holding_its_output(tiny_shards, tmp_path):
    proc = _train_in_own_session(tiny_shards, tmp_path)
    _read_until(proc, "step 3/")  # saved at step 2: the writer's helper process is running
    proc.kill()
    proc.wait(timeout=30)
    # `train ... | tee log` returns only when every process holding the pipe has exited.
    reader = subprocess.run(["timeout", "20", "cat"], stdin=proc.stdout, capture_output=True)
    assert reader.returncode == 0, "the pipe stayed open after the run was killed: a helper process outlived it"


def test_tp_that_does_not_divide_heads_fails_before_any_work():
    with pytest.raises(ConfigError, match="tensor_model_parallel_size: 3 does not divide model.num_attention_heads"):
        load_config("tiny", ["parallel.tensor_model_parallel_size=3"])


def _train_expecting_error(rank, world_size, overrides):
    from megatron_moviegen.training.pretrain import pretrain

    try:
        pretrain(load_config("tiny", overrides))
    except Exception as exc:  # returned to the parent for inspection
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def test_missing_shards_fail_before_the_model_is_built(tmp_path):
    message = run_distributed(_train_expecting_error, 1, args=(_overrides(tmp_path / "nowhere", tmp_path, 2),))[0]
    assert message.startswith("FileNotFoundError") and "nowhere" in message


def test_a_diverging_run_stops_with_a_clear_error_and_saves_nothing(tiny_shards, tmp_path):
    overrides = _overrides(tiny_shards, tmp_path, 20, ["train.lr=1e30", "train.clip_grad=0.0", "train.save_every=1000"])
    message = run_distributed(_train_expecting_error, 1, args=(overrides,))[0]
    assert message.startswith("NonFiniteLossError") and "stopping without saving" in message
    assert not (tmp_path / "latest").exists()


def _export(rank, world_size, checkpoint, out):
    from megatron_moviegen.checkpoints.export import export_training_checkpoint

    export_training_checkpoint(checkpoint, out, dtype=torch.float32)  # float32: velocities compared exactly


def test_export_of_a_tp2_checkpoint_generates_the_same_velocity(tp2_checkpoint_on_one_process):
    from megatron_moviegen.checkpoints.export import read_export_tensors

    weights = read_export_tensors(tp2_checkpoint_on_one_process["export"])
    assert "layers.3.mlp.linear_fc1.weight" in weights and weights["layers.3.mlp.linear_fc1.weight"].shape == (256, 64)
    from_checkpoint = tp2_checkpoint_on_one_process["tp1_velocity"]
    from_export = tp2_checkpoint_on_one_process["velocity_from_export"]
    assert torch.equal(from_checkpoint, from_export)


def _velocity_from_export(rank, world_size, folder):
    from megatron_moviegen.checkpoints.export import load_exported_dit
    from megatron_moviegen.parallel.initialize import destroy

    cfg, model = load_exported_dit(folder)
    out = _fixed_velocity(cfg, model[0])
    destroy()
    return out


COSINE = ["train.lr_decay_style=cosine", "train.min_lr=1e-4"]


def test_resuming_with_a_changed_schedule_is_refused_or_applied_when_asked(tiny_shards, tmp_path):
    # One launch: the 4-step run, the 2-step run, then the two refused resumes of the 2-step run's folder (each
    # reads the schedule saved in the checkpoint).
    whole, _, longer, new_lr = run_distributed(_in_turn, 1, args=([
        (_train, (_overrides(tiny_shards, tmp_path / "a", 4, COSINE),)),
        (_train, (_overrides(tiny_shards, tmp_path / "b", 2, COSINE),)),
        (_train_expecting_error, (_overrides(tiny_shards, tmp_path / "b", 4, COSINE),)),
        (_train_expecting_error, (_overrides(tiny_shards, tmp_path / "b", 2, [*COSINE, "train.lr=5e-4"]),)),
    ],))[0]
    assert longer.startswith("ConfigError") and "train.lr_decay_steps (default: steps): checkpoint 2, now 4" in longer
    assert "train.override_lr_schedule=true" in longer
    assert "train.lr: checkpoint 0.001, now 0.0005" in new_lr and "lr_decay_steps" not in new_lr
    # Overridden: steps 3 and 4 follow the 4-step schedule exactly, as a run planned for 4 steps would.
    resumed = run_distributed(_train, 1, args=(_overrides(tiny_shards, tmp_path / "b", 4,
                                                          [*COSINE, "train.override_lr_schedule=true"]),))[0]
    lrs = {row["step"]: row["lr"] for row in resumed["history"]}
    assert lrs == {row["step"]: row["lr"] for row in whole["history"] if row["step"] > 2}
    assert lrs[3] > 1e-4  # not the finished 2-step schedule's min_lr


def _train_on_a_fake_clock(rank, world_size, overrides):
    """`_train` with SaveTimer's clock advancing 60 s at each reading (one at the start, one per step's check, one
    after each save), so a save_every_minutes run saves at steps fixed in advance."""
    import itertools

    from megatron_moviegen.training.pretrain import SaveTimer

    readings = itertools.count(0.0, 60.0)
    SaveTimer.clock = staticmethod(lambda: next(readings))
    return _train(rank, world_size, overrides)


def test_save_every_minutes_saves_between_step_multiples_and_logs_each_save_time(tiny_shards, tmp_path):
    # Clock: start 0; steps 1, 2, 3 checked at 60, 120, 180 s -> 3 min >= 2.5 min: save at step 3 (timer reset at
    # 240 s); steps 4, 5, 6 at 300, 360, 420 s -> save at 6; step 7 is the last. save_every=1000 never comes due.
    overrides = _overrides(tiny_shards, tmp_path, 7, ["train.save_every=1000", "train.save_every_minutes=2.5"])
    result = run_distributed(_train_on_a_fake_clock, 1, args=(overrides,))[0]
    assert sorted(p.name for p in tmp_path.glob("iter_*")) == ["iter_0000003", "iter_0000006", "iter_0000007"]
    save_times = {row["step"]: row["save_s"] for row in result["history"] if "save_s" in row}
    assert sorted(save_times) == [3, 6, 7] and all(seconds > 0 for seconds in save_times.values())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "save_s" in row] == [3, 6, 7]


def test_save_every_minutes_must_be_positive():
    with pytest.raises(ConfigError, match="save_every_minutes: got 0.0, must be > 0"):
        load_config("tiny", ["train.save_every_minutes=0.0"])


def _train_with_the_folder_replaced_by_a_file(rank, world_size, overrides):
    """Train, with train.checkpoint_dir moved away and a file written in its place after the first save."""
    from pathlib import Path

    from megatron_moviegen.training import pretrain as module

    cfg = load_config("tiny", overrides)
    save, saves = module.save_checkpoint, []

    def save_then_replace(*args, **kwargs):
        if saves:
            folder = Path(cfg.train.checkpoint_dir)
            folder.rename(folder.with_name("moved"))
            folder.write_text("not a folder\n")
        saves.append(save(*args, **kwargs))
        return saves[-1]

    module.save_checkpoint = save_then_replace
    try:
        module.pretrain(cfg)
    except Exception as exc:  # returned to the parent for inspection
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def test_a_checkpoint_folder_replaced_by_a_file_mid_run_is_one_error_naming_it(tiny_shards, tmp_path):
    folder = tmp_path / "ckpt"
    overrides = _overrides(tiny_shards, folder, 2, ["train.save_every=1"])
    message = run_distributed(_train_with_the_folder_replaced_by_a_file, 1, args=(overrides,))[0]
    assert message.startswith(f"CheckpointError: train.checkpoint_dir {folder}: found a regular file of 13 bytes"), message
    assert "step 2 was not saved" in message
    assert folder.read_text() == "not a folder\n" and (tmp_path / "moved" / "iter_0000001").is_dir()


def test_a_batch_schedule_changes_the_batch_mid_run_and_a_resume_at_the_change_repeats_it(tiny_shards, tmp_path):
    """train.batch_schedule (Table 3: 1,536 -> 512 in stage 3, here 2 -> 1 samples from step 3): the steps before the
    change read 2 samples, the later ones 1, and a run resumed from the checkpoint at the change repeats the
    uninterrupted run's losses exactly (the loader re-cuts its epoch at the same place)."""
    schedule = ["train.batch_schedule=[[2, 1]]"]
    whole, partial = run_distributed(_in_turn, 1, args=([
        (_train, (_overrides(tiny_shards, tmp_path / "whole", 4, schedule),)),
        (_train, (_overrides(tiny_shards, tmp_path / "partial", 2, schedule),)),
    ],))[0]
    samples = {row["step"]: round(row["samples_per_s"] * row["step_s"]) for row in whole["history"]}
    assert samples == {1: 2, 2: 2, 3: 1, 4: 1}
    resumed = run_distributed(_train, 1, args=(_overrides(tiny_shards, tmp_path / "partial", 4, schedule),))[0]
    assert sorted(_losses(resumed)) == [3, 4]
    assert all(_losses(resumed)[step] == _losses(whole)[step] for step in (3, 4))
