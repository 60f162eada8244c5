"""The training loader as the loop sees it: batches read ahead in a background thread, on one rank of each
tensor-parallel group, and broadcast to the group's other ranks.

Every rank of a TP group trains on the same samples, so only its first rank reads and decodes them; the batch's
tensors then go to the others with one `broadcast` each over the TP group (on the runtime's device, which NCCL needs)
after its structure (shapes, dtypes, names, captions) goes with `broadcast_object_list`. Megatron's
`tensor_parallel.broadcast_data` does the same for a flat dict of one dtype, on CUDA only; a batch is nested and
mixed (bf16 latents, bool masks, long task ids), and the CPU path must run it on gloo.

The reading rank's thread runs `prefetch` batches ahead of the loop (in pinned memory on GPU, so the copy to the
device can overlap). Exact resume is unchanged: `state_dict()` is the loader position after the last batch the loop
took, not after the last one read ahead.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable

import torch
import torch.distributed as dist

from megatron_moviegen.data.loader import Batch, LatentLoader


@dataclasses.dataclass(frozen=True)
class _TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _map_leaves(value: Any, leaf: type, fn: Callable[[Any], Any]) -> Any:
    """`value` (dataclasses, NamedTuples, lists, tuples, dicts) rebuilt with `fn` applied to every `leaf`-typed
    value, in a fixed order."""
    if isinstance(value, leaf):
        return fn(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _map_leaves(getattr(value, f.name), leaf, fn)
                                             for f in dataclasses.fields(value)})
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple (Tokens, Images)
        return type(value)(*(_map_leaves(v, leaf, fn) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_map_leaves(v, leaf, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_leaves(v, leaf, fn) for k, v in value.items()}
    return value


def broadcast_batch(batch: Batch | Exception | None, src: int, group, device: torch.device) -> Batch:
    """`batch` (given on global rank `src` only) on every rank of `group`. Receivers get their tensors on `device`
    (the one the group's backend takes); the sender keeps its own. An exception in place of the batch (the read
    failed) is raised on every rank."""
    if dist.get_rank() == src and isinstance(batch, BaseException):  # the read failed: every rank raises it
        dist.broadcast_object_list([batch], src=src, group=group, device=device)
        raise batch
    if dist.get_rank() == src:
        tensors: list[torch.Tensor] = []
        skeleton = _map_leaves(batch, torch.Tensor,
                               lambda t: tensors.append(t) or _TensorSpec(tuple(t.shape), t.dtype))
        dist.broadcast_object_list([skeleton], src=src, group=group, device=device)
        for tensor in tensors:
            dist.broadcast(tensor.to(device), src=src, group=group)
        return batch
    received = [None]
    dist.broadcast_object_list(received, src=src, group=group, device=device)
    if isinstance(received[0], BaseException):
        raise received[0]

    def receive(spec: _TensorSpec) -> torch.Tensor:
        tensor = torch.empty(spec.shape, dtype=spec.dtype, device=device)
        dist.broadcast(tensor, src=src, group=group)
        return tensor

    return _map_leaves(received[0], _TensorSpec, receive)  # in the sender's order


class BatchFeeder:
    """Iterates `loader`'s batches for the training loop: read `prefetch` batches ahead (0: when asked) on the
    first rank of `group` (None or size 1: this rank reads alone) and broadcast to the group's others. Every rank of
    the group must iterate it in step."""

    def __init__(self, loader: LatentLoader, prefetch: int = 2, group=None, device: torch.device | None = None,
                 pin_memory: bool = False):
        if prefetch < 0:
            raise ValueError(f"prefetch: got {prefetch}, must be >= 0")
        self.loader, self.prefetch, self.pin_memory = loader, prefetch, pin_memory
        self.group = group if group is not None and dist.get_world_size(group) > 1 else None
        self.src = dist.get_global_rank(self.group, 0) if self.group is not None else None
        self.reads = self.group is None or dist.get_rank() == self.src
        self.device = device or torch.device("cpu")
        self._position = loader.state_dict()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- the reading rank's side ------------------------------------------------------------------------------
    def _read_ahead(self) -> None:
        try:
            for batch in self.loader:
                if self.pin_memory:
                    batch = _pin(batch)
                item = (batch, self.loader.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the loop, which raises it
            self._queue.put(exc)

    def _next_read(self) -> Batch:
        if self.prefetch == 0:
            if self._queue is None:
                self._queue, self._iterator = queue.Queue(), iter(self.loader)
            batch = next(self._iterator)
            self._position = self.loader.state_dict()
            return batch
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._read_ahead, name="batch-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._position = item
        return batch

    # ---- every rank ---------------------------------------------------------------------------------------------
    def __iter__(self) -> "BatchFeeder":
        return self

    def __next__(self) -> Batch:
        batch = None
        if self.reads:
            try:
                batch = self._next_read()
            except Exception as exc:  # the group's other ranks wait for this batch: they raise it too
                if self.group is None:
                    raise
                batch = exc
        if self.group is not None:
            batch = broadcast_batch(batch, self.src, self.group, self.device)
        return batch

    def state_dict(self) -> dict:
        """The loader position after the last batch the loop took (on the reading rank)."""
        return dict(self._position)

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None or self._queue is not None:
            raise RuntimeError("BatchFeeder.load_state_dict: the feeder has started; load before the first batch")
        self.loader.load_state_dict(state)
        self._position = self.loader.state_dict()

    def sample_names(self, keys: list[str]) -> list[str]:
        return self.loader.sample_names(keys)

    def prompt_fps(self) -> list[int]:
        return self.loader.prompt_fps()

    def close(self) -> None:
        """Stop the read-ahead thread (it is a daemon: a process that exits without this loses nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _pin(batch: Batch) -> Batch:
    return _map_leaves(batch, torch.Tensor, torch.Tensor.pin_memory)
