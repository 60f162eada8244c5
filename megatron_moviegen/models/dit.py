"""Movie Gen Video: the flow-matching DiT over TAE latents (SPEC section 1), on Megatron-Core.

Data path of one forward, Megatron layout (s, b, d):

    [latents (b, 16, t, h, w); conditioning.channels] --PatchEmbed--> tokens (s, b, d), s = t * h/2 * w/2
        -> this rank's chunk (SequenceLayout.split: context-parallel chunk, then the sequence-parallel chunk)
    t (b,), conditioning.task --TimestepEmbedding--> time embedding (b, d), shared modulation (b, 6, d)
    conditioning.tokens {source: (b, n_i, d_i)} --ContextProjection--> context (n, b, d), mask (b, n)
    N x MovieGenDiTLayer(tokens + pos, modulation, context)
    --Unpatchify--> velocity tokens (s_local, b, 16 * 1*2*2)

The model never gathers its sequence: the flow-matching loss splits its target with the same layout, and the
sampler gathers the prediction with it (parallel/layout.py).
With pipeline parallelism the conditioning modules live on every stage (marked `pipeline_parallel`, their
grads all-reduced over PP by Megatron's finalize_model_grads, config.has_cond_embedder).
"""

from __future__ import annotations

import importlib.util
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_moviegen.conditioning import Conditioning
from megatron_moviegen.models.dit_config import DiTConfig
from megatron_moviegen.models.embeddings import (
    ContextProjection,
    FactorizedPositionEmbedding,
    PatchEmbed,
    TimestepEmbedding,
    Unpatchify,
    mark_replicated_on_every_stage,
)
from megatron_moviegen.models import fp8
from megatron_moviegen.models.lora import attach_lora, freeze_all_but_adapters
from megatron_moviegen.parallel.config import ParallelConfig
from megatron_moviegen.parallel.layout import SequenceLayout
from megatron_moviegen.runtime import Runtime


def kernel_fusions(runtime: Runtime, model: DiTConfig) -> dict[str, bool]:
    """Megatron's fused kernels where the GPU build provides them (TransformerEngine, or apex in the NGC container):
    gradient-accumulation fusion (each weight-gradient GEMM accumulates straight into its float32 main_grad) and
    the SwiGLU activation fusion (the GELU MLP has no bias to fuse with, and Megatron refuses it). Off on CPU."""
    fused = runtime.on_gpu and (runtime.transformer_impl == "transformer_engine"
                                or importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None)
    return {"gradient_accumulation_fusion": fused, "bias_activation_fusion": fused and model.gated_mlp}


def build_transformer_config(model: DiTConfig, parallel: ParallelConfig, runtime: Runtime, **overrides
                             ) -> TransformerConfig:
    """Megatron TransformerConfig for the DiT blocks."""
    params_dtype = runtime.params_dtype
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        kv_channels=model.head_dim,
        gated_linear_unit=model.gated_mlp,
        activation_func=F.silu if model.gated_mlp else F.gelu,
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
        use_cpu_initialization=not runtime.on_gpu,
        perform_initialization=True,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        **kernel_fusions(runtime, model),
    )
    capability = torch.cuda.get_device_capability(runtime.device) if runtime.on_gpu and model.fp8 else None
    fp8.check_fp8(model.fp8, model.fp8_recipe, runtime.transformer_impl, runtime.bf16, capability)
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


def pad_context(context: torch.Tensor, real: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """context (n, b, d), real (b, n) -> both padded with masked tokens to a multiple of `multiple` tokens (sequence
    parallelism scatters the context over TP: UL2's 300 tokens over TP=8; FP8 GEMMs need aligned rows). Masked keys
    get no attention weight, so the padding changes nothing but the shapes."""
    pad = -context.shape[0] % multiple
    if pad == 0:
        return context, real
    return F.pad(context, (0, 0, 0, 0, 0, pad)), F.pad(real, (0, pad), value=False)


class MovieGenDiT(MegatronModule):
    def __init__(
        self,
        config: TransformerConfig,
        dit_config: DiTConfig,
        layer_spec: ModuleSpec,
        layout: SequenceLayout,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: int | None = None,
    ):
        super().__init__(config=config)
        self.dit_config = dit_config
        self.layout = layout
        self.pre_process, self.post_process, self.vp_stage = pre_process, post_process, vp_stage
        self.input_tensor: torch.Tensor | None = None
        self.model_type = ModelType.encoder_or_decoder  # read by Megatron's pipeline schedules
        self.share_embeddings_and_output_weights = False  # read by finalize_model_grads

        if pre_process:
            self.patch_embed = PatchEmbed(dit_config)
            for param in self.patch_embed.parameters():
                param.sequence_parallel = True  # applied to this rank's SP chunk of tokens
        self.time_embedding = TimestepEmbedding(dit_config)
        self.context_projection = ContextProjection(dit_config)
        self.position_embedding = FactorizedPositionEmbedding(dit_config, std=dit_config.init_std)
        mark_replicated_on_every_stage(self.time_embedding, grads_partial_over_tp=True)
        mark_replicated_on_every_stage(self.position_embedding, grads_partial_over_tp=True)
        # The context is scattered over TP after projection; the scatter's backward all-gathers whole grads.
        mark_replicated_on_every_stage(self.context_projection, grads_partial_over_tp=False)
        # The first pipeline chunk holds the main copy of the modules every chunk replicates: it alone counts
        # them in the grad norm and is their main replica in checkpoints.
        self.is_first_chunk = parallel_state.get_pipeline_model_parallel_rank() == 0 and not vp_stage
        for module in self.replicated_modules():
            for param in module.parameters():
                param.shared = not self.is_first_chunk

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
        # Megatron builds its layers in params_dtype; our modules around them join them there, as Megatron's
        # Float16Module does for a whole model. What stays float32 is computed, not stored: the time-step
        # sinusoids (t * 1000 in bf16 would lose the step), every norm's statistics, the output handed to the loss
        # (below), and, in the optimizer, the main params and grads (training/optimizer.py).
        for module in self.own_modules():
            module.to(dtype=config.params_dtype)
        if dit_config.lora.enabled:
            attach_lora(self.layers, dit_config.lora, self.layer_offset)
            freeze_all_but_adapters(self)

    # ---- pipeline plumbing -------------------------------------------------------------------------------
    def set_input_tensor(self, input_tensor) -> None:
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.input_tensor = input_tensor

    # ---- forward -----------------------------------------------------------------------------------------
    def replicated_modules(self) -> tuple[torch.nn.Module, ...]:
        return self.time_embedding, self.position_embedding, self.context_projection

    def own_modules(self) -> list[torch.nn.Module]:
        """The modules around Megatron's blocks that this chunk holds."""
        names = ("patch_embed", "time_embedding", "context_projection", "position_embedding", "unpatchify")
        return [getattr(self, name) for name in names if hasattr(self, name)]

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """latents (b, 16, t, h, w) noisy X_t; timesteps (b,) in [0, 1] float32; conditioning with the model's
        context sources (and condition channels / task / infill when it has them), any float dtype. Returns this
        rank's velocity tokens (s_local, b, 16*pt*ph*pw) float32 on the last pipeline stage, hidden states
        (s_local, b, d) in params_dtype elsewhere."""
        grid = self.token_grid(latents.shape)
        if self.pre_process:
            hidden = self.layout.split(self.patch_embed(self._with_condition_channels(latents, conditioning)))
        else:
            hidden = self.input_tensor  # (s_local, b, d)
        time_embedding, modulation = self.time_embedding(timesteps, conditioning.task)
        context, real = self.context_projection(conditioning.tokens, conditioning.images, conditioning.task)
        # context (n, b, d), real (b, n)
        context, real = pad_context(context, real, fp8.context_multiple(self.config))
        if self.config.sequence_parallel:
            context = tensor_parallel.scatter_to_sequence_parallel_region(context)
        context_mask = ~real[:, None, None, :]  # (b, 1, 1, n), True = masked (Megatron convention)
        position = self.layout.split(self.position_embedding(grid)).to(hidden.dtype)

        fp8.check_token_alignment(self.config, hidden.shape[0] * hidden.shape[1])
        with fp8.whole_pass_context(self.config):
            for index, layer in enumerate(self.layers):
                args = (hidden, modulation, context, context_mask, position)
                if self._recompute(index):
                    hidden = fp8.recompute(self.config, partial(fp8.run_in_fp8, self.config, layer), *args)
                else:
                    hidden = fp8.run_in_fp8(self.config, layer, *args)

        if not self.post_process:
            return hidden.contiguous()  # sent to the next pipeline stage
        return self.unpatchify(hidden, time_embedding).float()  # the loss and the sampler work in float32

    def _with_condition_channels(self, latents: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """(b, c, t, h, w) -> (b, DiTConfig.input_channels, t, h, w): the latents, the condition channels, then the
        infill's channels (known latents, mask)."""
        expected = self.dit_config.condition_channels
        channels = conditioning.channels
        if (channels.shape[1] if channels is not None else 0) != expected:
            got = "none" if channels is None else f"{channels.shape[1]}"
            raise ValueError(f"conditioning.channels: got {got}, the model takes {expected} condition channels")
        if (conditioning.infill is not None) != self.dit_config.infill:
            raise ValueError(f"conditioning.infill: got {'none' if conditioning.infill is None else 'known frames'}, "
                             f"the model {'takes' if self.dit_config.infill else 'has no'} infill channels")
        parts = [latents]
        if channels is not None:
            parts.append(channels)
        if conditioning.infill is not None:
            if conditioning.infill.latents.shape != latents.shape:
                raise ValueError(f"conditioning.infill.latents: shape {tuple(conditioning.infill.latents.shape)} "
                                 f"differs from the latents' {tuple(latents.shape)}")
            parts.append(conditioning.infill.channels())
        for part in parts[1:]:
            if part.shape[0] != latents.shape[0] or part.shape[2:] != latents.shape[2:]:
                raise ValueError(f"conditioning: channels of shape {tuple(part.shape)} do not match the latents' "
                                 f"(b, t, h, w) of {tuple(latents.shape)}")
        return torch.cat([p.to(latents.dtype) for p in parts], dim=1) if len(parts) > 1 else latents

    def tokens_per_sample(self, latent_shape) -> int:
        t, h, w = self.token_grid(latent_shape)
        return t * h * w

    def token_grid(self, latent_shape) -> tuple[int, int, int]:
        """(b, 16, t, h, w) latent shape -> the (t', h', w') token grid after patchify."""
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
        """The replicated modules exist on every pipeline chunk; only the first chunk's copy is the main one."""
        if self.is_first_chunk:
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
            if module in self.replicated_modules():
                self._mark_pipeline_replicas(module_state)
            state.update(module_state)
        for index, layer in enumerate(self.layers):
            state.update(layer.sharded_state_dict(f"{prefix}layers.{self.layer_offset + index}.", sharded_offsets,
                                                  metadata))
        return state
