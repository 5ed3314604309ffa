"""MR motion-artifact reduction: a 2D residual U-Net (three 2x downsamplings) run on the slices of all three
orientations of the volume, the three results averaged.

Why 2D on every orientation: rigid motion during a scan corrupts k-space lines along the phase-encode axis, and
the ghosts and blurring it leaves spread along that axis, tens of voxels from the edge that causes them. A 3D
net with that reach was too slow to train on two CPU cores (the 3D U-Net of mr-denoise, radius 22, stayed at the
corrupted input's PSNR); a 2D U-Net reaches ~60 voxels for a fraction of the cost, and two of the three
orientations contain the phase-encode axis whatever it is. forward: (N, 1, D, H, W) -> same shape;
``members`` gives the three orientations' outputs (their spread is the uncertainty map's input). ``combine``
"median" keeps, per voxel, the middle of the three: the net trains on slices that contain the phase-encode axis,
so the two orientations that contain it agree on a correction and the third, which cannot see the ghosts, is
outvoted where a mean would dilute the correction by a third.
``spatial_dims=2`` exposes the bare 2D net on (N, 1, H, W) for training (``net2d``, as the through-plane model).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .steps import report_step


def _convs(c_in: int, c_out: int, n: int, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, stride=stride if i == 0 else 1, padding=1),
                   nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


class StripContext(nn.Module):
    """Adds to every position what its whole row, its whole column and the whole slice hold (means of the
    features, 1x1 convolutions): the motion that made the ghosts is one for the whole scan, and a local window
    alone cannot tell a ghost from an edge. Zero-initialised: starts as the identity."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.row, self.col, self.whole = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        for conv in (self.row, self.col, self.whole):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        g = self.row(f.mean(3, keepdim=True)) + self.col(f.mean(2, keepdim=True)) + self.whole(
            f.mean((2, 3), keepdim=True))
        return f + F.leaky_relu(g, 0.1)


class UNet2d(nn.Module):
    """x - artifact(x): encoder c, 2c, 4c, 8c (stride-2 convolutions), transposed-convolution decoder with
    additive skips. Input padded (reflect) to a multiple of 8 inside. ``context``: StripContext on the two
    coarsest levels (the output then depends on whole rows and columns of the slice)."""

    MULTIPLE = 8

    def __init__(self, channels: int = 16, context: bool = False) -> None:
        super().__init__()
        c = channels
        self.context = nn.ModuleList([StripContext(4 * c), StripContext(8 * c)]) if context else None
        self.enc = nn.ModuleList([_convs(1, c, 2), _convs(c, 2 * c, 2, 2), _convs(2 * c, 4 * c, 2, 2),
                                  _convs(4 * c, 8 * c, 2, 2)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(8 * c, 4 * c, 2, 2), nn.ConvTranspose2d(4 * c, 2 * c, 2, 2),
                                 nn.ConvTranspose2d(2 * c, c, 2, 2)])
        self.dec = nn.ModuleList([_convs(4 * c, 4 * c, 1), _convs(2 * c, 2 * c, 1), _convs(c, c, 1)])
        self.head = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.normal_(self.head.weight, 0.0, 1e-2)  # near the identity, not at it (see denoiser.py)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.MULTIPLE, (-w) % self.MULTIPLE
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        xp = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
        skips = []
        f = xp
        for i, enc in enumerate(self.enc):
            f = enc(f)
            if self.context is not None and i >= 2:
                f = self.context[i - 2](f)
            if i < len(self.enc) - 1:
                skips.append(f)
        for up, dec in zip(self.up, self.dec):
            f = up(f)
            f += skips.pop()
            f = dec(f)
        return x - self.head(f)[..., :h, :w]


class MotionNet(nn.Module):
    def __init__(self, channels: int = 16, spatial_dims: int = 3, slice_batch: int = 16,
                 combine: str = "mean", context: bool = False) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        if combine not in ("mean", "median"):
            raise ValueError(f"combine must be 'mean' or 'median', got {combine!r}")
        self.combine = combine
        self.net2d = UNet2d(channels, context)
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.slice_batch = slice_batch
        # receptive-field radius of the 2D net: 31-38 voxels in-plane by phase on the 8-voxel grid (tested); slices
        # are independent, so none across them
        self.halo: int = 40  # rounded up to the 8-voxel grid the tiles start on
        self.tile_halo: int = 32  # the field's outer voxels barely count (as the denoiser's)
        if context:  # every output voxel sees whole slices: a window must read the whole volume
            self.halo = self.tile_halo = 1 << 16
        self.shift_multiple: int = 8
        # Peak floats per input voxel of a window: the input, three orientations' outputs and their stack (the 2D
        # maps are bounded by ``_batch``, not by the window)
        self.working_floats: float = 8
        self.scale_factors: tuple[int, ...] = (1,) * spatial_dims
        self.channels_last: bool = False

    def _batch(self, h: int, w: int) -> int:
        """Slices per 2D batch: at most ``slice_batch``, fewer where the full-resolution maps (about three of
        ``channels``) would pass 2**25 floats."""
        return max(1, min(self.slice_batch, 2**25 // (3 * self.channels * h * w)))

    def _orientation(self, x: torch.Tensor, axis: int, offset: int, total: int) -> torch.Tensor:
        """The 2D net on every slice across torch dim ``axis`` (2, 3 or 4) of (N, 1, D, H, W)."""
        perm = [0, axis, 1] + [d for d in (2, 3, 4) if d != axis]  # (N, S, 1, P, Q)
        moved = x.permute(*perm)
        planes = moved.reshape(-1, 1, *moved.shape[3:])
        out = []
        for i, chunk in enumerate(torch.split(planes, self._batch(*planes.shape[2:]))):
            out.append(self.net2d(chunk))
            if total:
                report_step(offset + i + 1, total)
        return torch.cat(out).reshape(moved.shape).permute(*[perm.index(d) for d in range(5)])

    def members(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, D, H, W): the 2D net across D, across H and across W."""
        counts = [-(-x.shape[0] * x.shape[a] // self._batch(*[x.shape[b] for b in (2, 3, 4) if b != a]))
                  for a in (2, 3, 4)]
        outs, done = [], 0
        for a, n in zip((2, 3, 4), counts):
            outs.append(self._orientation(x, a, done, sum(counts)))
            done += n
        return torch.cat(outs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 2:
            return self.net2d(x)
        return self.fuse(self.members(x))

    def fuse(self, members: torch.Tensor) -> torch.Tensor:
        """(N, 3, ...) orientation outputs -> (N, 1, ...) by ``combine``."""
        if self.combine == "median":
            return members.median(dim=1, keepdim=True).values
        return members.mean(dim=1, keepdim=True)
