"""Movie Gen Audio's autoencoder (SPEC section 7): a DAC-style 1D convolutional VAE, 48 kHz waveforms <-> 25 Hz
continuous 128-channel latents.

    ae = AudioAutoencoder(AudioAEConfig())                    # hop 2 * 4 * 5 * 6 * 8 = 1920 samples
    posterior = ae.encode(waveform)                            # (b, 1, n) in [-1, 1] -> over (b, 128, ceil(n / 1920))
    waveform = ae.decode(posterior.mode(), num_samples=n)      # (b, 1, n)
    ae.save_pretrained("runs/audio_ae/checkpoint"); AudioAutoencoder.from_pretrained(...)   # as the TAE's folders

Encoder: a 7-tap convolution, then per stride a block of three dilated residual units (dilations 1, 3, 9) with Snake
activations and a strided convolution that doubles the channels, then a 3-tap projection to the posterior's mean and
log-variance (the TAE's `DiagonalGaussian`). The decoder mirrors it with transposed convolutions and ends in tanh.
A waveform whose length is not a multiple of the hop is zero-padded at the end and the decode is cut back to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.models.pretrained import PretrainedAutoencoder, check_latent_stats
from megatron_moviegen.models.tae import DiagonalGaussian


@dataclass
class AudioAEConfig:
    """Defaults: the paper's rates (48 kHz mono -> 25 Hz, 128 channels)."""

    sample_rate: int = 48000
    audio_channels: int = 1  # 2 for stereo
    latent_channels: int = 128
    base_channels: int = 64
    strides: tuple[int, ...] = (2, 4, 5, 6, 8)
    dilations: tuple[int, ...] = (1, 3, 9)
    # Per-channel statistics of the encoder's latents (data/latent_stats.py), as the TAE's: the DiT sees
    # (z - latent_shift) / latent_scale. Empty: identity.
    latent_shift: tuple[float, ...] = ()
    latent_scale: tuple[float, ...] = ()

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return math.prod(self.strides)

    @property
    def latent_rate(self) -> float:
        """Latent frames per second (25 for the defaults)."""
        return self.sample_rate / self.hop_length

    def validate(self) -> None:
        for name in ("sample_rate", "audio_channels", "latent_channels", "base_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if not self.strides or any(s < 1 for s in self.strides):
            raise ConfigError(f"strides: got {list(self.strides)}, need positive entries")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ConfigError(f"dilations: got {list(self.dilations)}, need positive entries")
        check_latent_stats(self)


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, one learned alpha per channel (BigVGAN / DAC): periodic, so it fits waveforms."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(Snake(channels), nn.Conv1d(channels, channels, 7, dilation=dilation,
                                                              padding=3 * dilation),
                                   Snake(channels), nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Conv1d:
    """Length n * stride -> n."""
    return nn.Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2))


def _upsample(c_in: int, c_out: int, stride: int) -> nn.ConvTranspose1d:
    """Length n -> n * stride (the inverse shape of `_downsample`)."""
    return nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2),
                              output_padding=stride % 2)


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioAEConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(cfg.audio_channels, cfg.base_channels, 7, padding=3)]
        channels = cfg.base_channels
        for stride in cfg.strides:
            layers += [ResidualUnit(channels, d) for d in cfg.dilations]
            layers += [Snake(channels), _downsample(channels, 2 * channels, stride)]
            channels *= 2
        layers += [Snake(channels), nn.Conv1d(channels, 2 * cfg.latent_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(b, ch, n * hop) -> moments (b, 2 * latent_channels, n)."""
        return self.layers(waveform)


class AudioDecoder(nn.Module):
    def __init__(self, cfg: AudioAEConfig):
        super().__init__()
        channels = cfg.base_channels * 2 ** len(cfg.strides)
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_channels, channels, 7, padding=3)]
        for stride in reversed(cfg.strides):
            layers += [Snake(channels), _upsample(channels, channels // 2, stride)]
            channels //= 2
            layers += [ResidualUnit(channels, d) for d in cfg.dilations]
        layers += [Snake(channels), nn.Conv1d(channels, cfg.audio_channels, 7, padding=3), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, latent_channels, n) -> (b, ch, n * hop) in [-1, 1]."""
        return self.layers(latents)


class AudioAutoencoder(PretrainedAutoencoder, nn.Module):
    config_class, display_name = AudioAEConfig, "audio autoencoder"

    def __init__(self, cfg: AudioAEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = AudioEncoder(cfg)
        self.decoder = AudioDecoder(cfg)

    def latent_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.cfg.hop_length)

    def encode(self, waveform: torch.Tensor) -> DiagonalGaussian:
        """(b, ch, n) in [-1, 1] -> the posterior over latents (b, latent_channels, ceil(n / hop))."""
        if waveform.ndim != 3 or waveform.shape[1] != self.cfg.audio_channels:
            raise ValueError(f"waveform: got shape {tuple(waveform.shape)}, expected (b, {self.cfg.audio_channels}, n)")
        pad = self.latent_frames(waveform.shape[-1]) * self.cfg.hop_length - waveform.shape[-1]
        return DiagonalGaussian(self.encoder(F.pad(waveform, (0, pad))))

    def decode(self, latents: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """(b, latent_channels, T) -> (b, ch, num_samples) in [-1, 1]; num_samples defaults to T * hop and may be
        up to one hop shorter (the encoder's padding)."""
        full = latents.shape[-1] * self.cfg.hop_length
        num_samples = full if num_samples is None else num_samples
        if latents.ndim != 3 or latents.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"latents: got shape {tuple(latents.shape)}, expected (b, {self.cfg.latent_channels}, T)")
        if not full - self.cfg.hop_length < num_samples <= full:
            raise ValueError(f"num_samples: got {num_samples}, which encodes to {self.latent_frames(num_samples)} "
                             f"latent frames, but latents have {latents.shape[-1]}")
        return self.decoder(latents)[..., :num_samples]

    def forward(self, waveform: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct (b, ch, n); returns (reconstruction, posterior)."""
        posterior = self.encode(waveform)
        latents = posterior.sample() if sample else posterior.mode()
        return self.decode(latents, waveform.shape[-1]), posterior


class AudioLatentEncoder:
    """The audio autoencoder behind pre-encoding's AudioEncoder protocol: the posterior mean, normalised by the
    autoencoder's latent_shift / latent_scale (the DiT's latent space), as (b, c, T, 1, 1) latents: one token per
    latent frame on the DiT's (t, h, w) grid."""

    def __init__(self, autoencoder: AudioAutoencoder):
        self.autoencoder = autoencoder
        self.cfg = autoencoder.cfg

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """(b, ch, n) in [-1, 1] -> (b, latent_channels, ceil(n / hop), 1, 1)."""
        param = next(self.autoencoder.parameters())
        posterior = self.autoencoder.encode(waveform.to(param.device, param.dtype))
        return self.autoencoder.normalize_latents(posterior.mode())[..., None, None]
