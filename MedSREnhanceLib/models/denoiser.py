"""Residual 3D denoiser (DnCNN/IRCNN-like): dilated 3x3(x3) convolutions, no pooling, fully convolutional.

output = x - noise_estimate(x). Dilations (1, 2, 3, 4, 3, 2, 1) give a 16-voxel receptive-field radius at the
cost of seven convolutions, and keep the network exactly shift-equivariant (tiles cut anywhere agree).
forward: (N, 1, *S) -> (N, 1, *S). One file serves MR (Rician: the net learns to remove the positive noise floor
in dark regions; ``clamp_min`` optionally keeps outputs >= a value) and CT (separate weights).
"""
from __future__ import annotations

import torch
from torch import nn


class Denoiser(nn.Module):
    def __init__(self, channels: int = 24, dilations: tuple[int, ...] = (1, 2, 3, 4, 3, 2, 1),
                 spatial_dims: int = 3, clamp_min: float | None = None) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        dil = tuple(int(d) for d in dilations)
        layers: list[nn.Module] = []
        for i, d in enumerate(dil):
            c_in = 1 if i == 0 else channels
            c_out = 1 if i == len(dil) - 1 else channels
            layers.append(conv(c_in, c_out, 3, padding=d, dilation=d))
            if i < len(dil) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)  # start as identity
        nn.init.zeros_(self.net[-1].bias)
        self.clamp_min = clamp_min
        self.halo: int = sum(dil)
        self.scale_factors: tuple[int, ...] = (1,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x - self.net(x)  # (N, 1, *S)
        if self.clamp_min is not None:
            out = out.clamp_min(self.clamp_min)
        return out
