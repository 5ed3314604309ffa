"""Through-plane super-resolution with windowed self-attention (Swin-style) instead of convolutions: the transformer
variant of issue 15, competing with ``throughplane.ThroughPlaneNet`` under the same CPU training budget.

The 2D core: a 3x3 convolution to ``channels`` features, ``blocks`` Swin blocks (LayerNorm, multi-head attention
inside 8x8 windows with a learned relative-position bias, LayerNorm, MLP; every second block's windows offset by
half a window), a 3x3 convolution back to one channel, residual to the B-spline input (zero-initialised, so it
starts as the B-spline). Offset windows come from padding, not from rolling the map, so no window wraps around
the border and no attention mask is needed. The 3D wrapper, its two slice orientations and the engine contract
are ``ThroughPlaneNet``'s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .throughplane import ThroughPlaneNet


class WindowAttention(nn.Module):
    """Multi-head self-attention over the tokens of each ``window`` x ``window`` window, relative-position bias."""

    def __init__(self, channels: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.bias = nn.Parameter(torch.zeros(heads, (2 * window - 1) ** 2))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + window - 1  # (2, T, T), each in [0, 2w-2]
        self.register_buffer("index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C), T = window^2
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias[:, self.index].unsqueeze(0)  # (1, heads, T, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class SwinBlock(nn.Module):
    def __init__(self, channels: int, heads: int, window: int, shifted: bool, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.window, self.shift = window, window // 2 if shifted else 0
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.attn = WindowAttention(channels, heads, window)
        self.mlp = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(),
                                 nn.Linear(mlp_ratio * channels, channels))

    def _windows(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(N, H, W, C) -> (N * windows, window^2, C), padded so the window grid starts ``shift`` before 0."""
        n, h, w, c = x.shape
        s, win = self.shift, self.window
        ph, pw = (-(h + s)) % win, (-(w + s)) % win
        x = F.pad(x, (0, 0, s, pw, s, ph))  # (C untouched, W before/after, H before/after): zeros
        hp, wp = x.shape[1:3]
        x = x.reshape(n, hp // win, win, wp // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, win * win, c)
        return x, (n, hp, wp, h, w)

    def _merge(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        n, hp, wp, h, w = shape
        win, s = self.window, self.shift
        c = x.shape[-1]
        x = x.reshape(n, hp // win, wp // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, c)
        return x[:, s:s + h, s:s + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, W, C)
        windows, shape = self._windows(self.norm1(x))
        x = x + self._merge(self.attn(windows), shape)
        return x + self.mlp(self.norm2(x))


class SwinSliceNet2d(nn.Module):
    """x + residual(x) on (N, 1, D, L) slices: conv in, Swin blocks, conv out."""

    def __init__(self, channels: int = 32, blocks: int = 4, heads: int = 2, window: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList([SwinBlock(channels, heads, window, shifted=i % 2 == 1) for i in range(blocks)])
        self.tail = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start as the B-spline input
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x).permute(0, 2, 3, 1)  # (N, D, L, C): tokens last for the linear layers
        for block in self.blocks:
            f = block(f)
        return x + self.tail(f.permute(0, 3, 1, 2))


class SwinThroughPlaneNet(ThroughPlaneNet):
    """``ThroughPlaneNet`` with the Swin 2D core: (N, 1, D, H, W) -> same, both slice orientations averaged."""

    def __init__(self, channels: int = 32, blocks: int = 4, heads: int = 2, window: int = 8,
                 spatial_dims: int = 3, slice_batch: int = 16) -> None:
        super().__init__(channels=channels, dilations=(1,), spatial_dims=spatial_dims, slice_batch=slice_batch)
        self.net2d = SwinSliceNet2d(channels, blocks, heads, window)
        self.channels_last = False  # the core is not convolutional: no NHWC layout to gain
        # Receptive field: each block reaches the rest of its window (up to window - 1 voxels), the offset blocks
        # carry it across window borders, so it grows by up to a window per block; plus the two 3x3 convolutions.
        self.halo = blocks * window + 2
        self.working_floats = 6  # as ThroughPlaneNet: the 2D maps are bounded per slice batch

    def _batch(self, d: int, length: int) -> int:
        """Attention keeps ~(3 + 2 + mlp 2) maps of ``channels`` per token, plus the window scores: a smaller
        budget per batch than the convolutional core's."""
        return max(1, min(self.slice_batch, 2**24 // (8 * self.channels * d * length)))
