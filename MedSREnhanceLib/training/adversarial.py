"""The adversarial objective of a GAN fine-tune (config table [adversarial]): a feature-space loss from a feature net
trained here first, and a relativistic patch discriminator trained alongside the generator (ESRGAN-style).

Steps, in ``training.loop``: build_objective() trains (or reloads) the feature net on the HR patches of the
training volumes, then every generator step adds ``generator_terms`` to the pixel loss and is followed by one
``discriminator_step``. The feature net and the discriminator stay in the run directory: only the generator ships.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..models.discriminator import PatchDiscriminator
from ..models.feature_net import FeatureNet
from .config import AdversarialConfig
from .pairs import PairSource

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def pretext_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The feature net's corrupted input for HR targets ``y``: per sample, either the LR input ``x`` upsampled
    trilinearly (the blur SR must undo) or ``y`` plus white noise of 1-5 % (so its features separate noise from
    edges). (N, 1, *S) -> (N, 1, *S)."""
    mode = "trilinear" if y.dim() == 5 else "bilinear"
    blurred = F.interpolate(x, size=y.shape[2:], mode=mode, align_corners=False)
    level = 0.01 + 0.04 * torch.rand((y.shape[0],) + (1,) * (y.dim() - 1), generator=generator)
    noisy = y + level * torch.randn(y.shape, generator=generator)
    pick = torch.rand((y.shape[0],) + (1,) * (y.dim() - 1), generator=generator) < 0.5
    return torch.where(pick, blurred, noisy)


def train_feature_net(net: FeatureNet, source: PairSource, cfg: AdversarialConfig, batch: int,
                      seed: int) -> list[float]:
    """Pretext training (deblurring/denoising autoencoder, L1 to the clean HR patch); returns the loss history."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.feature_lr)
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    ema = None
    net.train()
    for step in range(cfg.feature_steps):
        x, y, _ = source.batch(batch)
        loss = F.l1_loss(net(pretext_batch(x, y, gen)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if (step + 1) % 100 == 0:
            history.append(ema)
            logger.info("feature net step %d loss %.4f", step + 1, ema)
    return history


def feature_loss(features: FeatureNet, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the feature net's layers of L1(features(pred), features(target)) / mean |features(target)|: each
    layer counts alike, whatever its activation scale."""
    total = torch.zeros(())
    fp, ft = features.features(pred), features.features(target)
    for a, b in zip(fp, ft):
        b = b.detach()
        total = total + F.l1_loss(a, b) / (b.abs().mean() + 1e-6)
    return total / len(fp)


def ragan_losses(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relativistic average GAN losses (Jolicoeur-Martineau 2018, as in ESRGAN) from patch logits:
    (discriminator loss, generator loss). The discriminator learns that real patches look more real than the
    average fake one and fakes less real than the average real one; the generator the reverse."""
    real_rel = real - fake.mean()
    fake_rel = fake - real.mean()
    ones, zeros = torch.ones_like(real_rel), torch.zeros_like(fake_rel)
    d_loss = 0.5 * (F.binary_cross_entropy_with_logits(real_rel, ones)
                    + F.binary_cross_entropy_with_logits(fake_rel, zeros))
    g_loss = 0.5 * (F.binary_cross_entropy_with_logits(real_rel, zeros)
                    + F.binary_cross_entropy_with_logits(fake_rel, ones))
    return d_loss, g_loss


class AdversarialObjective:
    """The frozen feature net, the discriminator and its optimiser; the extra generator terms and the D step."""

    def __init__(self, cfg: AdversarialConfig, features: FeatureNet, discriminator: PatchDiscriminator) -> None:
        self.cfg = cfg
        self.features = features.eval().requires_grad_(False)
        self.discriminator = discriminator
        self.opt = torch.optim.Adam(discriminator.parameters(), lr=cfg.discriminator_lr, betas=(0.5, 0.999))
        self.steps = 0  # discriminator steps taken (the warm-up counts them)
        self.last: dict[str, float] = {}

    def generator_terms(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """feature_weight * feature loss + adversarial_weight * RaGAN generator loss (after the D warm-up)."""
        feat = feature_loss(self.features, pred, target)
        total = self.cfg.feature_weight * feat
        self.last = {"feature": float(feat.detach())}
        if self.steps >= self.cfg.discriminator_warmup and self.cfg.adversarial_weight > 0:
            self.discriminator.requires_grad_(False)  # the generator's step must not move D
            _, g_loss = ragan_losses(self.discriminator(target), self.discriminator(pred))
            self.discriminator.requires_grad_(True)
            total = total + self.cfg.adversarial_weight * g_loss
            self.last["adversarial_g"] = float(g_loss.detach())
        return total

    def discriminator_step(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        d_loss, _ = ragan_losses(self.discriminator(target), self.discriminator(pred.detach()))
        self.opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt.step()
        self.steps += 1
        self.last["adversarial_d"] = float(d_loss.detach())
        return float(d_loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "opt": self.opt.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt.load_state_dict(state["opt"])
        self.steps = int(state["steps"])


def build_objective(cfg: AdversarialConfig, source: PairSource, run_dir: Path, batch: int, seed: int,
                    resume: bool = False, spatial_dims: int = 3) -> tuple[AdversarialObjective, list[float]]:
    """The objective of a GAN fine-tune: the feature net trained on ``source``'s HR patches (reloaded from
    ``run_dir/feature_net.pt`` when resuming a run that trained it), a fresh discriminator (a resumed run loads its
    own from the checkpoint). Returns the objective and the feature net's pretext loss history (empty if reloaded)."""
    features = FeatureNet(cfg.feature_channels, spatial_dims)
    path = run_dir / "feature_net.pt"
    history: list[float] = []
    if resume and path.exists():
        features.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        logger.info("feature net reloaded from %s", path)
    else:
        history = train_feature_net(features, source, cfg, batch, seed)
        torch.save(features.state_dict(), path)
    return AdversarialObjective(cfg, features, PatchDiscriminator(cfg.discriminator_channels, spatial_dims)), history
