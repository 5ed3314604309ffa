"""The networks' builder by config, and the training loss (L1 + SSIM, with own-noise correction)."""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from .config import ModelConfig


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    module = importlib.import_module(f"MedSREnhanceLib.models.{cfg.arch}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.kwargs.items()}
    return getattr(module, cfg.builder)(**kwargs)


def _gauss_kernel(sigma: float = 1.5, radius: int = 3) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM over (N, 1, *S) with a separable Gaussian window (sigma 1.5), valid region only."""
    k = _gauss_kernel().to(a)
    nd = a.dim() - 2
    conv = F.conv3d if nd == 3 else F.conv2d

    def blur(t: torch.Tensor) -> torch.Tensor:
        for axis in range(nd):
            if t.shape[2 + axis] < k.numel():
                continue  # too thin for the window (e.g. few CT slices): no smoothing along that axis
            shape = [1, 1] + [1] * nd
            shape[2 + axis] = k.numel()
            t = conv(t, k.view(shape))
        return t

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def expected_target(pred: torch.Tensor, x: torch.Tensor, retention: torch.Tensor | None) -> torch.Tensor:
    """What a noisy target is expected to look like given the clean estimate ``pred``: it keeps the fraction
    ``retention`` of the input's noise (DegradeConfig.own_noise_correction); ``pred`` itself when None."""
    return pred if retention is None else pred + retention * (x - pred)


def loss_fn(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    loss = F.l1_loss(pred, target)
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim(pred, target))
    return loss
