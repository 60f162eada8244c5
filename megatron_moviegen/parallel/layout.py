"""How one sample's token sequence is laid out over ranks: built once from Megatron's parallel state, then handed
to the DiT (which splits its tokens), the flow-matching loss (which splits its target and sums its partial losses)
and the sampler (which gathers the prediction). Nothing else decides which rank holds which tokens.

The sequence (s, ...) is cut into context-parallel chunks first, then each CP chunk into sequence-parallel
(TP) chunks when sequence parallelism is on: rank (cp, tp) holds tokens
[(cp * sp_size + tp) * s / (cp_size * sp_size), ...) of the whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_moviegen.parallel.context_parallel import gather_sequence_for_replicated_use, local_chunk


@dataclass(frozen=True)
class SequenceLayout:
    cp_rank: int = 0
    cp_size: int = 1
    cp_group: Any = None
    sp_rank: int = 0
    sp_size: int = 1  # the TP size with sequence parallelism, else 1
    sp_group: Any = None

    @classmethod
    def from_parallel_state(cls, sequence_parallel: bool) -> "SequenceLayout":
        """This rank's layout; Megatron's groups must be initialised."""
        sp = sequence_parallel and parallel_state.get_tensor_model_parallel_world_size() > 1
        return cls(
            cp_rank=parallel_state.get_context_parallel_rank(),
            cp_size=parallel_state.get_context_parallel_world_size(),
            cp_group=parallel_state.get_context_parallel_group(),
            sp_rank=parallel_state.get_tensor_model_parallel_rank() if sp else 0,
            sp_size=parallel_state.get_tensor_model_parallel_world_size() if sp else 1,
            sp_group=parallel_state.get_tensor_model_parallel_group() if sp else None,
        )

    @property
    def num_chunks(self) -> int:
        return self.cp_size * self.sp_size

    def check_divides(self, sequence_length: int, what: str = "sequence") -> None:
        if sequence_length % self.num_chunks:
            raise ValueError(
                f"{what} of {sequence_length} tokens is not divisible by context_parallel_size {self.cp_size} x "
                f"sequence-parallel TP size {self.sp_size}; choose a latent shape whose token count divides"
            )

    def split(self, full: torch.Tensor) -> torch.Tensor:
        """(s, ...) -> this rank's (s / (cp * sp), ...) chunk: the CP chunk, then the SP chunk within it."""
        self.check_divides(full.shape[0])
        return local_chunk(local_chunk(full, 0, self.cp_rank, self.cp_size), 0, self.sp_rank, self.sp_size)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """(s_local, ...) -> the whole (s, ...) on every rank, for a consumer that then computes the same thing on
        every rank (the sampler); backward keeps this rank's slice of the gradient."""
        if self.sp_size > 1:
            local = gather_sequence_for_replicated_use(local, self.sp_group)
        if self.cp_size > 1:
            local = gather_sequence_for_replicated_use(local, self.cp_group)
        return local

    def sum_partials(self, partial: torch.Tensor) -> torch.Tensor:
        """A per-rank partial sum over this rank's tokens -> the sum over the whole sequence (a new tensor, every
        rank of the sequence's groups; no autograd)."""
        total = partial.detach().clone()
        if self.sp_size > 1:
            dist.all_reduce(total, group=self.sp_group)
        if self.cp_size > 1:
            dist.all_reduce(total, group=self.cp_group)
        return total
