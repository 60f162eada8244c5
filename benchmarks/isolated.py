"""Time and peak memory of one benchmark case, alone in a fresh spawned process.

`case(*args)` runs in the child: it does its setup and warm-up, then returns the work to measure (a callable with
no arguments). Memory is the child's peak resident set size (getrusage ru_maxrss) minus its RSS just before the
work, so the peak belongs to that case alone.
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    queue.put((seconds, max(peak - before, 0) / 2**20))


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
