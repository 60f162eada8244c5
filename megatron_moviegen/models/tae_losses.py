"""TAE training losses (SPEC section 3): L1, LPIPS-style perceptual, hinge GAN with a 3D patch discriminator,
KL, and the outlier penalty loss (OPL). Videos are (b, 3, t, h, w) in [-1, 1]; latents (b, c, t, h, w).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from megatron_moviegen.config.schema import ConfigError, build, to_dict
from megatron_moviegen.utils.io import atomic_output, atomic_write_text
from megatron_moviegen.models.tae_blocks import to_frames


def l1_loss(reconstruction: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return (reconstruction - pixels).abs().mean()


def opl_loss(latents: torch.Tensor, r: float = 3.0) -> torch.Tensor:
    """Outlier penalty (Movie Gen eq. for L_OPL): (1/HW) sum_ij max(||X_ij - Mean(X)|| - r ||Std(X)||, 0).

    X is one sample's latent (c, t, h, w); X_ij is the (c, t) vector at spatial position (i, j); Mean and Std
    are taken over the h*w positions (population std), norms are L2 over (c, t). Averaged over the batch.
    """
    b, c, t, h, w = latents.shape
    x = latents.reshape(b, c * t, h * w)  # (b, c*t, h*w)
    mean = x.mean(dim=2, keepdim=True)
    std = x.std(dim=2, unbiased=False)
    distance = (x - mean).norm(dim=1)  # (b, h*w)
    return F.relu(distance - r * std.norm(dim=1, keepdim=True)).mean()


# ---- perceptual -----------------------------------------------------------------------------------------

@dataclass
class PerceptualNetConfig:
    """A VGG-16-shaped feature net (LPIPS taps after each stage's last ReLU). Defaults are VGG-16's widths,
    with `features.<i>` indices matching torchvision's vgg16().features so its weights load directly."""

    stage_channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    convs_per_stage: tuple[int, ...] = (2, 2, 3, 3, 3)

    def validate(self) -> None:
        if len(self.stage_channels) != len(self.convs_per_stage):
            raise ConfigError(f"convs_per_stage: got {len(self.convs_per_stage)} stages, "
                              f"stage_channels has {len(self.stage_channels)}")
        if any(v < 1 for v in (*self.stage_channels, *self.convs_per_stage)):
            raise ConfigError("stage_channels and convs_per_stage must be positive")


class PerceptualNet(nn.Module):
    """LPIPS: unit-normalised features of a frozen conv net, squared differences weighted per channel by
    non-negative `lins`, averaged over positions and summed over taps."""

    # LPIPS's ScalingLayer: [-1, 1] pixels -> ImageNet-normalised input.
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, cfg: PerceptualNetConfig):
        super().__init__()
        self.cfg = cfg
        layers, taps, width = [], [], 3
        for stage, (channels, convs) in enumerate(zip(cfg.stage_channels, cfg.convs_per_stage)):
            if stage:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(convs):
                layers += [nn.Conv2d(width, channels, 3, padding=1), nn.ReLU()]
                width = channels
            taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.taps = taps
        self.lins = nn.ParameterList(nn.Parameter(torch.ones(1, c, 1, 1)) for c in cfg.stage_channels)
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x, out = (images - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, reconstruction: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance over every frame of (b, 3, t, h, w) videos."""
        a, b = self._features(to_frames(reconstruction)), self._features(to_frames(pixels))
        return sum(((fa - fb).pow(2) * lin).sum(dim=1).mean() for fa, fb, lin in zip(a, b, self.lins))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "config.json", json.dumps(to_dict(self.cfg)))
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        with atomic_output(path / "model.safetensors") as tmp:
            save_file(state, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> "PerceptualNet":
        """From a folder with config.json + model.safetensors (`features.*` conv weights, `lins.*` weights)."""
        path = Path(path)
        net = cls(build(PerceptualNetConfig, json.loads((path / "config.json").read_text())))
        net.load_state_dict(load_file(str(path / "model.safetensors")))
        return net.eval()


# ---- adversarial ----------------------------------------------------------------------------------------

class PatchDiscriminator3D(nn.Module):
    """PatchGAN over space-time: strided 3D convs (kernel 3 in t, 4 in h, w; stride 2 in h, w only, so a
    one-frame image works too) ending in one logit per patch, (b, 1, t, h', w')."""

    def __init__(self, channels: int = 64, num_layers: int = 3, norm_groups: int = 8):
        super().__init__()
        layers, width = [nn.Conv3d(3, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)], channels
        for i in range(1, num_layers):
            out = channels * min(2 ** i, 8)
            layers += [nn.Conv3d(width, out, (3, 4, 4), (1, 2, 2), (1, 1, 1), bias=False),
                       nn.GroupNorm(norm_groups, out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv3d(width, 1, (3, 3, 3), 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (b, 3, t, h, w) -> (b, 1, t, h', w')
        return self.net(video)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


# ---- combined -------------------------------------------------------------------------------------------

@dataclass
class TAELossConfig:
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    # Folder with the feature net (PerceptualNet.save layout); None switches the perceptual term off.
    perceptual_net_path: str | None = None
    kl_weight: float = 1e-6
    gan_weight: float = 0.1
    gan_start_step: int = 50000
    discriminator_channels: int = 64
    discriminator_layers: int = 3
    # OPL (SPEC section 3): r = 3, weight 1e5 in the paper's second phase, from opl_start_step on.
    opl_weight: float = 0.0
    opl_r: float = 3.0
    opl_start_step: int = 0

    def validate(self) -> None:
        for name in ("l1_weight", "perceptual_weight", "kl_weight", "gan_weight", "opl_weight", "opl_r"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 0")
        for name in ("gan_start_step", "opl_start_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 0")
        if self.discriminator_channels < 8 or self.discriminator_channels % 8:
            raise ConfigError(f"discriminator_channels: got {self.discriminator_channels}, need a multiple of 8")


class TAELoss(nn.Module):
    """Generator and discriminator objectives of the TAE; holds the discriminator and the perceptual net."""

    def __init__(self, cfg: TAELossConfig):
        super().__init__()
        self.cfg = cfg
        self.perceptual = PerceptualNet.load(cfg.perceptual_net_path) if cfg.perceptual_net_path else None
        self.discriminator = PatchDiscriminator3D(cfg.discriminator_channels, cfg.discriminator_layers)

    def gan_active(self, step: int) -> bool:
        return self.cfg.gan_weight > 0 and step >= self.cfg.gan_start_step

    def generator_loss(self, pixels: torch.Tensor, reconstruction: torch.Tensor, posterior, latents: torch.Tensor,
                       step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum for the autoencoder and its named terms (floats, for logging)."""
        terms = {"l1": l1_loss(reconstruction, pixels), "kl": posterior.kl()}
        weights = {"l1": self.cfg.l1_weight, "kl": self.cfg.kl_weight}
        if self.perceptual is not None:
            terms["perceptual"], weights["perceptual"] = self.perceptual(reconstruction, pixels), self.cfg.perceptual_weight
        if self.cfg.opl_weight > 0 and step >= self.cfg.opl_start_step:
            terms["opl"], weights["opl"] = opl_loss(latents, self.cfg.opl_r), self.cfg.opl_weight
        if self.gan_active(step):
            self.discriminator.requires_grad_(False)
            terms["gan"] = hinge_generator_loss(self.discriminator(reconstruction))
            weights["gan"] = self.cfg.gan_weight
            self.discriminator.requires_grad_(True)
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    def discriminator_loss(self, pixels: torch.Tensor, reconstruction: torch.Tensor,
                           discriminator: nn.Module | None = None) -> torch.Tensor:
        """Hinge loss of `discriminator` (default: self.discriminator; pass its DDP wrapper when data parallel)."""
        discriminator = self.discriminator if discriminator is None else discriminator
        logits = discriminator(torch.cat([pixels, reconstruction.detach()]))
        real, fake = logits.chunk(2)
        return hinge_discriminator_loss(real, fake)
