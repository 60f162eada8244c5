"""Movie Gen's sampler as a diffusers scheduler: Euler steps on the linear-quadratic schedule (diffusion/sampling.py),
with diffusers' flow-matching interface, so the pipeline's loop drives it and the stock
`FlowMatchEulerDiscreteScheduler` alike:

    scheduler.set_timesteps(50)
    for i, t in enumerate(scheduler.timesteps):           # 1000 * sigma, descending; sigma = 1 - flow time
        noise_pred = -velocity(latents, scheduler.flow_times[i])   # diffusers' model output: noise - data
        latents = scheduler.step(noise_pred, t, latents).prev_sample

Our flow time runs t = 0 (noise) -> 1 (data); diffusers' sigma = 1 - t. The times are kept exactly (float64) and
stepped with `euler_step` as `generate` does, so the pipeline gives `generate`'s latents bit for bit; the stock
scheduler, given the same sigmas in float32, agrees to ~1e-6 (tests/hf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from megatron_moviegen.diffusion.sampling import euler_step, linear_quadratic_schedule

NUM_TRAIN_TIMESTEPS = 1000  # diffusers' timestep = 1000 * sigma


@dataclass
class MovieGenSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor


class MovieGenFlowEulerScheduler(SchedulerMixin, ConfigMixin):
    """After `set_timesteps(n)`: `flow_times` holds n + 1 times from 0 to 1 (float64), `sigmas` 1 - those and
    `timesteps` the first n sigmas times 1000; each `step` moves the sample from one time to the next."""

    order = 1

    @register_to_config
    def __init__(self, emulated_linear_steps: int = 1000, linear_steps: Optional[int] = None):
        self.flow_times = torch.zeros(0, dtype=torch.float64)
        self._index = 0

    @property
    def sigmas(self) -> torch.Tensor:
        return 1.0 - self.flow_times

    @property
    def timesteps(self) -> torch.Tensor:
        return self.sigmas[:-1] * NUM_TRAIN_TIMESTEPS

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.flow_times = linear_quadratic_schedule(num_inference_steps, self.config.linear_steps,
                                                    self.config.emulated_linear_steps)
        self._index = 0

    def step(self, model_output: torch.Tensor, timestep: float, sample: torch.Tensor, return_dict: bool = True):
        """model_output: diffusers' flow prediction (noise - data, minus our velocity) at (sample, timestep),
        timestep = timesteps[i] of the i-th call."""
        expected = self.timesteps.tolist()
        if self._index >= len(expected) or abs(float(timestep) - expected[self._index]) > 1e-9:
            raise ValueError(f"step: got timestep {float(timestep)}, expected timesteps[{self._index}] of "
                             f"{len(expected)} (call set_timesteps, then step once per timestep)")
        times = self.flow_times.tolist()
        prev = euler_step(sample, -model_output, times[self._index], times[self._index + 1])
        self._index += 1
        return MovieGenSchedulerOutput(prev_sample=prev) if return_dict else (prev,)


def flow_match_sigmas(num_inference_steps: int, emulated_linear_steps: int = 1000,
                      linear_steps: Optional[int] = None) -> np.ndarray:
    """The linear-quadratic schedule as the n sigmas (1 - flow time, descending from 1, float64) that diffusers'
    flow-matching schedulers take in `set_timesteps(sigmas=...)` (they append the final 0)."""
    times = linear_quadratic_schedule(num_inference_steps, linear_steps, emulated_linear_steps)
    return (1.0 - times[:-1]).numpy()
