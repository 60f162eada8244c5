"""The upsampler's training pairs (SPEC section 5): target and degraded low-res condition from one decode."""

import pytest
import torch

from megatron_moviegen.config.schema import ConfigError, build
from megatron_moviegen.data.config import DataConfig, UpsampleConfig
from megatron_moviegen.data.decode import ClipRequest, PyAVDecoder, to_unit_range
from megatron_moviegen.data.degrade import condition_pixels, degrade, low_resolution_size, upsample_bilinear
from megatron_moviegen.data.manifest import ManifestEntry
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from megatron_moviegen.utils.quality import psnr


@pytest.fixture(scope="module")
def carphone(clips) -> torch.Tensor:
    """14 real frames of carphone at 24 fps, 64x64: (1, 3, 14, 64, 64) in [-1, 1]."""
    frames = PyAVDecoder().clip_frames(clips / "carphone_pristine.mp4", ClipRequest(0.0, 24.0, 14, 64, 64))
    return to_unit_range(frames)[None]


def test_bilinear_degradation_halves_the_size_and_returns_to_the_grid_losing_detail(carphone):
    cfg = UpsampleConfig(low_resolution_factor=2.0)
    low = degrade(carphone, cfg)
    assert low.shape == (1, 3, 14, 32, 32)
    levels = (low + 1) * 127.5
    assert (levels - levels.round()).abs().max() < 1e-4  # on the levels of an 8-bit video
    up = condition_pixels(carphone, cfg)
    assert up.shape == carphone.shape and torch.equal(up, upsample_bilinear(low, 64, 64))
    quality = psnr(up, carphone, data_range=2.0)
    assert 18.0 < quality < 40.0, quality  # close to the clip, but not the clip
    assert low_resolution_size(1072, 1920, 1.40625) == (762, 1365)  # the paper's 1080p from 768 px


def test_blur_and_noise_degrade_further_and_noise_is_seeded(carphone):
    plain = psnr(condition_pixels(carphone, UpsampleConfig(2.0)), carphone, 2.0)
    blurred = psnr(condition_pixels(carphone, UpsampleConfig(2.0, "blur", blur_sigma=1.0)), carphone, 2.0)
    noisy_a = condition_pixels(carphone, UpsampleConfig(2.0, "noise", noise_std=0.1), torch.Generator().manual_seed(1))
    noisy_b = condition_pixels(carphone, UpsampleConfig(2.0, "noise", noise_std=0.1), torch.Generator().manual_seed(1))
    assert blurred < plain and psnr(noisy_a, carphone, 2.0) < plain
    assert torch.equal(noisy_a, noisy_b)


def test_upsample_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="upsample.low_resolution_factor: got 1.0"):
        build(DataConfig, {"upsample": {"low_resolution_factor": 1.0}})
    with pytest.raises(ConfigError, match="degradation: got 'jpeg'"):
        build(DataConfig, {"upsample": {"degradation": "jpeg"}})


def test_preencoding_writes_target_and_condition_latents_of_the_same_frames(clips, tmp_path):
    cfg = load_config("upsampler_tiny")
    cfg.data.encode_batch_size = 2
    entries = [ManifestEntry(str(clips / "carphone_pristine.mp4"), "a man on the phone", start_s=s) for s in (0.0, 1.0)]
    encoder = TinyVideoEncoder()
    preencoder = Preencoder(cfg.data, encoder, TinyTextEncoders.for_model(cfg.model), tmp_path)
    preencoder.run(entries)
    from megatron_moviegen.data.loader import LatentLoader

    batch = next(iter(LatentLoader(tmp_path, batch_size=2, image_fraction=0.0, seed=0)))
    assert batch.latents.shape == (2, 16, 2, 8, 8)  # 14 frames at 64 px -> 2 latent frames of 8x8
    assert batch.conditioning.channels.shape == batch.latents.shape
    # Recompute both from one decode of the first clip: the shards hold exactly these (bf16).
    frames = PyAVDecoder().clip_frames(entries[0].path, ClipRequest(0.0, 24.0, 14, 64, 64))
    pixels = to_unit_range(frames)[None]
    target = encoder.encode(pixels)
    condition = encoder.encode(condition_pixels(pixels, cfg.data.upsample))
    first = 0 if torch.allclose(batch.latents[0].float(), target[0].bfloat16().float()) else 1
    assert torch.equal(batch.latents[first].float(), target[0].bfloat16().float())
    assert torch.equal(batch.conditioning.channels[first].float(), condition[0].bfloat16().float())
    assert not torch.allclose(condition, target, atol=1e-2)


@pytest.mark.parametrize("compression", ["jpeg", "h264"])
def test_second_order_degradation_is_seeded_harsher_than_bilinear_and_keeps_the_clip_shape(carphone, compression):
    from megatron_moviegen.data.config import SecondOrderConfig

    rounds = SecondOrderConfig(skip_prob=0.0, video_compression_prob=1.0 if compression == "h264" else 0.0,
                               jpeg_quality=(30, 30), h264_crf=(40, 40))
    cfg = UpsampleConfig(2.0, "second_order", second_order=rounds)
    low = degrade(carphone, cfg, torch.Generator().manual_seed(3))
    assert low.shape == (1, 3, 14, 32, 32)
    assert torch.equal(low, degrade(carphone, cfg, torch.Generator().manual_seed(3)))  # the sample's seed decides
    assert not torch.equal(low, degrade(carphone, cfg, torch.Generator().manual_seed(4)))
    plain = psnr(condition_pixels(carphone, UpsampleConfig(2.0)), carphone, 2.0)
    harsh = psnr(condition_pixels(carphone, cfg, torch.Generator().manual_seed(3)), carphone, 2.0)
    assert harsh < plain - 1.0, (harsh, plain)


def test_second_order_ranges_are_checked_naming_the_field():
    with pytest.raises(ConfigError, match=r"second_order.noise_std: got \[0.1, 0.05\]"):
        build(DataConfig, {"upsample": {"degradation": "second_order", "second_order": {"noise_std": [0.1, 0.05]}}})
