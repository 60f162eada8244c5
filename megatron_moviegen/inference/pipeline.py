"""Text-to-video sampling (SPEC sections 1-3): prompt -> text encoders -> Euler + CFG through the DiT -> TAE
decode -> H.264 .mp4 (PNG for a 1-frame image) + JSON sidecar.

    cfg, chunks = load_exported_dit("runs/export", layout_overrides)         # checkpoints/export.py
    pipeline = MovieGenPipeline(chunks[0], TAE.from_pretrained("tae/"), TextEncoders(TextEncodersConfig()))
    paths = pipeline.generate(["a corgi surfing"], SamplingConfig(num_frames=128, fps=16), "outputs/")

Every rank of the TP x CP layout runs the DiT on the same noise (drawn whole on every rank from one seeded
CPU generator, so a seed gives the same video under any layout); rank 0 encodes the text (broadcast to the
others), decodes with the TAE and writes the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_moviegen.conditioning import Conditioning, Images, TextEncoder, Tokens
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.config import REFERENCE_SOURCE
from megatron_moviegen.diffusion import classifier_free_guidance, euler_sample, linear_quadratic_schedule
from megatron_moviegen.models.dit import MovieGenDiT
from megatron_moviegen.models.dit_config import DiTConfig, sample_latent_grid
from megatron_moviegen.models.embeddings import unpatchify_tokens
from megatron_moviegen.models.tae import TAE
from megatron_moviegen.text.prompts import conditioning_prompt
from megatron_moviegen.utils.video_io import write_json, write_media

log = logging.getLogger("megatron_moviegen.generate")

@dataclass
class SamplingConfig:
    """What to generate and how. Defaults: the paper's 16 s at 16 fps, 768 px, 50 Euler steps, CFG 7.5."""

    num_frames: int = 256
    height: int = 768
    width: int = 768
    fps: int = 16
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    # None: the unconditional branch sees no text (every mask False), as when text is dropped in training;
    # a string (e.g. ""): the unconditional branch sees that prompt's embeddings instead.
    negative_prompt: Optional[str] = None

    def validate(self) -> None:
        for name in ("num_frames", "height", "width", "fps", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ConfigError(f"guidance_scale: got {self.guidance_scale}, must be a finite number >= 0")


def check_prompts(prompts: list[str]) -> None:
    """Refuse an empty or blank prompt: it would make a video from no text at all."""
    for index, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ConfigError(f"prompt {index}: got {prompt!r}, need some text (for a video without text, use a "
                              "short generic prompt)")


def latent_shape(tae: TAE, model: DiTConfig, batch: int, num_frames: int, height: int, width: int
                 ) -> tuple[int, int, int, int, int]:
    """(b, 16, ceil(frames / k), height / k, width / k), after checking the DiT's position tables hold it."""
    return (batch, model.latent_channels, *sample_latent_grid(model, tae.cfg.compression, num_frames, height, width))


@torch.no_grad()
def decode_chunks(tae: TAE, latents: torch.Tensor, num_frames: int) -> Iterator[torch.Tensor]:
    """The DiT's latents (b, 16, T, h, w) -> pixels (b, 3, t_i, 8h, 8w) float32 in [-1, 1], chunk by chunk along
    time (t_i summing to num_frames): denormalised, decoded with temporal and spatial tiling (bf16 autocast on
    GPU; in the TAE's dtype). Only one temporal tile and its overlap are alive at once, so a writer consuming the chunks holds memory
    that does not grow with the video's length."""
    weight = next(tae.parameters())
    autocast = torch.autocast(weight.device.type, dtype=torch.bfloat16, enabled=weight.device.type == "cuda")
    with autocast:  # denormalised in the latents' float32, then in the TAE's dtype (a bf16 TAE on CPU too)
        tiles = tae.decode_tiles(tae.denormalize_latents(latents.to(weight.device)).to(weight.dtype), num_frames)
    while True:
        with autocast:  # entered per tile, so the consumer between chunks does not run under autocast
            tile = next(tiles, None)
        if tile is None:
            return
        yield tile.float().clamp(-1.0, 1.0)


def decode_latents(tae: TAE, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The whole video of `decode_chunks` (b, 3, num_frames, 8h, 8w) float32 in [-1, 1], for callers that need
    it all at once (evaluation, upsampler, editor); filled chunk by chunk, so it is held once."""
    pixels, start = None, 0
    for chunk in decode_chunks(tae, latents, num_frames):
        if pixels is None:
            pixels = chunk.new_empty((*chunk.shape[:2], num_frames, *chunk.shape[3:]))
        pixels[:, :, start:start + chunk.shape[2]] = chunk
        start += chunk.shape[2]
    return pixels


def output_stem(index: int, prompt: str, seed: int, record: dict) -> str:
    """<index>-<prompt words>-seed<seed>-<8 hex digits>, the digits a hash of `record`: the sidecar's account of
    everything that made the file (exact prompt, settings, checkpoint, ...). Two requests differing in anything
    recorded (case, punctuation, text past the words' 48 characters, steps) get two names; only the same request
    again rewrites a file, with the same result."""
    return f"{index:04d}-{slug(prompt)}-seed{seed}-{record_digest(record)}"


def record_digest(record: dict) -> str:
    """8 hex digits of the SHA-256 of `record` as canonical JSON: the same for the same record on every rank."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:8]


def command_record(dtype: torch.dtype, overrides: list[str], text_overrides: list[str]) -> dict:
    """A command's sidecar entries that change its output besides the sampling settings: the DiT's dtype and the
    config and text-encoder overrides given."""
    return {"precision": str(dtype).removeprefix("torch."), **({"overrides": list(overrides)} if overrides else {}),
            **({"text_overrides": list(text_overrides)} if text_overrides else {})}


def media_suffix(num_frames: int) -> str:
    return ".png" if num_frames == 1 else ".mp4"


def warn_truncated(prompts: list[str], tokens: dict) -> None:
    """Warn when a prompt fills every position of an encoder: the text past its max_length was cut."""
    for name, (_, mask) in tokens.items():
        max_length = mask.shape[1]
        for index in mask.all(dim=1).nonzero().flatten().tolist():
            log.warning("prompt %d (%d characters) fills all %d positions of text encoder %s; text beyond its max "
                        "length %d is cut", index, len(prompts[index]), max_length, name, max_length)


def resolve_fps(requested: Optional[int], trained_fps: tuple[int, ...], option: str = "--fps") -> int:
    """The fps to sample at: `requested`, or else 16 if the model was trained on it (or records no rates), else its
    lowest trained rate; warns, naming `option`, when the model never saw `requested`."""
    default = SamplingConfig.fps
    if requested is None:
        return default if not trained_fps or default in trained_fps else min(trained_fps)
    if trained_fps and requested not in trained_fps:
        warnings.warn(f"{option} {requested}: the model was trained on FPS-n prompts with n in {list(trained_fps)} "
                      f"only; FPS-{requested} is a prompt it has never seen", stacklevel=2)
    return requested


def slug(prompt: str, max_length: int = 48) -> str:
    """File-name-safe words of a prompt ("A cat, jumping!" -> "a-cat-jumping")."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    return "-".join(words)[:max_length].strip("-") or "video"


class MovieGenPipeline:
    def __init__(self, dit: MovieGenDiT, tae: TAE, text_encoders: Optional[TextEncoder],
                 sources: Optional[dict[str, str]] = None, data_parallel_replicas: bool = False,
                 reference_encoder=None):
        """dit: this rank's (only) model chunk, eval mode; tae: on the output device (used on rank 0);
        text_encoders: used on rank 0 only (None elsewhere is fine); sources: names recorded in the sidecar
        (checkpoint, tae, text_encoders); data_parallel_replicas: allow data-parallel replicas, each running the
        same sampling (training's sample videos), else one replica is required; reference_encoder: a personalized
        (PT2V) model's vision tower (`models.vision_tower.ReferenceEncoder`), used on rank 0 for `reference=`."""
        if not (dit.pre_process and dit.post_process):
            raise ValueError(
                f"sampling needs the whole model on every rank, got a pipeline stage (pipeline_model_parallel_size="
                f"{parallel_state.get_pipeline_model_parallel_world_size()}); load the export with "
                "parallel.pipeline_model_parallel_size=1 (any TP/CP layout works)"
            )
        if parallel_state.get_data_parallel_world_size() != 1 and not data_parallel_replicas:
            raise ValueError(
                f"world size {dist.get_world_size()} leaves data_parallel_size="
                f"{parallel_state.get_data_parallel_world_size()}; sampling runs one model replica: set "
                "tensor_model_parallel_size x context_parallel_size to the world size"
            )
        if tae.cfg.latent_channels != dit.dit_config.latent_channels:
            raise ValueError(f"TAE latent_channels {tae.cfg.latent_channels} != DiT latent_channels "
                             f"{dit.dit_config.latent_channels}")
        self.dit, self.tae, self.text_encoders = dit, tae, text_encoders
        self.reference_encoder = reference_encoder
        self.sources = dict(sources or {})
        first = next(dit.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    # ---- shapes ------------------------------------------------------------------------------------------
    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        return latent_shape(self.tae, self.dit.dit_config, batch, num_frames, height, width)

    # ---- text --------------------------------------------------------------------------------------------
    def _encode_on_rank0(self, prompts: list[str], negative_prompt: Optional[str],
                         reference: Optional[torch.Tensor] = None) -> tuple[Conditioning, Conditioning]:
        if self.text_encoders is None:
            raise ValueError("text_encoders: rank 0 needs text encoders to encode the prompts")
        tokens = self.text_encoders.encode(prompts)
        warn_truncated(prompts, tokens)
        text = list(tokens)
        extra = self.extra_conditions(len(prompts), reference).to("cpu")
        cond = Conditioning(tokens={**tokens, **extra.tokens}, images=extra.images).to("cpu")
        if negative_prompt is None:
            uncond = cond.without_tokens(text)  # as when text is dropped in training; the reference stays
        else:
            negative = self.text_encoders.encode([negative_prompt] * len(prompts))
            uncond = Conditioning(tokens={**negative, **extra.tokens}, images=extra.images).to("cpu")
        return cond, uncond

    def extra_conditions(self, batch: int, reference: Optional[torch.Tensor] = None) -> Conditioning:
        """The DiT's extra-context sources for `batch` samples: a personalized model given `reference` ((h, w, 3)
        uint8) gets the reference image's tokens (a frozen tower) or pixels (a tower in the model); a source not
        given gets masked zeros (the model then runs as when the condition was dropped in training)."""
        sources = self.dit.dit_config.extra_context
        if reference is not None and REFERENCE_SOURCE not in sources:
            raise ValueError(f"a reference image was given, but this DiT has no {REFERENCE_SOURCE!r} context source "
                             "(not a personalized model)")
        if reference is not None and self.reference_encoder is None:
            raise ValueError("a reference image needs the reference encoder (the export's data.reference)")
        tokens, images = {}, {}
        for name, source in sources.items():
            given = name == REFERENCE_SOURCE and reference is not None
            if source.encoder is not None:
                size = source.encoder.image_size
                images[name] = self.reference_encoder.images([reference] * batch) if given else \
                    Images(torch.zeros(batch, 3, size, size), torch.zeros(batch, dtype=torch.bool))
            elif given:
                tokens[name] = self.reference_encoder.encode([reference] * batch)
            else:
                tokens[name] = Tokens(torch.zeros(batch, source.max_length, source.width),
                                      torch.zeros(batch, source.max_length, dtype=torch.bool))
        return Conditioning(tokens=tokens, images=images)

    def encode_text(self, prompts: list[str], negative_prompt: Optional[str] = None,
                    reference: Optional[torch.Tensor] = None) -> tuple[Conditioning, Conditioning]:
        """Prompts (FPS rule already applied) and, for a personalized model, a reference image -> (cond, uncond)
        on the DiT's device; the reference is in both (guidance is over the text). Encoded on rank 0 and
        broadcast (as CPU tensors: the object broadcast pickles them)."""
        payload = [self._encode_on_rank0(prompts, negative_prompt, reference) if self.rank == 0 else None]
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(payload, src=0, device=self.device)
        cond, uncond = payload[0]
        return cond.to(self.device, self.dtype), uncond.to(self.device, self.dtype)

    # ---- sampling ----------------------------------------------------------------------------------------
    def velocity(self, latents: torch.Tensor, t: float, conditioning: Conditioning) -> torch.Tensor:
        """(b, 16, t, h, w) float32 X_t, flow time t -> the full velocity (b, 16, t, h, w) float32 on every rank."""
        timesteps = torch.full((latents.shape[0],), t, dtype=torch.float32, device=self.device)  # (b,)
        tokens = self.dit(latents.to(self.dtype), timesteps, conditioning)  # (s_local, b, 16 * patch)
        whole = self.dit.layout.gather(tokens)  # (s, b, 16 * patch)
        grid = self.dit.token_grid(latents.shape)
        return unpatchify_tokens(whole, grid, tuple(self.dit.dit_config.patch_size)).float()

    @staticmethod
    def text_prompt(prompt: str, cfg: SamplingConfig) -> str:
        """What the text encoders see: the FPS rule of pre-encoding (no prefix for a 1-frame image)."""
        return conditioning_prompt(prompt, None if cfg.num_frames == 1 else cfg.fps)

    @torch.no_grad()  # not inference_mode: buffers the DiT caches here (Megatron's all-gather buffer) may serve training
    def sample_latents(self, prompts: list[str], cfg: SamplingConfig, progress: bool = True,
                       reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw prompts (and a personalized model's reference image (h, w, 3) uint8, used on rank 0) -> clean
        latents X_1 (b, 16, T, h, w) float32, identical on every rank."""
        cfg.validate()
        check_prompts(prompts)
        shape = self.latent_shape(len(prompts), cfg.num_frames, cfg.height, cfg.width)
        cond, uncond = self.encode_text([self.text_prompt(p, cfg) for p in prompts], cfg.negative_prompt, reference)
        generator = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)  # X_0
        velocity_fn = classifier_free_guidance(self.velocity, cond, uncond, cfg.guidance_scale)
        timesteps = linear_quadratic_schedule(cfg.steps)
        return euler_sample(velocity_fn, noise, timesteps, progress=progress and self.rank == 0)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The DiT's latents (b, 16, T, h, w) (denormalised here) -> pixels (b, 3, num_frames, 8h, 8w) float32 in [-1, 1], temporally and
        spatially tiled."""
        return decode_latents(self.tae, latents, num_frames)

    def decode_chunks(self, latents: torch.Tensor, num_frames: int) -> Iterator[torch.Tensor]:
        """`decode`, chunk by chunk along time (`decode_chunks`): for writing without the whole video in memory."""
        return decode_chunks(self.tae, latents, num_frames)

    # ---- files -------------------------------------------------------------------------------------------
    def generate(self, prompts: list[str], cfg: SamplingConfig, output_dir: str | Path,
                 progress: bool = True, same_seed: bool = False, reference: Optional[torch.Tensor] = None,
                 user_prompts: Optional[list[str]] = None) -> list[Path]:
        """One file + sidecar per prompt, named by `output_stem`; prompt i uses seed cfg.seed + i, or cfg.seed for
        all with `same_seed` (the same starting noise, so prompts can be compared); `reference`: a personalized
        model's reference image (h, w, 3) uint8 for every prompt; `user_prompts`: what the user wrote when `prompts`
        are their rewrites (text/rewrite.py), recorded as `user_prompt` and naming the files. Every rank must call it;
        returns the media paths written (rank 0) or that rank 0 writes (other ranks)."""
        output_dir = Path(output_dir)
        paths = []
        for index, prompt in enumerate(prompts):
            settings = replace(cfg, seed=cfg.seed if same_seed else cfg.seed + index)
            latents = self.sample_latents([prompt], settings, progress, reference)
            record = self.record(prompt, settings, tuple(latents.shape))
            name = prompt
            if user_prompts is not None:
                record["user_prompt"] = name = user_prompts[index]
            path = output_dir / (output_stem(index, name, settings.seed, record) + media_suffix(settings.num_frames))
            if self.rank == 0:
                chunks = (chunk[0] for chunk in self.decode_chunks(latents, settings.num_frames))
                write_media(path, chunks, fps=settings.fps)
                write_json(path.with_suffix(".json"), {"file": path.name, **record})
            paths.append(path)
        if dist.is_initialized():
            dist.barrier()
        return paths

    def record(self, prompt: str, cfg: SamplingConfig, latent_shape: tuple) -> dict:
        """What made one file, as its JSON sidecar holds it (less the file's name)."""
        return {
            "prompt": prompt,
            "text_prompt": self.text_prompt(prompt, cfg),
            "negative_prompt": cfg.negative_prompt,
            "seed": cfg.seed,
            "steps": cfg.steps,
            "schedule": "linear_quadratic",
            "guidance_scale": cfg.guidance_scale,
            "fps": cfg.fps,
            "frames": cfg.num_frames,
            "height": cfg.height,
            "width": cfg.width,
            "latent_shape": list(latent_shape[1:]),
            **self.sources,
        }
