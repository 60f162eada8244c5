"""The validation loss on held-out shards, logged like the train loss and fed to the LR plateau rule.

The validation set is K fixed batches: the first `train.validation_batches` batches of epoch 0 of
`train.validation_shards`, planned as a single data-parallel rank would (so the set is the same under any
layout), each `train.micro_batch_size` samples of one bucket, with noise and flow times drawn from a generator
seeded by (train.seed, batch index) and every sample's text kept. Data-parallel rank r evaluates batches
r, r + DP, ... forward only through Megatron's forward_backward_func (any TP/SP/CP/PP layout); the loss is the
mean over the K batches of the whole-sequence flow-matching loss, so evaluating the same weights twice, or under
another layout, gives the same number (up to float rounding of the layout).
"""

from __future__ import annotations

import random

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_moviegen.config import ConfigError
from megatron_moviegen.data.loader import LatentLoader
from megatron_moviegen.parallel.layout import SequenceLayout
from megatron_moviegen.training.lr_plateau import PlateauLR
from megatron_moviegen.training.metrics import MetricsLogger
from megatron_moviegen.training.microbatch import flow_matching_microbatch, run_microbatches


def validation_seed(seed: int, index: int) -> int:
    """The generator seed of validation batch `index`: apart from the training streams, fixed for a run."""
    return random.Random(f"validation/{seed}/{index}").getrandbits(63)


class ValidationSet:
    """This data-parallel rank's share of the K fixed validation microbatches, on `device`."""

    def __init__(self, cfg, device: torch.device):
        train = cfg.train
        loader = LatentLoader(train.validation_shards, batch_size=train.micro_batch_size,
                              image_fraction=cfg.data.image_fraction, seed=cfg.data.seed)
        plan = loader.epoch_plan(0)
        if len(plan) < train.validation_batches:
            raise ConfigError(f"train.validation_batches: {train.validation_batches}, but {train.validation_shards} "
                              f"holds {len(plan)} batches of {train.micro_batch_size} (one bucket each, "
                              f"image_fraction {cfg.data.image_fraction})")
        self.device = device
        self.by_shape: dict[tuple, list[dict]] = {}  # latent shape -> microbatches (one forward_backward call)
        for index in range(parallel_state.get_data_parallel_rank(), train.validation_batches,
                           parallel_state.get_data_parallel_world_size()):
            batch = loader.read_batch(plan[index])
            gen = torch.Generator().manual_seed(validation_seed(train.seed, index))
            microbatch = flow_matching_microbatch(batch.latents.float(), batch.conditioning, gen, cfg, device, 0.0)
            self.by_shape.setdefault(tuple(batch.latents.shape), []).append(microbatch)

    @torch.no_grad()
    def loss(self, model: list, layout: SequenceLayout) -> float:
        """Mean flow-matching loss of the current weights over the K batches; the same on every rank."""
        dit = getattr(model[0], "module", model[0])
        local = torch.zeros(2, dtype=torch.float64, device=self.device)  # (sum of batch losses, batches)
        for shape, microbatches in self.by_shape.items():
            losses = run_microbatches(model, layout, padded_for_interleaving(microbatches, len(model)),
                                      dit.tokens_per_sample(shape), shape[0], forward_only=True)
            for reported in losses[:len(microbatches)]:  # only last-stage ranks hold losses, each TP/CP rank the same
                local[0] += float(reported["loss"])
                local[1] += 1
        dist.all_reduce(local)
        return (local[0] / local[1]).item()


def padded_for_interleaving(microbatches: list[dict], num_chunks: int) -> list[dict]:
    """With virtual pipeline stages Megatron runs a multiple of the pipeline size of microbatches: repeat the first
    ones to get there (their losses are not counted)."""
    if num_chunks == 1:
        return microbatches
    stages = parallel_state.get_pipeline_model_parallel_world_size()
    return [microbatches[i % len(microbatches)] for i in range(-(-len(microbatches) // stages) * stages)]


class Validation:
    """Every `train.validate_every` steps: the validation loss, logged, and given to the LR plateau rule."""

    def __init__(self, cfg, layout: SequenceLayout, device: torch.device):
        self.every = cfg.train.validate_every
        self.layout = layout
        self.set = ValidationSet(cfg, device)

    @classmethod
    def for_config(cls, cfg, layout: SequenceLayout, device: torch.device) -> "Validation | None":
        return cls(cfg, layout, device) if cfg.train.validation_shards else None

    def after_step(self, step: int, model: list, scheduler, metrics: MetricsLogger) -> None:
        if step % self.every:
            return
        values = {"val_loss": self.set.loss(model, self.layout)}
        if isinstance(scheduler, PlateauLR):
            lowered = scheduler.observe(values["val_loss"])
            values.update(lr_scale=scheduler.scale, lr_lowered=lowered)
        metrics.record_validation(step, values)
