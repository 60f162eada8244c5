"""Context parallelism for the local (torch) attention path.

The video sequence is split into `cp` contiguous chunks, one per context-parallel rank. Self-attention is
bidirectional (no causal mask), so no load balancing is needed: each rank keeps its queries and all-gathers
the keys and values of the whole sequence over the CP group; the softmax is then exact. The backward of the
all-gather is a reduce-scatter, which sums the K/V gradients that every rank's queries produce.

On GPU, TransformerEngine's DotProductAttention does CP itself (ring / all-to-all); this module is what the
local spec uses, and the reference the TE path is checked against.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _AllGatherFirstDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        out = torch.empty((world * tensor.shape[0],) + tuple(tensor.shape[1:]), dtype=tensor.dtype,
                          device=tensor.device)
        dist.all_gather_into_tensor(out, tensor.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = dist.get_world_size(ctx.group)
        out = torch.empty((grad.shape[0] // world,) + tuple(grad.shape[1:]), dtype=grad.dtype, device=grad.device)
        dist.reduce_scatter_tensor(out, grad.contiguous(), group=ctx.group)
        return out, None


def all_gather_sequence(tensor: torch.Tensor, group) -> torch.Tensor:
    """(s/cp, ...) on each rank -> (s, ...) everywhere; backward reduce-scatters (sums) the gradient."""
    if group is None or dist.get_world_size(group) == 1:
        return tensor
    return _AllGatherFirstDim.apply(tensor, group)


class _GatherReplicatedOutput(torch.autograd.Function):
    """Gather along dim 0 for a consumer that runs identically on every rank: backward keeps own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _AllGatherFirstDim.forward(ctx, tensor, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rank, world = dist.get_rank(ctx.group), dist.get_world_size(ctx.group)
        return grad.chunk(world, dim=0)[rank].contiguous(), None


def gather_sequence_for_replicated_use(tensor: torch.Tensor, group) -> torch.Tensor:
    """All-gather chunks along dim 0 when every rank then computes the same function of the whole."""
    if group is None or dist.get_world_size(group) == 1:
        return tensor
    return _GatherReplicatedOutput.apply(tensor, group)


def local_chunk(tensor: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous chunk of `tensor` along `dim` (sizes must divide; checked by the caller)."""
    if world == 1:
        return tensor
    return tensor.chunk(world, dim=dim)[rank]
