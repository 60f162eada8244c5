"""The spatial upsampler at sampling time (SPEC section 5): a low-res video -> bilinear up to the target size ->
TAE latents (the condition channels) -> Euler through the upsampler DiT in sliding windows of latent frames ->
TAE decode.

    cfg, chunks = load_exported_dit("runs/upsampler_export")
    upsampler = SpatialUpsampler(chunks[0], tae)
    pixels = upsampler.upsample(low_res_pixels, height=1072, width=1920, cfg=UpsamplingConfig())

Windows are over latent frames. The paper's 14-frame windows with overlap 4 are 1.75 and 0.5 latent frames at
the TAE's 8x temporal compression; we take 2 (the 2 latent frames of a 14-frame training clip) and 1 (the
nearest overlap that still blends neighbours), configurable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megatron_moviegen.conditioning import Conditioning, TextEncoder, Tokens
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.degrade import upsample_bilinear
from megatron_moviegen.diffusion import euler_sample, linear_quadratic_schedule
from megatron_moviegen.diffusion.windows import window_plan, windowed_velocity
from megatron_moviegen.inference.pipeline import MovieGenPipeline, SamplingConfig
from megatron_moviegen.models.dit import MovieGenDiT
from megatron_moviegen.models.tae import TAE
from megatron_moviegen.models.toy_encoders import TAEVideoEncoder


@dataclass
class UpsamplingConfig:
    """How to sample the upsampler. Defaults: the paper's ~20 Euler steps; windows of 2 latent frames (14 frames)
    with overlap 1 (the paper's 4 frames, rounded up to a whole latent frame)."""

    window_frames: int = 2  # latent frames per window
    overlap_frames: int = 1  # latent frames shared by neighbouring windows
    steps: int = 20
    seed: int = 0
    # Text the upsampler is conditioned on; None: every text token masked (as for the dropped text in training).
    prompt: Optional[str] = None
    fps: int = 24  # the prompt's FPS rule and the written video's rate

    def validate(self) -> None:
        if self.window_frames < 1 or not 0 <= self.overlap_frames < self.window_frames:
            raise ConfigError(f"window_frames/overlap_frames: got {self.window_frames}/{self.overlap_frames}, "
                              "need window_frames >= 1 and 0 <= overlap_frames < window_frames")
        if self.steps < 1:
            raise ConfigError(f"steps: got {self.steps}, must be >= 1")


def masked_context(dit_config, batch: int, device, dtype) -> dict[str, Tokens]:
    """Zero embeddings with every mask False for each context source: 'no text'."""
    return {name: Tokens(torch.zeros(batch, source.max_length, source.width, device=device, dtype=dtype),
                         torch.zeros(batch, source.max_length, dtype=torch.bool, device=device))
            for name, source in dit_config.context_sources().items()}


class SpatialUpsampler:
    def __init__(self, dit: MovieGenDiT, tae: TAE, text_encoders: Optional[TextEncoder] = None):
        """dit: the upsampler DiT (condition_channels = the TAE's latent channels), this rank's only chunk;
        text_encoders: needed on rank 0 only when a prompt is given."""
        if dit.dit_config.condition_channels != tae.cfg.latent_channels:
            raise ValueError(f"the upsampler DiT takes {dit.dit_config.condition_channels} condition channels, the "
                             f"TAE gives {tae.cfg.latent_channels}-channel latents: not a spatial upsampler checkpoint")
        self.pipeline = MovieGenPipeline(dit, tae, text_encoders)
        self.dit, self.tae = dit, tae
        self.encoder = TAEVideoEncoder(tae)

    def condition_latents(self, low_res: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Low-res pixels (b, 3, t, h, w) in [-1, 1] -> latents (b, 16, ceil(t/8), height/8, width/8) of their
        bilinear upsampling: the condition channels, as pre-encoding computes them."""
        k = self.tae.cfg.compression * self.dit.dit_config.patch_size[1]
        if height % k or width % k:
            raise ValueError(f"height x width: got {height} x {width}, both must be multiples of {k}")
        up = upsample_bilinear(low_res, height, width)
        return self.encoder.encode(up).float()

    def conditioning(self, condition: torch.Tensor, cfg: UpsamplingConfig) -> Conditioning:
        if cfg.prompt is None:
            tokens = masked_context(self.dit.dit_config, condition.shape[0], self.pipeline.device, self.pipeline.dtype)
        else:
            prompt = MovieGenPipeline.text_prompt(cfg.prompt, SamplingConfig(num_frames=2, fps=cfg.fps))  # a video
            tokens = self.pipeline.encode_text([prompt] * condition.shape[0])[0].tokens
        return Conditioning(tokens, channels=condition.to(self.pipeline.device, self.pipeline.dtype))

    @torch.inference_mode()
    def sample_latents(self, condition: torch.Tensor, cfg: UpsamplingConfig, progress: bool = False) -> torch.Tensor:
        """Condition latents (b, 16, T, h, w) -> clean high-res latents (b, 16, T, h, w) float32, identical on every
        rank: Euler over the linear-quadratic schedule, each step run window by window and blended."""
        cfg.validate()
        model = self.dit.dit_config
        limit = model.max_frames * model.patch_size[0]
        if min(cfg.window_frames, condition.shape[2]) > limit:
            raise ValueError(f"window_frames: got {cfg.window_frames} latent frames, the checkpoint's position "
                             f"table holds at most {limit}")
        self.pipeline.latent_shape(condition.shape[0], 1, condition.shape[3] * self.tae.cfg.compression,
                                   condition.shape[4] * self.tae.cfg.compression)  # checks the spatial tables
        plan = window_plan(condition.shape[2], cfg.window_frames, cfg.overlap_frames)
        generator = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(condition.shape, generator=generator, dtype=torch.float32).to(self.pipeline.device)
        velocity_fn = windowed_velocity(self.pipeline.velocity, self.conditioning(condition, cfg), plan)
        return euler_sample(velocity_fn, noise, linear_quadratic_schedule(cfg.steps),
                            progress=progress and self.pipeline.rank == 0)

    def upsample(self, low_res: torch.Tensor, height: int, width: int, cfg: UpsamplingConfig,
                 progress: bool = False) -> torch.Tensor:
        """Low-res pixels (b, 3, t, h, w) in [-1, 1] -> upsampled pixels (b, 3, t, height, width) in [-1, 1]."""
        latents = self.sample_latents(self.condition_latents(low_res, height, width), cfg, progress)
        return self.pipeline.decode(latents, low_res.shape[2])


@torch.inference_mode()
def evaluate_upsampling(upsampler: SpatialUpsampler, high_res: torch.Tensor, degradation, cfg: UpsamplingConfig
                        ) -> dict:
    """Treat `high_res` (1, 3, t, H, W) in [-1, 1] as the truth: degrade it (data.degrade, `degradation` an
    UpsampleConfig), upsample it back with the model, and compare with the truth, in pixels (PSNR, dB, range 2)
    and in latents (PSNR over the target latents' peak-to-peak range), against plain bilinear upsampling and
    against the TAE's own reconstruction of the truth (the ceiling any latent model can reach)."""
    from megatron_moviegen.data.degrade import degrade
    from megatron_moviegen.utils.quality import psnr

    height, width = high_res.shape[-2:]
    low = degrade(high_res, degradation, torch.Generator().manual_seed(cfg.seed))
    bilinear = upsample_bilinear(low, height, width)
    condition = upsampler.condition_latents(low, height, width)
    latents = upsampler.sample_latents(condition, cfg)
    frames = high_res.shape[2]
    target = upsampler.encoder.encode(high_res).float()
    pixels = upsampler.pipeline.decode(latents, frames).cpu()
    span = (target.max() - target.min()).item()
    return {
        "frames": frames, "size": [height, width], "low_size": list(low.shape[-2:]),
        "psnr_upsampler": psnr(pixels, high_res, 2.0),
        "psnr_bilinear": psnr(bilinear, high_res, 2.0),
        "psnr_bilinear_through_tae": psnr(upsampler.pipeline.decode(condition, frames).cpu(), high_res, 2.0),
        "psnr_tae_reconstruction": psnr(upsampler.pipeline.decode(target, frames).cpu(), high_res, 2.0),
        "latent_psnr_upsampler": psnr(latents.cpu(), target.cpu(), span),
        "latent_psnr_bilinear": psnr(condition.cpu(), target.cpu(), span),
        "pixels": pixels, "bilinear": bilinear,
    }
