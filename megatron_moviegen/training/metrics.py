"""Training metrics: loss, grad norm, LR, samples/s, tokens/s, TFLOP/s per GPU and MFU, memory.

MFU = achieved model FLOPs per GPU per second / the peak (`train.peak_tflops_per_gpu`, else the detected GPU's
datasheet peak: training/monitoring.py; none on CPU or an unknown GPU), where model FLOPs are the forward+backward
FLOPs of planning/flops.py, attention included (at 73k tokens it is ~60% of the work). Activation recomputation is
not counted as useful work. Logs go to the console (one rank), a JSONL file beside the checkpoints, TensorBoard
(on unless `train.tensorboard=false`) and W&B when `train.wandb_project` is set.

Sample videos (train.samples, training/samples.py) go to TensorBoard as videos when moviepy < 2 is installed
(`SummaryWriter.add_video` encodes GIFs with `moviepy.editor`; without it, it prints a notice and logs nothing), else
as one image per video: a strip of frames spread over it. W&B gets the written .mp4 itself (`wandb.Video(path)`;
from an array it too would need moviepy).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from tqdm import tqdm

from megatron_moviegen.data.loader import Batch
from megatron_moviegen.planning.flops import dit_training_flops
from megatron_moviegen.config.schema import to_dict
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.training.monitoring import Monitor, device_peak_tflops
from megatron_moviegen.utils.video_io import read_frames

log = logging.getLogger("megatron_moviegen.train")


@dataclass
class StepMetrics:
    step: int
    loss: float
    grad_norm: float | None
    lr: float
    seconds: float
    batch: Batch
    tokens_per_sample: int
    data_seconds: float = 0.0  # of `seconds`, waiting for the batch (0 when the feeder read it ahead)


class MetricsLogger:
    def __init__(self, cfg, runtime: Runtime, dp_size: int, num_microbatches: int):
        self.cfg = cfg
        self.runtime = runtime
        self.world = dist.get_world_size()
        self.is_logger = dist.get_rank() == dist.get_world_size() - 1  # last rank: holds the last PP stage
        self.steps_logged = 0
        self.window: list[dict] = []
        self.history: list[dict] = []
        self.jsonl = None
        self.monitor = None
        self.bar = None
        self.peak_tflops = cfg.train.peak_tflops_per_gpu or device_peak_tflops(runtime.device_name)
        if not self.is_logger:
            return
        out = Path(cfg.train.checkpoint_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out / "metrics.jsonl", "a")
        self.monitor = Monitor(out, cfg.name, cfg.train.tensorboard, cfg.train.tensorboard_dir,
                               cfg.train.wandb_project, to_dict(cfg))
        if cfg.train.progress_bar:
            self.bar = tqdm(total=cfg.train.steps, desc=f"train {cfg.name}", unit="step", dynamic_ncols=True)
        if self.peak_tflops is None:
            self.note(f"MFU not reported: no known peak for {runtime.device_name!r} (set train.peak_tflops_per_gpu)")

    def reduce_loss(self, losses: list[dict]) -> float:
        """Mean loss of the step on every rank (only last-stage ranks hold losses)."""
        local = torch.zeros(2, dtype=torch.float64, device=self.runtime.device)
        if losses:
            local[0] = sum(float(d["loss"]) for d in losses) / len(losses)
            local[1] = 1.0
        dist.all_reduce(local)
        return (local[0] / local[1].clamp_min(1)).item()

    def record(self, m: StepMetrics) -> None:
        # Work of this data-parallel replica; summed over replicas through the DP group.
        samples = m.batch.latents.shape[0]
        flops = dit_training_flops(self.cfg.model, m.tokens_per_sample).total * samples
        totals = torch.tensor([samples, samples * m.tokens_per_sample, flops], dtype=torch.float64,
                              device=self.runtime.device)
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        self.steps_logged += 1
        row = {
            "step": m.step,
            "loss": m.loss,
            "grad_norm": float(m.grad_norm) if m.grad_norm is not None else None,
            "lr": m.lr,
            "step_s": m.seconds,
            "data_s": m.data_seconds,
            "samples_per_s": totals[0].item() / m.seconds,
            "tokens_per_s": totals[1].item() / m.seconds,
            "tflops_per_gpu": totals[2].item() / self.world / m.seconds / 1e12,
            "bucket": m.batch.bucket,
        }
        row["mfu"] = None if self.peak_tflops is None else row["tflops_per_gpu"] / self.peak_tflops
        row.update(self.runtime.memory_stats())
        self.history.append(row)
        if not self.is_logger:
            return
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{m.loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        self.monitor.scalars("train", row, m.step)
        if m.step % self.cfg.train.log_every == 0 or m.step == self.cfg.train.steps:
            mem = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.startswith("mem_"))
            self.note(
                f"step {m.step}/{self.cfg.train.steps} | loss {m.loss:.5f} | grad norm {row['grad_norm'] or 0:.3f} | "
                f"lr {m.lr:.3e} | {row['samples_per_s']:.2f} samples/s | {row['tokens_per_s']:.0f} tokens/s | "
                f"{row['tflops_per_gpu']:.4g} TFLOP/s/GPU | MFU {_mfu(row['mfu'])} | {mem}"
            )

    def _add_to_step(self, step: int, values: dict) -> bool:
        """Add `values` to step `step`'s history row (every rank) and write them as their own metrics.jsonl row (the
        logging rank); True on the logging rank, which goes on to TensorBoard / W&B / the console."""
        if self.history and self.history[-1]["step"] == step:
            self.history[-1].update(values)
        if not self.is_logger:
            return False
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        return True

    def record_validation(self, step: int, values: dict) -> None:
        """Validation values (`val_loss`, ...) after `step`: added to that step's history row, written as their own
        metrics.jsonl row, under val/ in TensorBoard and W&B, and on the console."""
        if not self._add_to_step(step, values):
            return
        self.monitor.scalars("val", values, step)
        self.note(f"validation at step {step} | " + " | ".join(
            f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))

    def record_samples(self, step: int, paths: list[Path], prompts: list[str], fps: int, seconds: float) -> None:
        """Sample videos written after `step` (rank 0 wrote them, every rank calls this after): their paths and the
        pass's seconds in that step's history row and in metrics.jsonl, the videos in TensorBoard and W&B."""
        if not self._add_to_step(step, {"sample_s": seconds, "sample_files": [str(path) for path in paths]}):
            return
        for path, prompt in zip(paths, prompts):
            if self.monitor.tensorboard is not None:
                add_tensorboard_media(self.monitor.tensorboard, f"samples/{path.stem}", read_frames(path), step, fps)
            if self.monitor.wandb is not None:
                import wandb

                media = wandb.Image(str(path), caption=prompt) if path.suffix == ".png" else \
                    wandb.Video(str(path), caption=prompt, format="mp4")
                self.monitor.wandb.log({f"samples/{path.stem}": media}, step=step)
        self.note(f"samples at step {step}: {len(paths)} in {paths[0].parent} ({seconds:.1f} s)")

    def record_save(self, step: int, checkpoint: str, seconds: float) -> None:
        """A checkpoint saved after `step` and the seconds the save held training up (with train.async_save, until the
        background writer took over): `save_s` in that step's history row and metrics.jsonl, and on the console. Size
        the SLURM script's SIGUSR1 lead from it (slurm/pretrain_t2v_30b.sh)."""
        if self._add_to_step(step, {"save_s": seconds}):
            self.note(f"saved checkpoint {checkpoint} in {seconds:.1f} s")

    def note(self, message: str) -> None:
        if not self.is_logger:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.monitor is not None:
            self.monitor.close()


def _mfu(mfu: float | None) -> str:
    return "n/a" if mfu is None else f"{mfu:.3g}"


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became NaN/inf; nothing is saved from this state (DiT and TAE training)."""


def tensorboard_encodes_video() -> bool:
    """Whether `SummaryWriter.add_video` can encode (it needs `moviepy.editor`, gone in moviepy 2)."""
    try:
        import moviepy.editor  # noqa: F401
    except ImportError:
        return False
    return True


def frame_strip(frames: np.ndarray, count: int = 8) -> np.ndarray:
    """(t, h, w, 3) uint8 -> (h, min(t, count) * w, 3): frames spread evenly from the first to the last, side by side."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), count)).round().astype(int))
    return np.concatenate(list(frames[picks]), axis=1)


def add_tensorboard_media(writer, tag: str, frames: np.ndarray, step: int, fps: int) -> None:
    """frames (t, h, w, 3) uint8 -> a video under `tag` if TensorBoard can encode one (and t > 1), else a frame strip."""
    if len(frames) > 1 and tensorboard_encodes_video():
        writer.add_video(tag, frames.transpose(0, 3, 1, 2)[None], step, fps=fps)  # (1, t, 3, h, w)
    else:
        writer.add_image(tag, frame_strip(frames), step, dataformats="HWC")
