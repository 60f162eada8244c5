"""A recipe's parallel layout on N GPUs and its per-GPU memory estimate (tools/plan_layout.py prints it).

The memory of a layout depends on the micro-batch, not on the global batch, so a global batch that does not split
over the data-parallel ranks (a base recipe such as t2v_30b keeps the default of 1; its stages set the real one)
is reported, not refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.planning.flops import FlopCount, dit_training_flops
from megatron_moviegen.planning.memory import MemoryEstimate, estimate_memory, format_estimate
from megatron_moviegen.planning.summary import sample_tokens
from megatron_moviegen.recipes import MovieGenConfig


@dataclass(frozen=True)
class LayoutPlan:
    recipe: str
    gpus: int
    data_parallel_size: int
    num_microbatches: Optional[int]  # None: train.global_batch_size does not split over the DP ranks
    batch_note: str
    tokens: int
    sample: str
    flops: FlopCount
    memory: MemoryEstimate


def plan_layout(cfg: MovieGenConfig, gpus: int, frames: int = 256, height: int = 768, width: int = 768) -> LayoutPlan:
    """Plan cfg on `gpus` GPUs for a frames x height x width sample (an audio recipe: its longest window). Raises
    only when the world size does not divide into the model-parallel groups."""
    dp = cfg.parallel.check_world_size(gpus)
    train = cfg.train
    try:
        micro = train.num_microbatches(dp)
        note = (f"global batch {train.global_batch_size} = micro {train.micro_batch_size} x {micro} microbatches "
                f"x DP {dp}")
    except ConfigError:
        micro = None
        note = (f"global batch {train.global_batch_size} does not split into micro {train.micro_batch_size} x DP {dp}: "
                f"set train.global_batch_size to a multiple of {train.micro_batch_size * dp} to train (the memory "
                f"estimate does not depend on it)")
    tokens, sample = sample_tokens(cfg, frames, height, width)
    memory = estimate_memory(cfg.model, cfg.parallel, dp, tokens, train.micro_batch_size)
    return LayoutPlan(cfg.name, gpus, dp, micro, note, tokens, sample, dit_training_flops(cfg.model, tokens), memory)


def format_plan(plan: LayoutPlan, cfg: MovieGenConfig, gpu_gib: float) -> str:
    p, model = cfg.parallel, cfg.model
    return "\n".join([
        f"recipe {plan.recipe} on {plan.gpus} GPUs",
        f"  TP {p.tensor_model_parallel_size} (SP {'on' if p.sequence_parallel else 'off'}) x CP "
        f"{p.context_parallel_size} x PP {p.pipeline_model_parallel_size} x DP {plan.data_parallel_size}; "
        f"distributed optimizer {'on' if p.use_distributed_optimizer else 'off'}; recompute "
        f"{model.recompute_granularity}",
        f"  {plan.batch_note}",
        f"  sample {plan.sample} -> {plan.tokens:,} tokens, {plan.flops.total:.3e} FLOPs fwd+bwd "
        f"({plan.flops.attention_fraction:.0%} attention)",
        "per-GPU memory estimate (megatron_moviegen/planning/memory.py):",
        format_estimate(plan.memory, gpu_gib),
    ])
