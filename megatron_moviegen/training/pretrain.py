"""The flow-matching pretraining loop on Megatron-Core (SPEC sections 2 and 4).

One step: this data-parallel rank reads global_batch_size / DP samples of one bucket (the global batch changes at
the steps of `train.batch_schedule`), splits them into microbatches, and Megatron's forward_backward_func runs them through the DiT chunks (any TP/SP/CP/PP
layout); finalize_model_grads reduces the grads; AdamW steps; the LR schedule advances. Every rank of a
data-parallel replica reads the same samples and draws the same noise and times, seeded by
(seed, step, dp rank, microbatch), so a resumed run repeats an uninterrupted one exactly. After a step: the
validation loss (training/validation.py) and sample videos of fixed prompts (training/samples.py) when due, then a
checkpoint when due: every `train.save_every` steps, once `train.save_every_minutes` passed since the last one, at the
last step, or after a preemption signal.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads

from megatron_moviegen.config import ConfigError
from megatron_moviegen.recipes import MovieGenConfig
from megatron_moviegen.data.feeder import BatchFeeder
from megatron_moviegen.data.loader import Batch, LatentLoader
from megatron_moviegen.data.shards import encoder_mismatch, shard_encoders
from megatron_moviegen.models.dit_chunks import build_dit_chunks
from megatron_moviegen.parallel.ddp import connect_ddp_to_schedules, finish_param_gather, wrap_ddp
from megatron_moviegen.parallel.initialize import init_model_parallel, set_seed
from megatron_moviegen.parallel.layout import SequenceLayout
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.checkpoints.distributed import (
    finalize_async_saves,
    load_checkpoint,
    read_common_state,
    read_saved_config,
    resolve_checkpoint,
    save_checkpoint,
    start_save_helper,
)
from megatron_moviegen.checkpoints.folder import claim_checkpoint_dir
from megatron_moviegen.checkpoints.protocol import latest_checkpoint
from megatron_moviegen.training.ema import ModelEMA
from megatron_moviegen.training.monitoring import check_monitoring
from megatron_moviegen.training.lr_plateau import with_lr_plateau
from megatron_moviegen.training.metrics import MetricsLogger, StepMetrics
from megatron_moviegen.training.microbatch import flow_matching_microbatch, run_microbatches
from megatron_moviegen.training.nonfinite import NonFiniteGuard
from megatron_moviegen.training.optimizer import (
    apply_configured_lr_bounds,
    build_optimizer,
    build_scheduler,
    prepare_schedule_for_resume,
)
from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage
from megatron_moviegen.models.vision_tower import load_pretrained_towers
from megatron_moviegen.training.samples import TrainingSamples
from megatron_moviegen.training.validation import Validation

log = logging.getLogger("megatron_moviegen.train")


@dataclass
class TrainResult:
    step: int
    last_loss: float
    preempted: bool
    checkpoint: str | None
    history: list[dict]  # per-step metrics of this run (every rank)
    skipped: list[dict] = field(default_factory=list)  # batches skipped for a non-finite loss (NonFiniteGuard)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (a MAX all-reduce). `device`: the runtime's, the one the default
    process group's backend takes (NCCL refuses CPU tensors)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class SaveTimer:
    """`train.save_every_minutes`: a save is due once that much wall time passed since the last save (or the start).
    The ranks' clocks drift apart, so the decision is agreed: due on one rank makes it due on all."""

    clock = staticmethod(time.monotonic)  # seconds

    def __init__(self, minutes: float | None, device: torch.device):
        self.seconds = None if minutes is None else minutes * 60.0
        self.device = device
        self.last = self.clock()

    def due(self) -> bool:
        if self.seconds is None:
            return False
        return any_rank(self.clock() - self.last >= self.seconds, self.device)

    def saved(self) -> None:
        self.last = self.clock()


class PreemptionFlag:
    """SIGTERM / SIGUSR1 (SLURM sends them before a time limit or preemption) ask for a save-and-exit."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        log.warning("received signal %d: saving a checkpoint after this step and exiting", signum)
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank was signalled (ranks may receive the signal at different times)."""
        return any_rank(self.requested, device)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_microbatches(batch: Batch, cfg: MovieGenConfig, step: int, num_microbatches: int,
                      device: torch.device) -> list[dict]:
    """Split one bucket's samples into microbatches with their noise, flow times and drop masks, on `device`."""
    dp_rank = parallel_state.get_data_parallel_rank()
    latents = batch.latents.float()
    size = latents.shape[0] // num_microbatches
    microbatches = []
    for index in range(num_microbatches):
        gen = torch.Generator().manual_seed(((cfg.train.seed * 1_000_003 + step) * 65_537 + dp_rank) * 257 + index)
        microbatches.append(flow_matching_microbatch(latents[index * size:(index + 1) * size],
                                                     batch.conditioning.batch(index * size, (index + 1) * size),
                                                     gen, cfg, device, cfg.flow.text_drop_prob,
                                                     cfg.flow.condition_drop_prob))
    return microbatches


def check_conditioning(cfg: MovieGenConfig, batch: Batch) -> None:
    """The shards' conditioning has the sources, shapes, channels and task the model takes (images for a source
    whose encoder is in the model, tokens for the others)."""
    all_sources = cfg.model.context_sources()
    towers = {name: source.encoder for name, source in all_sources.items() if source.encoder is not None}
    sources = {name: source for name, source in all_sources.items() if name not in towers}
    tokens, images = batch.conditioning.tokens, batch.conditioning.images
    if set(tokens) != set(sources) or set(images) != set(towers):
        raise ConfigError(
            f"data.shards: samples carry context tokens {sorted(tokens)} and images {sorted(images)}, the model "
            f"expects tokens {sorted(sources)} and images {sorted(towers)} (model.text_encoders + "
            "model.extra_context; images for an extra source with an encoder, i.e. data.reference.trainable)"
        )
    for name, pixels in images.items():
        size = towers[name].image_size
        if pixels.pixels.shape[1:] != (3, size, size):
            raise ConfigError(f"model.extra_context.{name}.encoder.image_size: {size}, shards hold images of shape "
                              f"{tuple(pixels.pixels.shape[1:])}")
    for name, (emb, _) in tokens.items():
        source = sources[name]
        if emb.shape[1:] != (source.max_length, source.width):
            section = "text_encoders" if name in cfg.model.text_encoders else "extra_context"
            raise ConfigError(
                f"model.{section}.{name}: shards hold embeddings of shape {tuple(emb.shape[1:])}, the model "
                f"expects ({source.max_length}, {source.width})"
            )
    channels = batch.conditioning.channels
    if (0 if channels is None else channels.shape[1]) != cfg.model.condition_channels:
        raise ConfigError(f"model.condition_channels: {cfg.model.condition_channels}, shards hold "
                          f"{0 if channels is None else channels.shape[1]} condition channels")
    if (batch.conditioning.task is None) != (cfg.model.num_tasks == 0):
        raise ConfigError(f"model.num_tasks: {cfg.model.num_tasks}, shards "
                          f"{'hold no task ids' if batch.conditioning.task is None else 'hold task ids'}")


def build_loader(cfg: MovieGenConfig, num_microbatches: int, runtime: Runtime) -> BatchFeeder:
    """This data-parallel rank's batches, read ahead on the first rank of its TP group and broadcast to the rest;
    their size follows train.batch_schedule."""
    dp_size = parallel_state.get_data_parallel_world_size()
    loader = LatentLoader(cfg.data.shards, batch_size=cfg.train.micro_batch_size * num_microbatches,
                          image_fraction=cfg.data.image_fraction, seed=cfg.data.seed,
                          dp_rank=parallel_state.get_data_parallel_rank(), dp_size=dp_size,
                          allow_changed_shards=cfg.data.allow_changed_shards,
                          batch_schedule=cfg.train.loader_batch_schedule(dp_size))
    return BatchFeeder(loader, cfg.data.prefetch_batches, parallel_state.get_tensor_model_parallel_group(),
                       runtime.device, pin_memory=runtime.on_gpu)


def check_trained_encoders(cfg: MovieGenConfig) -> dict[str, dict]:
    """The encoders of data.shards (pre-encoding's record), after checking that the checkpoint to resume and
    train.load_from were trained on latents and embeddings of the same encoders: else a ConfigError naming both,
    or with train.allow_new_encoders a warning. Shards or checkpoints from before encoders were recorded pass."""
    now = shard_encoders(cfg.data.shards) or {}
    resume_from = latest_checkpoint(cfg.train.checkpoint_dir) if cfg.train.resume else None
    starts = [p for p in (resume_from, cfg.train.load_from and resolve_checkpoint(cfg.train.load_from)) if p]
    for start in starts:
        was = read_saved_config(start).get("model", {}).get("trained_encoders") or {}
        changed = encoder_mismatch(was, now)
        if not changed:
            continue
        message = "; ".join(f"data.shards {cfg.data.shards} were encoded by {role} encoder {shards}, the checkpoint "
                            f"{start} was trained on {role} encoder {trained}" for role, trained, shards in changed)
        if not cfg.train.allow_new_encoders:
            raise ConfigError(f"{message}; use shards of the checkpoint's encoders, or set "
                              "train.allow_new_encoders=true to fine-tune on these latents deliberately")
        log.warning("%s; train.allow_new_encoders: fine-tuning on the new latents", message)
    return now


def pretrain(cfg: MovieGenConfig, runtime: Runtime | None = None) -> TrainResult:
    """Train `cfg` from scratch, from `train.load_from` (a new stage), or resume from `train.checkpoint_dir`.
    `runtime` defaults to the one the config resolves to here. The run holds `train.checkpoint_dir` (a lock) until
    its last save is published; a fresh run into a folder with checkpoints needs `train.overwrite=true`."""
    if cfg.train.async_save:
        start_save_helper()  # before CUDA and the process groups: forked in milliseconds, not spawned at the first save
    runtime = runtime or Runtime.for_config(cfg)
    dp_size = init_model_parallel(cfg.parallel, runtime)
    with claim_checkpoint_dir(cfg.train, runtime.device):
        result = _train(cfg, runtime, dp_size)
        finalize_async_saves()  # published while the folder is still this run's
    return result


def _train(cfg: MovieGenConfig, runtime: Runtime, dp_size: int) -> TrainResult:
    if cfg.model.lora.enabled and not cfg.train.load_from:
        raise ConfigError(f"model.lora.rank: {cfg.model.lora.rank}, but LoRA fine-tunes a trained model and "
                          "train.load_from is not set (its checkpoint folder or step folder)")
    check_monitoring(cfg.train.tensorboard, cfg.train.wandb_project)  # before anything is built
    layout = SequenceLayout.from_parallel_state(cfg.parallel.sequence_parallel)
    num_microbatches = cfg.train.num_microbatches(dp_size)
    loader = build_loader(cfg, num_microbatches, runtime)  # fails early on missing shards
    validation = Validation.for_config(cfg, layout, runtime.device)  # None without train.validation_shards
    cfg.model.trained_fps = tuple(sorted(set(cfg.model.trained_fps) | set(loader.prompt_fps())))  # into checkpoints
    cfg.model.trained_encoders = check_trained_encoders(cfg)  # into checkpoints
    samples = TrainingSamples.for_config(cfg, runtime)  # None without train.samples; encodes its prompts now
    set_seed(cfg.train.seed, runtime)
    chunks = build_dit_chunks(cfg, runtime, layout)
    if samples is not None:
        samples.attach(chunks[0])
    ema = ModelEMA(chunks, cfg.train.ema_decay) if cfg.train.ema_decay is not None else None
    model = wrap_ddp(chunks, use_distributed_optimizer=runtime.distributed_optimizer, parallel=cfg.parallel)
    optimizer = build_optimizer(model, cfg.train, runtime)
    scheduler = with_lr_plateau(build_scheduler(optimizer, cfg.train), cfg.train.lr_plateau)
    transformer_config = chunks[0].config
    transformer_config.finalize_model_grads_func = finalize_model_grads
    transformer_config.grad_scale_func = optimizer.scale_loss
    connect_ddp_to_schedules(model)

    step = 0
    resume_from = latest_checkpoint(cfg.train.checkpoint_dir) if cfg.train.resume else None
    if cfg.model.lora.enabled:
        # The checkpoints of a LoRA run hold only the adapters: the frozen base comes from train.load_from, resumed
        # or not.
        load_weights_for_new_stage(cfg.train.load_from, chunks, resolution=cfg.data.buckets.resolution)
        trainable = sum(p.numel() for chunk in chunks for p in chunk.parameters() if p.requires_grad)
        total = sum(p.numel() for chunk in chunks for p in chunk.parameters())
        log.info("LoRA rank %d on %s over %s: %s of this rank's %s parameters train", cfg.model.lora.rank,
                 ", ".join(cfg.model.lora.targets), cfg.train.load_from, f"{trainable:,}", f"{total:,}")
    if resume_from is not None:
        saved = read_common_state(resume_from)
        schedule = getattr(scheduler, "schedule", scheduler)  # Megatron's, inside the plateau rule if any
        override = prepare_schedule_for_resume(schedule, saved["scheduler"], cfg.train, saved["step"])
        step = load_checkpoint(resume_from, model, optimizer, scheduler, loader, ema=ema)
        if override is not None:
            apply_configured_lr_bounds(optimizer, cfg.train)
            scheduler.step(increment=0)  # the configured schedule's lr at this step, before the first update
            log.warning(override)
        log.info("resumed from %s at step %d", resume_from, step)
    else:
        new = set()
        if cfg.train.load_from and not cfg.model.lora.enabled:
            new = load_weights_for_new_stage(cfg.train.load_from, chunks, resolution=cfg.data.buckets.resolution)
            log.info("initialised weights from %s (new stage: fresh optimizer and schedule)", cfg.train.load_from)
        towers = [name for name, source in cfg.model.extra_context.items() if source.encoder is not None]
        if towers and (not cfg.train.load_from or any(n.startswith("context_projection.encoders.") for n in new)):
            loaded = load_pretrained_towers(chunks, cfg.data.reference.encoder)
            log.info("vision towers %s start from %s", sorted(set(loaded)), cfg.data.reference.encoder)
        if cfg.train.load_from or towers:
            # Mixed-precision optimizers copied the model's weights when built: give them the loaded ones.
            optimizer.reload_model_params()
            if ema is not None:
                ema = ModelEMA(chunks, cfg.train.ema_decay)  # the average starts from the loaded weights

    metrics = MetricsLogger(cfg, runtime, dp_size, num_microbatches)
    preemption = PreemptionFlag()
    saves = SaveTimer(cfg.train.save_every_minutes, runtime.device)
    guard = NonFiniteGuard(cfg, loader, model, layout, metrics.reduce_loss, metrics.note)
    data = iter(loader)
    last_loss, checkpoint, preempted = float("nan"), None, False
    try:
        for step in range(step, cfg.train.steps):
            start = time.perf_counter()
            batch = next(data)
            data_seconds = time.perf_counter() - start
            if metrics.steps_logged == 0:
                check_conditioning(cfg, batch)
            num_microbatches = batch.latents.shape[0] // cfg.train.micro_batch_size  # train.batch_schedule's
            microbatches = make_microbatches(batch, cfg, step, num_microbatches, runtime.device)
            for chunk in model:
                chunk.zero_grad_buffer()
            optimizer.zero_grad()
            tokens = chunks[0].tokens_per_sample(batch.latents.shape)
            losses = run_microbatches(model, layout, microbatches, tokens, cfg.train.micro_batch_size)
            loss = metrics.reduce_loss(losses)  # all-reduced: every rank updates, skips or stops alike
            if math.isfinite(loss):
                updated, grad_norm, _ = optimizer.step()
                if updated:
                    scheduler.step(increment=1)
                    if ema is not None:
                        finish_param_gather(model)
                        ema.update()
                    guard.after_update(step + 1, grad_norm, batch, microbatches, tokens)
                last_loss = loss
                metrics.record(StepMetrics(step + 1, loss, grad_norm, optimizer.param_groups[0]["lr"],
                                           time.perf_counter() - start, batch, tokens, data_seconds))
            else:
                guard.bad_loss(step + 1, loss, batch, losses)
            done = step + 1
            if validation is not None:
                validation.after_step(done, model, scheduler, metrics)
            if samples is not None:
                samples.after_step(done, model, ema, metrics)
            save_now = done % cfg.train.save_every == 0 or done == cfg.train.steps or saves.due()
            preempted = preemption.agreed(runtime.device)
            if save_now or preempted:
                guard.check_before_save(done)
                finish_param_gather(model)
                started = time.perf_counter()
                checkpoint = str(save_checkpoint(cfg.train.checkpoint_dir, done, model, optimizer, scheduler, loader, cfg,
                                                 ema=ema))
                metrics.record_save(done, checkpoint, time.perf_counter() - started)
                saves.saved()
            finalize_async_saves(blocking=False)  # publish an asynchronous save once every rank has written it
            if preempted:
                metrics.note(f"stopping at step {done} after a preemption signal")
                return TrainResult(done, last_loss, True, checkpoint, metrics.history, guard.skipped)
        return TrainResult(cfg.train.steps, last_loss, False, checkpoint, metrics.history, guard.skipped)
    finally:
        loader.close()
        preemption.restore()
        metrics.close()
