import pytest
import torch

from megatron_moviegen.config.schema import ConfigError, build
from megatron_moviegen.diffusion.flow_matching import (
    SIGMA_MIN,
    FlowMatchingConfig,
    flow_matching_loss,
    interpolate,
    sample_keep_mask,
    sample_timesteps,
    velocity_target,
)

torch.set_num_threads(1)


def _latents(seed: int, shape=(3, 4, 2, 3, 5)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_path_starts_at_noise_and_ends_at_data_up_to_sigma_min():
    noise, data = _latents(0), _latents(1)
    assert torch.equal(interpolate(noise, data, torch.zeros(3, dtype=torch.float64)), noise)
    end = interpolate(noise, data, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(end, data + SIGMA_MIN * noise, rtol=0, atol=1e-15)


def test_time_is_broadcast_per_sample():
    noise, data = _latents(0), _latents(1)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    x_t = interpolate(noise, data, t)
    for i in range(3):
        expected = t[i] * data[i] + (1 - (1 - SIGMA_MIN) * t[i]) * noise[i]
        torch.testing.assert_close(x_t[i], expected, rtol=0, atol=1e-15)


def test_time_derivative_of_the_path_is_the_velocity_target():
    noise, data = _latents(0), _latents(1)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    # Jacobian-vector product along t = (1, 1, 1) (autograd, double backward): each sample's X_t depends
    # only on its own t, so this is dX_t/dt elementwise.
    _, derivative = torch.autograd.functional.jvp(lambda time: interpolate(noise, data, time), t, torch.ones_like(t))
    torch.testing.assert_close(derivative, velocity_target(noise, data), rtol=0, atol=1e-14)
    h = 1e-6
    finite_difference = (interpolate(noise, data, t + h) - interpolate(noise, data, t - h)) / (2 * h)
    torch.testing.assert_close(finite_difference, velocity_target(noise, data), rtol=0, atol=1e-8)


def test_wrong_time_shape_is_rejected_with_the_shapes():
    with pytest.raises(ValueError, match=r"got shape \(2,\), expected \(3,\)"):
        interpolate(_latents(0), _latents(1), torch.zeros(2))


def test_loss_is_plain_mse_without_mask_or_weights():
    pred, target = _latents(0), _latents(1)
    assert flow_matching_loss(pred, target).item() == pytest.approx(((pred - target) ** 2).mean().item(), rel=1e-6)


def test_mask_restricts_each_samples_mean_to_its_valid_latents():
    pred, target = _latents(0), _latents(1)
    mask = torch.ones(3, 1, 2, 3, 5, dtype=torch.bool)
    mask[1, :, 1:] = False  # sample 1: second latent frame is padding
    mask[2, :, :, :, 4:] = False  # sample 2: last latent column is padding
    garbage = pred.clone()
    garbage[1, :, 1:] = 1e6  # padded positions must not matter
    garbage[2, :, :, :, 4:] = -1e6
    expected = torch.stack([
        ((pred[0] - target[0]) ** 2).mean(),
        ((pred[1, :, :1] - target[1, :, :1]) ** 2).mean(),
        ((pred[2, ..., :4] - target[2, ..., :4]) ** 2).mean(),
    ]).mean()
    assert flow_matching_loss(garbage, target, mask=mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_weights_scale_each_samples_loss():
    pred, target = _latents(0), _latents(1)
    per_sample = ((pred - target) ** 2).flatten(1).mean(1)
    weights = torch.tensor([0.0, 2.0, 0.5])
    expected = (weights.double() * per_sample).mean().item()
    assert flow_matching_loss(pred, target, weights=weights).item() == pytest.approx(expected, rel=1e-6)


def test_loss_gradient_reaches_prediction_in_bf16():
    pred = _latents(0).bfloat16().requires_grad_()
    loss = flow_matching_loss(pred, _latents(1).bfloat16())
    assert loss.dtype == torch.float32
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_logit_normal_timesteps_have_the_right_distribution_and_are_deterministic():
    t = sample_timesteps(20000, torch.Generator().manual_seed(0))
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert 0.0 < t.min().item() and t.max().item() < 1.0
    logits = torch.logit(t.double())
    assert abs(logits.mean().item()) < 0.03 and abs(logits.std().item() - 1.0) < 0.03
    assert torch.equal(t, sample_timesteps(20000, torch.Generator().manual_seed(0)))
    shifted = torch.logit(sample_timesteps(20000, torch.Generator().manual_seed(1), mean=1.0, std=0.5).double())
    assert abs(shifted.mean().item() - 1.0) < 0.03 and abs(shifted.std().item() - 0.5) < 0.03


def test_uniform_timesteps_are_uniform():
    t = sample_timesteps(20000, torch.Generator().manual_seed(0), kind="uniform")
    assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.var().item() - 1 / 12) < 0.003
    with pytest.raises(ValueError, match="'beta'"):
        sample_timesteps(4, kind="beta")


def test_text_keep_mask_drops_about_drop_prob_and_is_deterministic():
    keep = sample_keep_mask(20000, 0.1, torch.Generator().manual_seed(0))
    assert keep.dtype == torch.bool
    assert abs((~keep).float().mean().item() - 0.1) < 0.01
    assert torch.equal(keep, sample_keep_mask(20000, 0.1, torch.Generator().manual_seed(0)))
    assert sample_keep_mask(100, 0.0).all() and not sample_keep_mask(100, 1.0).any()


def test_config_defaults_are_the_papers_and_bad_values_name_their_field():
    cfg = build(FlowMatchingConfig, {})
    assert (cfg.sigma_min, cfg.timestep_sampling, cfg.logit_normal_mean, cfg.logit_normal_std) == (
        1e-5, "logit_normal", 0.0, 1.0)
    assert cfg.text_drop_prob == 0.1
    for data, field in [({"sigma_min": 1.0}, "sigma_min"), ({"logit_normal_std": 0.0}, "logit_normal_std"),
                        ({"text_drop_prob": 1.5}, "text_drop_prob"),
                        ({"timestep_sampling": "beta"}, "timestep_sampling")]:
        with pytest.raises(ConfigError, match=field):
            build(FlowMatchingConfig, data)
