"""Final-sample error of Euler sampling with the linear vs the linear-quadratic schedule, against the exact
ODE solution of the flow-matching velocity field for Gaussian data N(mean, std^2 I).

Where the trajectories bend depends on the data scale (t* = 1 / (1 + std^2), see
megatron_moviegen/diffusion/reference_fields.py), so the table covers several std: the linear-quadratic
schedule spends small steps near t = 0 (noise) and large ones near t = 1 (data).

    PYTHONPATH=$PWD python benchmarks/schedule_error.py
"""

from __future__ import annotations

import argparse

import torch

from megatron_moviegen.diffusion.reference_fields import gaussian_flow_solution, gaussian_velocity_field
from megatron_moviegen.diffusion.sampling import euler_sample, linear_quadratic_schedule, linear_schedule


def rms_error(schedule: torch.Tensor, mean: torch.Tensor, std: float, noise: torch.Tensor) -> float:
    sample = euler_sample(gaussian_velocity_field(mean, std), noise, schedule)
    return (sample - gaussian_flow_solution(noise, mean, std)).square().mean().sqrt().item()


def linear_steps_to_match(error: float, mean: torch.Tensor, std: float, noise: torch.Tensor, limit: int) -> str:
    """Fewest linear steps whose error is <= `error` (bisection; the error falls with the step count)."""
    if rms_error(linear_schedule(limit), mean, std, noise) > error:
        return f">{limit}"
    low, high = 1, limit
    while low < high:
        mid = (low + high) // 2
        if rms_error(linear_schedule(mid), mean, std, noise) <= error:
            high = mid
        else:
            low = mid + 1
    return str(low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stds", type=float, nargs="+", default=[0.1, 1.0, 10.0, 40.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 250])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(args.seed)
    shape = (16, 1, 4, 4)  # one (c, t, h, w) latent
    mean = torch.randn(shape, generator=generator, dtype=torch.float64)
    noise = torch.randn((args.samples, *shape), generator=generator, dtype=torch.float64)  # (b, c, t, h, w)

    print(f"RMS error of the final sample vs the exact solution; data N(mean, std^2 I), mean ~ N(0, I) fixed, "
          f"{args.samples} samples of {shape}, float64")
    print(f"{'std':>6} {'t*':>8} {'steps':>6} {'linear':>10} {'lin-quad':>10} {'lq/lin':>7} "
          f"{'linear steps to match lq':>25}")
    for std in args.stds:
        for steps in args.steps:
            linear = rms_error(linear_schedule(steps), mean, std, noise)
            linear_quadratic = rms_error(linear_quadratic_schedule(steps), mean, std, noise)
            match = linear_steps_to_match(linear_quadratic, mean, std, noise, limit=4000)
            print(f"{std:>6g} {1 / (1 + std**2):>8.2g} {steps:>6d} {linear:>10.3e} {linear_quadratic:>10.3e} "
                  f"{linear_quadratic / linear:>7.2f} {match:>25}")


if __name__ == "__main__":
    main()
