"""Where and how this process runs, resolved once at start-up and passed down: the device (and so the device of
every tensor handed to a collective), the dtype of the DiT's weights, TransformerEngine or local layers, and
Megatron's distributed optimizer or the CPU optimizer behind the same interface.

    runtime = Runtime.resolve(precision=cfg.train.precision, transformer_impl=cfg.model.transformer_impl,
                              distributed_optimizer=cfg.parallel.use_distributed_optimizer)

Nothing else in the package asks `torch.cuda.is_available()`: code handed a Runtime (or a model) reads its
device; the two questions asked before there is one, whether Megatron needs the CPU shim and whether a GPU-only
decoder can start, go through `cuda_available`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal, Mapping

import torch

Precision = Literal["auto", "bf16", "fp32"]
TransformerImpl = Literal["auto", "local", "transformer_engine"]


def rank_and_world_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun (RANK, WORLD_SIZE) or srun (SLURM_PROCID, SLURM_NTASKS); (0, 1) alone."""
    for rank_var, world_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and world_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[world_var])
    return 0, 1


def local_rank_from_env(env: Mapping[str, str] = os.environ) -> int:
    """This process's index on its node: torchrun's LOCAL_RANK, else SLURM's SLURM_LOCALID, else 0."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if name in env:
            return int(env[name])
    return 0


def cuda_available() -> bool:
    """Whether this process sees a CUDA device: the package's one probe of the hardware."""
    return torch.cuda.is_available()


def add_precision_argument(parser) -> None:
    """`--precision` for a command that runs the DiT (generation, upsampling, the demo)."""
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="the DiT's weights and compute: auto = bf16 on GPU, fp32 on CPU")


def transformer_engine_installed() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    params_dtype: torch.dtype
    transformer_impl: Literal["local", "transformer_engine"]
    distributed_optimizer: bool

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def bf16(self) -> bool:
        return self.params_dtype == torch.bfloat16

    @property
    def backend(self) -> str:
        """torch.distributed backend of the default group: NCCL on GPU, gloo on CPU."""
        return "nccl" if self.on_gpu else "gloo"

    @classmethod
    def resolve(cls, precision: Precision = "auto", transformer_impl: TransformerImpl = "auto",
                distributed_optimizer: bool = True, cuda: bool | None = None) -> "Runtime":
        """GPU `cuda:<local rank>` when CUDA is present (or `cuda` says so), else CPU. "auto" precision is bf16 on
        GPU and fp32 on CPU; "auto" layers are TransformerEngine when it is installed on a GPU, else local.
        Megatron's distributed optimizer is CUDA-only: on CPU the optimizer behind the same interface is used."""
        cuda = cuda_available() if cuda is None else cuda
        device = torch.device("cuda", local_rank_from_env()) if cuda else torch.device("cpu")
        if precision == "auto":
            precision = "bf16" if cuda else "fp32"
        te = cuda and transformer_engine_installed()
        if transformer_impl == "auto":
            transformer_impl = "transformer_engine" if te else "local"
        elif transformer_impl == "transformer_engine" and not te:
            raise RuntimeError(
                "model.transformer_impl=transformer_engine needs CUDA and transformer_engine; "
                f"cuda available={cuda}, transformer_engine installed={transformer_engine_installed()}. "
                "Use model.transformer_impl=local."
            )
        return cls(device=device, params_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                   transformer_impl=transformer_impl, distributed_optimizer=distributed_optimizer and cuda)

    @classmethod
    def for_config(cls, cfg) -> "Runtime":
        """The runtime of a training run (`MovieGenConfig`)."""
        return cls.resolve(cfg.train.precision, cfg.model.transformer_impl, cfg.parallel.use_distributed_optimizer)

    @property
    def device_name(self) -> str:
        """The GPU's name (torch.cuda.get_device_name), or "cpu"."""
        return torch.cuda.get_device_name(self.device) if self.on_gpu else "cpu"

    def memory_stats(self) -> dict:
        """Peak device memory on GPU, resident set size on CPU, in GiB."""
        if self.on_gpu:
            return {"mem_allocated_gib": torch.cuda.max_memory_allocated(self.device) / 2**30,
                    "mem_reserved_gib": torch.cuda.max_memory_reserved(self.device) / 2**30}
        import psutil

        return {"mem_rss_gib": psutil.Process(os.getpid()).memory_info().rss / 2**30}
