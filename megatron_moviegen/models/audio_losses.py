"""Objectives of the audio autoencoder (SPEC section 7; DAC / HiFi-GAN style): multi-scale mel reconstruction, the
waveform L1, KL, and an adversarial term with feature matching from a multi-period and a multi-scale discriminator
once `gan_start_step` is reached. `AudioAELoss` has the TAE loss's interface (generator_loss, discriminator_loss,
gan_active, .discriminator), so one training loop serves both autoencoders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.models.tae_losses import hinge_discriminator_loss, hinge_generator_loss


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the HTK mel scale from 0 Hz to Nyquist."""
    def to_mel(hz):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = to_hz(torch.linspace(0.0, float(to_mel(torch.tensor(sample_rate / 2.0))), n_mels + 2,
                                 dtype=torch.float64))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (center - lower)
    falling = (upper - bins[None]) / (upper - center)
    return rising.minimum(falling).clamp(min=0.0).float()


def mel_spectrogram(waveform: torch.Tensor, filters: torch.Tensor, n_fft: int) -> torch.Tensor:
    """(b, ch, n) -> (b * ch, n_mels, frames) mel magnitudes (Hann window, hop n_fft / 4)."""
    flat = waveform.reshape(-1, waveform.shape[-1]).float()
    window = torch.hann_window(n_fft, device=waveform.device)
    stft = torch.stft(flat, n_fft, hop_length=n_fft // 4, window=window, return_complex=True, center=True)
    return filters.to(waveform.device) @ stft.abs()


class MultiScaleMelLoss(nn.Module):
    """Mean over scales of L1(log10 mel), mels clamped at 1e-5 (DAC's reconstruction loss, without its magnitude term,
    which DAC's recipe weights 0: on linear magnitudes a loud mistake dominates, and the tiny model diverged with it)."""

    def __init__(self, sample_rate: int, window_lengths: tuple[int, ...], n_mels: tuple[int, ...]):
        super().__init__()
        self.scales = list(zip(window_lengths, n_mels))
        for index, (n_fft, mels) in enumerate(self.scales):
            self.register_buffer(f"filters_{index}", mel_filterbank(sample_rate, n_fft, mels), persistent=False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for index, (n_fft, _) in enumerate(self.scales):
            filters = getattr(self, f"filters_{index}")
            ours, theirs = (mel_spectrogram(x, filters, n_fft) for x in (reconstruction, target))
            total = total + F.l1_loss(ours.clamp(min=1e-5).log10(), theirs.clamp(min=1e-5).log10())
        return total / len(self.scales)


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's: the waveform folded into (n / period, period) and seen by 2D convolutions along time."""

    def __init__(self, period: int, channels: int, audio_channels: int):
        super().__init__()
        self.period = period
        widths = [audio_channels, channels, 4 * channels, 16 * channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, (5, 1), (3, 1), padding=(2, 0)) for a, b in zip(widths, widths[1:]))
        self.convs.append(nn.Conv2d(widths[-1], widths[-1], (5, 1), padding=(2, 0)))
        self.out = nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, n = x.shape
        x = F.pad(x, (0, (-n) % self.period), mode="reflect").unflatten(-1, (-1, self.period))  # (b, c, n/p, p)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        return self.out(x), features


class ScaleDiscriminator(nn.Module):
    """MelGAN's: strided grouped 1D convolutions over the waveform at one (average-pooled) rate."""

    def __init__(self, channels: int, audio_channels: int):
        super().__init__()
        widths = [audio_channels, channels, 4 * channels, 16 * channels]
        self.convs = nn.ModuleList([nn.Conv1d(widths[0], widths[1], 15, padding=7)])
        self.convs.extend(nn.Conv1d(a, b, 41, 4, padding=20, groups=4) for a, b in zip(widths[1:], widths[2:]))
        self.out = nn.Conv1d(widths[-1], 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        return self.out(x), features


class AudioDiscriminator(nn.Module):
    """Multi-period (periods 2, 3, 5, 7, 11) and multi-scale (1x, 2x, 4x average-pooled) discriminators together:
    (b, ch, n) -> ([logits of each], [feature maps of each])."""

    def __init__(self, channels: int, audio_channels: int, periods: tuple[int, ...], scales: int):
        super().__init__()
        self.periods = nn.ModuleList(PeriodDiscriminator(p, channels, audio_channels) for p in periods)
        self.scales = nn.ModuleList(ScaleDiscriminator(channels, audio_channels) for _ in range(scales))

    def forward(self, waveform: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        outputs = [d(waveform) for d in self.periods]
        x = waveform
        for index, d in enumerate(self.scales):
            if index:
                x = F.avg_pool1d(x, 4, 2, padding=2)
            outputs.append(d(x))
        return [logits for logits, _ in outputs], [features for _, features in outputs]


@dataclass
class AudioAELossConfig:
    mel_weight: float = 15.0
    waveform_weight: float = 1.0
    kl_weight: float = 1e-4
    gan_weight: float = 1.0
    feature_weight: float = 2.0
    gan_start_step: int = 10000
    mel_window_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    discriminator_channels: int = 32
    discriminator_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    discriminator_scales: int = 3

    def validate(self) -> None:
        for name in ("mel_weight", "waveform_weight", "kl_weight", "gan_weight", "feature_weight", "gan_start_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 0")
        if len(self.mel_window_lengths) != len(self.mel_bins) or not self.mel_bins:
            raise ConfigError(f"mel_window_lengths {list(self.mel_window_lengths)} and mel_bins "
                              f"{list(self.mel_bins)} need one entry per scale")
        if self.discriminator_channels < 4 or self.discriminator_channels % 4:
            raise ConfigError(f"discriminator_channels: got {self.discriminator_channels}, need a multiple of 4")


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean L1 between the discriminators' feature maps of the real (detached) and generated waveforms."""
    pairs = [(r.detach(), f) for reals, fakes in zip(real, fake) for r, f in zip(reals, fakes)]
    return sum(F.l1_loss(f, r) for r, f in pairs) / len(pairs)


class AudioAELoss(nn.Module):
    def __init__(self, cfg: AudioAELossConfig, sample_rate: int, audio_channels: int = 1):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.mel = MultiScaleMelLoss(sample_rate, cfg.mel_window_lengths, cfg.mel_bins)
        self.discriminator = AudioDiscriminator(cfg.discriminator_channels, audio_channels, cfg.discriminator_periods,
                                                cfg.discriminator_scales)

    def gan_active(self, step: int) -> bool:
        return self.cfg.gan_weight > 0 and step >= self.cfg.gan_start_step

    def generator_loss(self, waveform: torch.Tensor, reconstruction: torch.Tensor, posterior, latents: torch.Tensor,
                       step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum for the autoencoder and its named terms (floats, for logging)."""
        terms = {"mel": self.mel(reconstruction, waveform), "waveform": F.l1_loss(reconstruction, waveform),
                 "kl": posterior.kl()}
        weights = {"mel": self.cfg.mel_weight, "waveform": self.cfg.waveform_weight, "kl": self.cfg.kl_weight}
        if self.gan_active(step):
            self.discriminator.requires_grad_(False)
            fake_logits, fake_features = self.discriminator(reconstruction)
            _, real_features = self.discriminator(waveform)
            terms["gan"] = sum(hinge_generator_loss(logits) for logits in fake_logits) / len(fake_logits)
            terms["features"] = feature_matching_loss(real_features, fake_features)
            weights.update(gan=self.cfg.gan_weight, features=self.cfg.feature_weight)
            self.discriminator.requires_grad_(True)
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def discriminator_loss(self, waveform: torch.Tensor, reconstruction: torch.Tensor,
                           discriminator: nn.Module | None = None) -> torch.Tensor:
        discriminator = discriminator or self.discriminator
        real, _ = discriminator(waveform)
        fake, _ = discriminator(reconstruction.detach())
        return sum(hinge_discriminator_loss(r, f) for r, f in zip(real, fake)) / len(real)


def snr_db(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Signal-to-noise ratio of a reconstruction in dB: 10 log10(|target|^2 / |target - reconstruction|^2)."""
    noise = (target - reconstruction).float().pow(2).sum().clamp_min(1e-20)
    return float(10.0 * torch.log10(target.float().pow(2).sum() / noise))


@torch.no_grad()
def mel_distance(a: torch.Tensor, b: torch.Tensor, sample_rate: int) -> float:
    """`MultiScaleMelLoss` at DAC's scales (AudioAELossConfig's defaults): the mean over scales of L1(log10 mel(a),
    log10 mel(b)); lower is closer, 0 for equal waveforms. a, b: (b, ch, n) waveforms at `sample_rate`."""
    defaults = AudioAELossConfig()
    metric = MultiScaleMelLoss(sample_rate, defaults.mel_window_lengths, defaults.mel_bins).to(a.device)
    return float(metric(a.float(), b.float()))
