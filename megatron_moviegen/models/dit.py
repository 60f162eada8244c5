"""Movie Gen Video: the flow-matching DiT over TAE latents (SPEC section 1), on Megatron-Core.

Data path of one forward, Megatron layout (s, b, d):

    latents (b, 16, t, h, w) --PatchEmbed--> tokens (s, b, d), s = t * h/2 * w/2
        -> this rank's chunk: context-parallel chunk, then (with sequence parallelism) the TP chunk
    t (b,) --TimestepEmbedding--> time embedding (b, d), shared modulation (b, 6, d)
    text {encoder: (b, n_i, d_i)} --TextProjection--> context (n, b, d), mask (b, n)
    N x MovieGenDiTLayer(tokens + pos, modulation, context)
    --Unpatchify--> velocity tokens (s_local, b, 16 * 1*2*2)

The model never gathers its sequence during training: the flow-matching loss is computed on the local
chunk (`local_target`). `gather_velocity` assembles the full prediction for sampling.
With pipeline parallelism the conditioning modules live on every stage (marked `pipeline_parallel`, their
grads all-reduced over PP by Megatron's finalize_model_grads, config.has_cond_embedder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
from torch.utils.checkpoint import checkpoint

from megatron_moviegen.models.dit_config import DiTConfig
from megatron_moviegen.parallel.config import ParallelConfig
from megatron_moviegen.models.embeddings import (
    FactorizedPositionEmbedding,
    PatchEmbed,
    TextProjection,
    TimestepEmbedding,
    Unpatchify,
    mark_replicated,
    patchify_target,
)
from megatron_moviegen.parallel.context_parallel import gather_sequence_for_replicated_use, local_chunk


def build_transformer_config(model: DiTConfig, parallel: ParallelConfig, params_dtype: torch.dtype = torch.float32,
                             **overrides) -> TransformerConfig:
    """Megatron TransformerConfig for the DiT blocks."""
    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        kv_channels=model.head_dim,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        qk_layernorm=model.qk_norm,
        add_bias_linear=False,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_std,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        context_parallel_size=parallel.context_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        cp_comm_type=parallel.cp_comm_type,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=not on_gpu,
        perform_initialization=True,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    if model.fp8 is not None:
        kwargs.update(fp8=model.fp8, fp8_recipe=model.fp8_recipe)
    if model.recompute_granularity == "selective":
        kwargs.update(recompute_granularity="selective", recompute_modules=["core_attn"])
    kwargs.update(overrides)
    config = TransformerConfig(**kwargs)
    # Read by Megatron's finalize_model_grads: all-reduce `pipeline_parallel` params (the conditioning
    # modules replicated on every stage) over the pipeline group.
    config.has_cond_embedder = True
    return config


class MovieGenDiT(MegatronModule):
    def __init__(
        self,
        config: TransformerConfig,
        dit_config: DiTConfig,
        layer_spec: ModuleSpec,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: int | None = None,
    ):
        super().__init__(config=config)
        self.dit_config = dit_config
        self.pre_process, self.post_process, self.vp_stage = pre_process, post_process, vp_stage
        self.input_tensor: torch.Tensor | None = None
        self.model_type = ModelType.encoder_or_decoder  # read by Megatron's pipeline schedules
        self.share_embeddings_and_output_weights = False  # read by finalize_model_grads

        if pre_process:
            self.patch_embed = PatchEmbed(dit_config)
            for param in self.patch_embed.parameters():
                param.sequence_parallel = True  # applied to this rank's SP chunk of tokens
        self.time_embedding = TimestepEmbedding(dit_config)
        self.text_projection = TextProjection(dit_config)
        self.position_embedding = FactorizedPositionEmbedding(dit_config, std=dit_config.init_std)
        mark_replicated(self.time_embedding, acts_on_sequence_shard=True)
        mark_replicated(self.position_embedding, acts_on_sequence_shard=True)
        # The text is scattered over TP after projection; the scatter's backward all-gathers whole grads.
        mark_replicated(self.text_projection, acts_on_sequence_shard=False)
        self.holds_conditioning_main_copy = parallel_state.get_pipeline_model_parallel_rank() == 0 and not vp_stage
        for module in (self.time_embedding, self.position_embedding, self.text_projection):
            for param in module.parameters():
                param.shared = not self.holds_conditioning_main_copy  # count once in the grad norm

        chunks = config.pipeline_model_parallel_size * (config.virtual_pipeline_model_parallel_size or 1)
        num_local = config.num_layers // chunks
        self.layer_offset = get_transformer_layer_offset(config, vp_stage) if chunks > 1 else 0
        self.layers = torch.nn.ModuleList(
            build_module(layer_spec, config=config, layer_number=self.layer_offset + i + 1) for i in range(num_local)
        )
        if post_process:
            self.unpatchify = Unpatchify(dit_config)
            for param in self.unpatchify.parameters():
                param.sequence_parallel = True

    # ---- pipeline plumbing -------------------------------------------------------------------------------
    def set_input_tensor(self, input_tensor) -> None:
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.input_tensor = input_tensor

    # ---- sequence layout ---------------------------------------------------------------------------------
    def _split_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        cp = (parallel_state.get_context_parallel_rank(), parallel_state.get_context_parallel_world_size())
        sp = (0, 1)
        if self.config.sequence_parallel:
            sp = (parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size())
        return cp, sp

    def local_sequence(self, full: torch.Tensor) -> torch.Tensor:
        """(s, ...) -> this rank's (s / (cp * sp), ...) chunk: CP chunk first, then the SP chunk within it."""
        (cp_rank, cp_size), (sp_rank, sp_size) = self._split_sizes()
        if full.shape[0] % (cp_size * sp_size):
            raise ValueError(
                f"sequence of {full.shape[0]} tokens is not divisible by context_parallel_size {cp_size} x "
                f"sequence-parallel TP size {sp_size}; choose a latent shape whose token count divides"
            )
        return local_chunk(local_chunk(full, 0, cp_rank, cp_size), 0, sp_rank, sp_size)

    def local_target(self, target_latents: torch.Tensor) -> torch.Tensor:
        """(b, c, t, h, w) target -> this rank's tokens (s_local, b, c*pt*ph*pw), aligned with forward's output."""
        return self.local_sequence(patchify_target(target_latents, tuple(self.dit_config.patch_size)))

    def gather_velocity(self, local_tokens: torch.Tensor, latent_shape: torch.Size) -> torch.Tensor:
        """(s_local, b, c*p) output tokens -> full (b, c, t, h, w) prediction on every rank (for sampling)."""
        if self.config.sequence_parallel:
            local_tokens = gather_sequence_for_replicated_use(
                local_tokens, parallel_state.get_tensor_model_parallel_group())
        if parallel_state.get_context_parallel_world_size() > 1:
            local_tokens = gather_sequence_for_replicated_use(local_tokens, parallel_state.get_context_parallel_group())
        pt, ph, pw = self.dit_config.patch_size
        _, _, t, h, w = latent_shape
        return self.unpatchify.to_latents(local_tokens, (t // pt, h // ph, w // pw))

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: dict[str, torch.Tensor],
        text_masks: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """latents (b, 16, t, h, w) noisy X_t; timesteps (b,) in [0, 1]; text {name: (b, n_i, d_i)} with masks
        {name: (b, n_i) bool, True = real token}. Returns this rank's velocity tokens (s_local, b, 16*pt*ph*pw)
        on the last pipeline stage, hidden states (s_local, b, d) elsewhere."""
        grid = self._grid(latents.shape)
        if self.pre_process:
            hidden = self.local_sequence(self.patch_embed(latents))  # (s_local, b, d)
        else:
            hidden = self.input_tensor
        time_embedding, modulation = self.time_embedding(timesteps)
        context, keep = self.text_projection(text_embeddings, text_masks)  # (n, b, d), (b, n)
        if self.config.sequence_parallel:
            context = tensor_parallel.scatter_to_sequence_parallel_region(context)
        context_mask = ~keep[:, None, None, :]  # (b, 1, 1, n), True = masked (Megatron convention)
        position = self.local_sequence(self.position_embedding(grid)).to(hidden.dtype)

        for index, layer in enumerate(self.layers):
            if self._recompute(index):
                hidden = checkpoint(layer, hidden, modulation, context, context_mask, position, use_reentrant=False)
            else:
                hidden = layer(hidden, modulation, context, context_mask, position)

        if not self.post_process:
            return hidden.contiguous()  # sent to the next pipeline stage
        return self.unpatchify(hidden, time_embedding)

    def tokens_per_sample(self, latent_shape) -> int:
        t, h, w = self._grid(latent_shape)
        return t * h * w

    def _grid(self, latent_shape) -> tuple[int, int, int]:
        if len(latent_shape) != 5 or latent_shape[1] != self.dit_config.latent_channels:
            raise ValueError(
                f"latents must be (b, {self.dit_config.latent_channels}, t, h, w), got {tuple(latent_shape)}"
            )
        _, _, t, h, w = latent_shape
        pt, ph, pw = self.dit_config.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent shape (t={t}, h={h}, w={w}) is not divisible by patch_size {(pt, ph, pw)}")
        return t // pt, h // ph, w // pw

    def _mark_pipeline_replicas(self, module_state: dict) -> None:
        """The conditioning modules exist on every pipeline chunk; only the first chunk's copy is the main one."""
        if self.holds_conditioning_main_copy:
            return
        vpp = self.config.virtual_pipeline_model_parallel_size or 1
        chunk = parallel_state.get_pipeline_model_parallel_rank() * vpp + (self.vp_stage or 0)
        for sharded in module_state.values():
            sharded.replica_id = (chunk,) + tuple(sharded.replica_id[1:])

    def _recompute(self, index: int) -> bool:
        cfg = self.dit_config
        if cfg.recompute_granularity != "full":
            return False
        return cfg.recompute_method == "uniform" or index < cfg.recompute_num_layers

    # ---- checkpointing -----------------------------------------------------------------------------------
    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        """Layers are keyed by their global index so a checkpoint loads under any pipeline layout."""
        from megatron.core.transformer.utils import sharded_state_dict_default

        state = {}
        for name, module in self.named_children():
            if name == "layers":
                continue
            module_state = sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata,
                                                      tp_group=parallel_state.get_tensor_model_parallel_group())
            if name in ("time_embedding", "position_embedding", "text_projection"):
                self._mark_pipeline_replicas(module_state)
            state.update(module_state)
        for index, layer in enumerate(self.layers):
            state.update(layer.sharded_state_dict(f"{prefix}layers.{self.layer_offset + index}.", sharded_offsets,
                                                  metadata))
        return state
