"""The `train` config section: optimisation, schedule, checkpoints and logging (SPEC section 4, Table 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from megatron_moviegen.config.schema import ConfigError


@dataclass
class TrainConfig:
    steps: int = 100
    micro_batch_size: int = 1  # samples per microbatch per data-parallel rank
    global_batch_size: int = 1  # samples per step over all data-parallel ranks
    # AdamW with warmup, then constant / cosine / linear decay to min_lr.
    lr: float = 1e-4
    min_lr: float = 0.0
    lr_warmup_steps: int = 0
    lr_decay_style: Literal["constant", "cosine", "linear"] = "constant"
    lr_decay_steps: Optional[int] = None  # default: steps
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 1234
    # Checkpoints (megatron.core.dist_checkpointing), one folder per step with a `latest` pointer.
    checkpoint_dir: str = "outputs/checkpoints"
    save_every: int = 1000
    resume: bool = True  # continue from checkpoint_dir/latest if it exists
    load_from: Optional[str] = None  # start a new stage from this checkpoint (weights only)
    # On resume, a schedule (lr, min_lr, warmup, decay steps, style; decay steps follow `steps`) that differs from
    # the checkpoint's is refused; true applies the new one from the checkpoint's step on.
    override_lr_schedule: bool = False
    # An EMA of the weights (training/ema.py), updated after every step; None = off. Paper SFT: model averaging.
    ema_decay: Optional[float] = None
    # Logging.
    log_every: int = 10
    tensorboard_dir: Optional[str] = None
    wandb_project: Optional[str] = None
    peak_tflops_per_gpu: float = 989.0  # H100 SXM dense bf16; used for MFU
    progress_bar: bool = True

    def num_microbatches(self, data_parallel_size: int) -> int:
        per_step = self.micro_batch_size * data_parallel_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size: {self.global_batch_size} is not divisible by micro_batch_size "
                f"{self.micro_batch_size} x data-parallel size {data_parallel_size}"
            )
        return self.global_batch_size // per_step

    def validate(self) -> None:
        for name in ("steps", "micro_batch_size", "global_batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"lr/min_lr: got {self.lr}/{self.min_lr}, need 0 <= min_lr <= lr and lr > 0")
        if self.lr_warmup_steps < 0 or self.lr_warmup_steps > self.steps:
            raise ConfigError(f"lr_warmup_steps: got {self.lr_warmup_steps}, must be in [0, steps={self.steps}]")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay: got {self.ema_decay}, must be in [0, 1) (or null for no EMA)")
        if self.clip_grad < 0:
            raise ConfigError(f"clip_grad: got {self.clip_grad}, must be >= 0")
        if self.peak_tflops_per_gpu <= 0:
            raise ConfigError(f"peak_tflops_per_gpu: got {self.peak_tflops_per_gpu}, must be > 0")
