"""Per-GPU memory estimate of DiT training under a Megatron layout (used to choose the 30B layout).

Static state per GPU, for P_local parameters on this rank (TP-sharded blocks / TP + replicated modules):
    weights   bf16                    2 B x P_local
    grads     fp32 main_grad buffer   4 B x P_local   (grad_reduce_in_fp32, Megatron's default for bf16)
    optimizer fp32 master + Adam m, v 12 B x P_local / DP with the distributed optimizer, else 12 B x P_local

Activations per block, bf16, with sequence parallelism and flash attention (no s^2 term), following
Korthikanti et al. 2022 (Megatron's "34 s b h / t" bytes per GPT layer) plus the DiT's extras (adaLN modulated
inputs and gates, cross-attention q/out and its norm, a wider SwiGLU): ACT_BYTES_PER_TOKEN_DIM = 46 bytes per
(token x hidden) / TP, over the CP-local tokens. Full recomputation keeps only each block's input (2 B) and
one block's working set. This is an estimate; measure with benchmarks/dit_throughput.py on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_moviegen.models.dit_config import DiTConfig
from megatron_moviegen.parallel.config import ParallelConfig

GIB = 2**30
ACT_BYTES_PER_TOKEN_DIM = 46  # per block, bf16, SP + flash attention (see module docstring)
WORKSPACE_GIB = 4.0  # NCCL buffers, CUDA context, allocator fragmentation


def parameter_counts(model: DiTConfig) -> tuple[int, int]:
    """(parameters of the blocks, which TP shards; parameters outside them, replicated) without building."""
    d, f = model.hidden_size, model.ffn_hidden_size
    per_block = 8 * d * d + (3 if model.gated_mlp else 2) * d * f + 9 * d + 2 * model.head_dim
    blocks = model.num_layers * per_block
    context = sum(source.width * d + d + 2 * d + (source.encoder.num_parameters if source.encoder else 0)
                  for source in model.context_sources().values())  # + a trainable vision tower, replicated
    time = model.timestep_embedding_dim * d + d + d * d + d + 6 * d * d + 6 * d + model.num_tasks * d
    pt, ph, pw = model.patch_size
    patch = model.input_channels * pt * ph * pw * d + d
    final = 2 * d * d + 2 * d + d * model.latent_channels * pt * ph * pw + model.latent_channels * pt * ph * pw
    positions = (model.max_frames + model.max_height + model.max_width) * d
    return blocks, context + time + patch + final + positions


@dataclass(frozen=True)
class MemoryEstimate:
    params_per_gpu: float
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    workspace_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib + self.workspace_gib


def estimate_memory(model: DiTConfig, parallel: ParallelConfig, data_parallel_size: int, tokens: int,
                    micro_batch_size: int = 1) -> MemoryEstimate:
    tp, cp, pp = (parallel.tensor_model_parallel_size, parallel.context_parallel_size,
                  parallel.pipeline_model_parallel_size)
    blocks, replicated = parameter_counts(model)
    params = blocks / (tp * pp) + replicated
    optimizer_shards = data_parallel_size * cp if parallel.use_distributed_optimizer else 1
    local_tokens = tokens * micro_batch_size / cp
    per_block = ACT_BYTES_PER_TOKEN_DIM * local_tokens * model.hidden_size / tp
    layers = model.num_layers / pp
    if model.recompute_granularity == "full":
        saved = 2 * local_tokens * model.hidden_size / (tp if parallel.sequence_parallel else 1)
        recomputed = layers if model.recompute_method == "uniform" else min(model.recompute_num_layers, layers)
        activations = recomputed * saved + (layers - recomputed) * per_block + per_block
    else:
        activations = layers * per_block
    if pp > 1:  # 1F1B keeps up to pp microbatches in flight on the first stage
        activations *= pp
    return MemoryEstimate(
        params_per_gpu=params,
        weights_gib=2 * params / GIB,
        grads_gib=4 * params / GIB,
        optimizer_gib=12 * params / optimizer_shards / GIB,
        activations_gib=activations / GIB,
        workspace_gib=WORKSPACE_GIB,
    )


def format_estimate(est: MemoryEstimate, gpu_gib: float) -> str:
    rows = [f"  parameters per GPU  {est.params_per_gpu / 1e9:8.2f} B"]
    for name in ("weights", "grads", "optimizer", "activations", "workspace"):
        rows.append(f"  {name:<19} {getattr(est, name + '_gib'):8.1f} GiB")
    verdict = "fits" if est.total_gib <= gpu_gib else "DOES NOT FIT"
    rows.append(f"  {'total':<19} {est.total_gib:8.1f} GiB of {gpu_gib:.0f} GiB: {verdict}")
    return "\n".join(rows)
