"""Geometric self-ensemble shared by the architectures: average a network over flipped copies of its input.

Each member reports itself through ``steps.report_step`` so a long window still shows progress."""
from __future__ import annotations

from typing import Callable

import torch

from .steps import report_step

# flip sets (tensor dims of a (N, C, D, H, W) input), ordered so that the first n are the most diverse
FLIPS_3D: tuple[tuple[int, ...], ...] = ((), (2, 3, 4), (2,), (3, 4), (3,), (2, 4), (4,), (2, 3))


def check_ensemble(n: int, spatial_dims: int) -> int:
    """``n`` if it is a valid ensemble size for ``spatial_dims`` (one pass per distinct flip set)."""
    if not 1 <= n <= 2**spatial_dims:
        raise ValueError(f"ensemble must be in 1..{2**spatial_dims}")
    return n


def flip_ensemble(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int,
                  spatial_dims: int) -> torch.Tensor:
    """Mean of ``flip(fn(flip(x)))`` over the first ``n`` distinct flip sets. Valid for any network whose output
    grid flips with its input grid (same-grid denoisers, extent-preserving upsamplers)."""
    check_ensemble(n, spatial_dims)
    flips = list(dict.fromkeys(tuple(d for d in f if d < 2 + spatial_dims) for f in FLIPS_3D))[:n]
    out = torch.zeros(())
    for i, f in enumerate(flips):
        y = fn(x.flip(f) if f else x)
        out = out + (y.flip(f) if f else y)
        report_step(i + 1, len(flips))
    return out / len(flips)


def flip_members(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int,
                 spatial_dims: int) -> torch.Tensor:
    """The members ``flip(fn(flip(x)))`` of ``flip_ensemble`` stacked on dim 1: (N, n, *S_out) for a ``fn``
    returning (N, 1, *S_out). Their mean is flip_ensemble's output; their spread feeds the uncertainty map."""
    check_ensemble(n, spatial_dims)
    flips = list(dict.fromkeys(tuple(d for d in f if d < 2 + spatial_dims) for f in FLIPS_3D))[:n]
    outs = []
    for f in flips:
        y = fn(x.flip(f) if f else x)
        outs.append(y.flip(f) if f else y)
    return torch.cat(outs, dim=1)
