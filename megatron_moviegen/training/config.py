"""The `train` config section: optimisation, schedule, checkpoints and logging (SPEC section 4, Table 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.models.dit_config import DiTConfig, sample_latent_grid
from megatron_moviegen.parallel.config import ParallelConfig
from megatron_moviegen.planning.flops import TAE_COMPRESSION


@dataclass
class LRPlateauConfig:
    """Multiply the LR by `factor` when the validation loss has not improved on its best by `threshold`
    (relative) for `patience` validations in a row, not below `min_lr` (paper stage 3: halved on plateaus)."""

    factor: float = 0.5
    patience: int = 3  # validations
    threshold: float = 0.0  # an improvement is val_loss < best * (1 - threshold)
    min_lr: float = 0.0

    def validate(self) -> None:
        if not 0.0 < self.factor < 1.0:
            raise ConfigError(f"lr_plateau.factor: got {self.factor}, must be in (0, 1)")
        if self.patience < 1:
            raise ConfigError(f"lr_plateau.patience: got {self.patience}, must be >= 1")
        if self.threshold < 0 or self.min_lr < 0:
            raise ConfigError(f"lr_plateau.threshold/min_lr: got {self.threshold}/{self.min_lr}, must be >= 0")


@dataclass
class SampleVideosConfig:
    """Videos of fixed prompts sampled with the current weights while training (training/samples.py): every `every`
    steps, to <checkpoint_dir>/samples/iter_<step>/, and to TensorBoard / W&B when they are configured."""

    prompts: list[str] = field(default_factory=list)
    every: int = 1000  # steps
    at_end: bool = True  # also after the last step
    tae: Optional[str] = None  # a TAE.save_pretrained folder, or "toy-tae" (an untrained demo decoder)
    text_encoders: Optional[Literal["paper", "toy"]] = None
    text_overrides: list[str] = field(default_factory=list)  # TextEncodersConfig overrides, e.g. ul2.path=/models/ul2
    num_frames: int = 32
    height: int = 256
    width: int = 256
    fps: Optional[int] = None  # None: as generate, 16 if the model was trained on it, else its lowest trained rate
    steps: int = 50  # Euler steps of the linear-quadratic schedule
    guidance_scale: float = 7.5
    seed: int = 0  # prompt i starts from the noise of seed + i, at every sampling
    ema: bool = False  # sample with the EMA weights (train.ema_decay) instead of the live ones

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts: empty; give at least one prompt (or no samples section)")
        if self.tae is None:
            raise ConfigError("tae: required to decode the samples: a TAE folder (TAE.save_pretrained) or 'toy-tae'")
        if self.text_encoders is None:
            raise ConfigError("text_encoders: required to encode the prompts: 'paper' or 'toy'")
        if self.text_overrides and self.text_encoders != "paper":
            raise ConfigError(f"text_overrides: {self.text_overrides} apply to the 'paper' text encoders, "
                              f"not {self.text_encoders!r}")
        for name in ("every", "num_frames", "height", "width", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.fps is not None and self.fps < 1:
            raise ConfigError(f"fps: got {self.fps}, must be >= 1 (or null for a trained rate)")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale: got {self.guidance_scale}, must be >= 0")

    def check_fits(self, model: DiTConfig, parallel: ParallelConfig) -> None:
        """The samples' size fits the model (at the paper TAE's 8x; the TAE itself is checked when training starts),
        and every rank holds the whole model."""
        if parallel.pipeline_model_parallel_size > 1:
            raise ConfigError(
                f"train.samples: sampling runs the whole DiT on every rank, parallel.pipeline_model_parallel_size is "
                f"{parallel.pipeline_model_parallel_size}; turn samples off and sample from an export "
                "(python -m megatron_moviegen.generate, any TP/CP layout)"
            )
        try:
            sample_latent_grid(model, TAE_COMPRESSION[0], self.num_frames, self.height, self.width)
        except ValueError as exc:
            raise ConfigError(f"train.samples: {exc}") from None


@dataclass
class TrainConfig:
    steps: int = 100
    micro_batch_size: int = 1  # samples per microbatch per data-parallel rank
    global_batch_size: int = 1  # samples per step over all data-parallel ranks
    # Table 3 changes the batch inside a stage: [[step, global batch], ...] (ascending steps >= 1) sets the global
    # batch from that step on (global_batch_size before the first; a step past train.steps waits for a longer run). The loader re-cuts the rest of its epoch
    # at each change, so a run resumes exactly across one (training/pretrain.py, data/loader.py).
    batch_schedule: list[tuple[int, int]] = field(default_factory=list)
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
    # Also save once this many minutes of wall time passed since the last save (or the start): a recipe whose steps
    # take minutes reaches no `save_every` inside one allocation. None: by steps only.
    save_every_minutes: Optional[float] = None
    resume: bool = True  # continue from checkpoint_dir/latest if it exists
    # resume=false into a checkpoint_dir that holds checkpoints is refused unless overwrite=true (this run's saves
    # then replace same-numbered steps and move `latest`). One run at a time holds checkpoint_dir/.lock.
    overwrite: bool = False
    keep_last: Optional[int] = None  # after each published save, delete older steps beyond the newest N; None: keep all
    # Write checkpoint tensors from a background process while training continues; the checkpoint becomes
    # `latest` once written everywhere (at the next save or at exit). Off by default: not tried on GPUs yet.
    async_save: bool = False
    load_from: Optional[str] = None  # start a new stage from this checkpoint (weights only)
    # On resume, a schedule (lr, min_lr, warmup, decay steps, style; decay steps follow `steps`) that differs from
    # the checkpoint's is refused; true applies the new one from the checkpoint's step on.
    override_lr_schedule: bool = False
    # A resume or load_from onto data.shards encoded by another TAE or text encoder than the checkpoint was trained
    # on is refused (its latents mean something else to the model); true fine-tunes on them deliberately.
    allow_new_encoders: bool = False
    # A step whose loss is NaN/inf stops the run, naming its samples; with skip_nonfinite_batches its batch is
    # skipped instead (no update), up to max_skipped_batches in one run, then the run stops.
    skip_nonfinite_batches: bool = False
    max_skipped_batches: int = 10
    # An EMA of the weights (training/ema.py), updated after every step; None = off. Paper SFT: model averaging.
    ema_decay: Optional[float] = None
    # Validation loss on held-out shards (training/validation.py): every `validate_every` steps, over the first
    # `validation_batches` batches of `validation_shards` with fixed noise and times. None = no validation.
    validation_shards: Optional[str] = None
    validate_every: int = 1000
    validation_batches: int = 8
    lr_plateau: Optional[LRPlateauConfig] = None  # the LR rule on that loss (training/lr_plateau.py); None = off
    samples: Optional[SampleVideosConfig] = None  # videos of fixed prompts while training; None = off
    # Logging.
    log_every: int = 10
    tensorboard: bool = True  # event files in tensorboard_dir (training/monitoring.py)
    tensorboard_dir: Optional[str] = None  # None: <checkpoint_dir>/tensorboard
    wandb_project: Optional[str] = None  # W&B on when set; the run id is kept in <checkpoint_dir>/wandb_run_id
    # The MFU's denominator, dense bf16 TFLOP/s per GPU; None: the detected GPU's datasheet peak (a table in
    # training/monitoring.py; no MFU on CPU or an unknown GPU, which the log says).
    peak_tflops_per_gpu: Optional[float] = None
    progress_bar: bool = True

    def num_microbatches(self, data_parallel_size: int, global_batch: int | None = None) -> int:
        """Microbatches per step of `global_batch` (default global_batch_size) on each data-parallel rank."""
        global_batch = global_batch or self.global_batch_size
        per_step = self.micro_batch_size * data_parallel_size
        if global_batch % per_step:
            name = "global_batch_size" if global_batch == self.global_batch_size else "batch_schedule"
            raise ConfigError(
                f"train.{name}: {global_batch} is not divisible by micro_batch_size "
                f"{self.micro_batch_size} x data-parallel size {data_parallel_size}"
            )
        return global_batch // per_step

    def loader_batch_schedule(self, data_parallel_size: int) -> list[tuple[int, int]]:
        """batch_schedule as one data-parallel rank's loader reads it: (step, samples per rank from that step)."""
        return [(step, self.micro_batch_size * self.num_microbatches(data_parallel_size, size))
                for step, size in self.batch_schedule]

    def validate(self) -> None:
        for name in ("steps", "micro_batch_size", "global_batch_size", "save_every", "log_every", "validate_every",
                     "validation_batches", "max_skipped_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        steps = [step for step, _ in self.batch_schedule]
        if steps != sorted(set(steps)) or any(step < 1 for step in steps) or any(
                size < 1 for _, size in self.batch_schedule):
            raise ConfigError(f"batch_schedule: got {[list(c) for c in self.batch_schedule]}, need [step, global batch] "
                              "pairs with ascending steps >= 1 and batches >= 1")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"lr/min_lr: got {self.lr}/{self.min_lr}, need 0 <= min_lr <= lr and lr > 0")
        if self.lr_warmup_steps < 0 or self.lr_warmup_steps > self.steps:
            raise ConfigError(f"lr_warmup_steps: got {self.lr_warmup_steps}, must be in [0, steps={self.steps}]")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay: got {self.ema_decay}, must be in [0, 1) (or null for no EMA)")
        if self.save_every_minutes is not None and not self.save_every_minutes > 0:
            raise ConfigError(f"save_every_minutes: got {self.save_every_minutes}, must be > 0 (or null to save by steps "
                              "only)")
        if self.keep_last is not None and self.keep_last < 1:
            raise ConfigError(f"keep_last: got {self.keep_last}, must be >= 1 (or null to keep every step)")
        if self.clip_grad < 0:
            raise ConfigError(f"clip_grad: got {self.clip_grad}, must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be in [0, 1)")
        if self.adam_eps <= 0 or self.weight_decay < 0:
            raise ConfigError(f"adam_eps/weight_decay: got {self.adam_eps}/{self.weight_decay}, need adam_eps > 0 and "
                              "weight_decay >= 0")
        if self.lr_plateau is not None and self.validation_shards is None:
            raise ConfigError("lr_plateau: set, but validation_shards is not (the rule needs a validation loss)")
        if self.lr_plateau is not None and self.lr_plateau.min_lr > self.lr:
            raise ConfigError(f"lr_plateau.min_lr: got {self.lr_plateau.min_lr}, must be <= lr {self.lr}")
        if self.samples is not None and self.samples.ema and self.ema_decay is None:
            raise ConfigError("samples.ema: true, but ema_decay is null (no EMA weights to sample with)")
        if self.allow_new_encoders and not (self.resume or self.load_from):
            raise ConfigError("allow_new_encoders: true, but resume is false and load_from is not set: there is no "
                              "checkpoint whose encoders it would allow to change")
        if self.peak_tflops_per_gpu is not None and self.peak_tflops_per_gpu <= 0:
            raise ConfigError(f"peak_tflops_per_gpu: got {self.peak_tflops_per_gpu}, must be > 0")
