"""One run per checkpoint folder: a second run is refused naming the holder, a dead holder does not block, and a
fresh run does not overwrite another run's steps unless told to."""

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_moviegen.checkpoints.protocol import LATEST, CheckpointError
from megatron_moviegen.checkpoints.folder import LOCK, lock_checkpoint_dir, overwrite_problem, unlock
from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed

REPO = Path(__file__).resolve().parents[2]
FORK = multiprocessing.get_context("fork")


def _take_and_keep(folder: Path, held) -> None:
    with lock_checkpoint_dir(folder):  # the lock lives as long as the open file
        held.set()
        time.sleep(600)


def _hold_lock(folder: Path):
    """Another process that takes `folder`'s lock and keeps it until killed (forked: no second import)."""
    held = FORK.Event()
    holder = FORK.Process(target=_take_and_keep, args=(folder, held), daemon=True)
    holder.start()
    assert held.wait(timeout=60), "the other process did not get the lock"
    return holder


def _kill(process) -> None:
    process.kill()  # SIGKILL: no chance to clean up; the kernel drops its lock
    process.join()


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(tmp_path):
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(CheckpointError) as refused:
            lock_checkpoint_dir(tmp_path)
        assert f"host {socket.gethostname()}, pid {holder.pid}, since " in str(refused.value)
        assert f"{tmp_path} is in use by another run" in str(refused.value)
    finally:
        _kill(holder)
    assert (tmp_path / LOCK).exists()  # the stale file stays...
    handle = lock_checkpoint_dir(tmp_path)  # ...and does not block
    assert f"pid {os.getpid()}," in (tmp_path / LOCK).read_text()
    unlock(handle)


def _sleep(seconds):
    time.sleep(seconds)


def test_unlock_releases_the_lock_that_a_forked_child_shares(tmp_path):
    # Megatron forks the asynchronous checkpoint writer: the child shares the lock and may outlive the run.
    handle = lock_checkpoint_dir(tmp_path)
    child = FORK.Process(target=_sleep, args=(60,), daemon=True)
    child.start()
    try:
        unlock(handle)
        _kill(_hold_lock(tmp_path))  # would fail if the child still held the lock
    finally:
        _kill(child)


def test_a_fresh_run_into_a_folder_with_checkpoints_names_the_folder_and_latest_step(tmp_path):
    assert overwrite_problem(tmp_path / "absent") is None
    assert overwrite_problem(tmp_path) is None  # empty
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "iter_0000003.tmp").mkdir()
    assert overwrite_problem(tmp_path) is None  # no step was ever published
    (tmp_path / "iter_0000002").mkdir()
    assert "holds 1 checkpoint(s) (latest: none; newest folder iter_0000002)" in overwrite_problem(tmp_path)
    (tmp_path / "iter_0000004").mkdir()
    (tmp_path / LATEST).write_text("iter_0000004")
    problem = overwrite_problem(tmp_path)
    assert problem.startswith(f"train.resume=false, but train.checkpoint_dir {tmp_path} holds 2 checkpoint(s) "
                              "(latest: iter_0000004)")
    assert "train.overwrite=true" in problem and "\n" not in problem


def _pretrain_errors(rank, world_size, ckpt, common, cases):
    """pretrain's error under each case's overrides, one after another; during the first, rank 0 holds the lock
    through another open file (flock treats that as another holder, as it does another process)."""
    from megatron_moviegen.training.pretrain import pretrain

    errors = []
    for index, overrides in enumerate(cases):
        other = lock_checkpoint_dir(ckpt) if index == 0 and rank == 0 else None
        try:
            pretrain(load_config("tiny", common + overrides))
            errors.append("no error")
        except Exception as exc:  # returned to the parent for inspection
            errors.append(f"{type(exc).__name__}: {exc}")
        unlock(other)
    return os.getpid(), errors


def test_pretrain_refuses_on_every_rank_before_building_anything_and_releases_the_lock(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "iter_0000004").mkdir(parents=True)
    (ckpt / LATEST).write_text("iter_0000004")
    common = [f"data.shards={tmp_path / 'no-shards'}", f"train.checkpoint_dir={ckpt}", "train.global_batch_size=2"]
    ranks = run_distributed(_pretrain_errors, 2, args=(ckpt, common, [
        [],  # the folder is held
        ["train.resume=false"],
        ["train.resume=false", "train.overwrite=true"],  # claimed, then the missing shards stop it
    ]))
    holder = ranks[0][0]
    for _, (held, fresh, told) in ranks:
        assert held.startswith(f"CheckpointError: train.checkpoint_dir {ckpt} is in use by another run (host "
                               f"{socket.gethostname()}, pid {holder}, since "), held
        assert fresh.startswith(f"CheckpointError: train.resume=false, but train.checkpoint_dir {ckpt} holds 1 "
                                "checkpoint(s) (latest: iter_0000004)"), fresh
        assert told.startswith("FileNotFoundError") and "no-shards" in told, told
    unlock(lock_checkpoint_dir(ckpt))  # released by the runs that ended
    assert (ckpt / LATEST).read_text() == "iter_0000004"


def test_train_cli_refuses_a_fresh_run_into_a_used_folder_in_one_line_and_changes_nothing(tmp_path):
    (tmp_path / "iter_0000002").mkdir()
    (tmp_path / LATEST).write_text("iter_0000002")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    proc = subprocess.run([sys.executable, "-m", "megatron_moviegen.train", "--config", "tiny",
                           f"data.shards={tmp_path / 'shards'}", f"train.checkpoint_dir={tmp_path}", "train.steps=2",
                           "train.resume=false", "train.progress_bar=false"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "Warning" not in line and "warnings.warn" not in line]
    assert errors == [f"train: error: train.resume=false, but train.checkpoint_dir {tmp_path} holds 1 checkpoint(s) "
                      "(latest: iter_0000002); this run would overwrite their steps and move `latest`. Set "
                      "train.overwrite=true to do that, train.resume=true to continue them, or another "
                      "train.checkpoint_dir"], proc.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before  # no lock file either
