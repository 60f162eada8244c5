"""Training checkpoints with megatron.core.dist_checkpointing: loadable under any TP/PP layout.

    <checkpoint_dir>/
        latest                      "iter_0000200" (written last, atomically)
        iter_0000200/               dist_checkpointing folder: model + optimizer shards, common state
            rank_state/dp00000.pt   data-loader position of data-parallel replica 0
            rank_state/rank00000.pt RNG states of global rank 0

A save goes to `iter_XXXXXXX.tmp/` and is renamed once every rank has written, so a crash mid-save leaves
the previous checkpoint and `latest` untouched; a leftover `.tmp` is removed by the next save.

Saves are fully parallel: Megatron's `FullyParallelSaveStrategyWrapper` spreads the writing of replicated
tensors over the data-parallel (x context-parallel) replicas instead of leaving it all to DP rank 0, so a
checkpoint of hundreds of GB is written by every rank at once. With `train.async_save` the tensor files are
written by a background process while training goes on; the rename and `latest` happen when it has finished
on every rank (`finalize_async_saves`: at the next save, and before the process exits).
"""

from __future__ import annotations

import os
import random
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)

from megatron_moviegen.config.schema import to_dict
from megatron_moviegen.utils.io import atomic_output

LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    pointer = Path(checkpoint_dir) / LATEST
    if not pointer.exists():
        return None
    path = Path(checkpoint_dir) / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} points to {path}, which does not exist")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A step folder, or a checkpoint_dir whose `latest` names one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if (path / LATEST).exists():
        return latest_checkpoint(path)
    if not (path / "metadata.json").exists():
        raise FileNotFoundError(f"{path} is neither a dist checkpoint (no metadata.json) nor has a `latest` file")
    return path


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["cuda"] = torch.cuda.get_rng_state()
        state["rng_tracker"] = get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        torch.cuda.set_rng_state(state["cuda"])
        get_cuda_rng_tracker().set_states(state["rng_tracker"])


def _model_sharded_state(model_chunks) -> dict:
    if len(model_chunks) == 1:
        return {"model": model_chunks[0].sharded_state_dict()}
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def _unwrap(chunks):
    return [getattr(chunk, "module", chunk) for chunk in chunks]


_async_saves: AsyncCallsQueue | None = None


def _replica_group():
    """The ranks holding the same model shard: data-parallel x context-parallel replicas."""
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def save_strategy() -> FullyParallelSaveStrategyWrapper:
    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy("torch_dist"), _replica_group())


def finalize_async_saves(blocking: bool = True) -> None:
    """Publish (rename, `latest`) an asynchronous save once every rank has written it; with `blocking`, wait for
    it. Every rank must call it; a no-op when nothing is pending. The training loop calls it non-blocking after
    every step, and blocking before the process exits."""
    if _async_saves is not None:
        _async_saves.maybe_finalize_async_calls(blocking=blocking)


def _publish(checkpoint_dir: Path, tmp: Path, final: Path) -> None:
    """Once every rank has written: `iter_X.tmp` -> `iter_X`, then `latest` -> `iter_X` (rank 0)."""
    dist.barrier()
    if dist.get_rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = checkpoint_dir / (LATEST + ".tmp")
        pointer_tmp.write_text(final.name)
        os.replace(pointer_tmp, checkpoint_dir / LATEST)
    dist.barrier()


def save_checkpoint(checkpoint_dir: str | Path, step: int, model_chunks, optimizer, scheduler, loader, cfg,
                    ema=None) -> Path:
    """Save everything needed to continue exactly at `step` (with `ema`, this rank's EMA shards too); returns the
    step folder (which, with cfg.train.async_save, exists once `finalize_async_saves` has run)."""
    global _async_saves
    finalize_async_saves()  # one save in flight at a time
    checkpoint_dir = Path(checkpoint_dir)
    final = checkpoint_dir / step_dir_name(step)
    tmp = checkpoint_dir / (final.name + ".tmp")
    rank = dist.get_rank()
    if rank == 0:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()

    chunks = _unwrap(model_chunks)
    state = _model_sharded_state(chunks)
    state["optimizer"] = optimizer.sharded_state_dict(state["model"] if len(chunks) == 1 else
                                                      {k: v for k, v in state.items() if k.startswith("model")})
    state["step"] = step
    state["scheduler"] = scheduler.state_dict()
    state["config"] = to_dict(cfg)
    # Into an empty folder: dist_checkpointing warns about anything already there.
    request = dist_checkpointing.save(state, str(tmp), save_strategy(), async_sharded_save=cfg.train.async_save)
    (tmp / "rank_state").mkdir(exist_ok=True)

    if parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_pipeline_model_parallel_rank() == 0 \
            and parallel_state.get_context_parallel_rank() == 0 and loader is not None:
        dp_rank = parallel_state.get_data_parallel_rank()
        _atomic_torch_save(loader.state_dict(), tmp / "rank_state" / f"dp{dp_rank:05d}.pt")
    _atomic_torch_save(_rng_state(), tmp / "rank_state" / f"rank{rank:05d}.pt")
    if ema is not None:
        _atomic_torch_save(ema.state_dict(), ema_file(tmp, rank))
    if request is None:
        _publish(checkpoint_dir, tmp, final)
    else:
        request.add_finalize_fn(partial(_publish, checkpoint_dir, tmp, final))
        _async_saves = _async_saves or AsyncCallsQueue()
        _async_saves.schedule_async_request(request)
    return final


def ema_file(step_dir: Path, rank: int) -> Path:
    """This rank's EMA shards (training/ema.py), tied to the layout they were saved under."""
    return step_dir / "rank_state" / f"ema{rank:05d}.pt"


def load_checkpoint(path: str | Path, model_chunks, optimizer=None, scheduler=None, loader=None,
                    restore_rng: bool = True, ema=None) -> int:
    """Load model (and, if given, optimizer/scheduler/loader/RNG/EMA) state; returns the saved step.

    The model loads under any TP/PP layout; the loader position and RNG only when the layout matches.
    """
    path = resolve_checkpoint(path)
    chunks = _unwrap(model_chunks)
    state = _model_sharded_state(chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"] if len(chunks) == 1 else {k: v for k, v in state.items() if k.startswith("model")},
            is_loading=True)
    strategy = get_default_load_sharded_strategy(str(path))
    if torch.cuda.is_available():  # its exchange of loaded shards allocates on CUDA
        strategy = FullyParallelLoadStrategyWrapper(strategy, _replica_group())
    loaded = dist_checkpointing.load(state, str(path), strategy)
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded["model" if len(chunks) == 1 else f"model{i}"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    dp_file = path / "rank_state" / f"dp{parallel_state.get_data_parallel_rank():05d}.pt"
    if loader is not None:
        if not dp_file.exists():
            raise FileNotFoundError(
                f"{dp_file}: no loader position for data-parallel rank {parallel_state.get_data_parallel_rank()}; "
                "the data-parallel size changed since the save, so the data order cannot resume exactly"
            )
        loader.load_state_dict(torch.load(dp_file, weights_only=False))
    rng_file = path / "rank_state" / f"rank{dist.get_rank():05d}.pt"
    if restore_rng and rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    if ema is not None:
        saved_ema = ema_file(path, dist.get_rank())
        if not saved_ema.exists():
            raise FileNotFoundError(f"{saved_ema}: this checkpoint has no EMA of the weights (train.ema_decay was "
                                    "not set when it was saved); unset train.ema_decay or start a new run")
        ema.load_state_dict(torch.load(saved_ema, weights_only=False))
    return int(loaded["step"])


def read_saved_config(path: str | Path) -> dict:
    """The config dict stored in a checkpoint's common state (rank-local read, no process group needed)."""
    common = dist_checkpointing.load_common_state_dict(str(resolve_checkpoint(path)))
    return common["config"]
