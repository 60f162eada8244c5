"""One run at a time in a checkpoint folder, and no fresh run over another run's steps.

    with claim_checkpoint_dir(cfg.train, runtime.device):   # every rank; rank 0 holds the lock
        ...train and save...

Rank 0 takes an exclusive `fcntl.flock` on `<checkpoint_dir>/.lock` before anything is written there and keeps
it until the block ends. The kernel drops the lock when its holder dies, so a killed run leaves no stale lock;
the file itself stays and names its last holder (host, pid, start time), which a refused run reports. A run
with `train.resume=false` is refused when the folder already holds checkpoints, unless `train.overwrite=true`.
Both refusals reach every rank as the same CheckpointError, before the model is built.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Iterator

import torch
import torch.distributed as dist

from megatron_moviegen.checkpoints.protocol import DIT_STEPS, LATEST, CheckpointError, latest_name

LOCK = ".lock"
log = logging.getLogger("megatron_moviegen.checkpoints")


def overwrite_problem(checkpoint_dir: Path) -> str | None:
    """Why a fresh run (train.resume=false) must not write into `checkpoint_dir`, or None if it holds no steps."""
    steps, latest = DIT_STEPS.folders(checkpoint_dir), latest_name(checkpoint_dir)
    if not steps and latest is None:
        return None
    latest = latest or f"none; newest folder {steps[-1].name}"
    return (f"train.resume=false, but train.checkpoint_dir {checkpoint_dir} holds {len(steps)} checkpoint(s) "
            f"(latest: {latest}); this run would overwrite their steps and move `{LATEST}`. Set "
            "train.overwrite=true to do that, train.resume=true to continue them, or another train.checkpoint_dir")


def refuse_overwrite(train, checkpoint_dir: Path) -> None:
    problem = None if train.resume or train.overwrite else overwrite_problem(checkpoint_dir)
    if problem is not None:
        raise CheckpointError(problem)


def lock_checkpoint_dir(checkpoint_dir: Path) -> IO | None:
    """Take `checkpoint_dir/.lock` for this process and write who holds it; returns the open lock file (the lock
    lives as long as it, or until `unlock`). Raises CheckpointError naming the holder if another process has it;
    returns None, warning, on a file system without flock (e.g. Lustre mounted without `-o flock`)."""
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        handle = open(checkpoint_dir / LOCK, "a+")
    except OSError as exc:
        raise CheckpointError(f"train.checkpoint_dir {checkpoint_dir} is not writable: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "holder not yet written"
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CheckpointError(
                f"train.checkpoint_dir {checkpoint_dir} is in use by another run ({holder}; {checkpoint_dir / LOCK}); "
                "two runs in one folder would interleave their steps. Wait for it to end, stop it, or use another "
                "train.checkpoint_dir") from None
        log.warning("%s: cannot lock (%s); nothing stops a second run from writing here", checkpoint_dir / LOCK, exc)
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def unlock(handle: IO | None) -> None:
    """Release explicitly: a forked child (an async checkpoint writer) shares the lock and would keep it."""
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def claim_checkpoint_dir(train, device: torch.device) -> Iterator[None]:
    """Hold `train.checkpoint_dir` for this run (see the module docstring). Every rank must enter it; `device`:
    the runtime's (the refusal is broadcast on it)."""
    checkpoint_dir = Path(train.checkpoint_dir)
    handle, answer = None, [None]
    if dist.get_rank() == 0:
        try:
            refuse_overwrite(train, checkpoint_dir)  # before any write: a refused fresh run leaves the folder as is
            handle = lock_checkpoint_dir(checkpoint_dir)
            refuse_overwrite(train, checkpoint_dir)  # and under the lock: a run that ended meanwhile may have saved
        except CheckpointError as exc:
            answer = [str(exc)]
    dist.broadcast_object_list(answer, src=0, device=device)
    try:
        if answer[0] is not None:
            raise CheckpointError(answer[0])
        yield
    finally:
        unlock(handle)
