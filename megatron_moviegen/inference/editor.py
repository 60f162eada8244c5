"""Video editing at sampling time (Movie Gen Edit, SPEC section 6): a source video and an instruction -> the
source's TAE latents as the condition channels, the instruction through the text encoders, a task index -> Euler
through the edit DiT with guidance over source and text -> TAE decode.

    cfg, chunks = load_exported_dit("runs/edit_export")
    editor = VideoEditor(chunks[0], tae, text_encoders, cfg.data.edit)
    pixels = editor.edit(source_pixels, "make it black and white", EditingConfig(task="video_edit"))

Every rank runs the DiT on the same noise (one seeded CPU generator) and the same source latents, so a seed gives
the same edit under any TP/CP layout; rank 0 encodes the text (broadcast) and writes the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron_moviegen.conditioning import Conditioning, TextEncoder
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.config import EditConfig
from megatron_moviegen.diffusion import euler_sample, linear_quadratic_schedule, source_and_text_guidance
from megatron_moviegen.inference.pipeline import (MovieGenPipeline, check_prompts, media_suffix,
                                                 output_stem)
from megatron_moviegen.models.dit import MovieGenDiT
from megatron_moviegen.models.tae import TAE
from megatron_moviegen.models.toy_encoders import TAEVideoEncoder
from megatron_moviegen.text.prompts import conditioning_prompt
from megatron_moviegen.utils.video_io import write_json, write_media


@dataclass
class EditingConfig:
    """How to sample an edit. The text scale is the paper's 7.5 CFG; the source scale (guidance over the source
    video, 1 = none) is InstructPix2Pix's 1.5: the paper does not state its own."""

    steps: int = 50
    guidance_scale: float = 7.5
    source_guidance_scale: float = 1.5
    seed: int = 0
    task: Optional[str] = None  # a data.edit.tasks name; None: its default_task
    fps: int = 16  # the instruction's FPS-n prefix (none for a 1-frame image) and the written video's rate

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps: got {self.steps}, must be >= 1")
        for name in ("guidance_scale", "source_guidance_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}: got {value}, must be a finite number >= 0")
        if self.fps < 1:
            raise ConfigError(f"fps: got {self.fps}, must be >= 1")


class VideoEditor:
    def __init__(self, dit: MovieGenDiT, tae: TAE, text_encoders: Optional[TextEncoder], edit: EditConfig,
                 sources: Optional[dict[str, str]] = None):
        """dit: the edit DiT (condition_channels = the TAE's latent channels, one task row per `edit.tasks` name),
        this rank's only chunk; edit: the export's data.edit; text_encoders: needed on rank 0; sources: names
        recorded in the sidecars."""
        model = dit.dit_config
        if model.condition_channels != tae.cfg.latent_channels:
            raise ValueError(f"the DiT takes {model.condition_channels} condition channels, the TAE gives "
                             f"{tae.cfg.latent_channels}-channel latents: not a video-editing checkpoint")
        if model.num_tasks != len(edit.tasks):
            raise ValueError(f"the DiT has {model.num_tasks} task rows, data.edit.tasks of the export's config "
                             f"lists {len(edit.tasks)}: {edit.tasks}")
        self.pipeline = MovieGenPipeline(dit, tae, text_encoders, sources)
        self.tae, self.edit_config = tae, edit
        self.encoder = TAEVideoEncoder(tae)

    def source_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Source pixels (b, 3, t, h, w) in [-1, 1] -> normalised latents (b, 16, ceil(t/8), h/8, w/8) float32, as
        pre-encoding stores them."""
        self.pipeline.latent_shape(pixels.shape[0], pixels.shape[2], pixels.shape[3], pixels.shape[4])  # sizes fit
        return self.encoder.encode(pixels).float()

    @torch.no_grad()
    def sample_latents(self, source: torch.Tensor, instruction: str, cfg: EditingConfig,
                       progress: bool = False, num_frames: Optional[int] = None) -> torch.Tensor:
        """Source latents (b, 16, T, h, w) and one instruction -> the edited clean latents (b, 16, T, h, w)
        float32, identical on every rank. `num_frames` (pixels; 1 = an image) sets the FPS rule of the prompt."""
        cfg.validate()
        check_prompts([instruction])
        batch = source.shape[0]
        frames = num_frames if num_frames is not None else source.shape[2]
        prompt = conditioning_prompt(instruction, None if frames == 1 else cfg.fps)
        text, no_text = self.pipeline.encode_text([prompt] * batch)
        device, dtype = self.pipeline.device, self.pipeline.dtype
        channels = source.to(device, dtype)
        task = torch.full((batch,), self.edit_config.task_id(cfg.task), dtype=torch.long, device=device)
        full = Conditioning(text.tokens, channels, task)
        source_only = Conditioning(no_text.tokens, channels, task)
        velocity_fn = source_and_text_guidance(self.pipeline.velocity, full, source_only,
                                               source_only.without_channels(), cfg.guidance_scale,
                                               cfg.source_guidance_scale)
        generator = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(source.shape, generator=generator, dtype=torch.float32).to(device)
        return euler_sample(velocity_fn, noise, linear_quadratic_schedule(cfg.steps),
                            progress=progress and self.pipeline.rank == 0)

    def edit(self, pixels: torch.Tensor, instruction: str, cfg: EditingConfig, progress: bool = False
             ) -> torch.Tensor:
        """Source pixels (b, 3, t, h, w) in [-1, 1] -> the edited pixels (b, 3, t, h, w) in [-1, 1]."""
        latents = self.sample_latents(self.source_latents(pixels), instruction, cfg, progress, pixels.shape[2])
        return self.pipeline.decode(latents, pixels.shape[2])

    def edit_files(self, pixels: torch.Tensor, source_path: str, instructions: list[str], cfg: EditingConfig,
                   output_dir: str | Path, same_seed: bool = False) -> list[Path]:
        """One edited file (+ JSON sidecar) per instruction of the source `pixels` (1, 3, t, h, w), named like
        generated files; instruction i uses seed cfg.seed + i unless `same_seed`. Every rank calls it; rank 0
        writes."""
        check_prompts(instructions)
        source = self.source_latents(pixels)
        frames = pixels.shape[2]
        paths = []
        for index, instruction in enumerate(instructions):
            settings = replace(cfg, seed=cfg.seed if same_seed else cfg.seed + index)
            latents = self.sample_latents(source, instruction, settings, progress=True, num_frames=frames)
            record = {
                "edit_source": source_path, "instruction": instruction,
                "text_prompt": conditioning_prompt(instruction, None if frames == 1 else settings.fps),
                "task": settings.task or self.edit_config.default_task, "seed": settings.seed,
                "steps": settings.steps, "schedule": "linear_quadratic", "guidance_scale": settings.guidance_scale,
                "source_guidance_scale": settings.source_guidance_scale, "fps": settings.fps, "frames": frames,
                "height": pixels.shape[3], "width": pixels.shape[4], **self.pipeline.sources}
            path = Path(output_dir) / (output_stem(index, instruction, settings.seed, record) + media_suffix(frames))
            if self.pipeline.rank == 0:
                chunks = (chunk[0] for chunk in self.pipeline.decode_chunks(latents, frames))
                write_media(path, chunks, fps=settings.fps)
                write_json(path.with_suffix(".json"), {"file": path.name, **record})
            paths.append(path)
        if dist.is_initialized():
            dist.barrier()
        return paths
