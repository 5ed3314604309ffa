"""Rician MR noise, with sigma a fraction of the foreground's 99th percentile."""
from __future__ import annotations

import numpy as np

from ..core.volume import Volume


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Voxels with |value| above 5% of the 99.5th percentile of the non-zero |values|.

    Works for magnitude images (background ~0) and for brain-z-scored volumes (background exactly 0, tissue
    values of either sign).
    """
    mag = np.abs(array)
    nz = mag[mag > 0]
    if nz.size == 0:
        return np.zeros(array.shape, bool)
    return mag > 0.05 * float(np.percentile(nz, 99.5))


def rician_sigma(array: np.ndarray, level: float) -> tuple[float, float]:
    """(sigma, base): noise std for ``level`` and the background offset used for signed volumes."""
    base = min(0.0, float(array.min())) if array.size else 0.0
    mask = foreground_mask(array)
    ref = float(np.percentile(np.abs(array[mask]), 99)) if mask.any() else 1.0
    return level * ref, base


def rician_noise(vol: Volume, level: float, rng: np.random.Generator) -> Volume:
    """|x + n_re + i n_im| with n ~ N(0, sigma^2), sigma = level * p99(foreground)."""
    sigma, base = rician_sigma(vol.array, level)
    x = vol.array.astype(np.float64) - base
    n_re = rng.normal(0.0, sigma, x.shape)
    n_im = rng.normal(0.0, sigma, x.shape)
    out = np.sqrt((x + n_re) ** 2 + n_im**2) + base
    return vol.with_array(out.astype(np.float32))
