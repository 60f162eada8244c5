import pytest
import torch

from megatron_moviegen.diffusion.flow_matching import SIGMA_MIN
from megatron_moviegen.diffusion.reference_fields import gaussian_flow_solution, gaussian_velocity_field
from megatron_moviegen.diffusion.sampling import (
    classifier_free_guidance,
    euler_sample,
    linear_quadratic_schedule,
    linear_schedule,
    ode_sample,
    source_and_text_guidance,
)

torch.set_num_threads(1)


def _noise(shape=(64, 2, 3, 2, 2), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("num_steps", [1, 2, 7, 49, 50, 51, 250, 1000])
def test_linear_quadratic_schedule_runs_from_0_to_1_strictly_increasing(num_steps):
    times = linear_quadratic_schedule(num_steps)
    assert times.shape == (num_steps + 1,) and times.dtype == torch.float64
    assert times[0].item() == 0.0 and times[-1].item() == 1.0
    assert bool((times.diff() > 0).all())


def test_first_half_of_50_steps_is_a_1000_step_linear_schedule_up_to_0_025():
    times = linear_quadratic_schedule(50)
    torch.testing.assert_close(times[:26], torch.arange(26, dtype=torch.float64) / 1000, rtol=0, atol=1e-15)
    assert times[25].item() == pytest.approx(0.025, abs=1e-15)
    steps = times.diff()
    # The quadratic half starts with the linear step size (continuous slope) and its steps then grow
    # linearly: constant second difference 2 * (1 - 50 / 1000) / 25**2.
    assert steps[25].item() == pytest.approx(1 / 1000 + 0.95 / 625, abs=1e-15)
    torch.testing.assert_close(steps[25:].diff(), torch.full((24,), 2 * 0.95 / 625, dtype=torch.float64),
                               rtol=0, atol=1e-13)


def test_odd_step_counts_put_the_extra_step_in_the_quadratic_half():
    times = linear_quadratic_schedule(51)
    torch.testing.assert_close(times[:26], torch.arange(26, dtype=torch.float64) / 1000, rtol=0, atol=1e-15)
    assert bool((times[26:].diff() > 1 / 1000).all())


def test_linear_quadratic_with_as_many_steps_as_emulated_is_the_linear_schedule():
    torch.testing.assert_close(linear_quadratic_schedule(1000), linear_schedule(1000), rtol=0, atol=1e-14)
    torch.testing.assert_close(linear_quadratic_schedule(8, emulated_linear_steps=8), linear_schedule(8),
                               rtol=0, atol=1e-15)


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="num_steps: got 1001"):
        linear_quadratic_schedule(1001)
    with pytest.raises(ValueError, match="linear_steps: got 10"):
        linear_quadratic_schedule(10, linear_steps=10)
    with pytest.raises(ValueError, match="num_steps: got 0"):
        linear_schedule(0)


def test_linear_schedule_is_even():
    torch.testing.assert_close(linear_schedule(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))


def test_euler_is_exact_on_straight_paths_to_a_fixed_point():
    # Data = one point a: the field (a - c x) / (1 - c t) has straight trajectories, so Euler on any
    # schedule lands on the exact solution x(1) = a + sigma_min * x0.
    target = _noise(seed=1)[0]
    noise = _noise()
    field = gaussian_velocity_field(target, std=0.0)
    for timesteps in (linear_schedule(3), linear_quadratic_schedule(50)):
        torch.testing.assert_close(euler_sample(field, noise, timesteps), target + SIGMA_MIN * noise,
                                   rtol=0, atol=1e-12)


def test_gaussian_field_solution_solves_its_ode():
    mean, noise = _noise(seed=1)[0], _noise()
    field = gaussian_velocity_field(mean, std=0.3)
    for t in (0.0, 0.2, 0.7, 0.95):
        h = 1e-6
        after, before = (gaussian_flow_solution(noise, mean, 0.3, t + d) for d in (h, -h))
        derivative = (after - before) / (2 * h)
        torch.testing.assert_close(derivative, field(gaussian_flow_solution(noise, mean, 0.3, t), t), rtol=0, atol=1e-7)
    assert torch.equal(gaussian_flow_solution(noise, mean, 0.3, 0.0), noise)


@pytest.mark.parametrize("schedule", [linear_schedule, linear_quadratic_schedule])
def test_euler_converges_at_first_order_on_a_gaussian_data_field(schedule):
    mean, noise, std = _noise(seed=1)[0], _noise(), 0.5
    exact = gaussian_flow_solution(noise, mean, std)
    field = gaussian_velocity_field(mean, std)
    errors = [(euler_sample(field, noise, schedule(n)) - exact).abs().max().item() for n in (25, 50, 100, 200)]
    assert errors[0] < 0.5
    for coarse, fine in zip(errors, errors[1:]):
        assert 0.4 < fine / coarse < 0.6, errors  # halving the steps halves the error: first order


@pytest.mark.parametrize("schedule", [linear_schedule, linear_quadratic_schedule])
def test_midpoint_converges_at_second_order_and_beats_euler_at_equal_evaluations(schedule):
    mean, noise, std = _noise(seed=1)[0], _noise(), 0.5
    exact = gaussian_flow_solution(noise, mean, std)
    field = gaussian_velocity_field(mean, std)
    midpoint = [(ode_sample("midpoint", field, noise, schedule(n)) - exact).abs().max().item() for n in (16, 32, 64)]
    for coarse, fine in zip(midpoint, midpoint[1:]):
        assert fine / coarse < 0.3, midpoint  # halving the steps quarters the error (or better): second order
    for steps, error in zip((16, 32, 64), midpoint):  # the same 2 * steps velocity evaluations with Euler
        euler = (ode_sample("euler", field, noise, schedule(2 * steps)) - exact).abs().max().item()
        assert error < euler / 10, (steps, error, euler)


def test_midpoint_evaluates_the_field_at_each_step_start_and_midpoint():
    seen = []

    def field(x, t):
        seen.append(t)
        return torch.full_like(x, 2 * t)  # dx/dt = 2t: x(1) = x(0) + 1, which midpoint integrates exactly

    out = ode_sample("midpoint", field, torch.zeros(3, dtype=torch.float64), [0.0, 0.5, 1.0])
    assert seen == [0.0, 0.25, 0.5, 0.75]
    torch.testing.assert_close(out, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="solver: got 'heun'"):
        ode_sample("heun", field, torch.zeros(3), [0.0, 1.0])


def test_euler_passes_python_float_times_and_returns_noise_dtype():
    seen = []

    def field(x, t):
        seen.append(t)
        return torch.ones_like(x)

    noise = torch.zeros(2, 3, dtype=torch.float32)
    out = euler_sample(field, noise, [0.0, 0.25, 1.0], progress=True)
    assert seen == [0.0, 0.25] and all(type(t) is float for t in seen)
    assert out.dtype == torch.float32 and torch.equal(out, torch.ones(2, 3))


def test_euler_rejects_bad_schedules_and_velocity_shapes():
    with pytest.raises(ValueError, match="strictly increasing"):
        euler_sample(lambda x, t: x, torch.zeros(2), [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"returned shape \(1,\) for a sample of shape \(2,\)"):
        euler_sample(lambda x, t: x[:1], torch.zeros(2), [0.0, 1.0])


def test_cfg_makes_one_batched_call_and_combines_uncond_plus_scale_times_difference():
    calls = []

    def model_fn(x, t, conditioning):
        calls.append((x.shape, t, {k: v.clone() for k, v in conditioning.items()}))
        # velocity = x * t + text broadcast; cond and uncond halves differ by their text.
        return x * t + conditioning["text"].view(-1, 1)

    x = _noise((3, 4), seed=2)
    cond = {"text": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), "mask": torch.ones(3, dtype=torch.float64)}
    uncond = {"text": torch.zeros(3, dtype=torch.float64), "mask": torch.zeros(3, dtype=torch.float64)}
    velocity = classifier_free_guidance(model_fn, cond, uncond, scale=7.5)(x, 0.5)
    assert len(calls) == 1
    shape, t, conditioning = calls[0]
    assert shape == (6, 4) and t == 0.5
    assert torch.equal(conditioning["text"], torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(conditioning["mask"], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    v_cond, v_uncond = x * 0.5 + cond["text"].view(-1, 1), x * 0.5
    torch.testing.assert_close(velocity, v_uncond + 7.5 * (v_cond - v_uncond), rtol=0, atol=1e-14)


def test_cfg_with_tensor_conditioning_and_scale_one_is_the_conditional_velocity():
    x, cond, uncond = _noise((2, 3), seed=3), _noise((2, 5), seed=4), _noise((2, 5), seed=5)

    def model_fn(x, t, text):
        return x + text.sum(dim=1, keepdim=True)

    velocity = classifier_free_guidance(model_fn, cond, uncond, scale=1.0)(x, 0.0)
    torch.testing.assert_close(velocity, x + cond.sum(dim=1, keepdim=True), rtol=0, atol=1e-14)


def test_cfg_rejects_mismatched_conditioning():
    with pytest.raises(ValueError, match=r"keys \['a'\] differ from cond keys \['a', 'b'\]"):
        classifier_free_guidance(None, {"a": torch.zeros(1), "b": torch.zeros(1)}, {"a": torch.zeros(1)}, 7.5)
    with pytest.raises(ValueError, match=r"shape \(2,\) differs from cond shape \(1,\)"):
        classifier_free_guidance(None, torch.zeros(1), torch.zeros(2), 7.5)


def test_cfg_sampling_end_to_end_matches_the_guided_closed_form():
    # Conditional data is the point a, unconditional the point 0: the guided field is then the straight-path
    # field to the point scale * a, which Euler integrates exactly: x(1) = scale * a + sigma_min * x0.
    a = _noise((1, 4), seed=6)
    noise = _noise((5, 4), seed=7)
    c = 1 - SIGMA_MIN

    def model_fn(x, t, target):
        return (target - c * x) / (1 - c * t)

    velocity_fn = classifier_free_guidance(model_fn, a.expand(5, 4), torch.zeros(5, 4, dtype=torch.float64), 3.0)
    sample = euler_sample(velocity_fn, noise, linear_quadratic_schedule(50))
    torch.testing.assert_close(sample, 3.0 * a + SIGMA_MIN * noise, rtol=0, atol=1e-9)


def test_source_and_text_guidance_combines_three_branches_from_one_call():
    calls = []

    def model_fn(x, t, conditioning):  # velocity = x * t + what the branch is conditioned on
        calls.append(x.shape)
        return x * t + conditioning.view(-1, 1)

    x = _noise((2, 4), seed=6)
    full, no_text, neither = (torch.tensor(v, dtype=torch.float64) for v in ([5.0, 6.0], [2.0, 3.0], [0.5, -1.0]))
    velocity = source_and_text_guidance(model_fn, full, no_text, neither, text_scale=7.5, source_scale=1.5)(x, 0.25)
    assert calls == [(6, 4)]
    v = {name: x * 0.25 + c.view(-1, 1) for name, c in (("full", full), ("source", no_text), ("none", neither))}
    expected = v["none"] + 1.5 * (v["source"] - v["none"]) + 7.5 * (v["full"] - v["source"])  # InstructPix2Pix eq. 3
    torch.testing.assert_close(velocity, expected, rtol=0, atol=1e-13)


def test_source_guidance_of_one_is_text_guidance_with_the_source_given_in_two_branches():
    calls = []

    def model_fn(x, t, conditioning):
        calls.append(x.shape)
        return x + conditioning.view(-1, 1)

    x = _noise((2, 3), seed=7)
    full, no_text = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.0, 0.5], dtype=torch.float64)
    guided = source_and_text_guidance(model_fn, full, no_text, torch.zeros(2, dtype=torch.float64), 4.0, 1.0)(x, 0.0)
    assert calls == [(4, 3)]
    torch.testing.assert_close(guided, classifier_free_guidance(model_fn, full, no_text, 4.0)(x, 0.0), rtol=0, atol=0)
