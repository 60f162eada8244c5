"""The Movie Gen samplers (SPEC section 2): ODE solvers from t = 0 (noise) to t = 1 (data) on a time schedule,
with classifier-free guidance. First-order Euler is the video default; the explicit midpoint rule (second order, two
velocity evaluations a step) is Movie Gen Audio's (SPEC section 7: midpoint, 64 steps). Any velocity field can be
plugged in:

    timesteps = linear_quadratic_schedule(50)
    velocity_fn = classifier_free_guidance(dit_forward, cond=text, uncond=null_text, scale=7.5)
    latents = euler_sample(velocity_fn, noise, timesteps, progress=True)
    latents = ode_sample("midpoint", velocity_fn, noise, linear_schedule(64))

A velocity field is `velocity_fn(x, t) -> v` with x and v (b, c, t, h, w) and t a python float in [0, 1)
shared by the whole batch. Wrap the call in `torch.inference_mode()` when no gradients are wanted.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from megatron_moviegen.conditioning import Conditioning

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
ModelConditioning = Union[Conditioning, torch.Tensor, Mapping[str, torch.Tensor]]


def linear_schedule(num_steps: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(num_steps + 1,) times evenly spaced from 0 to 1."""
    if num_steps < 1:
        raise ValueError(f"num_steps: got {num_steps}, must be >= 1")
    return torch.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)


def linear_quadratic_schedule(num_steps: int, linear_steps: Optional[int] = None, emulated_linear_steps: int = 1000,
                              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(num_steps + 1,) increasing times from 0 to 1: Movie Gen's "linear-quadratic" schedule.

    With N = num_steps, L = linear_steps (default N // 2, so odd N gets one more quadratic step than linear
    ones), Q = N - L and E = emulated_linear_steps, step i in 0..N ends at

        t_i = i / E + (1 - N / E) * (max(i - L, 0) / Q) ** 2

    The first L steps are exactly the first L steps of an E-step linear schedule (t_L = L / E, the knee:
    0.025 for N = 50, E = 1000). The remaining Q steps follow a quadratic that starts at the knee with the
    same step size 1 / E (value and slope continuous), grows its steps linearly, and ends at t_N = 1. For
    N <= E the quadratic coefficient 1 - N / E is >= 0, so the schedule is strictly increasing; N = E gives
    the E-step linear schedule itself. This is the schedule of Genmo's Mochi sampler written in t = 1 - sigma.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps: got {num_steps}, must be >= 1")
    if num_steps > emulated_linear_steps:
        raise ValueError(
            f"num_steps: got {num_steps}, must be <= emulated_linear_steps {emulated_linear_steps} "
            "(the schedule emulates that many linear steps)"
        )
    if linear_steps is None:
        linear_steps = num_steps // 2
    if not 0 <= linear_steps < num_steps:
        raise ValueError(f"linear_steps: got {linear_steps}, must be in [0, num_steps - 1 = {num_steps - 1}]")
    steps = torch.arange(num_steps + 1, dtype=torch.float64)
    quadratic_steps = num_steps - linear_steps
    quadratic_part = ((steps - linear_steps).clamp(min=0.0) / quadratic_steps).square()
    times = steps / emulated_linear_steps + (1.0 - num_steps / emulated_linear_steps) * quadratic_part
    times[-1] = 1.0  # exact despite rounding of N / E + (1 - N / E)
    return times.to(dtype)


def _check_timesteps(timesteps: torch.Tensor) -> None:
    if timesteps.dim() != 1 or timesteps.numel() < 2:
        raise ValueError(
            f"timesteps: got shape {tuple(timesteps.shape)}, expected (num_steps + 1,) with num_steps >= 1"
        )
    if not bool((timesteps[1:] > timesteps[:-1]).all()):
        raise ValueError(f"timesteps: must be strictly increasing, got {timesteps.tolist()}")


def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, timesteps: Union[torch.Tensor, Sequence[float]],
                 progress: bool = False) -> torch.Tensor:
    """Integrate dx/dt = velocity_fn(x, t) over `timesteps` (t_0 = 0 noise -> t_N = 1 data) with Euler steps.

    noise: (b, c, t, h, w) X_0; returns X at timesteps[-1] in noise's dtype. velocity_fn gets t as a python
    float; step sizes are taken in float64 from the schedule.
    """
    return ode_sample("euler", velocity_fn, noise, timesteps, progress)


def ode_sample(solver: str, velocity_fn: VelocityFn, noise: torch.Tensor,
               timesteps: Union[torch.Tensor, Sequence[float]], progress: bool = False) -> torch.Tensor:
    """Integrate dx/dt = velocity_fn(x, t) over `timesteps` with `solver` ("euler": one velocity a step, first
    order; "midpoint": two, second order). noise: (b, c, t, h, w) X_0; returns X at timesteps[-1] in noise's dtype."""
    if solver not in SOLVERS:
        raise ValueError(f"solver: got {solver!r}, expected one of {sorted(SOLVERS)}")
    timesteps = torch.as_tensor(timesteps, dtype=torch.float64)
    _check_timesteps(timesteps)
    times = timesteps.tolist()

    def checked_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        velocity = velocity_fn(x, t)
        if velocity.shape != x.shape:
            raise ValueError(
                f"velocity_fn: returned shape {tuple(velocity.shape)} for a sample of shape {tuple(x.shape)}"
            )
        return velocity

    step = SOLVERS[solver]
    x = noise
    for t, t_next in tqdm(zip(times[:-1], times[1:]), total=len(times) - 1, desc="sampling", disable=not progress):
        x = step(checked_velocity, x, t, t_next)
    return x


def euler_step(x: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = velocity from time t to t_next (python floats), in x's dtype."""
    return x + (t_next - t) * velocity.to(x.dtype)


def _euler(velocity_fn: VelocityFn, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    return euler_step(x, velocity_fn(x, t), t, t_next)


def _midpoint(velocity_fn: VelocityFn, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """x + h v(x + h/2 v(x, t), t + h/2): the explicit midpoint rule, local error O(h^3)."""
    t_mid = 0.5 * (t + t_next)
    x_mid = euler_step(x, velocity_fn(x, t), t, t_mid)
    return euler_step(x, velocity_fn(x_mid, t_mid), t, t_next)


SOLVERS = {"euler": _euler, "midpoint": _midpoint}
SCHEDULES = {"linear": linear_schedule, "linear_quadratic": linear_quadratic_schedule}  # by name, for configs
EVALUATIONS_PER_STEP = {"euler": 1, "midpoint": 2}


def _concat_batch(cond: ModelConditioning, *others: ModelConditioning) -> ModelConditioning:
    """[cond; uncond; ...] along the batch dimension, for Conditionings, tensors of one shape or dicts of tensors
    with the same keys."""
    parts = [cond, *others]
    if all(isinstance(p, Conditioning) for p in parts):
        return Conditioning.cat(parts)
    if all(isinstance(p, torch.Tensor) for p in parts):
        for other in others:
            if other.shape != cond.shape:
                raise ValueError(f"uncond: shape {tuple(other.shape)} differs from cond shape {tuple(cond.shape)}")
        return torch.cat(parts)
    if all(isinstance(p, Mapping) for p in parts):
        for other in others:
            if set(other) != set(cond):
                raise ValueError(f"uncond: keys {sorted(other)} differ from cond keys {sorted(cond)}")
        return {key: _concat_batch(*(p[key] for p in parts)) for key in cond}
    raise TypeError(
        f"cond/uncond: got {'/'.join(type(p).__name__ for p in parts)}, expected tensors or dicts of one kind"
    )


def guided(model_fn: Callable[[torch.Tensor, float, ModelConditioning], torch.Tensor], scale: float
           ) -> Callable[[torch.Tensor, float, ModelConditioning], torch.Tensor]:
    """`model_fn` with classifier-free guidance: (x, t, [cond; uncond]) -> v_uncond + scale * (v_cond - v_uncond),
    from one model call on [x; x]; the conditioning is already concatenated (it may change per call: windows)."""

    def velocity_fn(x: torch.Tensor, t: float, both: ModelConditioning) -> torch.Tensor:
        v_cond, v_uncond = model_fn(torch.cat([x, x]), t, both).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return velocity_fn


def classifier_free_guidance(model_fn: Callable[[torch.Tensor, float, ModelConditioning], torch.Tensor],
                             cond: ModelConditioning, uncond: ModelConditioning, scale: float) -> VelocityFn:
    """A velocity field v = v_uncond + scale * (v_cond - v_uncond) from one batched model call per step.

    model_fn(x, t, conditioning) -> velocity, called on x: (2b, ...) = [x; x] with conditioning [cond; uncond]
    (tensors, or dicts of tensors, concatenated along dim 0 once, here). scale = 1 gives v_cond.
    """
    both = _concat_batch(cond, uncond)
    velocity_fn = guided(model_fn, scale)
    return lambda x, t: velocity_fn(x, t, both)


def source_and_text_guidance(model_fn: Callable[[torch.Tensor, float, ModelConditioning], torch.Tensor],
                             full: ModelConditioning, no_text: ModelConditioning, neither: ModelConditioning,
                             text_scale: float, source_scale: float) -> VelocityFn:
    """Guidance over two conditions, an edit's source and its instruction (InstructPix2Pix, eq. 3):

        v = v(-, -) + source_scale * (v(src, -) - v(-, -)) + text_scale * (v(src, txt) - v(src, -))

    from one batched call of 3b samples per step ([full; no_text; neither], concatenated once here). With
    source_scale = 1 the first two terms are v(src, -): plain text guidance with the source always given, 2b
    samples a step."""
    if source_scale == 1.0:
        return classifier_free_guidance(model_fn, full, no_text, text_scale)
    batched = _concat_batch(full, no_text, neither)

    def velocity_fn(x: torch.Tensor, t: float) -> torch.Tensor:
        v_full, v_source, v_neither = model_fn(torch.cat([x, x, x]), t, batched).chunk(3)
        return v_neither + source_scale * (v_source - v_neither) + text_scale * (v_full - v_source)

    return velocity_fn
