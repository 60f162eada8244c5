"""How a model is laid out over GPUs: Megatron-Core's tensor, sequence, context and pipeline parallel sizes;
the data-parallel size is what remains of the world size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from megatron_moviegen.config.schema import ConfigError


@dataclass
class ParallelConfig:
    """Megatron-Core model parallel layout; data parallel size is what remains of the world size."""

    tensor_model_parallel_size: int = 1
    sequence_parallel: bool = False
    context_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    use_distributed_optimizer: bool = True
    # "p2p" is TE's ring; the local path all-gathers K/V over the CP group (exact softmax either way).
    cp_comm_type: Literal["p2p", "all_gather", "a2a"] = "p2p"
    # Megatron DDP: reduce each gradient bucket as soon as the backward pass has filled it (overlapped with the rest
    # of the backward) instead of all at once after it; with the distributed optimizer, all-gather the updated
    # parameters bucket by bucket during the next forward. ddp_bucket_size: parameters per bucket (None: Megatron's
    # default, max(40M, 1M x DP)).
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    ddp_bucket_size: Optional[int] = None

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.context_parallel_size * self.pipeline_model_parallel_size

    @property
    def sequence_chunks(self) -> int:
        """The pieces one sample's token sequence is cut into (parallel/layout.py): CP x TP with sequence parallel."""
        sp = self.tensor_model_parallel_size if self.sequence_parallel else 1
        return self.context_parallel_size * sp

    def validate(self) -> None:
        for name in ("tensor_model_parallel_size", "context_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ConfigError("sequence_parallel: requires tensor_model_parallel_size > 1")
        if self.overlap_param_gather and not (self.use_distributed_optimizer and self.overlap_grad_reduce):
            raise ConfigError(f"overlap_param_gather: true needs use_distributed_optimizer and overlap_grad_reduce, got "
                              f"use_distributed_optimizer={self.use_distributed_optimizer}, "
                              f"overlap_grad_reduce={self.overlap_grad_reduce}")
        if self.ddp_bucket_size is not None and self.ddp_bucket_size < 1:
            raise ConfigError(f"ddp_bucket_size: got {self.ddp_bucket_size}, must be >= 1 (or null for Megatron's default)")
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None and (vpp < 1 or self.pipeline_model_parallel_size < 2):
            raise ConfigError(
                f"virtual_pipeline_model_parallel_size: got {vpp}; needs >= 1 and pipeline_model_parallel_size > 1"
            )

    def check_world_size(self, world_size: int) -> int:
        """Return the data-parallel size, or raise naming the sizes that do not divide."""
        if world_size % self.model_parallel_size:
            raise ConfigError(
                f"parallel: world size {world_size} is not divisible by tensor({self.tensor_model_parallel_size}) x "
                f"context({self.context_parallel_size}) x pipeline({self.pipeline_model_parallel_size}) = "
                f"{self.model_parallel_size}"
            )
        return world_size // self.model_parallel_size
