"""Configuration of the three frozen text encoders (SPEC section 1): which checkpoint, how many tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from megatron_moviegen.config.schema import ConfigError, apply_overrides, build, to_dict
from megatron_moviegen.runtime import Runtime

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class EncoderConfig:
    """One encoder. `path` is a hub id ("google/ul2") or a local folder written by `save_pretrained`; `subfolder`
    the folder inside it, and `tokenizer_subfolder` the tokenizer's if it is elsewhere (an exported diffusers
    pipeline: `path: out, subfolder: text_encoder, tokenizer_subfolder: tokenizer`)."""

    path: str
    max_length: int
    enabled: bool = True
    subfolder: Optional[str] = None
    tokenizer_subfolder: Optional[str] = None
    # accelerate device map for a checkpoint too big for one GPU (UL2 on small GPUs); None = whole on `device`.
    device_map: Optional[str] = None

    def validate(self) -> None:
        if self.enabled and not self.path:
            raise ConfigError("path: empty; give a hub id or a local folder")
        if self.max_length < 1:
            raise ConfigError(f"max_length: got {self.max_length}, must be >= 1")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise ConfigError(f"device_map: got {self.device_map!r}, expected None or one of {list(DEVICE_MAPS)}")


@dataclass
class TextEncodersConfig:
    """The paper's encoders; output names are the field names, the same keys as `DiTConfig.text_encoders`. Movie Gen
    Video reads ul2, metaclip and byt5 (max lengths UL2 300, MetaCLIP 256, ByT5 100: SPEC, ours); Movie Gen Audio
    reads t5, a T5-base encoder (SPEC section 7; 128 tokens, ours), off by default (`text_encoders_for_model` turns
    on exactly the encoders a DiT reads)."""

    ul2: EncoderConfig = field(default_factory=lambda: EncoderConfig("google/ul2", 300))
    metaclip: EncoderConfig = field(default_factory=lambda: EncoderConfig("facebook/metaclip-h14-fullcc2.5b", 256))
    byt5: EncoderConfig = field(default_factory=lambda: EncoderConfig("google/byt5-large", 100))
    t5: EncoderConfig = field(default_factory=lambda: EncoderConfig("google-t5/t5-base", 128, enabled=False))
    batch_size: int = 8
    # "auto": bfloat16 on CUDA, float32 on CPU.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # "auto": cuda when available, else cpu. Outputs are returned on this device.
    device: str = "auto"

    NAMES = ("ul2", "metaclip", "byt5", "t5")

    def encoders(self) -> dict[str, EncoderConfig]:
        """The enabled encoders by name, in the paper's order."""
        return {name: getattr(self, name) for name in self.NAMES if getattr(self, name).enabled}

    def torch_device(self) -> torch.device:
        """"auto": this process's runtime device (cuda:<local rank> on GPU, so ranks of a node don't share one)."""
        if self.device == "auto":
            return Runtime.resolve().device
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: got {self.batch_size}, must be >= 1")
        if not self.encoders():
            raise ConfigError(f"enabled: all of {list(self.NAMES)} are disabled; enable at least one")
        try:
            torch.device(self.device if self.device != "auto" else "cpu")
        except RuntimeError:
            raise ConfigError(f"device: got {self.device!r}, expected 'auto', 'cpu', 'cuda' or 'cuda:<i>'") from None


def text_encoders_config(overrides: list[str], base: dict | None = None) -> "TextEncodersConfig":
    """The paper's encoders with `base` fields, then `field=value` overrides (`ul2.path=/models/ul2` changes the path
    and keeps ul2's max_length)."""
    return build(TextEncodersConfig, apply_overrides({**to_dict(TextEncodersConfig()), **(base or {})}, list(overrides)))


def text_encoders_for_model(overrides: list[str], text_encoders: dict, base: dict | None = None) -> "TextEncodersConfig":
    """`text_encoders_config` with exactly the encoders a DiT reads enabled (`text_encoders`: DiTConfig.text_encoders,
    name -> ContextSource), each at the DiT's max_length; `overrides` still win."""
    unknown = sorted(set(text_encoders) - set(TextEncodersConfig.NAMES))
    if unknown:
        raise ConfigError(f"model.text_encoders: {unknown} are not encoders this project loads "
                          f"({list(TextEncodersConfig.NAMES)})")
    defaults = to_dict(TextEncodersConfig())
    chosen = {name: {**defaults[name], "enabled": name in text_encoders,
                     **({"max_length": text_encoders[name].max_length} if name in text_encoders else {})}
              for name in TextEncodersConfig.NAMES}
    return text_encoders_config(overrides, {**chosen, **(base or {})})
