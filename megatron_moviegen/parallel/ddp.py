"""Megatron's DistributedDataParallel around the model chunks of this rank (`models/dit_chunks.py` builds them),
and the hooks that let Megatron's pipeline schedules drive its gradient reduction and parameter gathering."""

from __future__ import annotations

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

from megatron_moviegen.parallel.config import ParallelConfig


def wrap_ddp(chunks: list, use_distributed_optimizer: bool, grad_reduce_in_fp32: bool = True,
             parallel: ParallelConfig | None = None) -> list[DistributedDataParallel]:
    """Megatron DDP around each chunk (a MovieGenDiT), grads accumulated and reduced in float32, with `parallel`'s
    overlap and bucket settings (parameter gathering overlaps only with the distributed optimizer). Then
    `connect_ddp_to_schedules`."""
    parallel = parallel or ParallelConfig()
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather and use_distributed_optimizer,
        align_param_gather=parallel.overlap_param_gather and use_distributed_optimizer,
        use_distributed_optimizer=use_distributed_optimizer,
        check_for_nan_in_grad=False,
        bucket_size=parallel.ddp_bucket_size,
    )
    # As Megatron's training loop: virtual pipeline chunks after the first are not bucketed when overlapping.
    return [
        DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]


def connect_ddp_to_schedules(model: list[DistributedDataParallel]) -> None:
    """Tell Megatron's pipeline schedules how to pause and start the DDP chunks' gradient reduction and parameter
    gathering (the config fields Megatron's own training loop sets): no_sync for all microbatches but the last,
    and with overlap, one grad / param sync per chunk in pipeline order."""
    config = model[0].module.config
    one_or_list = (lambda fns: fns[0] if len(fns) == 1 else fns)
    config.no_sync_func = one_or_list([chunk.no_sync for chunk in model])
    ddp_config = model[0].ddp_config
    if ddp_config.overlap_grad_reduce:
        config.grad_sync_func = one_or_list([chunk.start_grad_sync for chunk in model])
    if ddp_config.overlap_param_gather and ddp_config.align_param_gather:
        config.param_sync_func = one_or_list([chunk.start_param_sync for chunk in model])


def finish_param_gather(model: list[DistributedDataParallel]) -> None:
    """With overlap_param_gather the distributed optimizer's updated weights are all-gathered during the next
    forward: gather them now, before weights are read outside a forward (the EMA update, a checkpoint save), as
    Megatron's training loop does before saving."""
    for chunk in model:
        if chunk.ddp_config.overlap_param_gather:
            chunk.start_param_sync(force_sync=True)
