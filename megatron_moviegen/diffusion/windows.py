"""Sampling a video (or audio) longer than the model's clips in overlapping temporal windows, MultiDiffusion-style
(the spatial upsampler, SPEC section 5: windows of 14 frames, overlap 4; Movie Gen Audio's extension, SPEC section 7:
triangle windows). At every Euler step the model runs on each window of latent frames, and the velocities of
overlapping frames are averaged with blend weights:

    plan = window_plan(num_frames=12, window=2, overlap=1)          # [(0, 2), (1, 3), ..., (10, 12)]
    velocity_fn = windowed_velocity(model_fn, conditioning, plan)  # model_fn(x, t, conditioning) on one window
    latents = euler_sample(velocity_fn, noise, timesteps)

Only one window passes through the model at a time, so the model's memory does not grow with the video.
"""

from __future__ import annotations

from typing import Callable

import torch

from megatron_moviegen.conditioning import Conditioning
from megatron_moviegen.diffusion.sampling import VelocityFn


def window_plan(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) windows of `window` frames stepping by window - overlap; the last is moved back to end at
    num_frames (so it may overlap its neighbour more). One window of all frames when num_frames <= window."""
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"window/overlap: got {window}/{overlap}, need window >= 1 and 0 <= overlap < window")
    if num_frames < 1:
        raise ValueError(f"num_frames: got {num_frames}, must be >= 1")
    if num_frames <= window:
        return [(0, num_frames)]
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride)) + [num_frames - window]
    return [(start, start + window) for start in starts]


BLENDS = ("ramp", "triangle")


def blend_weights(plan: list[tuple[int, int]], num_frames: int, blend: str = "ramp") -> list[torch.Tensor]:
    """Per window, (stop - start,) float64 weights, normalised so that at every frame the weights of the windows
    holding it sum to 1. "ramp": linear ramps over the frames it shares with its neighbours, 1 elsewhere;
    "triangle": min(j + 1, n - j) over the window's n frames, peaking at its middle (Movie Gen Audio's)."""
    if blend not in BLENDS:
        raise ValueError(f"blend: got {blend!r}, expected one of {list(BLENDS)}")
    raw = []
    for index, (start, stop) in enumerate(plan):
        if blend == "triangle":
            j = torch.arange(stop - start, dtype=torch.float64)
            raw.append(torch.minimum(j + 1, stop - start - j))
            continue
        weights = torch.ones(stop - start, dtype=torch.float64)
        before = plan[index - 1][1] - start if index > 0 else 0
        after = stop - plan[index + 1][0] if index + 1 < len(plan) else 0
        if before > 0:
            weights[:before] = (torch.arange(before, dtype=torch.float64) + 1) / (before + 1)
        if after > 0:
            weights[stop - start - after:] = torch.minimum(
                weights[stop - start - after:], (after - torch.arange(after, dtype=torch.float64)) / (after + 1))
        raw.append(weights)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for (start, stop), weights in zip(plan, raw):
        total[start:stop] += weights
    if not bool((total > 0).all()):
        missing = (total == 0).nonzero().flatten().tolist()
        raise ValueError(f"window plan {plan} leaves latent frames {missing} of {num_frames} uncovered")
    return [weights / total[start:stop] for (start, stop), weights in zip(plan, raw)]


def windowed_velocity(model_fn: Callable[[torch.Tensor, float, Conditioning], torch.Tensor],
                      conditioning: Conditioning, plan: list[tuple[int, int]], blend: str = "ramp") -> VelocityFn:
    """A velocity field over the whole clip (b, c, T, h, w) from `model_fn(x_window, t, conditioning_window)` run
    on each window of `plan` (latent frames; the conditioning's channels and infill sliced alike) and blended
    (`blend_weights`)."""
    num_frames = plan[-1][1]
    weights = blend_weights(plan, num_frames, blend)

    def velocity_fn(x: torch.Tensor, t: float) -> torch.Tensor:
        if x.shape[2] != num_frames:
            raise ValueError(f"latents: got {x.shape[2]} frames, the window plan covers {num_frames}")
        if len(plan) == 1:
            return model_fn(x, t, conditioning)
        out = torch.zeros_like(x)
        for (start, stop), weight in zip(plan, weights):
            velocity = model_fn(x[:, :, start:stop], t, conditioning.frames(start, stop))
            out[:, :, start:stop] += velocity * weight.to(velocity.dtype).to(x.device).view(1, 1, -1, 1, 1)
        return out

    return velocity_fn
