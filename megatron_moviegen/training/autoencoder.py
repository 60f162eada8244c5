"""The training loop our autoencoders share (the TAE, training/train_tae.py; the audio autoencoder,
training/train_audio_ae.py): data parallel (DeepSpeed ZeRO-2 where deepspeed is installed, torch DDP otherwise),
reconstruction losses and a hinge GAN after a configurable step, a held-out evaluation every `train.eval_every`
steps, kept step checkpoints (training/tae_checkpoints.py) with resume, one command line.

A model kind is a subclass of `AutoencoderTrainer` that says how to build its model and loss, draw a batch for a
step, score a reconstruction and evaluate its held-out input; everything else is here:

    class TAETrainer(AutoencoderTrainer):
        def build_model(self): ...          # and build_loss, start_data, batch, batch_metrics, log_line, ...

With ZeRO-2 the autoencoder's AdamW moments are partitioned across ranks; checkpoints gather them into torch
AdamW's state_dict layout, so one checkpoint resumes under ZeRO-2 or DDP at any world size. The discriminator is
small and stays under DDP in both modes.

A run stops without saving when a loss, the weights or their encoding of the step's batch stop being finite, so the
last checkpoint stays good; a resume refuses a damaged checkpoint and a changed learning rate (unless
`train.override_lr_schedule`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from megatron_moviegen.checkpoints.protocol import CheckpointError
from megatron_moviegen.config.schema import ConfigError, to_dict, to_yaml
from megatron_moviegen.parallel.initialize import init_distributed
from megatron_moviegen.runtime import Runtime, rank_and_world_from_env
from megatron_moviegen.training.metrics import NonFiniteLossError
from megatron_moviegen.training.monitoring import Monitor, check_monitoring
from megatron_moviegen.training.tae_checkpoints import load_checkpoint, resume_folder, save_checkpoint
from megatron_moviegen.utils.io import atomic_write_text, drop_metrics_after


@dataclass
class AutoencoderOptimConfig:
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
    # A diffusers AutoencoderKL folder to inflate the TAE's spatial weights from (SPEC section 3); None = random
    # init. The TAE only.
    init_from_image_vae: str | None = None
    # "deepspeed": the autoencoder as a ZeRO-2 engine; "ddp": torch DDP; "auto": deepspeed when importable. Applies
    # when world size > 1; a single process trains unwrapped.
    data_parallel: Literal["deepspeed", "ddp", "auto"] = "auto"
    # bf16: forward and loss under bf16 autocast (fp32 weights, optimizer and gradients), on CPU too; fp32: no
    # autocast; auto: bf16 on GPU, fp32 on CPU. The DDP and DeepSpeed paths both follow it.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # Monitoring (training/monitoring.py), as the DiT's: TensorBoard under tensorboard_dir (None: <out_dir>/tensorboard)
    # unless false; W&B when wandb_project is set, its run id kept in <out_dir>/wandb_run_id.
    tensorboard: bool = True
    tensorboard_dir: str | None = None
    wandb_project: str | None = None

    def bf16_autocast(self, device: torch.device) -> bool:
        """Whether this recipe's steps run under bf16 autocast on `device`."""
        return self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda")

    def validate(self) -> None:
        for name in ("steps", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.keep_last is not None and self.keep_last < 0:
            raise ConfigError(f"keep_last: got {self.keep_last}, must be >= 0 (0 or null keeps every checkpoint)")
        if self.lr <= 0 or self.discriminator_lr <= 0:
            raise ConfigError(f"lr: got lr={self.lr}, discriminator_lr={self.discriminator_lr}; both must be > 0")
        if not all(0.0 <= beta < 1.0 for beta in self.betas) or self.grad_clip < 0:
            raise ConfigError(f"betas/grad_clip: got {tuple(self.betas)}/{self.grad_clip}, need each beta in [0, 1) "
                              "and grad_clip >= 0")


# ---- resume ---------------------------------------------------------------------------------------------

def resume_state(train: AutoencoderOptimConfig, model: nn.Module, discriminator: nn.Module) -> dict | None:
    """The train state of the checkpoint in `train.out_dir` (its weights loaded into `model` and `discriminator`),
    or None for a run from step 0. Refuses a damaged checkpoint, and `train.resume=false` over an existing one."""
    folder = resume_folder(train.out_dir)
    if folder is None:
        return None
    if not train.resume:
        raise ConfigError(f"train.resume=false but {train.out_dir} already holds the checkpoint {folder}; set "
                          "train.out_dir to a new folder to start over, or train.resume=true to continue it")
    return load_checkpoint(folder, model, discriminator)


def check_lr_for_resume(train: AutoencoderOptimConfig, state: dict) -> str | None:
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
def finite_output(model: nn.Module, inputs: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Whether `model` maps `inputs` to a finite posterior and reconstruction (no sampling noise, no grad; a
    local forward, so no rank waits on another); a 0-d bool tensor."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
        reconstruction, posterior = model(inputs, sample=False)
    return torch.stack([torch.isfinite(reconstruction).all(), torch.isfinite(posterior.mean).all(),
                        torch.isfinite(posterior.logvar).all()]).all()


# ---- data parallel ------------------------------------------------------------------------------------

def import_deepspeed():
    """The deepspeed module, or None when it is not installed (its accelerator: `use_deepspeed_accelerator_of`)."""
    try:
        import deepspeed
    except ImportError:
        return None
    return deepspeed


def use_deepspeed_accelerator_of(device: torch.device) -> None:
    """Have deepspeed, once imported, run on the runtime's `device` type: its CPU accelerator without a GPU."""
    if device.type != "cuda":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def resolve_data_parallel(choice: str) -> str:
    """"deepspeed" or "ddp" for train.data_parallel ("auto" = deepspeed when importable)."""
    if choice == "auto":
        return "deepspeed" if import_deepspeed() is not None else "ddp"
    if choice == "deepspeed" and import_deepspeed() is None:
        raise ConfigError("train.data_parallel: got 'deepspeed' but deepspeed is not installed; "
                          "pip install 'megatron_moviegen[deepspeed]' or use 'ddp' / 'auto'")
    return choice


def deepspeed_config(train: AutoencoderOptimConfig, micro_batch_size: int, device: torch.device) -> dict:
    """ZeRO-2 with fp32 master weights; bf16 autocast as train.precision says (the same numerics as the DDP path)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": 2},
        "torch_autocast": {"enabled": train.bf16_autocast(device), "dtype": "bfloat16"},
        "steps_per_print": 2**31 - 1,
    }


class DDPAutoencoderStep:
    """The autoencoder under torch DDP (unwrapped on one process): AdamW, global-norm gradient clipping."""

    def __init__(self, model: nn.Module, train: AutoencoderOptimConfig, world_size: int):
        self.model, self.grad_clip, self.lr = model, train.grad_clip, train.lr
        self.module = DistributedDataParallel(model) if world_size > 1 else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=train.betas)

    def __call__(self, inputs: torch.Tensor):
        return self.module(inputs)

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
    """The autoencoder as a DeepSpeed ZeRO-2 engine around torch AdamW (DeepSpeed's fused/CPU Adams need compiled
    ops).

    Optimizer state moves in and out in torch AdamW's state_dict layout (one entry per model parameter), so
    checkpoints are interchangeable with DDPAutoencoderStep's and independent of the world size."""

    MOMENTS = ("exp_avg", "exp_avg_sq")

    def __init__(self, model: nn.Module, train: AutoencoderOptimConfig, micro_batch_size: int, device: torch.device):
        deepspeed = import_deepspeed()
        self.model = model
        optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=train.betas)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(train, micro_batch_size, device),
            dist_init_required=False)

    def __call__(self, inputs: torch.Tensor):
        return self.engine(inputs)

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
            raise ValueError(f"optimizer state: got {len(state['state'])} parameters, the model has {len(params)}")
        adamw, step = self.optimizer.optimizer, state["state"][0]["step"]
        # AdamW creates its state at the first step(); create it here so DeepSpeed can map partitions onto it.
        for flat in self.optimizer.single_partition_of_fp32_groups:
            adamw.state[flat] = {"step": torch.as_tensor(step, dtype=torch.float32).clone(),
                                 **{k: torch.zeros_like(flat) for k in self.MOMENTS}}
        self.optimizer._lazy_init_hp_params_optimizer_state()
        for i, p in enumerate(params):
            for k in self.MOMENTS:
                safe_set_full_optimizer_state(p, state["state"][i][k].to(p.device, torch.float32), k)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---- the loop -------------------------------------------------------------------------------------------

class AutoencoderTrainer(ABC):
    """One model kind's training run. `cfg` has sections model, loss, data and train (AutoencoderOptimConfig) and a
    name. Subclasses give the model, its loss (with generator_loss / discriminator_loss / gan_active /
    .discriminator, as TAELoss), the batches, the metric of a batch's reconstruction and the held-out evaluation."""

    prog = "train_autoencoder"  # the command's name in its error lines
    batch_metric = "psnr"  # the key `batch_metrics` returns first, shown on the progress bar

    def __init__(self, cfg):
        self.cfg = cfg

    # ---- what a kind provides ---------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        ...

    @abstractmethod
    def build_loss(self) -> nn.Module:
        ...

    @abstractmethod
    def start_data(self, rank: int) -> None:
        """Decode what this rank trains on (called once, before the first step)."""
        ...

    @abstractmethod
    def batch(self, step: int, rank: int, device: torch.device) -> torch.Tensor:
        """The input of `step` on this rank; its randomness a function of (seed, rank, step)."""
        ...

    @abstractmethod
    def micro_batch_size(self) -> int:
        ...

    @abstractmethod
    def batch_metrics(self, reconstruction: torch.Tensor, target: torch.Tensor) -> dict:
        ...

    def eval_input(self) -> Optional[torch.Tensor]:
        """The held-out input scored every train.eval_every steps (rank 0 only), or None."""
        return None

    def evaluate(self, model: nn.Module, held_out: torch.Tensor) -> dict[str, float]:
        """Scores of `model` (in eval mode, no grad) on the held-out input, keys starting with eval_."""
        raise NotImplementedError(f"{type(self).__name__} gives an eval_input but no evaluate")

    def summary(self, record: dict) -> str:
        """The batch metric of a step's record, for the command's last line."""
        return f"{self.batch_metric} {record[self.batch_metric]:.2f}"

    @abstractmethod
    def log_line(self, record: dict) -> str:
        ...

    # ---- the run -----------------------------------------------------------------------------------------
    def _step(self, step: int, inputs: torch.Tensor, autoencoder, loss: nn.Module, ddp_discriminator: nn.Module,
              discriminator_optimizer: torch.optim.Optimizer) -> dict:
        """One generator update (and one discriminator update once the GAN is on); returns the step's record.
        Stops on every rank before a non-finite loss reaches the weights."""
        out_dir = self.cfg.train.out_dir
        autocast = torch.autocast(inputs.device.type, dtype=torch.bfloat16,
                                  enabled=self.cfg.train.bf16_autocast(inputs.device))
        with autocast:
            reconstruction, posterior = autoencoder(inputs)
            total, terms = loss.generator_loss(inputs, reconstruction, posterior, posterior.mean, step)
        stop_unless_finite({"loss": torch.isfinite(total.detach())}, step + 1, out_dir)
        autoencoder.step(total)
        if loss.gan_active(step):
            with autocast:
                d_loss = loss.discriminator_loss(inputs, reconstruction, ddp_discriminator)
            stop_unless_finite({"discriminator loss": torch.isfinite(d_loss.detach())}, step + 1, out_dir)
            discriminator_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            discriminator_optimizer.step()
            terms["discriminator"] = float(d_loss.detach())
        return {"step": step + 1, "loss": float(total.detach()),
                **self.batch_metrics(reconstruction.detach().float(), inputs.float()), **terms}

    def _autoencoder_step(self, model: nn.Module, world_size: int, device: torch.device):
        train = self.cfg.train
        use_deepspeed_accelerator_of(device)
        if world_size > 1 and resolve_data_parallel(train.data_parallel) == "deepspeed":
            return ZeRO2AutoencoderStep(model, train, self.micro_batch_size(), device)
        return DDPAutoencoderStep(model, train, world_size)

    def train(self, show_progress: bool = True, runtime: Runtime | None = None) -> list[dict]:
        """Run the training loop on this process's rank; returns the logged metrics (rank 0 writes metrics.jsonl,
        prints the log lines and evaluates the held-out input). `runtime` (device; train.precision picks autocast) defaults
        to this machine's."""
        cfg = self.cfg
        check_monitoring(cfg.train.tensorboard, cfg.train.wandb_project)
        rank, world_size = world()
        device = (runtime or Runtime.resolve()).device
        torch.manual_seed(cfg.train.seed)
        out_dir = Path(cfg.train.out_dir)
        model, loss = self.build_model().to(device), self.build_loss().to(device)
        state = resume_state(cfg.train, model, loss.discriminator)
        lr_note = check_lr_for_resume(cfg.train, state) if state is not None else None
        autoencoder = self._autoencoder_step(model, world_size, device)
        discriminator_optimizer = torch.optim.AdamW(loss.discriminator.parameters(), lr=cfg.train.discriminator_lr,
                                                    betas=cfg.train.betas)
        ddp_discriminator = DistributedDataParallel(loss.discriminator) if world_size > 1 else loss.discriminator
        start = 0
        if state is not None:
            autoencoder.load_optimizer_state(state["optimizers"]["tae"])
            discriminator_optimizer.load_state_dict(state["optimizers"]["discriminator"])
            set_lr(discriminator_optimizer, cfg.train.discriminator_lr)
            start = state["step"]
        self.start_data(rank)
        # Rank 0 alone evaluates: a local forward without collectives (ZeRO-2 keeps full weights on every rank).
        held_out = self.eval_input() if rank == 0 else None
        metrics = out_dir / "metrics.jsonl"
        monitor = None
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))
            drop_metrics_after(metrics, start)
            monitor = Monitor(out_dir, cfg.name, cfg.train.tensorboard, cfg.train.tensorboard_dir,
                              cfg.train.wandb_project, to_dict(cfg))
        try:
            history = []
            with tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps,
                      desc=f"{self.prog}[{cfg.name}]", disable=rank != 0 or not show_progress) as bar:
                say = bar.write if rank == 0 else (lambda message: None)
                if state is not None:
                    say(f"resumed from {resume_folder(out_dir)} at step {start}" + (f"; {lr_note}" if lr_note else ""))
                for step in bar:
                    torch.manual_seed(cfg.train.seed + step)  # posterior sampling noise, the same on every rank
                    inputs = self.batch(step, rank, device)
                    record = self._step(step, inputs, autoencoder, loss, ddp_discriminator, discriminator_optimizer)
                    done, last = step + 1, step + 1 == cfg.train.steps
                    if held_out is not None and (done % cfg.train.eval_every == 0 or last):
                        record.update(self._evaluate(model, held_out))
                    history.append(record)
                    evaluated = any(k.startswith("eval_") for k in record)
                    if rank == 0 and (done % cfg.train.log_every == 0 or last or evaluated):
                        bar.set_postfix({"loss": f"{record['loss']:.4f}",
                                         self.batch_metric: f"{record[self.batch_metric]:.2f}"})
                        with open(metrics, "a") as fh:
                            fh.write(json.dumps(record) + "\n")
                        monitor.scalars("train", record, done)
                        say(self.log_line(record))
                    if done % cfg.train.checkpoint_every == 0 or last:
                        self._save(done, inputs, model, loss, autoencoder, discriminator_optimizer, rank, world_size,
                                   say)
            return history
        finally:
            if monitor is not None:
                monitor.close()

    def _evaluate(self, model: nn.Module, held_out: torch.Tensor) -> dict[str, float]:
        """`evaluate` in eval mode; the model's mode is restored."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.evaluate(model, held_out)
        finally:
            model.train(was_training)

    def _save(self, done: int, inputs: torch.Tensor, model: nn.Module, loss: nn.Module, autoencoder,
              discriminator_optimizer, rank: int, world_size: int, say: Callable[[str], None]) -> None:
        """Save step `done` once its weights are finite and encode and decode `inputs` (the batch of that step,
        whose loss was finite) to finite values: finite weights of 1e30 still encode to NaN."""
        train = self.cfg.train
        stop_unless_finite({f"{model.display_name} weights": all_finite(model),
                            "discriminator weights": all_finite(loss.discriminator),
                            f"{model.display_name} latents or reconstruction of the batch of step {done}":
                                finite_output(model, inputs, train.bf16_autocast(inputs.device))},
                           done, train.out_dir)
        optimizer_states = {"tae": autoencoder.optimizer_state(), "discriminator": discriminator_optimizer.state_dict()}
        if rank == 0:
            train_state = {"step": done, "discriminator": loss.discriminator.state_dict(),
                           "optimizers": optimizer_states}
            say(f"saved {save_checkpoint(train.out_dir, done, model, train_state, train.keep_last, self.cfg)}")
        if world_size > 1:
            dist.barrier()


def main(argv: list[str] | None, trainer_class: type[AutoencoderTrainer], load_config: Callable, description: str
         ) -> int:
    """The command line of a trainer; returns the exit status: 2 for a refused config or checkpoint, 1 when the
    loss diverged. Refusals are one line on stderr from rank 0."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="recipe name or a YAML path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100")
    args = parser.parse_args(argv)
    env_rank, env_world = rank_and_world_from_env()
    prog = trainer_class.prog

    def refuse(exc: Exception, status: int) -> int:
        if env_rank == 0:
            print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return status

    try:
        cfg = load_config(args.config, args.overrides)
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
        trainer = trainer_class(cfg)
        history = trainer.train(runtime=runtime)
        if env_rank == 0:
            if history:
                last = history[-1]
                print(f"step {last['step']}: loss {last['loss']:.4f}, {trainer.summary(last)}, "
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
