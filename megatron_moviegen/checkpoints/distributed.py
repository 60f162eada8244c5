"""Training checkpoints with megatron.core.dist_checkpointing: loadable under any TP/PP layout.

    <checkpoint_dir>/
        latest                      "iter_0000200" (written last, atomically)
        iter_0000200/               dist_checkpointing folder: model + optimizer shards, common state
            config.yaml             the run's config (checkpoints/protocol.py read_config)
            rank_state/dp00000.pt   data-loader position of data-parallel replica 0
            rank_state/rank00000.pt RNG states of global rank 0

The folder follows checkpoints/protocol.py (`DIT_STEPS`): a save goes to `iter_XXXXXXX.tmp/` and is published
(renamed, then `latest`) once every rank has written, so a crash mid-save leaves the previous checkpoint and
`latest` untouched; a leftover `.tmp` is removed by the next save. With `train.keep_last` N, once a save is
published the step folders older than it beyond the newest N are deleted (never the one `latest` names or
`train.load_from`'s; `protocol.prune`).

Saves are fully parallel: Megatron's `FullyParallelSaveStrategyWrapper` spreads the writing of replicated
tensors over the data-parallel (x context-parallel) replicas instead of leaving it all to DP rank 0, so a
checkpoint of hundreds of GB is written by every rank at once. With `train.async_save` the tensor files are
written by a background process while training goes on; the rename and `latest` happen when it has finished
on every rank (`finalize_async_saves`: at the next save, and before the process exits).

A load refuses, with a CheckpointError naming the file or tensor, a step folder whose files are shorter than
its metadata says (a copy or a write cut short; the previous complete step is named) and a model that is not
the saved one (a tensor of another shape, or saved tensors the model does not have, e.g. fewer layers).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import pickle
import random
import re
import queue
import stat
from functools import partial
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)
from megatron.core.dist_checkpointing import ShardedTensor
from megatron.core.dist_checkpointing.mapping import ShardedBase, ShardedTensorFactory
from megatron.core.dist_checkpointing.dict_utils import nested_values
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from megatron_moviegen.checkpoints.protocol import (DIT_STEPS, LATEST, CheckpointError, full_disk_named,
                                                    latest_checkpoint, latest_name, previous_good, prune, publish,
                                                    write_config)
from megatron_moviegen.checkpoints.tp_shards import local_name
from megatron_moviegen.config.schema import to_dict
from megatron_moviegen.models.lora import is_adapter_name
from megatron_moviegen.utils.processes import outlive_group_signals_not_parent
from megatron_moviegen.utils.io import DamagedFileError, atomic_output, read_json_file, reading

COMMON_STATE = "common.pt"  # dist_checkpointing's file of the non-tensor state


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


def storage_problem(step_dir: Path) -> str | None:
    """Why a step folder cannot be complete (its metadata.json or common state damaged, its tensor files shorter
    than its `.metadata` says), or None."""
    try:
        read_common_state(step_dir)
    except DamagedFileError as exc:
        return str(exc)
    try:
        metadata = FileSystemReader(str(step_dir)).read_metadata()
    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError) as exc:
        return f"{step_dir / '.metadata'} cannot be read ({type(exc).__name__}: {exc})"
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = step_dir / name
        have = file.stat().st_size if file.is_file() else None
        if have is None or have < size:
            got = "is missing" if have is None else f"has {have} bytes"
            return f"{file} {got}, its metadata needs {size} (truncated copy or save)"
    return None


def previous_good_step(step_dir: Path) -> Path | None:
    """The latest step folder beside `step_dir`, saved before it, whose files are complete."""
    return previous_good(step_dir, DIT_STEPS,
                         lambda f: storage_problem(f) if (f / "metadata.json").exists() else "no metadata.json")


def check_complete(step_dir: Path) -> None:
    problem = storage_problem(step_dir)
    if problem is None:
        return
    raise CheckpointError(f"{problem}; {_fallback(step_dir)}")


def _fallback(step_dir: Path) -> str:
    previous = previous_good_step(step_dir)
    return (f"the previous complete step is {previous} (load that folder, or point {LATEST} at it)"
            if previous is not None else "there is no earlier complete step beside it")


def natural_order(key: str) -> list:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def check_model_matches(step_dir: Path, model_states: list[dict], model_config=None,
                        loaded_apart: frozenset[str] = frozenset()) -> None:
    """Refuse to load a model that is not the saved one: a tensor whose global shape differs, or saved model
    tensors that no rank of this model asks for (they would be silently dropped). `loaded_apart`: saved keys
    the caller loads itself (the stage loader's position tables). Every rank must call it."""
    saved = {key: tuple(t.global_shape) for key, t in dist_checkpointing.load_tensors_metadata(str(step_dir)).items()
             if not key.startswith("optimizer.") and key not in loaded_apart}
    wanted = {t.key: tuple(t.global_shape) for t in _sharded_tensors(model_states)}
    hint = _config_hint(step_dir, model_config)
    for key in sorted(wanted, key=natural_order):
        if key not in saved:
            raise CheckpointError(f"{step_dir}: this model has tensor {key!r} {wanted[key]} but the checkpoint does "
                                  f"not{hint}")
        if saved[key] != wanted[key]:
            raise CheckpointError(f"{step_dir}: tensor {key!r} is {saved[key]} in the checkpoint but {wanted[key]} "
                                  f"in this model{hint}")
    unused = sorted(set(saved).difference(*keys_of_every_stage(set(wanted))), key=natural_order)
    if unused:
        raise CheckpointError(f"{step_dir}: checkpoint tensor {unused[0]!r} {saved[unused[0]]} is not in this model "
                              f"({len(unused)} saved tensors would be dropped){hint}")


def keys_of_every_stage(keys: set[str]) -> list[set[str]]:
    """This rank's keys and those of the other pipeline stages (the only ranks that ask for other tensors;
    gathering over the pipeline group keeps this small on thousands of ranks)."""
    if not (dist.is_initialized() and parallel_state.model_parallel_is_initialized()):
        return [keys]
    group = parallel_state.get_pipeline_model_parallel_group()
    everyone = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, keys, group=group)
    return everyone


def _sharded_tensors(states) -> list[ShardedTensor]:
    """The ShardedTensors of nested sharded state dicts, factories (the SwiGLU fc1 split) built."""
    out = []
    for value in nested_values(states):
        if isinstance(value, ShardedTensorFactory):
            out += _sharded_tensors(value.build())
        elif isinstance(value, ShardedTensor):
            out.append(value)
    return out


SHARD_FIELDS = ("key", "dtype", "local_shape", "global_shape", "global_offset", "axis_fragmentations", "replica_id",
                "prepend_axis_num", "flattened_range")  # where a shard sits: what dist_checkpointing validates


def structure_digest(state) -> str:
    """SHA-256 of where every shard of a sharded state dict sits (SHARD_FIELDS of each ShardedTensor and
    ShardedObject, factories built), not of the values: equal for two saves of the same model and optimizer."""
    shards = []
    for value in nested_values(state):
        if isinstance(value, ShardedTensorFactory):
            shards.append(structure_digest(value.build()))
        elif isinstance(value, ShardedBase):
            shards.append(repr([type(value).__name__, *(getattr(value, f, None) for f in SHARD_FIELDS)]))
    return hashlib.sha256("\n".join(shards).encode()).hexdigest()


_validated_structure: str | None = None  # this process's last save whose sharding dist_checkpointing validated


def sharding_needs_validation(digest: str, device: torch.device) -> bool:
    """Whether a save must have dist_checkpointing validate its sharding (an all_gather_object of every rank's
    shard metadata to every rank, O(ranks x shards) each, and a check of it all on rank 0): unless every rank saves
    the structure its last validated save had (`digest`: `structure_digest` of the state to save; one all_reduce
    of a flag). Every rank must call it."""
    unchanged = torch.tensor([int(digest == _validated_structure)], device=device)
    dist.all_reduce(unchanged, op=dist.ReduceOp.MIN)
    return not unchanged.item()


def _config_hint(step_dir: Path, model_config) -> str:
    """"; saved model.num_layers=4, this model 2" for the model fields that differ from the saved config."""
    if model_config is None:
        return ""
    saved = read_saved_config(step_dir).get("model", {})
    now = to_dict(model_config)
    differ = [f"model.{k}={saved[k]!r}, this model {now[k]!r}"
              for k in sorted(now) if k in saved and saved[k] != now[k]]
    return f"; saved {'; '.join(differ)}" if differ else ""


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _rng_state(device: torch.device) -> dict:
    """This rank's RNG states; the CUDA ones when the model is on a GPU (`device`: the model's)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["cuda"] = torch.cuda.get_rng_state()
        state["rng_tracker"] = get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        torch.cuda.set_rng_state(state["cuda"])
        get_cuda_rng_tracker().set_states(state["rng_tracker"])


def _adapters_only(model_chunks) -> bool:
    """A LoRA model: its training checkpoints hold the adapters only."""
    dit_config = getattr(model_chunks[0], "dit_config", None)
    return dit_config is not None and dit_config.lora.enabled


def _model_sharded_state(model_chunks) -> dict:
    """What a training checkpoint holds of each chunk: everything, or with LoRA only the adapters (the frozen base
    model is train.load_from's)."""
    states = [chunk.sharded_state_dict() for chunk in model_chunks]
    if _adapters_only(model_chunks):
        states = [{key: value for key, value in state.items() if is_adapter_name(key)} for state in states]
    if len(model_chunks) == 1:
        return {"model": states[0]}
    return {f"model{i}": state for i, state in enumerate(states)}


def _unwrap(chunks):
    return [getattr(chunk, "module", chunk) for chunk in chunks]


_async_saves: AsyncCallsQueue | None = None
_async_pending: tuple[Path, Path, str] | None = None  # (checkpoint_dir, its iter_X.tmp, what) of the save in flight


def _replica_group():
    """The ranks holding the same model shard: data-parallel x context-parallel replicas."""
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def save_strategy(async_save: bool) -> FullyParallelSaveStrategyWrapper:
    """Megatron's torch_dist saving, fully parallel over the replicas, its writers reporting their results through
    the queue the save needs (`_writer_results_queue`)."""
    filesystem_async._results_queue = _writer_results_queue(async_save)
    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy("torch_dist"), _replica_group())


_writer_manager: SyncManager | None = None
_helper_queue = None  # the queue _writer_manager serves


def _writer_results_queue(async_save: bool, method: str = "spawn"):
    """Where Megatron's torch_dist writers report their results (megatron-core 0.16, filesystem_async._results_queue).

    A synchronous save runs the writers' parent in this process (`execute_sync`), which also reads the results: a
    new queue of this process (no result of a failed save left for the next), no helper. Megatron's own default,
    a `multiprocessing` Manager process it spawns on first use, cost the first save 6 s (a new interpreter importing
    the main module, then torch to read the results), and a SIGTERM to the process group killed it, so the save the
    signal asked for ended in BrokenPipeError.

    An asynchronous save runs the writers' parent in a forked process, so it needs a process serving the queue:
    a Manager started by `method` that ignores SIGINT / SIGTERM and dies with this process (a rank killed with
    SIGKILL leaves no helper holding the job's stdout); `start_save_helper` forks it early."""
    global _writer_manager, _helper_queue
    if not async_save:
        return queue.Queue()
    if _helper_queue is None:
        manager = SyncManager(ctx=mp.get_context(method))
        manager.start(outlive_group_signals_not_parent, (os.getpid(),))
        _writer_manager, _helper_queue = manager, manager.Queue()  # kept: dropping the manager shuts it down
    return _helper_queue


def start_save_helper() -> None:
    """Start the asynchronous saves' helper process (`_writer_results_queue`) now, forked before this process has
    CUDA or process groups (no threads of theirs to copy), in milliseconds; a no-op after those exist, where the
    first asynchronous save spawns it. `pretrain` calls it first thing when train.async_save is set."""
    if not torch.cuda.is_initialized() and not dist.is_initialized():
        _writer_results_queue(async_save=True, method="fork")


def finalize_async_saves(blocking: bool = True) -> None:
    """Publish (rename, `latest`) an asynchronous save once every rank has written it; with `blocking`, wait for
    it. Every rank must call it; a no-op when nothing is pending. The training loop calls it non-blocking after
    every step, and blocking before the process exits. A background write that found the disk full is the same one
    CheckpointError as a synchronous one (`full_disk_named`): its partial folder removed, the last step untouched."""
    global _async_pending
    if _async_saves is None:
        return
    guard = full_disk_named(*_async_pending) if _async_pending is not None else contextlib.nullcontext()
    try:
        with guard:
            _async_saves.maybe_finalize_async_calls(blocking=blocking)
    finally:
        if _async_saves.get_num_unfinalized_calls() == 0:  # finished, or failed (Megatron drops a failed call)
            _async_pending = None


def _publish(checkpoint_dir: Path, tmp: Path, final: Path, keep_last: int | None = None,
             load_from: str | None = None) -> None:
    """Once every rank has written: `iter_X.tmp` -> `iter_X`, then `latest` -> `iter_X` (rank 0); then rank 0
    applies the retention rule while the others go on."""
    dist.barrier()
    if dist.get_rank() == 0:
        publish(checkpoint_dir, tmp, final)
    dist.barrier()
    if dist.get_rank() == 0 and keep_last is not None:
        prune_steps(checkpoint_dir, final, keep_last, load_from)


def prune_steps(checkpoint_dir: Path, newest: Path, keep_last: int, load_from: str | None = None) -> list[Path]:
    """`protocol.prune` after the save of `newest`, keeping `load_from`'s step too (a step folder, or a
    checkpoint_dir's latest); returns the folders deleted."""
    protected = set()
    if load_from:
        source = Path(load_from)
        protected = {source.resolve()}
        if latest_name(source) is not None:
            protected.add((source / latest_name(source)).resolve())
    return prune(checkpoint_dir, DIT_STEPS, DIT_STEPS.step_of(newest), keep_last, frozenset(protected))


def save_checkpoint(checkpoint_dir: str | Path, step: int, model_chunks, optimizer, scheduler, loader, cfg,
                    ema=None) -> Path:
    """Save everything needed to continue exactly at `step` (with `ema`, this rank's EMA shards too); returns the
    step folder (which, with cfg.train.async_save, exists once `finalize_async_saves` has run). Without an
    optimizer and scheduler it is a weights-only checkpoint: a start for `train.load_from` (a new stage) and for
    export, not a run to resume."""
    global _async_saves, _async_pending, _validated_structure
    finalize_async_saves()  # one save in flight at a time
    checkpoint_dir = Path(checkpoint_dir)
    final = checkpoint_dir / DIT_STEPS.name(step)
    tmp = DIT_STEPS.partial(final)
    rank = dist.get_rank()
    chunks = _unwrap(model_chunks)
    device = next(chunks[0].parameters()).device
    problem = [_make_step_folder(checkpoint_dir, final, step) if rank == 0 else None]
    dist.broadcast_object_list(problem, src=0, device=device)  # every rank raises
    if problem[0] is not None:
        raise CheckpointError(problem[0])

    state = _model_sharded_state(chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"] if len(chunks) == 1 else
                                                          {k: v for k, v in state.items() if k.startswith("model")})
    state["step"] = step
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["config"] = to_dict(cfg)
    digest = structure_digest(state)  # before the save, which builds the factories in place
    validate = sharding_needs_validation(digest, device)
    with full_disk_named(checkpoint_dir, tmp, f"saving step {step}"):
        # Into an empty folder: dist_checkpointing warns about anything already there.
        request = dist_checkpointing.save(state, str(tmp), save_strategy(cfg.train.async_save),
                                          async_sharded_save=cfg.train.async_save,
                                          validate_access_integrity=validate)
        if validate:
            _validated_structure = digest
        (tmp / "rank_state").mkdir(exist_ok=True)

        if parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_pipeline_model_parallel_rank() \
                == 0 and parallel_state.get_context_parallel_rank() == 0 and loader is not None:
            dp_rank = parallel_state.get_data_parallel_rank()
            _atomic_torch_save(loader.state_dict(), tmp / "rank_state" / f"dp{dp_rank:05d}.pt")
        _atomic_torch_save(_rng_state(device), tmp / "rank_state" / f"rank{rank:05d}.pt")
        if ema is not None:
            _atomic_torch_save(ema.state_dict(), ema_file(tmp, rank))
        if rank == 0:
            write_config(tmp, cfg)
    publish = partial(_publish, checkpoint_dir, tmp, final, cfg.train.keep_last, cfg.train.load_from)
    if request is None:
        publish()
    else:
        request.add_finalize_fn(publish)
        _async_saves = _async_saves or AsyncCallsQueue()
        _async_saves.schedule_async_request(request)
        _async_pending = (checkpoint_dir, tmp, f"saving step {step} (in the background)")
    return final


def _make_step_folder(checkpoint_dir: Path, final: Path, step: int) -> str | None:
    """Make the empty partial folder of step folder `final` in `checkpoint_dir` (rank 0); why that is impossible,
    or None. A run's folder replaced by a file while it trained is named here, not met as an error from inside
    dist_checkpointing."""
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        found = (f"a regular file of {checkpoint_dir.stat().st_size} bytes" if checkpoint_dir.is_file()
                 else f"a {stat.filemode(checkpoint_dir.stat().st_mode)} entry that is not a folder")
        return (f"train.checkpoint_dir {checkpoint_dir}: found {found} where this run's checkpoint folder was, need "
                f"a folder; step {step} was not saved. Move the file away (and restore the folder to resume from its "
                "last step), or set another train.checkpoint_dir")
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        DIT_STEPS.start_partial(final)
    except OSError as exc:
        return (f"train.checkpoint_dir {checkpoint_dir}: cannot make {DIT_STEPS.partial(final).name} for step {step} "
                f"({exc.strerror or exc})")
    return None


@contextlib.contextmanager
def tensor_files_named(step_dir: Path) -> Iterator[None]:
    """A load whose tensor files are complete in size (`check_complete`) but not readable (overwritten with other
    bytes): one CheckpointError naming the step folder's tensor files, not torch's per-rank traceback."""
    try:
        yield
    except (Exception, CheckpointException) as exc:
        if isinstance(exc, CheckpointError) or not isinstance(exc, (CheckpointException, pickle.UnpicklingError,
                                                                     RuntimeError, EOFError, ValueError)):
            raise
        files = sorted(str(p) for p in step_dir.glob("*.distcp"))
        shown = "one of " + ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
        cause = _first_failure(exc)
        raise CheckpointError(f"{step_dir}: a tensor file ({shown}) is damaged: of the right size, but "
                              f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:160]}; "
                              f"{_fallback(step_dir)}") from None


def _first_failure(exc: BaseException) -> BaseException:
    """The first rank's exception inside a torch.distributed.checkpoint CheckpointException, else `exc`."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        return first[0] if isinstance(first, tuple) else first
    return exc


def ema_file(step_dir: Path, rank: int) -> Path:
    """This rank's EMA shards (training/ema.py), tied to the layout they were saved under."""
    return step_dir / "rank_state" / f"ema{rank:05d}.pt"


def load_checkpoint(path: str | Path, model_chunks, optimizer=None, scheduler=None, loader=None,
                    restore_rng: bool = True, ema=None) -> int:
    """Load model (and, if given, optimizer/scheduler/loader/RNG/EMA) state; returns the saved step.

    The model loads under any TP/PP layout; the loader position and RNG only when the layout matches.
    """
    path = resolve_checkpoint(path)
    check_complete(path)
    chunks = _unwrap(model_chunks)
    state = _model_sharded_state(chunks)
    check_model_matches(path, list(state.values()), getattr(chunks[0], "dit_config", None))
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"] if len(chunks) == 1 else {k: v for k, v in state.items() if k.startswith("model")},
            is_loading=True)
    strategy = get_default_load_sharded_strategy(str(path))
    device = next(chunks[0].parameters()).device
    if device.type == "cuda":  # its exchange of loaded shards allocates on CUDA
        strategy = FullyParallelLoadStrategyWrapper(strategy, _replica_group())
    with tensor_files_named(path):
        loaded = dist_checkpointing.load(state, str(path), strategy)
    adapters_only = _adapters_only(chunks)
    for i, chunk in enumerate(chunks):
        # The sharded state is keyed by global layer index (any pipeline layout); the module by its local one.
        weights = loaded["model" if len(chunks) == 1 else f"model{i}"]
        # check_model_matches checked the keys; a LoRA checkpoint leaves the (frozen, loaded) base alone.
        chunk.load_state_dict({local_name(k, chunk.layer_offset): v for k, v in weights.items()},
                              strict=not adapters_only)
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
        loader.load_state_dict(_load_rank_state(dp_file, "data-loader position"))
    rng_file = path / "rank_state" / f"rank{dist.get_rank():05d}.pt"
    if restore_rng and rng_file.exists():
        _set_rng_state(_load_rank_state(rng_file, "RNG state"), device)
    if ema is not None:
        saved_ema = ema_file(path, dist.get_rank())
        if not saved_ema.exists():
            raise FileNotFoundError(f"{saved_ema}: this checkpoint has no EMA of the weights (train.ema_decay was "
                                    "not set when it was saved); unset train.ema_decay or start a new run")
        ema.load_state_dict(_load_rank_state(saved_ema, "EMA of the weights"))
    return int(loaded["step"])


def _load_rank_state(file: Path, what: str):
    with reading(file, f"{what} (torch.save)"):
        return torch.load(file, weights_only=False)


def read_common_state(step_dir: Path) -> dict:
    """A step folder's common state (step, config, scheduler), or a DamagedFileError naming its file (or its
    metadata.json, read first by dist_checkpointing)."""
    read_json_file(step_dir / "metadata.json", "dist checkpoint's metadata.json")
    with reading(step_dir / COMMON_STATE, "dist checkpoint's common state (torch.save)"):
        return dist_checkpointing.load_common_state_dict(str(step_dir))


def read_saved_config(path: str | Path) -> dict:
    """The config dict stored in a checkpoint's common state (rank-local read, no process group needed)."""
    return read_common_state(resolve_checkpoint(path))["config"]
