"""Configuration of the Movie Gen DiT (SPEC section 1) and the rules between it and its parallel layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.parallel.config import ParallelConfig


# The DiT block's linears (dit_layer_specs.py) and how each is split over TP.
COLUMN, ROW = "column", "row"
LINEARS = {
    "self_attention.linear_qkv": COLUMN,
    "self_attention.linear_proj": ROW,
    "cross_attention.linear_q": COLUMN,
    "cross_attention.linear_kv": COLUMN,
    "cross_attention.linear_proj": ROW,
    "mlp.linear_fc1": COLUMN,
    "mlp.linear_fc2": ROW,
}


@dataclass
class LoRAConfig:
    """rank 0: no LoRA. `targets`: which of the block's linears get an adapter (LINEARS' names)."""

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = tuple(LINEARS)

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        if self.rank < 0:
            raise ConfigError(f"rank: got {self.rank}, must be >= 0 (0: no LoRA)")
        unknown = sorted(set(self.targets) - set(LINEARS))
        if unknown:
            raise ConfigError(f"targets: unknown linears {unknown}; the DiT block has {list(LINEARS)}")
        if self.enabled and not self.targets:
            raise ConfigError("targets: empty; LoRA needs at least one linear")

    def num_parameters(self, sizes: dict[str, tuple[int, int]], num_layers: int) -> int:
        """Adapter parameters of the whole DiT (every layer, all TP shards) for `linear_sizes(...)`."""
        if not self.enabled:
            return 0
        return num_layers * sum(self.rank * sum(sizes[name]) for name in self.targets)


def linear_sizes(hidden_size: int, ffn_hidden_size: int, attention_size: int, kv_size: int,
                 gated: bool = True) -> dict[str, tuple[int, int]]:
    """(in, out) whole sizes of each of the block's linears: `attention_size` = heads x head dim of the queries,
    `kv_size` = K's width (= V's)."""
    d, f = hidden_size, ffn_hidden_size
    return {"self_attention.linear_qkv": (d, attention_size + 2 * kv_size),
            "self_attention.linear_proj": (attention_size, d),
            "cross_attention.linear_q": (d, attention_size), "cross_attention.linear_kv": (d, 2 * kv_size),
            "cross_attention.linear_proj": (attention_size, d), "mlp.linear_fc1": (d, 2 * f if gated else f),
            "mlp.linear_fc2": (f, d)}


@dataclass
class VisionTowerConfig:
    """The shape of a CLIP vision tower (transformers CLIPVisionConfig) trained inside the DiT. The paper's MetaCLIP
    ViT-H/14: 1280 wide, 32 layers of 16 heads, MLP 5120, 224 px in 14 px patches (257 tokens), GELU."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # the class token, then one per patch

    @property
    def num_parameters(self) -> int:
        """CLIPVisionModel's parameter count (ViT-H/14: 630,766,080), without building it."""
        h, i, p = self.hidden_size, self.intermediate_size, self.patch_size
        embeddings = 3 * p * p * h + h + self.num_tokens * h  # patch conv (no bias), class token, positions
        layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h  # q/k/v/out, MLP, two LayerNorms
        return embeddings + 2 * h + self.num_hidden_layers * layer + 2 * h  # pre- and post-LayerNorm

    def validate(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                     "patch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"num_attention_heads: {self.num_attention_heads} does not divide hidden_size "
                              f"{self.hidden_size}")


@dataclass
class ContextSource:
    """One source of cross-attention tokens as the DiT sees it (a text encoder, a reference image's vision
    tower): the width of its embeddings and the number of tokens it contributes (padded to this length).
    `encoder` set: the source's encoder is part of the DiT and trained with it (a trainable vision tower); its
    input is Conditioning.images[name] and its tokens are the tower's last hidden states."""

    width: int
    max_length: int
    encoder: Optional[VisionTowerConfig] = None


def _paper_text_encoders() -> dict[str, ContextSource]:
    return {
        "ul2": ContextSource(width=4096, max_length=300),
        "metaclip": ContextSource(width=1024, max_length=256),
        "byt5": ContextSource(width=1536, max_length=100),
    }


@dataclass
class DiTConfig:
    """The transformer. Defaults are the paper's 30B model."""

    num_layers: int = 48
    hidden_size: int = 6144
    ffn_hidden_size: int = 16384
    num_attention_heads: int = 48
    latent_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    # Factorized learnable position tables, in tokens (after patchify), sized for the recipe's buckets (checked
    # against data.buckets at load): 32 latent frames (16 s at 16 fps), and 64 rows and columns for the long
    # side of the 768 px 16:9 and 9:16 buckets (576x1024 px -> 36 x 64 tokens at 8x TAE and 2x2 patches).
    max_frames: int = 32
    max_height: int = 64
    max_width: int = 64
    # The most video tokens one sample may have (SPEC: 73,728 = 16 s at 768x768); the memory plan assumes it.
    max_video_tokens: int = 73728
    text_encoders: dict[str, ContextSource] = field(default_factory=_paper_text_encoders)
    # Conditioning beyond text (conditioning.py): cross-attention sources after the text (e.g. a reference
    # image's vision tokens), input channels concatenated to the noisy latent (the upsampler's low-res latent,
    # editing's source video), and the size of a learned task-embedding table added to the flow-time embedding.
    extra_context: dict[str, ContextSource] = field(default_factory=dict)
    condition_channels: int = 0
    num_tasks: int = 0
    # Emu Edit's task embedding also as context (SPEC section 6): each task's learned `task_tokens` tokens of the model
    # width, appended to the cross-attention context. 0: the task only adds its row to the time embedding.
    task_tokens: int = 0
    # Masked infilling (Movie Gen Audio, SPEC section 7): the input also carries the known latent frames and their
    # mask (Conditioning.infill: latent_channels + 1 more input channels), and the loss covers the unknown frames.
    infill: bool = False
    # The n of the "FPS-n" prompt prefixes the model was trained on; training adds its shards' values, and
    # generation defaults to them and warns on others. Empty: unknown.
    trained_fps: tuple[int, ...] = ()
    # The encoders of the shards the model was trained on ({role: {"name", "sha256"}}, pre-encoding's record):
    # training fills it in, and a resume or train.load_from onto shards of other encoders is refused. Empty: unknown.
    trained_encoders: dict[str, dict[str, str]] = field(default_factory=dict)
    timestep_embedding_dim: int = 256
    qk_norm: bool = True
    # SwiGLU FFN (the video model's: 16384 = 8/3 x 6144); False: a two-layer GELU MLP (ours for the audio model,
    # whose FFN of 18432 = 4 x 4608 is the classic non-gated width).
    gated_mlp: bool = True
    norm_epsilon: float = 1e-6
    init_std: float = 0.02
    # Movie Gen trains without dropout; Megatron's TransformerConfig defaults these to 0.1.
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    # "auto": TransformerEngine spec when TE and CUDA are present, else the local (torch) spec.
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    fp8: Optional[Literal["hybrid", "e4m3"]] = None
    fp8_recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "tensorwise"
    recompute_granularity: Optional[Literal["full", "selective"]] = None
    recompute_method: Literal["uniform", "block"] = "uniform"
    recompute_num_layers: int = 1
    # LoRA adapters on the block's linears (models/lora.py): fine-tuning `train.load_from` with everything else frozen.
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def context_sources(self) -> dict[str, ContextSource]:
        """Every cross-attention source, in the order their tokens are concatenated: text encoders, then extras."""
        return {**self.text_encoders, **self.extra_context}

    @property
    def context_length(self) -> int:
        return sum(source.max_length for source in self.context_sources().values())

    @property
    def input_channels(self) -> int:
        """Channels the patch embedding reads: the noisy latent's, the condition channels, then the infill's (the
        known latents and their mask)."""
        return self.latent_channels + self.condition_channels + (self.latent_channels + 1 if self.infill else 0)

    def validate(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "latent_channels",
                     "max_frames", "max_height", "max_width", "max_video_tokens", "timestep_embedding_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"num_attention_heads: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if any(p < 1 for p in self.patch_size):
            raise ConfigError(f"patch_size: got {self.patch_size}, every entry must be >= 1")
        if not self.text_encoders:
            raise ConfigError("text_encoders: at least one text encoder is required")
        for section in ("text_encoders", "extra_context"):
            for name, source in getattr(self, section).items():
                if source.width < 1 or source.max_length < 1:
                    raise ConfigError(f"{section}.{name}: width and max_length must be >= 1, got {source}")
        if any(source.encoder is not None for source in self.text_encoders.values()):
            raise ConfigError("text_encoders: an in-model encoder is for extra_context sources only")
        for name, source in self.extra_context.items():
            tower = source.encoder
            if tower is not None and (tower.hidden_size != source.width or tower.num_tokens > source.max_length):
                raise ConfigError(f"extra_context.{name}: width {source.width} and max_length {source.max_length}, "
                                  f"but its encoder gives {tower.num_tokens} tokens of {tower.hidden_size}")
        clash = set(self.text_encoders) & set(self.extra_context)
        if clash:
            raise ConfigError(f"extra_context: {sorted(clash)} already name text encoders")
        for name in ("condition_channels", "num_tasks", "task_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 0")
        if self.task_tokens and not self.num_tasks:
            raise ConfigError(f"task_tokens: got {self.task_tokens}, but num_tasks is 0 (no task to give tokens to)")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be in [0, 1)")


def sample_latent_grid(model: DiTConfig, compression: int, num_frames: int, height: int, width: int
                       ) -> tuple[int, int, int]:
    """The latent (t, h, w) of a `num_frames` x `height` x `width` px sample through a TAE compressing `compression`x
    in t, h and w (ceil in t), after checking the patch divides it and the DiT's position tables hold its tokens."""
    pt, ph, pw = model.patch_size
    if height % (compression * ph) or width % (compression * pw):
        raise ValueError(f"height x width: got {height} x {width}, both must be multiples of "
                         f"{compression * ph} (TAE compression {compression} x patch {ph})")
    latent_t = -(-num_frames // compression)
    if latent_t % pt:
        raise ValueError(f"num_frames: got {num_frames} -> {latent_t} latent frames, not a multiple of patch {pt}")
    grid = (latent_t // pt, height // (compression * ph), width // (compression * pw))
    limits = (model.max_frames, model.max_height, model.max_width)
    if any(size > limit for size, limit in zip(grid, limits)):
        raise ValueError(
            f"{num_frames} frames at {height}x{width} px give a token grid (t, h, w) = {grid}, but the "
            f"checkpoint's position tables hold at most {limits}: up to {model.max_frames * pt * compression} frames "
            f"and {model.max_height * ph * compression}x{model.max_width * pw * compression} px"
        )
    return latent_t, height // compression, width // compression


def check_model_fits_layout(model: DiTConfig, parallel: ParallelConfig) -> None:
    """Cross-section rules between the model and its parallel layout."""
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    if model.num_attention_heads % tp:
        raise ConfigError(
            f"parallel.tensor_model_parallel_size: {tp} does not divide model.num_attention_heads "
            f"{model.num_attention_heads}"
        )
    if model.ffn_hidden_size % tp:
        raise ConfigError(
            f"parallel.tensor_model_parallel_size: {tp} does not divide model.ffn_hidden_size {model.ffn_hidden_size}"
        )
    chunks = pp * (parallel.virtual_pipeline_model_parallel_size or 1)
    if model.num_layers % chunks:
        raise ConfigError(
            f"parallel.pipeline_model_parallel_size: model.num_layers {model.num_layers} is not divisible into "
            f"{chunks} pipeline chunks"
        )
