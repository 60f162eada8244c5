"""The three frozen text encoders of Movie Gen (SPEC section 1) behind one call:

    encoders = TextEncoders(TextEncodersConfig())
    out = encoders.encode(["a corgi holding a sign that says \"HELLO\""], fps=16)
    ul2_embeddings, ul2_mask = out["ul2"]  # (b, 300, 4096), (b, 300) bool, True = real token

- ul2: the T5 encoder of google/ul2 (T5EncoderModel; the decoder half of the checkpoint is never loaded).
- metaclip: the text tower of facebook/metaclip-h14-fullcc2.5b (CLIPTextModel), context extended 77 -> 256
  (see `metaclip.py`); per-token hidden states after the final layer norm.
- byt5: the encoder of google/byt5-large on the prompt's quoted text only (see `prompts.py`); a prompt with
  no quoted text gives zeros and an all-False mask.
- t5: a T5-base encoder (google-t5/t5-base, 768 wide), Movie Gen Audio's text encoder (SPEC section 7); off unless
  enabled (`text.config.text_encoders_for_model`).
Every output is padded to the encoder's `max_length`, with padded positions zeroed. UL2 and MetaCLIP see the
"FPS-<n>" prefix when `fps` is given; ByT5 never does (the prefix is not quoted).

Loading: `path` is a local folder or a hub id, read with `from_pretrained`; with HF_HUB_OFFLINE=1 only the
local cache is read (local_files_only). A path that looks local (absolute, ./, ~/ or nested) and does not
exist raises FileNotFoundError naming it.

Memory, bf16 weights (parameter counts of the real configs, built on the meta device):
- UL2 encoder: 8,721,797,632 params = 17.4 GB. T5EncoderModel keeps only the encoder of the 19.46B
  (38.9 GB) encoder-decoder checkpoint. Per block 4*4096*4096 (attention) + 3*4096*16384 (gated FFN) +
  2*4096 (norms) = 268,443,648; x32 blocks, + 32128*4096 embedding + 4096 final norm + 512 bias table.
- MetaCLIP text tower: 353,167,360 params with 256 positions = 0.71 GB.
- ByT5-large encoder: 864,204,800 params = 1.73 GB.
One 80 GB GPU therefore holds all three (~19.9 GB) with `device: cuda` and the default dtype "auto" (bf16);
nothing needs sharding. Sharding is there for GPUs too small for UL2 (e.g. 16-24 GB): `ul2.device_map: auto`
(needs `accelerate`) spreads its blocks over the visible GPUs, one GPU busy at a time, which suits offline
pre-encoding. float16 is not advised: T5 activations overflow it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from transformers import ByT5Tokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from megatron_moviegen.conditioning import Tokens
from megatron_moviegen.text.config import EncoderConfig, TextEncodersConfig
from megatron_moviegen.text.metaclip import extend_clip_context
from megatron_moviegen.text.prompts import add_fps_prefix, byt5_text
from megatron_moviegen.utils.hub import hub_offline, looks_local

_CLASSES = {
    "ul2": (T5EncoderModel, T5Tokenizer),
    "metaclip": (CLIPTextModel, CLIPTokenizer),
    "byt5": (T5EncoderModel, ByT5Tokenizer),
    "t5": (T5EncoderModel, T5Tokenizer),
}


def _whole_prompt(prompt: str) -> Optional[str]:
    return prompt


def _quoted_text(prompt: str) -> Optional[str]:
    return byt5_text(prompt) or None


_TEXT_FNS: dict[str, Callable[[str], Optional[str]]] = {
    "ul2": _whole_prompt,
    "metaclip": _whole_prompt,
    "byt5": _quoted_text,
    "t5": _whole_prompt,
}


def resolve_source(path: str, what: str = "text encoder checkpoint") -> str:
    """A local folder (must exist) or a hub id ("google/ul2") for `from_pretrained`; `what` names it in the error."""
    local = Path(path).expanduser()
    if local.exists():
        return str(local)
    if looks_local(path):
        raise FileNotFoundError(f"{what} {path!r}: no such folder")
    return path


def _load(name: str, cfg: EncoderConfig, dtype: torch.dtype, device: torch.device):
    model_cls, tokenizer_cls = _CLASSES[name]
    source = resolve_source(cfg.path)
    kwargs = {"local_files_only": hub_offline()}
    if cfg.subfolder:
        kwargs["subfolder"] = cfg.subfolder
    tokenizer_subfolder = cfg.tokenizer_subfolder or cfg.subfolder
    try:
        tokenizer = tokenizer_cls.from_pretrained(
            source, **{**kwargs, **({"subfolder": tokenizer_subfolder} if tokenizer_subfolder else {})})
        if cfg.device_map is None:
            model = model_cls.from_pretrained(source, dtype=dtype, **kwargs).to(device)
        else:
            if importlib.util.find_spec("accelerate") is None:
                raise ImportError(f"{name}.device_map={cfg.device_map!r} needs `pip install accelerate`")
            model = model_cls.from_pretrained(source, dtype=dtype, device_map=cfg.device_map, **kwargs)
    except OSError as exc:
        raise OSError(
            f"{name}: cannot load {cfg.path!r} (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); "
            f"download it into the hub cache or point `{name}.path` at a local folder. {exc}"
        ) from exc
    tokenizer.model_max_length = cfg.max_length  # MetaCLIP's tokenizer config says 77
    if name == "metaclip":
        extend_clip_context(model, cfg.max_length)
    return tokenizer, model.eval().requires_grad_(False)


@dataclass
class FrozenTextEncoder:
    """One loaded encoder: tokenizer + frozen model + the rule that turns a prompt into its input text."""

    name: str
    tokenizer: object
    model: nn.Module
    max_length: int
    text_fn: Callable[[str], Optional[str]]

    @property
    def width(self) -> int:
        return self.model.config.hidden_size  # T5Config maps hidden_size to d_model

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @torch.no_grad()
    def encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> embeddings (b, max_length, d) in the model's dtype and mask (b, max_length) bool, on
        the model's input device. Prompts whose input text is None come back all zeros / all False."""
        texts = [self.text_fn(p) for p in prompts]
        rows = [i for i, t in enumerate(texts) if t is not None]
        dtype = self.model.get_input_embeddings().weight.dtype
        embeddings = torch.zeros(len(prompts), self.max_length, self.width, dtype=dtype, device=self.input_device)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool, device=self.input_device)
        if not rows:
            return embeddings, mask
        # Pad to the batch's longest prompt only (cheaper than max_length), then into the fixed-size output:
        # masked keys (T5) and the causal mask (CLIP) keep real tokens independent of the padding.
        tokens = self.tokenizer(
            [texts[i] for i in rows], padding="longest", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        ).to(self.input_device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        real = tokens.attention_mask.bool()  # (r, l), l <= max_length
        hidden = hidden.to(device=self.input_device, dtype=dtype) * real[..., None]  # (r, l, d)
        length = real.shape[1]
        embeddings[rows, :length] = hidden
        mask[rows, :length] = real
        return embeddings, mask


class TextEncoders:
    """The enabled encoders of a `TextEncodersConfig`, loaded frozen, in eval mode, on `config.device`."""

    def __init__(self, config: TextEncodersConfig):
        config.validate()
        self.config = config
        self.device = config.torch_device()
        self.dtype = config.torch_dtype()
        self.encoders: dict[str, FrozenTextEncoder] = {}
        for name, cfg in config.encoders().items():
            tokenizer, model = _load(name, cfg, self.dtype, self.device)
            self.encoders[name] = FrozenTextEncoder(name, tokenizer, model, cfg.max_length, _TEXT_FNS[name])

    @torch.no_grad()
    def encode(self, prompts: list[str], fps: int | Sequence[int] | None = None) -> dict[str, Tokens]:
        """prompts -> {name: Tokens(embeddings (b, max_length, d), mask (b, max_length) bool, True = real token)}
        on `self.device`. `fps` (one int, or one per prompt) adds the "FPS-<n>" prefix (see prompts.py)."""
        if isinstance(prompts, str):
            raise TypeError("prompts: got one str, expected a list of str")
        prompts = _with_fps(list(prompts), fps)
        out = {}
        for name, encoder in self.encoders.items():
            chunks = [
                encoder.encode_batch(prompts[i : i + self.config.batch_size])
                for i in range(0, max(len(prompts), 1), self.config.batch_size)
            ]
            out[name] = Tokens(
                torch.cat([e for e, _ in chunks]).to(self.device),
                torch.cat([m for _, m in chunks]).to(self.device),
            )
        return out


def _with_fps(prompts: list[str], fps: int | Sequence[int] | None) -> list[str]:
    if fps is None:
        return prompts
    per_prompt = [fps] * len(prompts) if isinstance(fps, int) else list(fps)
    if len(per_prompt) != len(prompts):
        raise ValueError(f"fps: got {len(per_prompt)} values for {len(prompts)} prompts")
    return [add_fps_prefix(p, f) for p, f in zip(prompts, per_prompt)]
