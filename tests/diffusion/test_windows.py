"""Sliding temporal windows (SPEC section 5's upsampler sampling, section 7's audio extension): the plan, the ramp and
triangle blends, the one-window case."""

import pytest
import torch

from megatron_moviegen.conditioning import Conditioning, Infill
from megatron_moviegen.diffusion.windows import blend_weights, window_plan, windowed_velocity


@pytest.mark.parametrize("blend", ["ramp", "triangle"])
@pytest.mark.parametrize("num_frames,window,overlap", [(12, 2, 1), (11, 4, 1), (7, 3, 0), (2, 2, 1), (1, 2, 1),
                                                      (30, 5, 2), (132, 64, 16)])
def test_windows_cover_every_frame_and_the_blend_weights_sum_to_one(num_frames, window, overlap, blend):
    plan = window_plan(num_frames, window, overlap)
    assert plan[0][0] == 0 and plan[-1][1] == num_frames
    assert all(stop - start == min(window, num_frames) for start, stop in plan)
    # Consecutive windows overlap by at least `overlap` frames and leave no gap.
    for (s0, e0), (s1, e1) in zip(plan, plan[1:]):
        assert s0 < s1 and e1 > e0 and e0 - s1 >= overlap
    total = torch.zeros(num_frames, dtype=torch.float64)
    for (start, stop), weights in zip(plan, blend_weights(plan, num_frames, blend)):
        assert weights.shape == (stop - start,) and bool((weights > 0).all())
        total[start:stop] += weights
    assert torch.allclose(total, torch.ones(num_frames, dtype=torch.float64), atol=1e-12)


def test_the_paper_window_in_latent_frames_steps_by_one():
    assert window_plan(6, 2, 1) == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    assert window_plan(7, 3, 1) == [(0, 3), (2, 5), (4, 7)]
    assert window_plan(8, 3, 1) == [(0, 3), (2, 5), (4, 7), (5, 8)]  # the last moves back to end at the clip's end


def test_bad_windows_are_refused_naming_the_values():
    with pytest.raises(ValueError, match="window/overlap: got 2/2"):
        window_plan(8, 2, 2)
    with pytest.raises(ValueError, match="num_frames: got 0"):
        window_plan(0, 2, 1)


def _frame_local_model(x, t, conditioning):
    """A per-frame velocity (no temporal mixing): any window gives each frame the same value."""
    return torch.tanh(x * (1 + t)) + 0.5 * conditioning.channels


def _temporal_model(x, t, conditioning):
    """Mixes frames inside the window (its mean over time), so windows see different contexts."""
    return x.mean(dim=2, keepdim=True).expand_as(x) + conditioning.channels


def test_windowed_velocity_blends_windows_and_one_window_is_the_model_itself():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 9, 3, 3, generator=gen)
    cond = Conditioning(channels=torch.randn(1, 4, 9, 3, 3, generator=gen))
    whole = windowed_velocity(_temporal_model, cond, window_plan(9, 9, 0))(x, 0.3)
    assert torch.equal(whole, _temporal_model(x, 0.3, cond))
    # A frame-local model is reproduced exactly by any plan: the blend weights sum to one at every frame.
    local = windowed_velocity(_frame_local_model, cond, window_plan(9, 2, 1))(x, 0.3)
    assert torch.allclose(local, _frame_local_model(x, 0.3, cond), atol=1e-6)
    # A temporal model: frame 0 is seen only by the first window, frames 1.. by two, averaged 1/2 each.
    windowed = windowed_velocity(_temporal_model, cond, window_plan(9, 2, 1))(x, 0.3)
    first = _temporal_model(x[:, :, 0:2], 0.3, cond.frames(0, 2))
    second = _temporal_model(x[:, :, 1:3], 0.3, cond.frames(1, 3))
    assert torch.allclose(windowed[:, :, 0], first[:, :, 0], atol=1e-6)
    assert torch.allclose(windowed[:, :, 1], 0.5 * first[:, :, 1] + 0.5 * second[:, :, 0], atol=1e-6)


def test_triangle_windows_weigh_each_window_by_its_distance_from_the_edges():
    plan = window_plan(132, 64, 16)  # 5.28 s of audio in 2.56 s windows
    assert plan == [(0, 64), (48, 112), (68, 132)]
    first, second, _ = blend_weights(plan, 132, "triangle")
    assert torch.equal(first[:48], torch.ones(48, dtype=torch.float64))  # frames only the first window holds
    # Frame 50: the first window's 51st of 64 frames (triangle 14), the second's 3rd (triangle 3).
    assert first[50].item() == pytest.approx(14 / 17) and second[2].item() == pytest.approx(3 / 17)
    with pytest.raises(ValueError, match="blend: got 'cosine'"):
        blend_weights(plan, 132, "cosine")


def test_windows_slice_the_infill_with_the_channels():
    infill = Infill(torch.arange(10.0).view(1, 1, 10, 1, 1), torch.arange(10)[None] < 4)
    window = Conditioning(channels=torch.zeros(1, 2, 10, 1, 1), infill=infill).frames(3, 7)
    assert window.channels.shape[2] == 4 and window.infill.latents.flatten().tolist() == [3.0, 4.0, 5.0, 6.0]
    assert window.infill.known.tolist() == [[True, False, False, False]]
    # The DiT reads the known latents (zeros elsewhere) and the mask as input channels.
    assert window.infill.channels()[0, :, :, 0, 0].tolist() == [[3.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
