"""The flow-matching pretraining loop on Megatron-Core (SPEC sections 2 and 4).

One step: this data-parallel rank reads global_batch_size / DP samples of one bucket, splits them into
microbatches, and Megatron's forward_backward_func runs them through the DiT chunks (any TP/SP/CP/PP
layout); finalize_model_grads reduces the grads; AdamW steps; the LR schedule advances. Every rank of a
data-parallel replica reads the same samples and draws the same noise and times, seeded by
(seed, step, dp rank, microbatch), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_moviegen.config import ConfigError
from megatron_moviegen.recipes import MovieGenConfig
from megatron_moviegen.data.loader import Batch, LatentLoader
from megatron_moviegen.diffusion.flow_matching import (
    interpolate,
    sample_text_keep_mask,
    sample_timesteps,
    velocity_target,
)
from megatron_moviegen.parallel.build import build_dit_chunks, wrap_ddp
from megatron_moviegen.parallel.initialize import init_model_parallel, set_seed
from megatron_moviegen.checkpoints.distributed import latest_checkpoint, load_checkpoint, save_checkpoint
from megatron_moviegen.training.metrics import MetricsLogger, StepMetrics
from megatron_moviegen.training.optimizer import build_optimizer, build_scheduler
from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage

log = logging.getLogger("megatron_moviegen.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; nothing is saved from this state."""


@dataclass
class TrainResult:
    step: int
    last_loss: float
    preempted: bool
    checkpoint: str | None
    history: list[dict]  # per-step metrics of this run (every rank)


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

    def agreed(self) -> bool:
        """True on every rank if any rank was signalled (ranks may receive the signal at different times)."""
        flag = torch.tensor([1.0 if self.requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resolve_bf16(cfg: MovieGenConfig) -> bool:
    if cfg.train.precision == "auto":
        return torch.cuda.is_available()
    return cfg.train.precision == "bf16"


def make_microbatches(batch: Batch, cfg: MovieGenConfig, step: int, num_microbatches: int) -> list[dict]:
    """Split one bucket's samples into microbatches with their noise, flow times and text-drop masks."""
    dp_rank = parallel_state.get_data_parallel_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    latents = batch.latents.float()
    size = latents.shape[0] // num_microbatches
    microbatches = []
    for index in range(num_microbatches):
        gen = torch.Generator().manual_seed(((cfg.train.seed * 1_000_003 + step) * 65_537 + dp_rank) * 257 + index)
        x1 = latents[index * size:(index + 1) * size]
        x0 = torch.randn(x1.shape, generator=gen)
        t = sample_timesteps(x1.shape[0], gen, kind=cfg.flow.timestep_sampling, mean=cfg.flow.logit_normal_mean,
                             std=cfg.flow.logit_normal_std)
        keep = sample_text_keep_mask(x1.shape[0], cfg.flow.text_drop_prob, gen)
        text, masks = {}, {}
        for name, (emb, mask) in batch.text.items():
            text[name] = emb[index * size:(index + 1) * size].float().to(device)
            masks[name] = (mask[index * size:(index + 1) * size] & keep[:, None]).to(device)
        microbatches.append(dict(
            noisy=interpolate(x0, x1, t, cfg.flow.sigma_min).to(device),
            target=velocity_target(x0, x1, cfg.flow.sigma_min).to(device),
            timesteps=t.to(device),
            text=text,
            masks=masks,
        ))
    return microbatches


def _sequence_split_groups() -> list:
    groups = []
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        groups.append(("sp", parallel_state.get_tensor_model_parallel_group()))
    if parallel_state.get_context_parallel_world_size() > 1:
        groups.append(("cp", parallel_state.get_context_parallel_group()))
    return groups


def flow_matching_loss_func(dit, microbatch: dict, sequence_parallel: bool, output: torch.Tensor):
    """MSE between predicted and target velocity over this rank's tokens, normalised by the whole sample's
    element count so that the partial losses of SP/CP ranks add up to the mean (Megatron multiplies a
    2-tuple loss by the CP size; DDP averages over DP x CP)."""
    target = dit.local_target(microbatch["target"]).to(output.dtype)
    loss = (output.float() - target.float()).pow(2).sum() / microbatch["target"].numel()
    reported = loss.detach().clone()
    for kind, group in _sequence_split_groups():
        if kind == "cp" or sequence_parallel:
            dist.all_reduce(reported, group=group)
    return loss, {"loss": reported}


def _forward_step(sequence_parallel: bool, data_iterator, ddp_chunk):
    microbatch = next(data_iterator)
    dit = ddp_chunk.module
    output = ddp_chunk(microbatch["noisy"], microbatch["timesteps"], microbatch["text"], microbatch["masks"])
    return output, partial(flow_matching_loss_func, dit, microbatch, sequence_parallel)


def check_text_encoders(cfg: MovieGenConfig, batch: Batch) -> None:
    expected = set(cfg.model.text_encoders)
    if set(batch.text) != expected:
        raise ConfigError(
            f"data.shards: samples carry text embeddings {sorted(batch.text)}, model.text_encoders expects "
            f"{sorted(expected)}"
        )
    for name, (emb, _) in batch.text.items():
        spec = cfg.model.text_encoders[name]
        if emb.shape[1:] != (spec.max_length, spec.width):
            raise ConfigError(
                f"model.text_encoders.{name}: shards hold embeddings of shape {tuple(emb.shape[1:])}, the model "
                f"expects ({spec.max_length}, {spec.width})"
            )


def build_loader(cfg: MovieGenConfig, num_microbatches: int) -> LatentLoader:
    return LatentLoader(cfg.data.shards, batch_size=cfg.train.micro_batch_size * num_microbatches,
                        image_fraction=cfg.data.image_fraction, seed=cfg.data.seed,
                        dp_rank=parallel_state.get_data_parallel_rank(),
                        dp_size=parallel_state.get_data_parallel_world_size())


def pretrain(cfg: MovieGenConfig) -> TrainResult:
    """Train `cfg` from scratch, from `train.load_from` (a new stage), or resume from `train.checkpoint_dir`."""
    dp_size = init_model_parallel(cfg.parallel)
    num_microbatches = cfg.train.num_microbatches(dp_size)
    loader = build_loader(cfg, num_microbatches)  # fails early on missing shards
    set_seed(cfg.train.seed)
    bf16 = resolve_bf16(cfg)
    chunks = build_dit_chunks(cfg, params_dtype=torch.bfloat16 if bf16 else torch.float32)
    model = wrap_ddp(chunks, use_distributed_optimizer=cfg.parallel.use_distributed_optimizer and torch.cuda.is_available())
    optimizer = build_optimizer(model, cfg.train, cfg.parallel.use_distributed_optimizer, bf16)
    scheduler = build_scheduler(optimizer, cfg.train)
    transformer_config = chunks[0].config
    transformer_config.finalize_model_grads_func = finalize_model_grads
    transformer_config.grad_scale_func = optimizer.scale_loss
    transformer_config.no_sync_func = model[0].no_sync if len(model) == 1 else [m.no_sync for m in model]

    step = 0
    resume_from = latest_checkpoint(cfg.train.checkpoint_dir) if cfg.train.resume else None
    if resume_from is not None:
        step = load_checkpoint(resume_from, model, optimizer, scheduler, loader)
        log.info("resumed from %s at step %d", resume_from, step)
    elif cfg.train.load_from:
        load_weights_for_new_stage(cfg.train.load_from, chunks)
        log.info("initialised weights from %s (new stage: fresh optimizer and schedule)", cfg.train.load_from)

    metrics = MetricsLogger(cfg, dp_size, num_microbatches)
    preemption = PreemptionFlag()
    forward_backward = get_forward_backward_func()
    data = iter(loader)
    last_loss, checkpoint, preempted = float("nan"), None, False
    try:
        for step in range(step, cfg.train.steps):
            start = time.perf_counter()
            batch = next(data)
            if metrics.steps_logged == 0:
                check_text_encoders(cfg, batch)
            microbatches = make_microbatches(batch, cfg, step, num_microbatches)
            for chunk in model:
                chunk.zero_grad_buffer()
            optimizer.zero_grad()
            iterators = [iter(microbatches) for _ in model] if len(model) > 1 else iter(microbatches)
            tokens = chunks[0].tokens_per_sample(batch.latents.shape)
            losses = forward_backward(
                forward_step_func=partial(_forward_step, cfg.parallel.sequence_parallel),
                data_iterator=iterators, model=model, num_microbatches=num_microbatches,
                seq_length=tokens, micro_batch_size=cfg.train.micro_batch_size, forward_only=False,
            )
            updated, grad_norm, _ = optimizer.step()
            if updated:
                scheduler.step(increment=1)
            last_loss = metrics.reduce_loss(losses)
            if not math.isfinite(last_loss):
                raise NonFiniteLossError(
                    f"loss is {last_loss} at step {step + 1} (bucket {batch.bucket}); stopping without saving. "
                    f"Last good checkpoint: {latest_checkpoint(cfg.train.checkpoint_dir)}"
                )
            metrics.record(StepMetrics(step + 1, last_loss, grad_norm, optimizer.param_groups[0]["lr"],
                                       time.perf_counter() - start, batch, tokens))
            done = step + 1
            save_now = done % cfg.train.save_every == 0 or done == cfg.train.steps
            preempted = preemption.agreed()
            if save_now or preempted:
                checkpoint = str(save_checkpoint(cfg.train.checkpoint_dir, done, model, optimizer, scheduler, loader, cfg))
                metrics.note(f"saved checkpoint {checkpoint}")
            if preempted:
                metrics.note(f"stopping at step {done} after a preemption signal")
                return TrainResult(done, last_loss, True, checkpoint, metrics.history)
        return TrainResult(cfg.train.steps, last_loss, False, checkpoint, metrics.history)
    finally:
        preemption.restore()
        metrics.close()
