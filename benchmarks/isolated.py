"""Time and peak memory of one benchmark case, alone in a fresh spawned process.

`case(*args)` runs in the child: it does its setup and warm-up, then returns the work to measure (a callable with
no arguments). Memory is the child's peak resident set size minus its RSS just before the work, so the peak belongs
to that case alone. The peak is Linux's VmHWM (/proc/self/status), the high-water mark of the child's own memory:
getrusage's ru_maxrss survives the exec of a spawned child, so it reports the parent's RSS at the fork when that
was larger (elsewhere than Linux it is the fallback).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from queue import Empty
from typing import Callable

import psutil


def _child(case: Callable, args: tuple, queue) -> None:
    work = case(*args)
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    queue.put((seconds, max(_peak_rss() - before, 0) / 2**20))


def _peak_rss() -> int:
    """Bytes: this process's high-water resident set size since its exec."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux's and BSD's unit: KiB


def measure_isolated(case: Callable, *args) -> tuple[float, float]:
    """(seconds, peak MiB) of the work `case(*args)` returns, measured in a fresh spawned process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(case, args, queue))
    proc.start()
    while True:  # a child that dies (an exception, the OOM killer) puts nothing: its exit code says so
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"benchmark case {getattr(case, '__name__', case)} died (exit code {proc.exitcode})")
    proc.join()
    return result
