"""A small 3D (or 2D) patch discriminator for adversarial fine-tuning of the SR nets (PatchGAN-style).

Only used in training (never bundled): it scores every receptive-field patch of an HR volume as real (high) or
generated (low). forward: (N, 1, *S) -> (N, 1, *S/4) logits (two stride-2 convolutions; S divisible by 4 keeps
the grid exact). ``features`` returns the activations after each stage as well, for a feature-matching loss.
"""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """conv(1->c) then two strided stages (c->2c->4c, stride 2) and a 1-channel logit conv; LeakyReLU 0.2,
    no normalisation layers (batches are 4 small patches: batch statistics would be noise), spectral norm on
    every conv to keep the discriminator's gradients bounded (Miyato et al. 2018)."""

    def __init__(self, channels: int = 16, spatial_dims: int = 3) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        sn = nn.utils.parametrizations.spectral_norm
        c = channels
        self.stages = nn.ModuleList([
            nn.Sequential(sn(conv(1, c, 3, padding=1)), nn.LeakyReLU(0.2)),  # (N, c, *S)
            nn.Sequential(sn(conv(c, 2 * c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)),  # (N, 2c, *S/2)
            nn.Sequential(sn(conv(2 * c, 4 * c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)),  # (N, 4c, *S/4)
        ])
        self.logit = sn(conv(4 * c, 1, 3, padding=1))  # (N, 1, *S/4)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, activations after each stage)."""
        acts = []
        for stage in self.stages:
            x = stage(x)
            acts.append(x)
        return self.logit(x), acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]
