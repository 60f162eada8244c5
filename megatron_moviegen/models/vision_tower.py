"""The reference-image encoder of personalized video (PT2V, SPEC section 6): a CLIP vision tower (the paper's
MetaCLIP ViT-H/14, `facebook/metaclip-h14-fullcc2.5b`) loaded through transformers' CLIPVisionModel, frozen here:
pre-encoding runs it once per sample and caches its tokens in the shards, and the DiT's per-source context
projection (`ContextProjection.proj["reference_image"]`, trained) maps them into the model width.

    encoder = ReferenceEncoder(ReferenceConfig(encoder="/models/metaclip-h14"))
    tokens = encoder.encode(frames)   # b (h, w, 3) uint8 -> Tokens((b, max_length, 1280), (b, max_length) bool)

Every token of the last hidden state is kept (the class token, then one per 14x14 patch: 257 at 224 px), padded
to `max_length` with masked zeros. Pixels are resized (antialiased bilinear, cover) and centre-cropped to the
tower's image size and normalised with its processor's mean and std, in torch, so the same frame gives the same
tokens on CPU workers and on GPU.

Memory: the ViT-H/14 vision tower has 632M parameters (1.26 GB in bf16) and runs on `device` beside the text
encoders. A trainable tower (the paper fine-tunes it) is not built: see docs/personalization.md.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from megatron_moviegen.conditioning import Tokens
from megatron_moviegen.data.config import ReferenceConfig
from megatron_moviegen.data.decode import resize_center_crop
from megatron_moviegen.models.dit_config import ContextSource
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.text.encoders import hub_offline

# transformers' OPENAI_CLIP_MEAN / STD, the normalisation of every CLIP and MetaCLIP checkpoint.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_FILE = "preprocessor_config.json"


def resolve_encoder_source(path: str) -> str:
    local = Path(path).expanduser()
    if local.exists():
        return str(local)
    if path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise FileNotFoundError(f"reference encoder {path!r}: no such folder")
    return path


def _normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's image mean and std (its preprocessor_config.json), else CLIP's."""
    processor = Path(source) / PROCESSOR_FILE
    if processor.is_file():
        config = json.loads(processor.read_text())
        return tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD


class ReferenceEncoder:
    """A frozen CLIP vision tower in eval mode on `config.device` (auto: this rank's runtime device)."""

    def __init__(self, config: ReferenceConfig):
        config.validate()
        self.config = config
        self.device = Runtime.resolve().device if config.device == "auto" else torch.device(config.device)
        dtype = (torch.bfloat16 if self.device.type == "cuda" else torch.float32) if config.dtype == "auto" \
            else getattr(torch, config.dtype)
        source = resolve_encoder_source(config.encoder)
        try:
            model = CLIPVisionModel.from_pretrained(source, dtype=dtype, local_files_only=hub_offline())
        except OSError as exc:
            raise OSError(f"reference encoder: cannot load {config.encoder!r}; point data.reference.encoder at a "
                          f"local folder (CLIPVisionModel.save_pretrained) or a cached hub id. {exc}") from exc
        self.model: nn.Module = model.to(self.device).eval().requires_grad_(False)
        mean, std = _normalisation(source)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        tokens = (self.image_size // model.config.patch_size) ** 2 + 1
        if tokens > config.max_length:
            raise ValueError(f"data.reference.max_length: {config.max_length}, but {config.encoder} gives {tokens} "
                             f"tokens per image ({self.image_size} px, patch {model.config.patch_size})")
        self.num_tokens = tokens

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    def context_source(self) -> ContextSource:
        """What the DiT's model.extra_context entry for these tokens must say."""
        return ContextSource(width=self.width, max_length=self.config.max_length)

    def pixels(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """b (h, w, 3) uint8 images of any sizes -> the tower's input (b, 3, size, size), normalised, on its device
        and dtype."""
        size = self.image_size
        square = torch.stack([resize_center_crop(f.to(self.device)[None], size, size)[0] for f in frames])
        x = square.permute(0, 3, 1, 2).float().div(255.0)  # (b, 3, size, size)
        return ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)

    @torch.no_grad()
    def encode(self, frames: Sequence[torch.Tensor]) -> Tokens:
        """b (h, w, 3) uint8 reference images (a list, or a (b, h, w, 3) tensor) -> Tokens((b, max_length, width) float32, (b, max_length) bool) on
        the tower's device; tokens past the tower's own count are zeros, masked."""
        hidden = self.model(pixel_values=self.pixels(frames)).last_hidden_state.float()  # (b, n, width)
        b, n, width = hidden.shape
        embeddings = hidden.new_zeros(b, self.config.max_length, width)
        embeddings[:, :n] = hidden
        mask = torch.zeros(b, self.config.max_length, dtype=torch.bool, device=hidden.device)
        mask[:, :n] = True
        return Tokens(embeddings, mask)


def save_tiny_vision_tower(folder: str | Path, width: int = 32, image_size: int = 32, patch_size: int = 8,
                           seed: int = 0) -> Path:
    """A randomly initialised (seeded) 2-layer CLIPVisionModel written with save_pretrained: the real loading and
    encoding path with toy weights, for tests and the CPU personalization example. (image_size / patch_size)^2 + 1
    tokens of `width`."""
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                              num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                              projection_dim=width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")  # written whole, then renamed into place
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    (staging / PROCESSOR_FILE).write_text(json.dumps({"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
                                                      "crop_size": image_size}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder
