"""Per-GPU memory estimate of DiT training under a Megatron layout (used to choose the 30B layout).

Static state per GPU, for P_local parameters on this rank (TP-sharded blocks / TP + replicated modules):
    weights   bf16                    2 B x P_local
    grads     fp32 main_grad buffer   4 B x P_local   (grad_reduce_in_fp32, Megatron's default for bf16)
    optimizer fp32 master + Adam m, v 12 B x P_local / DP with the distributed optimizer, else 12 B x P_local

Activations per block: the bytes autograd saves for backward per video token and hidden unit, counted tensor by
tensor in the block (models/dit_layer.py) with bf16 activations. With U = one bf16 copy of the (tokens x d) hidden
state (2 B per token and hidden unit), the local spec saves, per block:

    on the token path (split over TP only with sequence parallelism)
      3 RMSNorms, each two float32 copies of its input (x.float(), x * rsqrt)   3 x 4U   (TE norm: its input, 1U)
      2 adaLN modulates (their norm output), 3 linear inputs (qkv, cross q, fc1),
      2 gated residuals (the projected output)                                   7U
    on the head / FFN-column path (split over TP)
      fused qkv output                                                           3U
      QK RMSNorms: two float32 copies each, and their bf16 outputs for attention 8U + 2U  (TE: 2U + 2U)
      self-attention output; cross-attention q, output, key-less-row zeroing     4U   (selective recompute: 3U)
      SwiGLU: fc1 output (2f), silu, linear half (+ glu offset), product (f each) 5f/d U  (GELU MLP: 2f/d U)

so 36U + 5f/d U = 49.3U per block for the 30B (f/d = 8/3; 98.7 B per token and hidden unit), 34.3U with the TE
spec. Measured on CPU (tests/planning/test_activation_bytes.py: saved_tensors_hooks on one tiny bf16 block) the
formula is exact up to what it ignores: float32 per-token statistics of the norms and softmax (O(heads / d)) and the
text tokens' tensors (O(n / s)). Full recomputation keeps only each block's input (1U) and one block's working set.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_moviegen.models.dit_config import DiTConfig
from megatron_moviegen.parallel.config import ParallelConfig

GIB = 2**30
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
class BlockActivations:
    """Bytes one block saves for backward per video token and hidden unit (bf16; see the module docstring)."""
    token_path: float  # split over TP only with sequence parallelism
    head_path: float  # split over TP

    def per_rank(self, tp: int, sequence_parallel: bool) -> float:
        return self.token_path / (tp if sequence_parallel else 1) + self.head_path / tp


def block_activations(model: DiTConfig, transformer_impl: str = "local", recompute: str | None = None
                      ) -> BlockActivations:
    """What one block saves, counted in the module docstring's units (U = 2 bytes); `recompute` is
    model.recompute_granularity ("selective" recomputes Megatron's core attention)."""
    te = transformer_impl == "transformer_engine"
    norm = 1 if te else 4  # TE's norm saves its bf16 input; ours two float32 copies
    token = 3 * norm + 7
    qk = 2 * (norm + 1) if model.qk_norm else 0
    attention = 3 if recompute == "selective" else 4  # cross-attention's SDPA output, before zeroing, is not kept
    mlp = (5 if model.gated_mlp else 2) * model.ffn_hidden_size / model.hidden_size
    return BlockActivations(token_path=2.0 * token, head_path=2.0 * (3 + qk + attention + mlp))


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
    impl = "local" if model.transformer_impl == "local" else "transformer_engine"  # auto: TE on a GPU cluster
    saved = block_activations(model, impl, model.recompute_granularity)
    per_block = saved.per_rank(tp, parallel.sequence_parallel) * local_tokens * model.hidden_size
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
