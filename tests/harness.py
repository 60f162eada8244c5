"""Run a function on N gloo ranks (torch.multiprocessing, spawn) and collect each rank's return value.

    results = run_distributed(my_fn, world_size=2, args=(cfg,))   # my_fn(rank, world_size, *args)

`my_fn` must be importable (module level). torch.distributed is initialised on gloo before it runs and
destroyed after; Megatron's parallel state is reset by the function itself (see `megatron_moviegen.parallel`).
A failing rank's traceback is re-raised in the parent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # A file rendezvous: no port to pick (a bound-then-released port can be taken by another process).
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable, world_size: int, args: tuple = ()) -> list[Any]:
    """Run `fn(rank, world_size, *args)` on `world_size` gloo ranks; return the per-rank results in rank order."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(world_size, out_dir, fn, args), nprocs=world_size,
                           join=True, start_method="spawn")
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
