"""Residual denoiser: a small U-Net (two 2x downsamplings, additive skips) that predicts the noise.

output = x - noise_estimate(x). The downsampled levels give a 22-voxel receptive-field radius at a fraction of the
cost of a full-resolution stack of the same reach (a 7-layer dilated full-resolution CNN, tried first, learned
nothing in the CPU budget). forward: (N, 1, *S) -> (N, 1, *S); any size (padded to a multiple of 4 inside).
Tiles agree with the whole volume when they start on multiples of 4 and read ``halo`` voxels around their core.
One file serves MR (Rician: the net learns to remove the positive noise floor in dark regions; ``clamp_min``
keeps magnitude outputs >= 0) and CT (separate weights). ``negative_slope`` > 0 uses leaky ReLUs: with plain
ReLUs and a zero-initialised head (now a 1e-2 init, see below), the MR run drove 98% of the full-resolution units dead within 200 Adam steps
(biases pushed negative while the head was still ~0), and the net never left the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ensemble import check_ensemble, flip_ensemble, flip_members


def _block(conv: type[nn.Module], c_in: int, c_out: int, n: int, stride: int = 1,
           negative_slope: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        act = nn.LeakyReLU(negative_slope, inplace=True) if negative_slope > 0 else nn.ReLU(inplace=True)
        layers += [conv(c_in if i == 0 else c_out, c_out, 3, stride=stride if i == 0 else 1, padding=1), act]
    return nn.Sequential(*layers)


class Denoiser(nn.Module):
    def __init__(self, channels: int = 16, spatial_dims: int = 3, clamp_min: float | None = None,
                 negative_slope: float = 0.0, ensemble: int = 1) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        up = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
        c, ns = channels, negative_slope
        self.enc0 = _block(conv, 1, c, 2, negative_slope=ns)  # full resolution
        self.enc1 = _block(conv, c, 2 * c, 2, stride=2, negative_slope=ns)  # 1/2
        self.mid = _block(conv, 2 * c, 4 * c, 3, stride=2, negative_slope=ns)  # 1/4
        self.up1 = up(4 * c, 2 * c, 2, stride=2)
        self.dec1 = _block(conv, 2 * c, 2 * c, 1, negative_slope=ns)
        self.up0 = up(2 * c, c, 2, stride=2)
        self.dec0 = _block(conv, c, c, 1, negative_slope=ns)
        self.head = conv(c, 1, 3, padding=1)
        # Start near the identity but not at it: a zero head gives every other layer zero gradient at first, and
        # Adam's normalised steps then drift biases negative (dead ReLUs). A 1e-2 head learned ~2x faster.
        nn.init.normal_(self.head.weight, 0.0, 1e-2)
        nn.init.zeros_(self.head.bias)
        self.clamp_min = clamp_min
        self.ensemble = check_ensemble(ensemble, spatial_dims)  # > 1: mean over flipped inputs at inference
        self.spatial_dims = spatial_dims
        self.halo: int = 24  # receptive-field radius is 19-22 by phase (tested); rounded up to a multiple of 4
        # The halo the engine tiles with: the receptive field's outer voxels barely count. On a 96x128x128 MR
        # block (mr-denoise, 48x64x64 cores) halo 16 differed from the untiled output by 1.9e-5 RMS and 9.5e-4 max
        # of the intensity range (94 dB; halo 12: 79 dB), and reads 1.7x instead of 2.7x the voxels of a
        # 256x256x160 volume in 384 MiB windows (benchmarks/README_models.md).
        self.tile_halo: int = 16
        self.scale_factors: tuple[int, ...] = (1,) * spatial_dims
        self.shift_multiple: int = 4  # tiles must start on this grid (two 2x downsamplings)
        # Inference: NDHWC ran 1.5x faster in oneDNN on an AMD EPYC (16-channel 3D convs; benchmarks/README_models.md)
        self.channels_last: bool = spatial_dims == 3
        # Peak floats held per input voxel of a window (3 full-resolution maps of `channels` + the input, padding
        # and output): 48.8 measured at 128^3 with channels 16, channels last
        self.working_floats: float = 3 * channels + 4

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """``x`` replicate-padded to multiples of 4, and the crop back to its size."""
        size = x.shape[2:]
        pad: list[int] = []
        for n in reversed(size):  # F.pad order: last dim first, (before, after)
            pad += [0, (-n) % 4]
        xp = F.pad(x, pad, mode="replicate") if any(pad) else x
        return xp, (...,) + tuple(slice(0, n) for n in size)

    def _finish(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = x - noise
        return out.clamp_min(self.clamp_min) if self.clamp_min is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, crop = self._pad(x)
        # padded first, so flipped copies stay on the 4-voxel grid and tiles still match the whole volume
        if self.ensemble > 1 and not self.training:
            noise = flip_ensemble(self._noise, xp, self.ensemble, self.spatial_dims)
        else:
            noise = self._noise(xp)
        return self._finish(x, noise[crop])

    def members(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n, *S): the self-ensemble's members, whose mean is ``forward(x)`` (without ``clamp_min``)."""
        xp, crop = self._pad(x)
        return self._finish(x, flip_members(self._noise, xp, self.ensemble, self.spatial_dims)[crop])

    def _noise(self, xp: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(xp)
        e1 = self.enc1(e0)
        u1 = self.up1(self.mid(e1))
        u1 += e1  # skips added in place and dropped at once: fewer full-size maps alive at the peak
        del e1
        u0 = self.up0(self.dec1(u1))
        del u1
        u0 += e0
        del e0
        return self.head(self.dec0(u0))
