"""Start torch.distributed and Megatron's parallel state from a ParallelConfig.

Works under torchrun (RANK/WORLD_SIZE/LOCAL_RANK), under SLURM's srun (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID,
MASTER_ADDR/MASTER_PORT from the sbatch script), alone (an in-memory store, no port), or in an already
initialised process group (tests).
The backend and the device come from the `Runtime` (NCCL and cuda:<local rank> on GPU, gloo on CPU).
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_moviegen.parallel.config import ParallelConfig
from megatron_moviegen.parallel.cpu_shim import apply_cpu_shim
from megatron_moviegen.runtime import Runtime, rank_and_world_from_env


def init_distributed(runtime: Runtime, timeout_minutes: int = 30) -> tuple[int, int]:
    """Initialise the default process group if needed (the runtime's backend, its device made current);
    returns (rank, world_size)."""
    if not dist.is_initialized():
        rank, world_size = rank_and_world_from_env()
        if runtime.on_gpu:
            torch.cuda.set_device(runtime.device)
        timeout = timedelta(minutes=timeout_minutes)
        if world_size == 1 and "MASTER_PORT" not in os.environ:
            # One process needs no rendezvous: an in-memory store, so no port can be taken by someone else.
            dist.init_process_group(runtime.backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group(runtime.backend, rank=rank, world_size=world_size, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def init_model_parallel(parallel: ParallelConfig, runtime: Runtime) -> int:
    """Create Megatron's TP/CP/PP/DP groups (CPU shim applied first on a CPU runtime); returns the DP size."""
    if not runtime.on_gpu:
        apply_cpu_shim()
    _, world_size = init_distributed(runtime)
    dp_size = parallel.check_world_size(world_size)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        create_gloo_process_groups=runtime.on_gpu,
    )
    return dp_size


def set_seed(seed: int, runtime: Runtime) -> None:
    """Seed python, numpy and torch; on GPU also Megatron's model-parallel CUDA RNG tracker.

    On CPU the tracker is not used: dropout is 0 in Movie Gen, and activation recomputation uses
    torch.utils.checkpoint, which restores the CPU RNG itself.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if runtime.on_gpu:
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def destroy() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()


@contextmanager
def torn_down_after() -> Iterator[None]:
    """Megatron's groups, and the process group when this block's code started it (a command loading a model on
    however many ranks it was launched with), are destroyed when the block ends."""
    started = not dist.is_initialized()
    try:
        yield
    finally:
        destroy()
        if started and dist.is_initialized():
            dist.destroy_process_group()
