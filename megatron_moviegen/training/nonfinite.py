"""Non-finite losses: name the samples, skip or stop, and never save weights that give one.

A step's loss is computed with the weights before its update, so a finite loss does not vouch for the weights
the update leaves (at lr 1e30 step 1 has loss 1.7 and leaves weights near 1e30; step 2's loss is NaN). Before
each save the weights are therefore run forward only on the last batch trained on; a non-finite loss there, or
a non-finite grad norm at any step, stops the run without saving, so `latest` stays the last checkpoint whose
weights gave a finite loss. A step whose own loss is not finite names the shard, key and source of the samples
of its non-finite microbatches on every data-parallel rank; with `train.skip_nonfinite_batches` its batch is
skipped (no optimizer step, scheduler or EMA update; the loader moves past it) up to
`train.max_skipped_batches` times in one run. Every decision rests on all-reduced values, so all ranks agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

import torch
import torch.distributed as dist

from megatron_moviegen.checkpoints.distributed import finalize_async_saves
from megatron_moviegen.checkpoints.protocol import latest_checkpoint
from megatron_moviegen.data.loader import Batch, LatentLoader
from megatron_moviegen.parallel.layout import SequenceLayout
from megatron_moviegen.training.metrics import NonFiniteLossError
from megatron_moviegen.training.microbatch import run_microbatches


@dataclass
class TrainedBatch:
    """The last batch the weights were updated on, kept to check them before a save."""

    step: int
    batch: Batch
    microbatches: list[dict]
    tokens_per_sample: int


class NonFiniteGuard:
    """`reduce_loss`: the step's mean loss from per-microbatch losses, all-reduced (the same on every rank);
    `note`: prints once per job."""

    def __init__(self, cfg, loader: LatentLoader, model: list, layout: SequenceLayout,
                 reduce_loss: Callable[[list[dict]], float], note: Callable[[str], None]):
        self.train = cfg.train
        self.loader, self.model, self.layout = loader, model, layout
        self.reduce_loss, self.note = reduce_loss, note
        self.skipped: list[dict] = []  # {"step", "loss", "bucket", "samples"} of each skipped batch
        self.trained: TrainedBatch | None = None

    def bad_loss(self, step: int, loss: float, batch: Batch, losses: list[dict]) -> None:
        """Step `step`'s loss is not finite: skip its batch (logged), or raise NonFiniteLossError. Every rank."""
        samples = self.bad_samples(batch, losses)
        detail = f"bucket {batch.bucket}; samples {', '.join(samples)}"
        if self.train.skip_nonfinite_batches and len(self.skipped) < self.train.max_skipped_batches:
            self.skipped.append({"step": step, "loss": loss, "bucket": batch.bucket, "samples": samples})
            self.note(f"skipped the batch of step {step}: loss {loss} ({detail}); {len(self.skipped)} of "
                      f"train.max_skipped_batches={self.train.max_skipped_batches}")
            return
        advice = (f"{len(self.skipped)} batches skipped already (train.max_skipped_batches)"
                  if self.train.skip_nonfinite_batches else "train.skip_nonfinite_batches=true skips such batches")
        self.stop(f"loss is {loss} at step {step} ({detail}); {advice}")

    def after_update(self, step: int, grad_norm: float | None, batch: Batch, microbatches: list[dict],
                     tokens_per_sample: int) -> None:
        """The weights were updated on `batch` at `step`: stop if its grad norm was not finite."""
        if grad_norm is not None and not math.isfinite(grad_norm):
            self.stop(f"grad norm is {grad_norm} at step {step} (bucket {batch.bucket}; samples "
                      f"{', '.join(self.loader.sample_names(batch.keys))}), so the weights are no longer finite")
        self.trained = TrainedBatch(step, batch, microbatches, tokens_per_sample)

    @torch.no_grad()
    def check_before_save(self, step: int) -> None:
        """The weights about to be saved at `step` give a finite loss on the last batch trained on, or the run
        stops. Nothing trained in this run: they are the loaded or initial ones, already good."""
        if self.trained is None:
            return
        trained = self.trained
        losses = run_microbatches(self.model, self.layout, trained.microbatches, trained.tokens_per_sample,
                                  self.train.micro_batch_size, forward_only=True)
        loss = self.reduce_loss(losses)
        if not math.isfinite(loss):
            samples = self.bad_samples(trained.batch, losses)
            self.stop(f"the weights after step {step} give loss {loss} on the batch of step {trained.step} (bucket "
                      f"{trained.batch.bucket}; samples {', '.join(samples)}), whose own loss was finite")

    def bad_samples(self, batch: Batch, losses: list[dict]) -> list[str]:
        """Every rank's samples in microbatches with a non-finite loss, named by the loader; the same list on
        every rank (only last-stage ranks hold losses; their TP/CP peers name the same samples once)."""
        size = self.train.micro_batch_size
        local = [name for index, reported in enumerate(losses) if not math.isfinite(float(reported["loss"]))
                 for name in self.loader.sample_names(batch.keys[index * size:(index + 1) * size])]
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, local)
        return list(dict.fromkeys(name for names in everyone for name in names))

    def stop(self, what: str) -> NoReturn:
        finalize_async_saves()  # the saves before this one were checked: publish them
        latest = latest_checkpoint(Path(self.train.checkpoint_dir))
        raise NonFiniteLossError(f"{what}; stopping without saving. Last good checkpoint: "
                                 f"{latest or 'none, nothing was saved'}")
