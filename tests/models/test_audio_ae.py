"""The audio autoencoder (SPEC section 7): 48 kHz waveforms <-> 25 Hz latents of 128 channels, its folder format and
latent space, and its losses."""

import math

import pytest
import torch

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.audio import read_audio
from megatron_moviegen.models.audio_ae import AudioAEConfig, AudioAutoencoder, AudioLatentEncoder
from megatron_moviegen.models.audio_losses import (
    AudioAELoss,
    AudioAELossConfig,
    mel_distance,
    mel_filterbank,
    snr_db,
)
from megatron_moviegen.training.train_audio_ae import load_audio_ae_config
from tests.audio import bundled


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return AudioAutoencoder(load_audio_ae_config("audio_ae_tiny").model).eval()


def test_the_paper_rates_give_25_latent_frames_a_second_of_128_channels():
    cfg = AudioAEConfig()
    assert cfg.hop_length == 1920 and cfg.latent_rate == 25.0 and cfg.latent_channels == 128


def test_real_audio_encodes_to_a_frame_per_hop_and_decodes_to_its_length(tiny):
    waveform = read_audio(bundled("bigbuckbunny.mp4"), 48000, 1, duration_s=1.01)  # 48,480 samples: 25.25 hops
    posterior = tiny.encode(waveform[None])
    assert posterior.mean.shape == (1, 128, 26)  # the last, partial hop is zero-padded
    decoded = tiny.decode(posterior.mode(), num_samples=waveform.shape[1])
    assert decoded.shape == (1, 1, 48480) and decoded.abs().max() <= 1.0
    with pytest.raises(ValueError, match="num_samples: got 48000, which encodes to 25 latent frames, but latents "
                                         "have 26"):
        tiny.decode(posterior.mode(), num_samples=48000)
    with pytest.raises(ValueError, match=r"waveform: got shape \(1, 2, 100\), expected \(b, 1, n\)"):
        tiny.encode(torch.zeros(1, 2, 100))


def test_a_folder_round_trips_weights_config_and_the_latent_space(tiny, tmp_path):
    stats = AudioAutoencoder(AudioAEConfig(**{**tiny.cfg.__dict__, "latent_shift": tuple([0.5] * 128),
                                              "latent_scale": tuple([2.0] * 128)}))
    stats.load_state_dict(tiny.state_dict())
    stats.save_pretrained(tmp_path / "ae")
    loaded = AudioAutoencoder.from_pretrained(tmp_path / "ae")
    assert loaded.cfg == stats.cfg
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), stats.state_dict().values()))
    z = torch.randn(1, 128, 3)
    assert torch.allclose(loaded.normalize_latents(z), (z - 0.5) / 2.0)
    assert torch.allclose(loaded.denormalize_latents(loaded.normalize_latents(z)), z)
    waveform = torch.zeros(1, 1, 3840)
    # The DiT's latents: normalised posterior means on the (t, h, w) grid, one token per latent frame.
    latents = AudioLatentEncoder(loaded).encode(waveform)
    assert latents.shape == (1, 128, 2, 1, 1)
    assert torch.allclose(latents[..., 0, 0], (loaded.encode(waveform).mode() - 0.5) / 2.0)


@pytest.mark.parametrize("change,message", [
    ({"strides": []}, "strides: got"),
    ({"latent_scale": (1.0, 2.0)}, "latent_scale: got 2 values, need 0"),
    ({"base_channels": 0}, "base_channels: got 0"),
])
def test_bad_shapes_are_refused_naming_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        AudioAEConfig(**change).validate()


def test_mel_distance_is_zero_for_the_same_audio_and_grows_with_the_difference():
    waveform = read_audio(bundled("bigbuckbunny.mp4"), 48000, 1, start_s=1.0, duration_s=0.5)[None]
    assert mel_distance(waveform, waveform, 48000) == 0.0
    noisy = waveform + 0.01 * torch.randn_like(waveform)
    noisier = waveform + 0.1 * torch.randn_like(waveform)
    assert 0 < mel_distance(noisy, waveform, 48000) < mel_distance(noisier, waveform, 48000)
    filters = mel_filterbank(48000, 1024, 80)
    assert filters.shape == (80, 513) and (filters >= 0).all() and (filters.sum(1) > 0).all()  # no empty band
    peaks = filters.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > 400  # ascending bands up to Nyquist


def test_mel_filterbank_is_librosas_htk_filterbank():
    """librosa 0.11.0's `filters.mel(sr=48000, n_fft=1024, n_mels=80, fmin=0, fmax=24000, htk=True, norm=None)`, read
    off once (librosa is not a dependency): bands 0, 10, 40 and 79 and the whole bank's sum."""
    filters = mel_filterbank(48000, 1024, 80).double()
    librosa_bands = {0: (1, [0.532140481]), 10: (9, [0.717052169, 0.353074931]),
                     40: (72, [0.040132915, 0.296356837, 0.55258076, 0.808804683, 0.937770217, 0.692574141]),
                     79: (468, [0.017609735, 0.063686232, 0.10976273, 0.155839227, 0.201915725, 0.247992222])}
    for band, (first_bin, values) in librosa_bands.items():
        assert int(filters[band].nonzero()[0]) == first_bin
        assert filters[band, first_bin : first_bin + len(values)].tolist() == pytest.approx(values, abs=5e-6)
    assert filters.sum().item() == pytest.approx(500.155622773217, abs=1e-3)  # 4.9e-5 off: float32 filters


def test_snr_of_a_known_noise_level():
    target = torch.sin(torch.arange(48000) / 10.0)[None, None]
    noise = torch.randn_like(target)
    noise = noise * (target.pow(2).sum() / noise.pow(2).sum() / 100).sqrt()  # 20 dB below the signal
    assert snr_db(target + noise, target) == pytest.approx(20.0, abs=1e-3)


def test_the_gan_joins_the_loss_at_its_start_step_with_feature_matching():
    loss = AudioAELoss(AudioAELossConfig(gan_start_step=5, discriminator_channels=8), 48000)
    target, reconstruction = torch.randn(2, 1, 4800) * 0.1, torch.randn(2, 1, 4800) * 0.1
    reconstruction.requires_grad_(True)

    class Posterior:
        def kl(self):
            return torch.tensor(0.25)

    _, before = loss.generator_loss(target, reconstruction, Posterior(), None, step=4)
    total, after = loss.generator_loss(target, reconstruction, Posterior(), None, step=5)
    assert set(before) == {"mel", "waveform", "kl"} and set(after) == {"mel", "waveform", "kl", "gan", "features"}
    total.backward()
    assert reconstruction.grad.abs().sum() > 0
    # Five period and three scale discriminators, each scoring real and generated audio.
    logits, features = loss.discriminator(target)
    assert len(logits) == 8 and all(math.prod(x.shape) > 0 for x in logits) and len(features) == 8
    assert loss.discriminator_loss(target, reconstruction).item() > 0
