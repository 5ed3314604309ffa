"""A small 3D (or 2D) feature network for a feature-space ("perceptual") loss, trained here from scratch.

No pretrained perceptual network (VGG and the like) can be downloaded, and 2D photo features would not suit MR
volumes anyway. This net is the encoder of a denoising autoencoder trained on HR MR patches of volumes whose
licence allows bundled weights (training/adversarial.py): to undo noise it must encode edges, texture and the
local contrast of tissue, which is what a feature loss should compare. Only used in training, never bundled.

forward (the pretext task): (N, 1, *S) -> (N, 1, *S) reconstruction, S divisible by 4.
``features``: the encoder's activations at full, half and quarter resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureNet(nn.Module):
    """Encoder conv(1->c), conv(c->2c, stride 2), conv(2c->4c, stride 2); a light decoder used only by the pretext."""

    def __init__(self, channels: int = 16, spatial_dims: int = 3) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        c = channels
        self.spatial_dims = spatial_dims
        self.encoder = nn.ModuleList([
            nn.Sequential(conv(1, c, 3, padding=1), nn.LeakyReLU(0.1), conv(c, c, 3, padding=1), nn.LeakyReLU(0.1)),
            nn.Sequential(conv(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.1)),  # (N, 2c, *S/2)
            nn.Sequential(conv(2 * c, 4 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.1)),  # (N, 4c, *S/4)
        ])
        self.decode4 = conv(4 * c, 2 * c, 3, padding=1)
        self.decode2 = conv(2 * c, c, 3, padding=1)
        self.decode1 = conv(c, 1, 3, padding=1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        acts = []
        for stage in self.encoder:
            x = stage(x)
            acts.append(x)
        return acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        _, f2, f4 = self.features(x)
        # no skip from full resolution: the decoder must rebuild detail from the coarser features
        d = F.interpolate(F.leaky_relu(self.decode4(f4), 0.1), scale_factor=2, mode=mode, align_corners=False)
        d = F.interpolate(F.leaky_relu(self.decode2(d + f2), 0.1), scale_factor=2, mode=mode, align_corners=False)
        return x + self.decode1(d)  # (N, 1, *S): residual, the decoder predicts the correction
