"""Euler vs the midpoint solver at equal cost (velocity evaluations, NFE) on the closed-form Gaussian case: RMS error
of the final sample against the exact ODE solution, and against a fine Euler reference (4,096 steps), for data
N(mean, std^2 I) at several std and both schedules. Movie Gen Audio samples with the midpoint solver, 64 steps
(128 evaluations; SPEC section 7).

    PYTHONPATH=$PWD python benchmarks/solver_error.py [--nfe 32 64 128]
"""

from __future__ import annotations

import argparse

import torch

from megatron_moviegen.diffusion.reference_fields import gaussian_flow_solution, gaussian_velocity_field
from megatron_moviegen.diffusion.sampling import EVALUATIONS_PER_STEP, SCHEDULES, ode_sample


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).square().mean().sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nfe", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--stds", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0])
    args = parser.parse_args()
    noise = torch.randn(256, 4, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    print("| std | schedule | NFE | Euler vs exact | midpoint vs exact | Euler / midpoint | Euler vs fine Euler | "
          "midpoint vs fine Euler |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for std in args.stds:
        field = gaussian_velocity_field(mean, std)
        exact = gaussian_flow_solution(noise, mean, std)
        for name, schedule in SCHEDULES.items():
            fine = ode_sample("euler", field, noise, schedule(4096) if name == "linear" else schedule(1000))
            for nfe in args.nfe:
                out = {solver: ode_sample(solver, field, noise, schedule(nfe // EVALUATIONS_PER_STEP[solver]))
                       for solver in ("euler", "midpoint")}
                euler, midpoint = rms(out["euler"], exact), rms(out["midpoint"], exact)
                print(f"| {std:g} | {name} | {nfe} | {euler:.2e} | {midpoint:.2e} | {euler / midpoint:.0f}x | "
                      f"{rms(out['euler'], fine):.2e} | {rms(out['midpoint'], fine):.2e} |")


if __name__ == "__main__":
    main()
