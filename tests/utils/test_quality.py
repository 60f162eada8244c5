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


def test_ssim_refuses_planes_smaller_than_the_window_and_mismatched_shapes():
    with pytest.raises(ValueError, match="planes of 8x8, need at least the 11x11 window"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"shapes differ, \(12, 12\) vs \(12, 13\)"):
        ssim(torch.zeros(12, 12), torch.zeros(12, 13))


def test_psnr_of_a_known_error():
    assert psnr(torch.zeros(4), torch.full((4,), 2.0), data_range=2.0) == pytest.approx(0.0)
    assert math.isinf(psnr(torch.ones(3), torch.ones(3)))
