"""Velocity fields of the OT path whose ODE solutions are known exactly, for checking samplers.

With c = 1 - sigma_min and data X_1 ~ N(mean, std^2 I) independent of noise X_0 ~ N(0, I), X_t is Gaussian
with mean t * mean and per-dimension std s_t = sqrt(t^2 std^2 + (1 - c t)^2). The marginal velocity field
E[V_t | X_t = x] is linear in x (Gaussian conditioning, V_t = X_1 - c X_0):

    v(x, t) = mean + (Cov(V_t, X_t) / Var(X_t)) (x - t mean) = mean + (s_t' / s_t) (x - t mean),
    s_t s_t' = t std^2 - c (1 - c t),

and the ODE from x(0) = x0 is solved by x(t) = t mean + s_t x0 (s_0 = 1). std = 0 is the field that
transports everything to the single point `mean` along straight lines: v = (mean - c x) / (1 - c t).
The trajectories bend around t* = 1 / (1 + std^2) (where s_t is smallest): near the data end for
std << 1, near the noise end for std >> 1.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from megatron_moviegen.diffusion.flow_matching import SIGMA_MIN


def _marginal_std(t: float, std: float, sigma_min: float) -> float:
    return math.sqrt((t * std) ** 2 + (1.0 - (1.0 - sigma_min) * t) ** 2)


def gaussian_velocity_field(mean: torch.Tensor, std: float,
                            sigma_min: float = SIGMA_MIN) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """v(x, t) for data N(mean, std^2 I); mean broadcasts against x (e.g. (c, t, h, w) for (b, c, t, h, w))."""
    c = 1.0 - sigma_min

    def velocity_fn(x: torch.Tensor, t: float) -> torch.Tensor:
        log_std_rate = (t * std**2 - c * (1.0 - c * t)) / _marginal_std(t, std, sigma_min) ** 2  # s_t' / s_t
        return mean + log_std_rate * (x - t * mean)

    return velocity_fn


def gaussian_flow_solution(noise: torch.Tensor, mean: torch.Tensor, std: float, t: float = 1.0,
                           sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Exact x(t) of `gaussian_velocity_field` started at x(0) = noise."""
    return t * mean + _marginal_std(t, std, sigma_min) * noise
