"""Movie Gen Audio at sampling time (SPEC section 7): a video (or none) and a prompt -> per-frame video features at
the audio latent rate -> Euler with classifier-free guidance through the audio DiT, in overlapping windows blended
with triangle weights when the audio is longer than the model's window -> the audio autoencoder's decoder ->
.wav, and the video with the audio muxed in (.mp4, AAC), + a JSON sidecar.

    cfg, chunks = load_exported_dit("runs/audio_export")
    pipeline = AudioPipeline(chunks[0], AudioAutoencoder.from_pretrained("runs/audio_ae/checkpoint"), text_encoders,
                             FrameFeatureEncoder("/models/metaclip-h14"), cfg.data.audio)
    paths = pipeline.generate("rain on a tin roof", AudioSamplingConfig(), "outputs/", video="in.mp4")

Infilling: `continuation` gives known audio (latent frames); the sampler keeps those frames on their path from the
noise to the given latents at every step (as training drew them) and the model, which reads them through its infill
channels, generates the rest; the output holds the given frames exactly. The same layout rules as video generation
hold: every rank of the TP x CP layout runs the DiT on the same noise, rank 0 encodes and writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron_moviegen.conditioning import Conditioning, Infill, TextEncoder
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.config import AudioDataConfig
from megatron_moviegen.data.decode import ClipRequest, PyAVDecoder
from megatron_moviegen.diffusion import ode_sample
from megatron_moviegen.diffusion.sampling import SCHEDULES, SOLVERS
from megatron_moviegen.diffusion.flow_matching import interpolate
from megatron_moviegen.diffusion.sampling import guided
from megatron_moviegen.diffusion.windows import window_plan, windowed_velocity
from megatron_moviegen.inference.pipeline import MovieGenPipeline, check_prompts, output_stem
from megatron_moviegen.models.audio_ae import AudioAutoencoder
from megatron_moviegen.models.dit import MovieGenDiT
from megatron_moviegen.utils.audio_io import mux_audio, write_wav
from megatron_moviegen.utils.video_io import write_json


@dataclass
class AudioSamplingConfig:
    """What to generate and how. Defaults (SPEC section 7): the midpoint solver, 64 steps (128 velocity evaluations)
    of an evenly spaced schedule, guidance 3 over text and video together (ours), windows of the model's length
    overlapping by a quarter, blended with triangle weights."""

    seconds: Optional[float] = None  # None: the video's duration
    steps: int = 64
    solver: str = "midpoint"  # or "euler"
    schedule: str = "linear"  # or "linear_quadratic" (the video model's)
    guidance_scale: float = 3.0
    seed: int = 0
    window_s: Optional[float] = None  # None: the model's longest window (model.max_frames latent frames)
    overlap_s: Optional[float] = None  # None: a quarter of the window

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps: got {self.steps}, must be >= 1")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver: got {self.solver!r}, expected one of {sorted(SOLVERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: got {self.schedule!r}, expected one of {sorted(SCHEDULES)}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ConfigError(f"guidance_scale: got {self.guidance_scale}, must be a finite number >= 0")
        for name in ("seconds", "window_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}: got {value}, must be > 0")
        if self.overlap_s is not None and not (math.isfinite(self.overlap_s) and self.overlap_s >= 0):
            raise ConfigError(f"overlap_s: got {self.overlap_s}, must be >= 0")


def window_frames(cfg: AudioSamplingConfig, max_frames: int, latent_rate: float) -> tuple[int, int]:
    """(window, overlap) in latent frames: the configured ones, checked against the model's position table."""
    window = max_frames if cfg.window_s is None else round(cfg.window_s * latent_rate)
    if not 1 <= window <= max_frames:
        raise ConfigError(f"window_s: got {cfg.window_s} s = {window} latent frames, the model's table holds 1 to "
                          f"{max_frames} ({max_frames / latent_rate:g} s)")
    overlap = window // 4 if cfg.overlap_s is None else round(cfg.overlap_s * latent_rate)
    if not 0 <= overlap < window:
        raise ConfigError(f"overlap_s: got {cfg.overlap_s} s = {overlap} latent frames, must be shorter than the "
                          f"window ({window})")
    return window, overlap


def read_video_frames(path: str | Path, num_frames: int, audio: AudioDataConfig) -> torch.Tensor:
    """`num_frames` frames of `path` at the audio latent rate from 0 s, covering data.audio.frame_size px: (t, s, s,
    3) uint8, as pre-encoding samples them."""
    request = ClipRequest(0.0, audio.latent_rate, num_frames, audio.frame_size, audio.frame_size)
    return PyAVDecoder().clip_frames(path, request)


class AudioPipeline:
    def __init__(self, dit: MovieGenDiT, autoencoder: AudioAutoencoder, text_encoders: Optional[TextEncoder],
                 frame_encoder, audio: AudioDataConfig, sources: Optional[dict[str, str]] = None):
        """dit: the audio DiT (data.audio export), this rank's only chunk; autoencoder: on the output device (used on
        rank 0); text_encoders and frame_encoder (`models.vision_tower.FrameFeatureEncoder`): used on rank 0 only;
        audio: the export's data.audio; sources: names recorded in the sidecar."""
        model = dit.dit_config
        if not model.infill or tuple(model.patch_size) != (1, 1, 1):
            raise ValueError("not an audio DiT: it has no infill channels or patches more than one latent frame "
                             "(train one with the audio_13b / audio_tiny recipes)")
        if abs(autoencoder.cfg.latent_rate - audio.latent_rate) > 1e-9:
            raise ValueError(f"the audio autoencoder gives {autoencoder.cfg.latent_rate:g} latent frames a second, the "
                             f"DiT was trained at {audio.latent_rate:g} (data.audio.latent_rate)")
        self.pipeline = MovieGenPipeline(dit, autoencoder, text_encoders)
        self.dit, self.autoencoder, self.frame_encoder, self.audio = dit, autoencoder, frame_encoder, audio
        self.sources = dict(sources or {})

    @property
    def rank(self) -> int:
        return self.pipeline.rank

    def num_frames(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * self.audio.latent_rate - 1e-9))

    def video_features(self, frames: Optional[torch.Tensor], num_frames: int) -> torch.Tensor:
        """(t, s, s, 3) uint8 frames, one per latent frame, or None -> (1, width, num_frames, 1, 1) float32 on CPU:
        the tower's per-frame features, zeros for no video (as a dropped video in training). Rank 0 only."""
        width = self.dit.dit_config.condition_channels
        features = torch.zeros(1, width, num_frames, 1, 1)
        if frames is not None:
            encoded = self.frame_encoder.encode(frames[:num_frames]).float().cpu().T  # (width, t)
            if encoded.shape[0] != width:
                raise ValueError(f"the video-feature tower gives {encoded.shape[0]}-wide features, the DiT takes "
                                 f"{width} (model.condition_channels)")
            features[0, :, :encoded.shape[1], 0, 0] = encoded
        return features

    def _conditions(self, prompt: str, features: torch.Tensor, infill: Infill) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) on the DiT's device: the prompt's tokens and the video features, then neither; both with
        the infill. Encoded on rank 0 and broadcast."""
        cond, _ = self.pipeline.encode_text([prompt])
        cond = replace(cond, channels=features.to(self.pipeline.device, self.pipeline.dtype),
                       infill=infill.map(lambda t: t.to(self.pipeline.device)))
        return cond, cond.without_tokens().without_channels()

    @torch.no_grad()
    def sample_latents(self, prompt: str, features: torch.Tensor, cfg: AudioSamplingConfig,
                       continuation: Optional[Infill] = None, progress: bool = False) -> torch.Tensor:
        """A prompt and video features (1, width, T, 1, 1) (rank 0's are broadcast) -> clean latents (1, c, T, 1, 1)
        float32, identical on every rank; `continuation`: known latents (1, c, T, 1, 1) and frames (1, T) kept."""
        cfg.validate()
        check_prompts([prompt])
        model = self.dit.dit_config
        frames = features.shape[2]
        window, overlap = window_frames(cfg, model.max_frames, self.audio.latent_rate)
        if dist.is_initialized() and dist.get_world_size() > 1:
            features = features.to(self.pipeline.device)
            dist.broadcast(features, src=0)
        shape = (1, model.latent_channels, frames, 1, 1)
        infill = continuation or Infill(torch.zeros(shape), torch.zeros(1, frames, dtype=torch.bool))
        cond, uncond = self._conditions(prompt, features, infill)
        generator = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.pipeline.device)  # X_0
        plan = window_plan(frames, window, overlap)
        velocity_fn = windowed_velocity(guided(self.pipeline.velocity, cfg.guidance_scale),
                                        Conditioning.cat([cond, uncond]), plan, blend="triangle")
        known = infill.known.to(self.pipeline.device).view(1, 1, frames, 1, 1)
        given = infill.latents.to(self.pipeline.device, torch.float32)

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            # Known frames follow their training path from the noise to the given latents.
            on_path = interpolate(noise, given, torch.full((1,), t, device=x.device))
            return velocity_fn(torch.where(known, on_path, x), t)

        latents = ode_sample(cfg.solver, velocity, noise, SCHEDULES[cfg.schedule](cfg.steps),
                             progress=progress and self.rank == 0)
        return torch.where(known, given, latents)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
        """The DiT's latents (1, c, T, 1, 1) (denormalised here) -> waveform (channels, num_samples) float32 in
        [-1, 1]."""
        device = next(self.autoencoder.parameters()).device
        z = self.autoencoder.denormalize_latents(latents[..., 0, 0].to(device))
        return self.autoencoder.decode(z, num_samples)[0].float().clamp(-1.0, 1.0).cpu()

    def encode_audio(self, waveform: torch.Tensor, num_frames: int) -> Infill:
        """Given audio (channels, n) -> an Infill of `num_frames` latent frames knowing the frames it covers whole."""
        hop = self.autoencoder.cfg.hop_length
        whole = min(waveform.shape[1] // hop, num_frames)
        if whole < 1:
            raise ValueError(f"the audio to continue has {waveform.shape[1]} samples, less than one latent frame "
                             f"({hop})")
        device = next(self.autoencoder.parameters()).device
        latents = self.autoencoder.normalize_latents(
            self.autoencoder.encode(waveform[None, :, :whole * hop].to(device)).mode()).float().cpu()
        given = torch.zeros(1, latents.shape[1], num_frames, 1, 1)
        given[:, :, :whole, 0, 0] = latents
        known = torch.zeros(1, num_frames, dtype=torch.bool)
        known[:, :whole] = True
        return Infill(given, known)

    def generate(self, prompt: str, cfg: AudioSamplingConfig, output_dir: str | Path, video: Optional[str] = None,
                 continuation: Optional[torch.Tensor] = None, index: int = 0, progress: bool = True
                 ) -> list[Path]:
        """Audio for `video` (None: text to audio, cfg.seconds long) and `prompt`: <output_dir>/<index>-<prompt
        words>-seed<seed>-<hash>.wav (`output_stem`), with `video` also .mp4 (its video stream and the audio), and a
        .json sidecar; `continuation`: audio (channels, n) whose whole latent frames are kept at the start. Every rank calls it;
        returns the paths rank 0 writes."""
        cfg.validate()
        seconds = cfg.seconds
        if seconds is None:
            if video is None:
                raise ConfigError("seconds: needed without a video (text to audio)")
            seconds = PyAVDecoder().probe(video).duration_s
        frames = self.num_frames(seconds)
        features = infill = None
        if self.rank == 0:
            features = self.video_features(None if video is None else read_video_frames(video, frames, self.audio),
                                           frames)
            infill = None if continuation is None else self.encode_audio(continuation, frames)
        else:
            features = torch.zeros(1, self.dit.dit_config.condition_channels, frames, 1, 1)
        if continuation is not None and dist.is_initialized() and dist.get_world_size() > 1:
            payload = [infill]
            dist.broadcast_object_list(payload, src=0, device=self.pipeline.device)
            infill = payload[0]
        latents = self.sample_latents(prompt, features, cfg, infill, progress)
        sample_rate = self.autoencoder.cfg.sample_rate
        window, overlap = window_frames(cfg, self.dit.dit_config.max_frames, self.audio.latent_rate)
        record = {
            "prompt": prompt, "video": video, "seconds": seconds, "sample_rate": sample_rate, "latent_frames": frames,
            "seed": cfg.seed, "steps": cfg.steps, "solver": cfg.solver, "schedule": cfg.schedule, "guidance_scale": cfg.guidance_scale,
            "windows": window_plan(frames, window, overlap), "blend": "triangle",
            "continued_frames": 0 if infill is None else int(infill.known.sum()), **self.sources,
        }
        base = Path(output_dir) / output_stem(index, prompt, cfg.seed, record)
        paths = [base.with_suffix(".wav")] + ([base.with_suffix(".mp4")] if video is not None else [])
        if self.rank == 0:
            waveform = self.decode(latents, round(seconds * sample_rate))
            write_wav(paths[0], waveform, sample_rate)
            if video is not None:
                mux_audio(video, waveform, sample_rate, paths[1])
            write_json(base.with_suffix(".json"), {"files": [p.name for p in paths], **record})
        if dist.is_initialized():
            dist.barrier()
        return paths
