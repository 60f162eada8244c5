"""TAE training losses (SPEC section 3): L1, LPIPS perceptual, hinge GAN with a 3D patch discriminator, KL,
and the outlier penalty loss (OPL). Videos are (b, 3, t, h, w) in [-1, 1]; latents (b, c, t, h, w).

Scale. The paper's weights (KL 1e-6, OPL 1e5) come with LDM's autoencoder loss (`LPIPSWithDiscriminator`), where
each term is a sum per sample averaged over the batch: L1 summed over the pixel elements (c, t, h, w), LPIPS
added to every pixel (so summed the same way), KL summed over the latent elements. We use exactly those sums,
divided by the sample's pixel-element count N = 3*t*h*w, a common factor that keeps the loss O(1) for logging and
gradient clipping and leaves every ratio between terms as LDM has it:
    l1          sum |x - x'| / N            = the per-element mean
    perceptual  sum over pixels of LPIPS / N = the mean LPIPS over frames
    kl          sum of the latent KL / N    = per-element KL mean * (latent elements / N) = mean / 96 at 8x8x8
    opl         OPL per sample / N          (OPL is already a mean over positions; the paper weights it 1e5)
Per-element means for KL and OPL, as before, made KL 96x and OPL N-fold (2e5 for a 256 px image, 6e6 for a
32-frame clip) stronger against reconstruction than the paper's weights intend. The GAN term is LDM's hinge
generator loss with a fixed `gan_weight` in place of LDM's adaptive weight.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.models.tae_blocks import to_frames


def l1_loss(reconstruction: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return (reconstruction - pixels).abs().mean()


def kl_per_pixel(posterior, pixels: torch.Tensor) -> torch.Tensor:
    """LDM's KL (summed over a sample's latent elements) / the sample's pixel elements, averaged over the batch."""
    latent_elements = posterior.mean[0].numel()
    return posterior.kl() * (latent_elements / pixels[0].numel())


def opl_loss(latents: torch.Tensor, r: float = 3.0, per_frame: bool = True) -> torch.Tensor:
    """Outlier penalty (Movie Gen eq. for L_OPL): (1/HW) sum_ij max(||X_ij - Mean(X)|| - r ||Std(X)||, 0).

    Mean and Std are over the h*w positions (population std); norms are L2 over X_ij's entries. `per_frame`:
    X is one latent frame (c, h, w), X_ij the c-vector at (i, j), averaged over frames and the batch. Else X is
    the whole (c, t, h, w) latent and X_ij the (c*t)-vector: a spot in one of T latent frames is then diluted
    by the other frames' spread, and must be ~sqrt(T) times further out to be penalised.
    """
    b, c, t, h, w = latents.shape
    if per_frame:
        x = latents.transpose(1, 2).reshape(b * t, c, h * w)  # (b*t, c, h*w)
    else:
        x = latents.reshape(b, c * t, h * w)  # (b, c*t, h*w)
    mean = x.mean(dim=2, keepdim=True)
    std = x.std(dim=2, unbiased=False)
    distance = (x - mean).norm(dim=1)  # (n, h*w)
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


def lpips_package_weights(net: str = "vgg", version: str = "v0.1") -> Path:
    """`weights/<version>/<net>.pth` inside the installed `lpips` package, found without importing it (its
    `__init__` imports torchvision, which we do not install: `pip install --no-deps lpips` is enough)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the lpips package is not installed (pip install --no-deps lpips); it ships the "
                                "LPIPS linear-layer weights")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / version / f"{net}.pth"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the installed lpips package")
    return path


class PerceptualNet(nn.Module):
    """LPIPS (Zhang et al. 2018, v0.1 VGG): unit-normalised features of a frozen VGG-16, squared differences
    weighted per channel by the non-negative linear layers `lins`, averaged over positions, summed over taps."""

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

    @classmethod
    def from_lpips_files(cls, vgg16_path: str | Path, lpips_path: str | Path | None = None) -> "PerceptualNet":
        """The VGG-16 convs from torchvision's ImageNet state dict (`vgg16-397923af.pth`: `features.<i>.weight/
        bias`; the classifier is ignored) and the linear layers from LPIPS's `weights/v0.1/vgg.pth`
        (`lin<k>.model.1.weight`, (1, C_k, 1, 1)); `lpips_path` None = the installed lpips package's file.
        The stage widths are read from the LPIPS file, so a narrower net in the same layouts loads too."""
        lpips_path = lpips_package_weights() if lpips_path is None else Path(lpips_path)
        lins = torch.load(lpips_path, map_location="cpu", weights_only=True)
        keys = sorted((k for k in lins if k.startswith("lin")), key=lambda k: int(k[3:].split(".")[0]))
        if not keys:
            raise ValueError(f"{lpips_path}: no 'lin<k>.model.1.weight' entries; not an LPIPS weight file")
        channels = tuple(lins[k].shape[1] for k in keys)
        net = cls(PerceptualNetConfig(stage_channels=channels))
        vgg = torch.load(vgg16_path, map_location="cpu", weights_only=True)
        features = {k: v for k, v in vgg.items() if k.startswith("features.")}
        state = {**features, **{f"lins.{i}": lins[k] for i, k in enumerate(keys)}}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{vgg16_path}: not torchvision's vgg16 layout for LPIPS widths {channels}: missing "
                             f"{missing[:4]}, unexpected {unexpected[:4]}")
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
    """Weights on LDM-scale terms (see the module docstring), so the paper's KL 1e-6 and OPL 1e5 apply as stated."""

    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    # LPIPS: torchvision's VGG-16 ImageNet weights (vgg16-397923af.pth), required when perceptual_weight > 0,
    # and LPIPS's linear layers (weights/v0.1/vgg.pth; null = the file in the installed lpips package).
    perceptual_vgg16_weights: str | None = None
    perceptual_lpips_weights: str | None = None
    kl_weight: float = 1e-6
    gan_weight: float = 0.1
    gan_start_step: int = 50000
    discriminator_channels: int = 64
    discriminator_layers: int = 3
    # OPL (SPEC section 3): r = 3, weight 1e5 in the paper's second phase, from opl_start_step on.
    opl_weight: float = 0.0
    opl_r: float = 3.0
    opl_start_step: int = 0
    # "frame": Mean/Std and the outlier test per latent frame (a spot in one frame counts); "clip": over (c, t).
    opl_reduction: Literal["frame", "clip"] = "frame"

    def validate(self) -> None:
        for name in ("l1_weight", "perceptual_weight", "kl_weight", "gan_weight", "opl_weight", "opl_r"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 0")
        for name in ("gan_start_step", "opl_start_step"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 0")
        if self.discriminator_channels < 8 or self.discriminator_channels % 8:
            raise ConfigError(f"discriminator_channels: got {self.discriminator_channels}, need a multiple of 8")
        if self.perceptual_weight > 0 and not self.perceptual_vgg16_weights:
            raise ConfigError(
                f"perceptual_vgg16_weights: null, but perceptual_weight is {self.perceptual_weight}, so the "
                f"perceptual term cannot run; give torchvision's VGG-16 ImageNet weights (vgg16-397923af.pth) or "
                f"set perceptual_weight: 0"
            )


class TAELoss(nn.Module):
    """Generator and discriminator objectives of the TAE; holds the discriminator and the perceptual net."""

    def __init__(self, cfg: TAELossConfig):
        super().__init__()
        self.cfg = cfg
        self.perceptual = self._perceptual_net(cfg) if cfg.perceptual_weight > 0 else None
        self.discriminator = PatchDiscriminator3D(cfg.discriminator_channels, cfg.discriminator_layers)

    @staticmethod
    def _perceptual_net(cfg: TAELossConfig) -> PerceptualNet:
        for field in ("perceptual_vgg16_weights", "perceptual_lpips_weights"):
            path = getattr(cfg, field)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"loss.{field}: {path} is not a file, and perceptual_weight is "
                                  f"{cfg.perceptual_weight}")
        try:
            return PerceptualNet.from_lpips_files(cfg.perceptual_vgg16_weights, cfg.perceptual_lpips_weights)
        except FileNotFoundError as exc:
            raise ConfigError(f"loss.perceptual_lpips_weights: null and {exc}") from exc

    def gan_active(self, step: int) -> bool:
        return self.cfg.gan_weight > 0 and step >= self.cfg.gan_start_step

    def generator_loss(self, pixels: torch.Tensor, reconstruction: torch.Tensor, posterior, latents: torch.Tensor,
                       step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum for the autoencoder and its named terms (floats, for logging)."""
        terms = {"l1": l1_loss(reconstruction, pixels), "kl": kl_per_pixel(posterior, pixels)}
        weights = {"l1": self.cfg.l1_weight, "kl": self.cfg.kl_weight}
        if self.perceptual is not None:
            terms["perceptual"], weights["perceptual"] = self.perceptual(reconstruction, pixels), self.cfg.perceptual_weight
        if self.cfg.opl_weight > 0 and step >= self.cfg.opl_start_step:
            per_frame = self.cfg.opl_reduction == "frame"
            terms["opl"] = opl_loss(latents, self.cfg.opl_r, per_frame) / pixels[0].numel()
            weights["opl"] = self.cfg.opl_weight
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
