"""Videos to watch while the DiT trains (`train.samples`): every `every` steps, and after the last, the fixed prompts
are sampled with the current weights into <checkpoint_dir>/samples/iter_<step>/<index>-<prompt words>.mp4 (+ a .json
sidecar; written atomically by rank 0), and logged to TensorBoard / W&B when those are configured (training/metrics.py).

    train:
      samples: {prompts: ["a corgi surfing"], every: 1000, tae: runs/tae/checkpoint, text_encoders: paper,
                text_overrides: [ul2.path=/models/ul2, ...], num_frames: 32, height: 256, width: 256, steps: 50}

Every rank takes part, as in generation (inference/pipeline.py): the TP x CP ranks of a replica run the DiT together,
and each data-parallel replica samples the same videos (a pass costs the same at any DP size). Pipeline parallelism
is refused at config load: the sampler needs the whole model on every rank. Prompt i starts from the noise of seed
`seed + i` every time, so successive folders show the same noise becoming the prompt; the fps is the model's trained
rate unless set, as in generate. The prompts are encoded once when training starts and the text encoders are freed;
the TAE stays loaded (on the device on rank 0, which decodes; on the CPU elsewhere, for the shape checks).

Sampling leaves training as it was: the model runs in eval mode under no_grad, the noise comes from the pipeline's own
generator, and the RNG streams training draws from (python, numpy, torch CPU and CUDA, Megatron's model-parallel CUDA
tracker) are restored after the pass, so a run with samples has the losses of the same run without them. The live
weights are sampled; with `ema: true` (and train.ema_decay) the EMA weights are swapped in for the pass.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist

from megatron_moviegen.checkpoints.protocol import DIT_STEPS
from megatron_moviegen.conditioning import Conditioning, Tokens
from megatron_moviegen.config import ConfigError
from megatron_moviegen.inference.components import load_tae, load_text_encoders
from megatron_moviegen.inference.pipeline import MovieGenPipeline, SamplingConfig, resolve_fps
from megatron_moviegen.models.dit import MovieGenDiT
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.training.ema import ModelEMA
from megatron_moviegen.training.metrics import MetricsLogger


class PromptEmbeddings:
    """The text encoders' output for a fixed list of prompts, computed once; `encode` answers from it (the
    TextEncoder protocol the pipeline calls), so the encoders need not stay in memory."""

    def __init__(self, encoders, prompts: list[str]):
        self.conditioning = {prompt: Conditioning(tokens=encoders.encode([prompt])).to("cpu")
                             for prompt in dict.fromkeys(prompts)}

    def encode(self, prompts: list[str]) -> dict[str, Tokens]:
        unknown = [prompt for prompt in prompts if prompt not in self.conditioning]
        if unknown:
            raise KeyError(f"prompts {unknown} were not encoded; encoded: {list(self.conditioning)}")
        return Conditioning.cat([self.conditioning[prompt] for prompt in prompts]).tokens


@contextmanager
def training_rng_kept(runtime: Runtime) -> Iterator[None]:
    """Every RNG stream training draws from as it was before the block (python, numpy, torch CPU and CUDA,
    Megatron's model-parallel CUDA tracker on GPU)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    tracker = None
    if runtime.on_gpu:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        tracker = get_cuda_rng_tracker()
        tracker_states = tracker.get_states()
    with torch.random.fork_rng(devices=[runtime.device] if runtime.on_gpu else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            if tracker is not None:
                tracker.set_states(tracker_states)


@contextmanager
def eval_mode(model: list[torch.nn.Module]) -> Iterator[None]:
    """The model chunks in eval mode for the block, each back in its own mode after it."""
    modes = [chunk.training for chunk in model]
    for chunk in model:
        chunk.eval()
    try:
        yield
    finally:
        for chunk, mode in zip(model, modes):
            chunk.train(mode)


class TrainingSamples:
    """Loads the TAE and encodes the prompts (`for_config`, before the DiT is built, so the text encoders are gone
    before its memory is taken), is given the DiT (`attach`), then samples after the steps due (`after_step`)."""

    def __init__(self, cfg, runtime: Runtime):
        samples = cfg.train.samples
        self.cfg = samples
        self.last_step = cfg.train.steps
        self.runtime = runtime
        self.folder = Path(cfg.train.checkpoint_dir) / "samples"
        self.settings = SamplingConfig(
            num_frames=samples.num_frames, height=samples.height, width=samples.width,
            fps=resolve_fps(samples.fps, cfg.model.trained_fps, "train.samples.fps"), steps=samples.steps,
            guidance_scale=samples.guidance_scale, seed=samples.seed,
        )
        rank = dist.get_rank()
        self.tae = load_tae(samples.tae, runtime.device if rank == 0 else "cpu")
        self.text = None
        if rank == 0:
            encoders = load_text_encoders(samples.text_encoders, samples.text_overrides, cfg.model)
            self.text = PromptEmbeddings(encoders, [MovieGenPipeline.text_prompt(p, self.settings)
                                                    for p in samples.prompts])
            del encoders
            if runtime.on_gpu:
                torch.cuda.empty_cache()
        self.pipeline = None

    @classmethod
    def for_config(cls, cfg, runtime: Runtime) -> "TrainingSamples | None":
        return cls(cfg, runtime) if cfg.train.samples is not None else None

    def attach(self, dit: MovieGenDiT) -> None:
        """Sample with `dit`, this rank's model chunk; its position tables and the TAE must hold the sample size."""
        self.pipeline = MovieGenPipeline(dit, self.tae, self.text, {"tae": self.cfg.tae,
                                                                    "text_encoders": self.cfg.text_encoders},
                                         data_parallel_replicas=True)
        try:
            self.pipeline.latent_shape(1, self.settings.num_frames, self.settings.height, self.settings.width)
        except ValueError as exc:
            raise ConfigError(f"train.samples: {exc}") from None

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0 or (self.cfg.at_end and step == self.last_step)

    def after_step(self, step: int, model: list, ema: ModelEMA | None, metrics: MetricsLogger) -> None:
        """After `step` steps, if due: the videos of the weights now (every rank calls it). `model`: the chunks
        as trained (put in eval mode for the pass); `ema`: swapped in with `train.samples.ema`."""
        if not self.due(step):
            return
        started = time.perf_counter()
        weights = ema.applied() if self.cfg.ema else nullcontext()
        with training_rng_kept(self.runtime), eval_mode(model), weights:
            paths = self.pipeline.generate(self.cfg.prompts, self.settings, self.folder / DIT_STEPS.name(step),
                                           progress=False)
        metrics.record_samples(step, paths, self.cfg.prompts, self.settings.fps, time.perf_counter() - started)
