"""Let Megatron-Core 0.16.x run on a CPU-only machine (gloo), for tests and the CPU quickstart.

Megatron-Core hard-codes CUDA in a few places that the CPU path reaches:
- `pipeline_parallel.schedules` allocates its token counter with `device="cuda"` and autocasts on "cuda";
- `pipeline_parallel.p2p_communication` allocates shape/recv buffers on `torch.cuda.current_device()` and
  calls `torch.cuda.synchronize()`;
- `distributed.param_and_grad_buffer` (Megatron DDP) allocates its grad/param buffers on
  `torch.cuda.current_device()`;
- with sequence parallelism, `tensor_parallel.layers` (backward all-gather), `tensor_parallel.mappings`
  (reduce-scatter) and `utils.GlobalMemoryBuffer` (forward all-gather) allocate their buffers on
  `torch.cuda.current_device()`;
- `optimizer.optimizer.FP32Optimizer` keeps its loss scale on "cuda" (its grad clipping asserts CUDA
  tensors; `training/optimizer.py` replaces the clipping, not by patching);
- `dist_checkpointing.strategies.filesystem_async` calls `torch.cuda.synchronize()` before writing and
  `strategies.state_dict_saver` all-reduces its success flags on "cuda";
- `dist_checkpointing.strategies.async_utils` (asynchronous saves, `train.async_save`) synchronizes CUDA
  before forking its writer and all-reduces its completion flags on `torch.cuda.current_device()`.

`apply_cpu_shim()` swaps the `torch` those ten modules see for a proxy that maps "cuda" to "cpu",
and nothing else. It is a no-op when CUDA is available, and idempotent. Every other CPU concern (core
attention, norms with sequence parallelism, the optimizer) is handled by our own modules, not by patching.
"""

from __future__ import annotations

import types

import torch

from megatron_moviegen.runtime import cuda_available

SUPPORTED_MEGATRON = ("0.16.",)
_applied = False


def _to_cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int) or str(device).startswith("cuda"):
        return torch.device("cpu")
    return device


def _cpu_factory(fn):
    def factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        return fn(*args, **kwargs)

    return factory


class _CpuCuda(types.SimpleNamespace):
    """The bits of `torch.cuda` Megatron's pipeline code calls, answered for the CPU."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device():
        return torch.device("cpu")

    @staticmethod
    def synchronize(*_args, **_kwargs):
        return None


class _CpuTorch(types.ModuleType):
    """`torch`, except that tensors asked for on "cuda" are made on the CPU."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CpuCuda()
        for name in ("zeros", "empty", "ones", "tensor", "full", "arange"):
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)

    def autocast(self, device_type="cuda", *args, **kwargs):
        return torch.autocast("cpu" if device_type == "cuda" else device_type, *args, **kwargs)


def needs_cpu_shim() -> bool:
    """Whether the process has no CUDA: Megatron's modules call torch.cuda whatever device the Runtime chose."""
    return not cuda_available()


def apply_cpu_shim() -> bool:
    """Patch Megatron's pipeline modules for CPU if CUDA is absent. Returns True if the shim is active."""
    global _applied
    if not needs_cpu_shim():
        return False
    if _applied:
        return True
    from megatron.core import package_info
    from megatron.core import utils
    from megatron.core.dist_checkpointing.strategies import async_utils, filesystem_async, state_dict_saver
    from megatron.core.distributed import param_and_grad_buffer
    from megatron.core.optimizer import optimizer
    from megatron.core.pipeline_parallel import p2p_communication, schedules
    from megatron.core.tensor_parallel import layers, mappings

    if not package_info.__version__.startswith(SUPPORTED_MEGATRON):
        raise RuntimeError(
            f"megatron_moviegen's CPU shim supports megatron-core {SUPPORTED_MEGATRON}, found "
            f"{package_info.__version__}; pin megatron-core or update parallel/cpu_shim.py"
        )
    proxy = _CpuTorch()
    for module in (schedules, p2p_communication, param_and_grad_buffer, layers, mappings, utils,
                   optimizer, filesystem_async, state_dict_saver, async_utils):
        module.torch = proxy
    _applied = True
    return True
