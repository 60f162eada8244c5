"""Configuration of the Movie Gen DiT (SPEC section 1) and the rules between it and its parallel layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.parallel.config import ParallelConfig


@dataclass
class TextEncoderSpec:
    """One text encoder as the DiT sees it: its output width and the number of tokens it contributes."""

    width: int
    max_length: int


def _paper_text_encoders() -> dict[str, TextEncoderSpec]:
    return {
        "ul2": TextEncoderSpec(width=4096, max_length=300),
        "metaclip": TextEncoderSpec(width=1024, max_length=256),
        "byt5": TextEncoderSpec(width=1536, max_length=100),
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
    text_encoders: dict[str, TextEncoderSpec] = field(default_factory=_paper_text_encoders)
    timestep_embedding_dim: int = 256
    qk_norm: bool = True
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def text_length(self) -> int:
        return sum(enc.max_length for enc in self.text_encoders.values())

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
        for name, enc in self.text_encoders.items():
            if enc.width < 1 or enc.max_length < 1:
                raise ConfigError(f"text_encoders.{name}: width and max_length must be >= 1, got {enc}")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be in [0, 1)")


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
    if parallel.sequence_parallel:
        for name, enc in model.text_encoders.items():
            if enc.max_length % tp:
                raise ConfigError(
                    f"model.text_encoders.{name}.max_length: {enc.max_length} must be divisible by "
                    f"tensor_model_parallel_size {tp} with sequence_parallel (text tokens are scattered too)"
                )
