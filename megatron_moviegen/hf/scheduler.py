"""Movie Gen's sampler as a diffusers scheduler: Euler steps of the flow velocity on the linear-quadratic schedule
(diffusion/sampling.py), in its time convention t = 0 (noise) -> 1 (data).

    scheduler.set_timesteps(50)
    for t in scheduler.timesteps[:-1]:
        latents = scheduler.step(velocity(latents, t), t, latents).prev_sample
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from megatron_moviegen.diffusion.sampling import euler_step, linear_quadratic_schedule


@dataclass
class MovieGenSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor


class MovieGenFlowEulerScheduler(SchedulerMixin, ConfigMixin):
    """`timesteps` holds num_steps + 1 times from 0 to 1; each `step` moves the sample from one to the next."""

    order = 1

    @register_to_config
    def __init__(self, emulated_linear_steps: int = 1000, linear_steps: Optional[int] = None):
        self.timesteps = torch.zeros(0, dtype=torch.float64)
        self._index = 0

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.timesteps = linear_quadratic_schedule(num_inference_steps, self.config.linear_steps,
                                                   self.config.emulated_linear_steps)
        self._index = 0

    def step(self, model_output: torch.Tensor, timestep: float, sample: torch.Tensor, return_dict: bool = True):
        """model_output: the velocity at (sample, timestep), timestep = timesteps[i] of the i-th call."""
        times = self.timesteps.tolist()
        if self._index >= len(times) - 1 or abs(float(timestep) - times[self._index]) > 1e-12:
            raise ValueError(f"step: got timestep {float(timestep)}, expected timesteps[{self._index}] of "
                             f"{len(times)} (call set_timesteps, then step once per time but the last)")
        prev = euler_step(sample, model_output, times[self._index], times[self._index + 1])
        self._index += 1
        return MovieGenSchedulerOutput(prev_sample=prev) if return_dict else (prev,)
