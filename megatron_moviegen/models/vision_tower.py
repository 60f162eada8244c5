"""CLIP vision towers (the paper's MetaCLIP ViT-H/14, `facebook/metaclip-h14-fullcc2.5b`) through transformers'
CLIPVisionModel: Movie Gen Audio's per-frame video features (`FrameFeatureEncoder`, the pooled output of each frame)
and the reference-image encoder of personalized video (PT2V, SPEC section 6), in one of two roles:

- frozen (data.reference.trainable false): pre-encoding runs `ReferenceEncoder.encode` once per sample and caches
  the tokens in the shards; the DiT's per-source projection (`ContextProjection.proj["reference_image"]`) is trained;
- trainable (the paper's; model.extra_context.reference_image.encoder set): the tower is built inside the DiT
  (`build_vision_tower`, in `ContextProjection.encoders`), started from the pretrained weights
  (`load_pretrained_towers`) and trained with it; pre-encoding caches its input pixels (`ReferenceEncoder.images`).

    encoder = ReferenceEncoder(ReferenceConfig(encoder="/models/metaclip-h14"))   # data.config.ReferenceConfig
    tokens = encoder.encode(frames)   # b (h, w, 3) uint8 -> Tokens((b, max_length, 1280), (b, max_length) bool)

Both roles compute tokens with `tower_tokens`: every token of the last hidden state (the class token, then one per
14x14 patch: 257 at 224 px), padded to `max_length` with masked zeros. Pixels are resized (antialiased bilinear,
cover) and centre-cropped to the tower's image size and normalised with its processor's mean and std, in torch, so
the same frame gives the same input on CPU workers and on GPU.

Memory: the ViT-H/14 vision tower has 630.8M parameters (1.26 GB in bf16); frozen it runs on `device` beside the
text encoders; trainable it is replicated on every rank: bf16 weights, fp32 gradients, fp32 master weights and two
Adam moments are 2 + 4 + 4 + 4 + 4 = 18 bytes per parameter, 11.4 GB, of which the distributed optimizer shards the
12 bytes of optimizer state over the data-parallel ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.utils import logging as hf_logging

from megatron_moviegen.conditioning import Images, Tokens
from megatron_moviegen.models.dit_config import ContextSource, VisionTowerConfig
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.text.encoders import hub_offline, resolve_source
from megatron_moviegen.utils.frames import resize_center_crop
from megatron_moviegen.utils.io import replacing_folder

# transformers' OPENAI_CLIP_MEAN / STD, the normalisation of every CLIP and MetaCLIP checkpoint.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_FILE = "preprocessor_config.json"


def resolve_encoder_source(path: str, what: str = "reference encoder") -> str:
    """A tower folder (must exist) or a hub id, as the text encoders resolve theirs."""
    return resolve_source(path, what)


def clip_normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's image mean and std (its preprocessor_config.json), else CLIP's."""
    processor = Path(source) / PROCESSOR_FILE
    if processor.is_file():
        config = json.loads(processor.read_text())
        return tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD


def clip_pixels(frames: Sequence[torch.Tensor], size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """b (h, w, 3) uint8 images of any sizes -> (b, 3, size, size) float32 CLIP input on `mean`'s device: resized
    to cover (antialiased bilinear), centre-cropped, scaled to [0, 1] and normalised by `mean`, `std` (1, 3, 1, 1)."""
    square = torch.stack([resize_center_crop(f.to(mean.device)[None], size, size)[0] for f in frames])
    x = square.permute(0, 3, 1, 2).float().div(255.0)  # (b, 3, size, size)
    return (x - mean) / std


def build_vision_tower(shape: VisionTowerConfig) -> CLIPVisionModel:
    """A randomly initialised CLIP vision tower of `shape` (the DiT's trainable one; pretrained weights are loaded
    into it by `load_pretrained_towers`). Its post-layernorm serves only the pooled output, which is not used, and
    its key biases cancel in the softmax: both are frozen, so every trainable parameter has a gradient (Adam would
    turn the key biases' rounding-noise gradients into full-size steps)."""
    tower = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        image_size=shape.image_size, patch_size=shape.patch_size, hidden_act=shape.hidden_act,
        layer_norm_eps=shape.layer_norm_eps, projection_dim=shape.hidden_size, attention_dropout=0.0))
    getattr(tower, "vision_model", tower).post_layernorm.requires_grad_(False)  # transformers 4 nests it
    for name, param in tower.named_parameters():
        if name.endswith("k_proj.bias"):  # adds one constant per query row: softmax cancels it, its gradient is 0
            param.requires_grad_(False)
    return tower


def tower_tokens(model: CLIPVisionModel, pixels: torch.Tensor, max_length: int,
                 present: Optional[torch.Tensor] = None) -> Tokens:
    """The tower's last hidden states (every token: class, then patches) for (b, 3, s, s) normalised pixels,
    padded with zeros to `max_length`: Tokens((b, max_length, width), (b, max_length) bool). `present` (b,) False
    masks a sample's tokens (no image)."""
    hidden = model(pixel_values=pixels).last_hidden_state  # (b, n, width)
    b, n, width = hidden.shape
    embeddings = torch.cat([hidden, hidden.new_zeros(b, max_length - n, width)], dim=1)
    mask = (torch.arange(max_length, device=hidden.device) < n).expand(b, max_length)
    if present is not None:
        mask = mask & present.to(mask.device)[:, None]
    return Tokens(embeddings, mask)


def load_pretrained_towers(model_chunks, encoder: str) -> list[str]:
    """Copy the pretrained tower of `encoder` (data.reference.encoder: a CLIPVisionModel folder or hub id) into
    every in-model tower of `model_chunks` (a new personalization stage, or one trained from scratch); returns the
    sources loaded. A tower whose shape differs from the folder's is refused, naming both."""
    towers = [(name, tower) for chunk in model_chunks
              for name, tower in getattr(chunk, "module", chunk).context_projection.encoders.items()]
    if not towers:
        return []
    hf_logging.disable_progress_bar()  # every rank loads it: no per-rank "Loading weights" bars in the log
    try:  # read once, copied into every chunk's tower (one per virtual pipeline chunk)
        pretrained = CLIPVisionModel.from_pretrained(resolve_encoder_source(encoder),
                                                     local_files_only=hub_offline())
    finally:
        hf_logging.enable_progress_bar()
    state = pretrained.state_dict()
    loaded = []
    for name, tower in towers:
        mine, theirs = tower.config, pretrained.config
        fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                  "patch_size", "hidden_act")
        different = {f: (getattr(mine, f), getattr(theirs, f)) for f in fields
                     if getattr(mine, f) != getattr(theirs, f)}
        if different:
            raise ValueError(f"model.extra_context.{name}.encoder differs from {encoder} in "
                             + ", ".join(f"{f} (model {a}, checkpoint {b})" for f, (a, b) in different.items()))
        with torch.no_grad():
            for key, value in tower.state_dict().items():
                value.copy_(state[key])
        loaded.append(name)
    return loaded


class FrozenVisionTower:
    """A frozen CLIP vision tower (a folder or hub id) in eval mode on `device` ("auto": this rank's runtime
    device), with its preprocessing: `pixels` turns (h, w, 3) uint8 frames into its normalised input."""

    what = "vision tower"
    field = "the encoder"  # the config field that names the tower, in errors

    def __init__(self, encoder: str, device: str = "auto", dtype: str = "auto"):
        self.device = Runtime.resolve().device if device == "auto" else torch.device(device)
        dtype = (torch.bfloat16 if self.device.type == "cuda" else torch.float32) if dtype == "auto" \
            else getattr(torch, dtype)
        source = resolve_encoder_source(encoder, self.what)
        try:
            model = CLIPVisionModel.from_pretrained(source, dtype=dtype, local_files_only=hub_offline())
        except OSError as exc:
            raise OSError(f"{self.what}: cannot load {encoder!r}; point {self.field} at a local folder "
                          f"(CLIPVisionModel.save_pretrained) or a cached hub id. {exc}") from exc
        self.model: nn.Module = model.to(self.device).eval().requires_grad_(False)
        mean, std = clip_normalisation(source)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    def pixels(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """b (h, w, 3) uint8 images of any sizes -> the tower's input (b, 3, size, size), normalised, on its device
        and dtype."""
        pixels = clip_pixels(frames, self.image_size, self.mean, self.std)
        return pixels.to(next(self.model.parameters()).dtype)


class ReferenceEncoder(FrozenVisionTower):
    """Personalization's reference-image tower, frozen, on `config.device`; `config`: the data.reference section
    (`data.config.ReferenceConfig`: encoder, max_length, device, dtype)."""

    what, field = "reference encoder", "data.reference.encoder"

    def __init__(self, config):
        config.validate()
        self.config = config
        super().__init__(config.encoder, config.device, config.dtype)
        tokens = VisionTowerConfig(image_size=self.image_size, patch_size=self.model.config.patch_size).num_tokens
        if tokens > config.max_length:
            raise ValueError(f"data.reference.max_length: {config.max_length}, but {config.encoder} gives {tokens} "
                             f"tokens per image ({self.image_size} px, patch {self.model.config.patch_size})")
        self.num_tokens = tokens

    def context_source(self) -> ContextSource:
        """What the DiT's model.extra_context entry for these tokens must say."""
        return ContextSource(width=self.width, max_length=self.config.max_length)

    @torch.no_grad()
    def encode(self, frames: Sequence[torch.Tensor]) -> Tokens:
        """b (h, w, 3) uint8 reference images (a list, or a (b, h, w, 3) tensor) -> Tokens((b, max_length, width)
        float32, (b, max_length) bool) on the tower's device; tokens past the tower's own count are zeros, masked."""
        tokens = tower_tokens(self.model, self.pixels(frames), self.config.max_length)
        return Tokens(tokens.embeddings.float(), tokens.mask)

    def images(self, frames: Sequence[torch.Tensor]) -> Images:
        """What a trainable tower in the DiT reads (data.reference.trainable): the normalised pixels, all present."""
        pixels = self.pixels(frames).float()
        return Images(pixels, torch.ones(pixels.shape[0], dtype=torch.bool, device=pixels.device))


class FrameFeatureEncoder(FrozenVisionTower):
    """Movie Gen Audio's video features (SPEC section 7): one vector per video frame, the tower's pooled output
    (its class token after the final LayerNorm), for frames sampled at the audio latent rate (data.audio)."""

    what, field = "video feature encoder", "data.audio.video_encoder"

    def __init__(self, encoder: str, device: str = "auto", dtype: str = "auto", chunk: int = 64):
        super().__init__(encoder, device, dtype)
        self.chunk = chunk

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(t, h, w, 3) uint8 frames -> (t, width) float32 features on the tower's device, `chunk` frames a call."""
        features = [self.model(pixel_values=self.pixels(frames[i:i + self.chunk])).pooler_output.float()
                    for i in range(0, frames.shape[0], self.chunk)]
        return torch.cat(features)


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
    with replacing_folder(folder) as staging:  # written whole, then swapped into place
        model.save_pretrained(staging)
        (staging / PROCESSOR_FILE).write_text(json.dumps({"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
                                                          "crop_size": image_size}))
    return folder
