"""The GAN variant's pieces: the patch discriminator, the feature net, the RaGAN and feature losses, one
adversarial training step, the [adversarial] config table, and that `auto` never picks a GAN model."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from MedSREnhanceLib.models.discriminator import PatchDiscriminator
from MedSREnhanceLib.models.feature_net import FeatureNet
from MedSREnhanceLib.models.srnet import SRNet
from MedSREnhanceLib.training.adversarial import (
    AdversarialObjective,
    feature_loss,
    pretext_batch,
    ragan_losses,
)
from MedSREnhanceLib.training.config import AdversarialConfig, load_config


@pytest.mark.parametrize("dims", [2, 3])
def test_discriminator_scores_quarter_resolution_patches(dims: int) -> None:
    d = PatchDiscriminator(channels=4, spatial_dims=dims).eval()  # eval: no spectral-norm power iteration
    x = torch.rand((2, 1) + (16,) * dims)
    logits, acts = d.features(x)
    assert logits.shape == (2, 1) + (4,) * dims
    assert [a.shape[1:] for a in acts] == [(4,) + (16,) * dims, (8,) + (8,) * dims, (16,) + (4,) * dims]
    assert torch.equal(d(x), logits)


@pytest.mark.parametrize("dims", [2, 3])
def test_feature_net_keeps_the_shape_and_gives_three_scales(dims: int) -> None:
    f = FeatureNet(channels=4, spatial_dims=dims)
    x = torch.rand((2, 1) + (12,) * dims)
    assert f(x).shape == x.shape
    assert [a.shape[2:] for a in f.features(x)] == [(12,) * dims, (6,) * dims, (3,) * dims]


def test_ragan_losses_reward_the_side_that_wins() -> None:
    real, fake = torch.full((2, 1, 4, 4), 5.0), torch.full((2, 1, 4, 4), -5.0)
    d_loss, g_loss = ragan_losses(real, fake)
    assert float(d_loss) < 1e-3 and float(g_loss) > 5.0  # D separates them: D wins, G pays
    d_even, g_even = ragan_losses(real, real.clone())
    assert float(d_even) == pytest.approx(float(g_even)) == pytest.approx(float(F.softplus(torch.zeros(()))))


def test_feature_loss_is_zero_on_the_target_and_grows_with_blur() -> None:
    torch.manual_seed(0)
    f = FeatureNet(channels=4, spatial_dims=3).eval()
    y = torch.rand(1, 1, 12, 12, 12)
    blurred = F.avg_pool3d(y, 3, stride=1, padding=1, count_include_pad=False)
    with torch.no_grad():
        assert float(feature_loss(f, y, y)) == 0.0
        assert float(feature_loss(f, blurred, y)) > 0.01


def test_pretext_input_is_blurred_or_noisy_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 4, 4, 4), torch.rand(8, 1, 8, 8, 8)
    out = pretext_batch(x, y, g)
    up = F.interpolate(x, size=(8, 8, 8), mode="trilinear", align_corners=False)
    blurred = [bool(torch.equal(out[i], up[i])) for i in range(8)]
    assert any(blurred) and not all(blurred)
    for i in (i for i in range(8) if not blurred[i]):
        assert 0.005 < float((out[i] - y[i]).std()) < 0.06  # 1-5 % white noise on the target


def test_one_adversarial_step_moves_the_generator_and_only_then_the_discriminator() -> None:
    torch.manual_seed(0)
    cfg = AdversarialConfig(discriminator_channels=4, feature_channels=4, adversarial_weight=0.1)
    objective = AdversarialObjective(cfg, FeatureNet(4, 2), PatchDiscriminator(4, 2))
    gen = SRNet(scale=2, channels=4, blocks=1, spatial_dims=2)
    torch.nn.init.normal_(gen.tail.weight, std=0.01)
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 16, 16)
    d_before = [p.detach().clone() for p in objective.discriminator.parameters()]
    pred = gen(x)
    loss = F.l1_loss(pred, y) + objective.generator_terms(pred, y)
    loss.backward()
    assert gen.tail.weight.grad is not None and float(gen.tail.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in objective.discriminator.parameters())  # G's loss leaves D alone
    assert all(p.grad is None for p in objective.features.parameters())  # the feature net is frozen
    objective.discriminator_step(pred, y)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, objective.discriminator.parameters()))
    assert set(objective.last) == {"feature", "adversarial_g", "adversarial_d"}


def test_adversarial_table_is_checked(tmp_path: Path) -> None:
    base = Path(__file__).resolve().parents[1] / "configs" / "mr-sr-x2-gan.toml"
    cfg = load_config(base)
    assert cfg.adversarial is not None and cfg.model.init_from.endswith("mr-sr-x2.pt")
    bad = tmp_path / "bad.toml"
    bad.write_text(base.read_text().replace("[adversarial]", "[adversarial]\nfeature_wieght = 1.0"))
    with pytest.raises(ValueError, match="feature_wieght"):
        load_config(bad)
    motion = tmp_path / "motion.toml"
    # another task: without the SR-only tables and keys (randomise, isotropise), so the adversarial check answers
    other = re.sub(r"\n\[randomise\]\n.*?(?=\n\[[a-z]+\]\n)", "\n", base.read_text(), flags=re.S)
    other = other.replace("isotropise = true\n", "")
    motion.write_text(other.replace('task = "sr"', 'task = "denoise-mr"'))
    with pytest.raises(ValueError, match="adversarial"):
        load_config(motion)
