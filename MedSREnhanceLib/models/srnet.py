"""Isotropic super-resolution network computing on the low-resolution grid (EDSR-like, pixel shuffle at the end).

output = body(x) pixel-shuffled by ``scale`` + trilinear upsample of x (``align_corners=False``, which puts the
output voxels where the extent-preserving grid of ``resized_geometry`` says they are). forward:
(N, 1, d, h, w) -> (N, 1, s*d, s*h, s*w) in 3D, (N, 1, h, w) -> (N, 1, s*h, s*w) in 2D.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ensemble import check_ensemble, flip_ensemble, flip_members


def pixel_shuffle_nd(x: torch.Tensor, scale: int, spatial_dims: int) -> torch.Tensor:
    """(N, C*s^d, *S) -> (N, C, *(s*S)); sub-voxel offsets ordered like torch.nn.PixelShuffle in 2D."""
    if spatial_dims == 2:
        return F.pixel_shuffle(x, scale)
    n, c, d, h, w = x.shape
    c_out = c // scale**3
    x = x.view(n, c_out, scale, scale, scale, d, h, w)  # (N, C, sd, sh, sw, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (N, C, d, sd, h, sh, w, sw)
    return x.reshape(n, c_out, d * scale, h * scale, w * scale)  # (N, C, s*d, s*h, s*w)


class ResBlock(nn.Module):
    def __init__(self, channels: int, spatial_dims: int, res_scale: float) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv1 = conv(channels, channels, 3, padding=1)
        self.conv2 = conv(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place and fused (x + res_scale * y in one op): two fewer full-size feature maps per block at inference
        return torch.add(x, self.conv2(F.relu(self.conv1(x), inplace=True)), alpha=self.res_scale)


class SRNet(nn.Module):
    """EDSR-style body at LR (``blocks`` residual blocks of ``channels``), pixel shuffle to ``scale``."""

    def __init__(self, scale: int = 2, channels: int = 32, blocks: int = 3, spatial_dims: int = 3,
                 res_scale: float = 0.5, ensemble: int = 1) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.scale = int(scale)
        self.spatial_dims = spatial_dims
        self.head = conv(1, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels, spatial_dims, res_scale) for _ in range(blocks)])
        self.body_end = conv(channels, channels, 3, padding=1)
        self.tail = conv(channels, self.scale**spatial_dims, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start as plain trilinear interpolation
        nn.init.zeros_(self.tail.bias)
        # every 3x3 conv widens the receptive field by one LR voxel; the trilinear skip needs one more
        # ensemble > 1: average the outputs over flipped copies of the input (geometric self-ensemble). Flipping
        # the LR grid flips the extent-preserving HR grid exactly, and the receptive field (halo) is unchanged.
        self.ensemble = check_ensemble(ensemble, spatial_dims)
        self.halo: int = 2 * blocks + 3
        self.scale_factors: tuple[int, ...] = (self.scale,) * spatial_dims
        # Peak floats held per input (LR) voxel of a window: the global skip and three body maps of `channels`,
        # one more in flight, and four output-size tensors (trilinear base, tail, shuffle, sum); 157-170 measured
        # for x2 with channels 32
        self.working_floats: float = 5 * channels + 4 * self.scale**spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ensemble == 1 or self.training:
            return self._forward(x)
        return flip_ensemble(self._forward, x, self.ensemble, self.spatial_dims)

    def members(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n, *(s*S)): the self-ensemble's members, whose mean is ``forward(x)`` in eval mode."""
        return flip_members(self._forward, x, self.ensemble, self.spatial_dims)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        base = F.interpolate(x, scale_factor=self.scale, mode=mode, align_corners=False)
        feat = self.head(x)  # (N, C, *S)
        feat = feat + self.body_end(self.body(feat))
        out = self.tail(feat)  # (N, s^d, *S)
        return base + pixel_shuffle_nd(out, self.scale, self.spatial_dims)  # (N, 1, *(s*S))
