"""What a DiT sample is conditioned on, besides its noisy latent and flow time: one type from the shards to the
model.

    cond = Conditioning(tokens={"ul2": Tokens(emb, mask), ...})             # text-to-video
    cond = Conditioning(tokens=..., channels=low_res_latents)               # spatial upsampler, editing source
    cond = Conditioning(tokens={..., "reference_image": Tokens(...)})       # personalization (vision tokens)
    cond = Conditioning(tokens=..., channels=source_latents, task=task_ids) # editing
    cond = Conditioning(tokens=..., images={"reference_image": Images(...)}) # personalization, trainable tower
    cond = Conditioning(tokens={"t5": ...}, channels=video_features, infill=Infill(known_latents, known))  # audio

- `tokens`: cross-attention context, one `Tokens` per source (the text encoders, then any extra source such as a
  reference image's vision tokens), in the order `DiTConfig.context_sources()` lists them.
- `channels`: extra input channels concatenated to the noisy latent before patchify.
- `task`: an index into the DiT's learned task-embedding table, added to the flow-time embedding.
- `images`: pixels for a context source whose encoder is part of the DiT (a trainable vision tower,
  `ContextSource.encoder`): the DiT turns them into that source's tokens. Dropping the source masks them like tokens.
- `infill`: latent frames given for masked infilling (Movie Gen Audio's continuation and extension): their clean
  values and which frames they are; a model with `DiTConfig.infill` reads them as two more groups of input channels
  (the known latents, zeros elsewhere, and the known-frame mask). Made per step by training (random spans) and by
  the sampler (the audio to continue), never stored in shards.

Batch-first throughout: a batch of b samples has tensors with a leading b; one sample (as stored in a shard)
has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple, Optional, Protocol

import torch


class Tokens(NamedTuple):
    """One source of cross-attention tokens: embeddings (b, n, d) and mask (b, n) bool, True = a real token."""

    embeddings: torch.Tensor
    mask: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Tokens":
        return Tokens(fn(self.embeddings), fn(self.mask))


class Images(NamedTuple):
    """Images a source's in-model encoder reads: pixels (b, 3, s, s), already resized and normalised for it, and
    present (b,) bool (False = no image for that sample: its tokens are masked, as a dropped condition)."""

    pixels: torch.Tensor
    present: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Images":
        return Images(fn(self.pixels), fn(self.present))


class Infill(NamedTuple):
    """Known latent frames: latents (b, c, t, h, w), the clean values (only those of known frames are read), and
    known (b, t) bool, True = the frame is given."""

    latents: torch.Tensor
    known: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Infill":
        return Infill(fn(self.latents), fn(self.known))

    def frames(self, start: int, stop: int) -> "Infill":
        return Infill(self.latents[:, :, start:stop], self.known[:, start:stop])

    def channels(self) -> torch.Tensor:
        """The DiT's input channels (b, c + 1, t, h, w): the known frames' latents (zeros elsewhere), then the mask."""
        b, c, t, h, w = self.latents.shape
        mask = self.known.to(self.latents.dtype).view(b, 1, t, 1, 1).expand(b, 1, t, h, w)
        return torch.cat([self.latents * mask, mask], dim=1)


class TextEncoder(Protocol):
    """What pre-encoding and generation need of text encoders (`text.TextEncoders`, or the toy ones)."""

    def encode(self, prompts: list[str]) -> dict[str, Tokens]:
        """b prompts (FPS prefix applied) -> {encoder name: Tokens((b, max_length, d), (b, max_length) bool)}."""


@dataclass
class Conditioning:
    tokens: dict[str, Tokens] = field(default_factory=dict)
    channels: Optional[torch.Tensor] = None  # (b, c_cond, t, h, w), the latent's grid
    task: Optional[torch.Tensor] = None  # (b,) long
    images: dict[str, Images] = field(default_factory=dict)
    infill: Optional[Infill] = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Conditioning":
        """The same conditioning with `fn` applied to every tensor (slicing, moving, pinning)."""
        return Conditioning(
            tokens={name: tokens.map(fn) for name, tokens in self.tokens.items()},
            channels=None if self.channels is None else fn(self.channels),
            task=None if self.task is None else fn(self.task),
            images={name: images.map(fn) for name, images in self.images.items()},
            infill=None if self.infill is None else self.infill.map(fn),
        )

    def to(self, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> "Conditioning":
        """Moved to `device`; floating tensors (embeddings, channels) cast to `dtype` when given."""

        def move(tensor: torch.Tensor) -> torch.Tensor:
            cast = dtype if dtype is not None and tensor.is_floating_point() else None
            return tensor.to(device, cast)

        return self.map(move)

    def batch(self, start: int, stop: int) -> "Conditioning":
        """Samples start..stop-1 of a batch."""
        return self.map(lambda tensor: tensor[start:stop])

    def frames(self, start: int, stop: int) -> "Conditioning":
        """Latent frames start..stop-1 of the condition channels and the infill (a sampling window); tokens and task
        are whole."""
        channels = None if self.channels is None else self.channels[:, :, start:stop]
        infill = None if self.infill is None else self.infill.frames(start, stop)
        return replace(self, channels=channels, infill=infill)

    def keep_tokens(self, keep: torch.Tensor, sources: Optional[list[str]] = None) -> "Conditioning":
        """Drop the tokens of `sources` (default: all) for the samples where `keep` (b,) is False: their masks
        become all False (and their images absent), as for the unconditional branch of classifier-free guidance."""
        names = set(self.tokens) | set(self.images) if sources is None else set(sources)
        tokens = {
            name: Tokens(t.embeddings, t.mask & keep.to(t.mask.device)[:, None]) if name in names else t
            for name, t in self.tokens.items()
        }
        images = {name: Images(i.pixels, i.present & keep.to(i.present.device)) if name in names else i
                  for name, i in self.images.items()}
        return replace(self, tokens=tokens, images=images)

    def keep_channels(self, keep: torch.Tensor) -> "Conditioning":
        """The condition channels zeroed for the samples where `keep` (b,) is False ("no source video", for
        guidance over it); tokens and task are kept."""
        if self.channels is None:
            raise ValueError("keep_channels: this conditioning has no channels")
        mask = keep.to(self.channels.device, self.channels.dtype).view(-1, *([1] * (self.channels.dim() - 1)))
        return replace(self, channels=self.channels * mask)

    def without_channels(self) -> "Conditioning":
        """Every sample's condition channels zeroed; tokens and task are kept."""
        return self.keep_channels(torch.zeros(self.batch_size, dtype=torch.bool))

    def without_tokens(self, sources: Optional[list[str]] = None) -> "Conditioning":
        """Every sample's tokens (and images) of `sources` (default: all) masked out; channels and task are kept."""
        if not self.tokens and not self.images:
            return self
        return self.keep_tokens(torch.zeros(self.batch_size, dtype=torch.bool), sources)

    @property
    def batch_size(self) -> int:
        for tensor in self._tensors():
            return tensor.shape[0]
        raise ValueError("an empty Conditioning has no batch size")

    def _tensors(self):
        for tokens in self.tokens.values():
            yield tokens.embeddings
        if self.channels is not None:
            yield self.channels
        if self.task is not None:
            yield self.task
        for images in self.images.values():
            yield images.pixels
        if self.infill is not None:
            yield self.infill.latents

    # ---- stacking samples and batches ---------------------------------------------------------------------
    @staticmethod
    def stack(samples: list["Conditioning"]) -> "Conditioning":
        """Per-sample conditionings (no batch dim) -> one batch (b leading)."""
        return _combine(samples, torch.stack)

    @staticmethod
    def cat(batches: list["Conditioning"]) -> "Conditioning":
        """Batches -> one batch, concatenated along dim 0 (e.g. [cond; uncond] for guidance)."""
        return _combine(batches, torch.cat)

    # ---- storage ------------------------------------------------------------------------------------------
    def to_tensors(self, float_dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Flat {key: tensor} for a safetensors file (one sample or a batch); floats stored as `float_dtype`."""
        out = {}
        for name, tokens in self.tokens.items():
            out[f"tokens.{name}.embeddings"] = tokens.embeddings.to(float_dtype).contiguous()
            out[f"tokens.{name}.mask"] = tokens.mask.to(torch.bool).contiguous()
        if self.channels is not None:
            out["channels"] = self.channels.to(float_dtype).contiguous()
        if self.task is not None:
            out["task"] = self.task.to(torch.long).contiguous()
        for name, images in self.images.items():
            out[f"images.{name}.pixels"] = images.pixels.to(float_dtype).contiguous()
            out[f"images.{name}.present"] = images.present.to(torch.bool).contiguous()
        if self.infill is not None:
            out["infill.latents"] = self.infill.latents.to(float_dtype).contiguous()
            out["infill.known"] = self.infill.known.to(torch.bool).contiguous()
        return out

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor]) -> "Conditioning":
        """Inverse of `to_tensors`."""
        names = sorted({key.split(".")[1] for key in tensors if key.startswith("tokens.")})
        image_names = sorted({key.split(".")[1] for key in tensors if key.startswith("images.")})
        return Conditioning(
            tokens={n: Tokens(tensors[f"tokens.{n}.embeddings"], tensors[f"tokens.{n}.mask"]) for n in names},
            channels=tensors.get("channels"),
            task=tensors.get("task"),
            images={n: Images(tensors[f"images.{n}.pixels"], tensors[f"images.{n}.present"]) for n in image_names},
            infill=Infill(tensors["infill.latents"], tensors["infill.known"]) if "infill.latents" in tensors else None,
        )


def _combine(parts: list[Conditioning], join) -> Conditioning:
    if not parts:
        raise ValueError("no conditionings to combine")
    first = parts[0]
    for other in parts[1:]:
        if set(other.tokens) != set(first.tokens) or set(other.images) != set(first.images):
            raise ValueError(f"token/image sources differ: {sorted(other.tokens)} + {sorted(other.images)} vs "
                             f"{sorted(first.tokens)} + {sorted(first.images)}")
        if any((getattr(other, name) is None) != (getattr(first, name) is None) for name in ("channels", "task", "infill")):
            raise ValueError("some conditionings carry channels or a task (or an infill) and others do not")
    return Conditioning(
        tokens={
            name: Tokens(join([p.tokens[name].embeddings for p in parts]), join([p.tokens[name].mask for p in parts]))
            for name in first.tokens
        },
        channels=None if first.channels is None else join([p.channels for p in parts]),
        task=None if first.task is None else join([p.task for p in parts]),
        images={name: Images(join([p.images[name].pixels for p in parts]),
                             join([p.images[name].present for p in parts])) for name in first.images},
        infill=None if first.infill is None else Infill(join([p.infill.latents for p in parts]),
                                                        join([p.infill.known for p in parts])),
    )
