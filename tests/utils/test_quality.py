import math

import pytest
import torch

from megatron_moviegen.utils.quality import psnr, ssim


def test_ssim_of_a_frame_with_itself_is_one():
    x = torch.rand(3, 2, 32, 32) * 2 - 1
    assert ssim(x, x, data_range=2.0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_two_constant_frames_is_the_luminance_term():
    # No variance anywhere: SSIM = (2 a b + C1) / (a^2 + b^2 + C1), with C1 = (0.01 * 255)^2.
    a, b = torch.full((16, 16), 100.0), torch.full((16, 16), 140.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 140 + c1) / (100**2 + 140**2 + c1), rel=1e-12)


def test_ssim_falls_with_noise_and_is_symmetric():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 48, 48, generator=gen)
    slight = (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    heavy = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    assert 1.0 > ssim(x, slight, data_range=1.0) > ssim(x, heavy, data_range=1.0) > 0.0
    assert ssim(x, heavy, data_range=1.0) == pytest.approx(ssim(heavy, x, data_range=1.0), rel=1e-12)


def test_ssim_is_the_2d_gaussian_window_definition():
    """The two 1D passes give the SSIM of the 11x11 2D window, computed here the plain way."""
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 40, 36, generator=gen) * 255
    b = (a + 25 * torch.randn(a.shape, generator=gen)).clamp(0, 255)
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (torch.outer(g, g) / g.sum() ** 2)[None, None]
    x, y = a.double().reshape(-1, 1, 40, 36), b.double().reshape(-1, 1, 40, 36)

    def filt(z):
        return torch.nn.functional.conv2d(z, window)

    mu_x, mu_y = filt(x), filt(y)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    plain = ((2 * mu_x * mu_y + c1) * (2 * (filt(x * y) - mu_x * mu_y) + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (filt(x * x) - mu_x**2 + filt(y * y) - mu_y**2 + c2))
    assert ssim(a, b) == pytest.approx(plain.mean().item(), rel=1e-12)


def test_ssim_refuses_planes_smaller_than_the_window_and_mismatched_shapes():
    with pytest.raises(ValueError, match="planes of 8x8, need at least the 11x11 window"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"shapes differ, \(12, 12\) vs \(12, 13\)"):
        ssim(torch.zeros(12, 12), torch.zeros(12, 13))


def test_psnr_of_a_known_error():
    assert psnr(torch.zeros(4), torch.full((4,), 2.0), data_range=2.0) == pytest.approx(0.0)
    assert math.isinf(psnr(torch.ones(3), torch.ones(3)))
