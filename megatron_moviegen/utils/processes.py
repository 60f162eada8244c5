"""Helper processes that must not outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), so a worker
    whose parent was killed with SIGKILL does not live on, holding files and memory; exits at once if the parent
    (`parent_pid`, its pid before the fork) is already gone. Elsewhere a no-op: the workers then end as before."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not permitted here (seccomp): keep the old behaviour rather than fail the job
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


def outlive_group_signals_not_parent(parent_pid: int) -> None:
    """For a helper that a save depends on: ignore SIGINT / SIGTERM (SLURM, torchrun and Ctrl-C signal the whole
    process group, and the save that SIGTERM asks for must still finish), but die with the parent (`die_with_parent`)
    so a killed rank leaves no helper behind holding its stdout. The parent ends it at exit as before."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent_pid)
