"""Resolution loss on the extent-preserving low-resolution grid: k-space truncation (MR), slice profile
(thick slices), Gaussian PSF (CT). The per-axis operator matrices are in ``core.acquisition``."""
from __future__ import annotations

import numpy as np

from ..core.acquisition import FWHM_TO_SIGMA, lr_positions  # noqa: F401 - re-exported by simulate
from ..core.acquisition import apply_axis, dirichlet_matrix, profile_matrix
from ..core.volume import Volume, resized_geometry

Scale3 = tuple[float, float, float]

def _lr_volume(vol: Volume, factors: Scale3, array: np.ndarray) -> Volume:
    """Wrap ``array`` (z, y, x) on the LR grid of ``vol`` for per-axis reduction ``factors`` (i, j, k)."""
    size, spacing, origin = resized_geometry(vol, tuple(1.0 / f for f in factors))  # type: ignore[arg-type]
    if array.shape != tuple(size[::-1]):
        raise RuntimeError(f"internal: LR array {array.shape} does not match grid {size[::-1]}")
    return Volume(array.astype(np.float32), spacing, origin, vol.direction.copy(), dict(vol.metadata))


def _as_scale3(scale: float | tuple[float, ...]) -> Scale3:
    if isinstance(scale, (int, float, np.integer, np.floating)):
        return (float(scale),) * 3  # type: ignore[return-value]
    s = tuple(float(v) for v in scale)
    if len(s) != 3:
        raise ValueError(f"scale needs 3 values (i, j, k), got {s}")
    return s  # type: ignore[return-value]


def kspace_truncation(vol: Volume, scale: float | tuple[float, ...]) -> Volume:
    """MR resolution loss by k-space truncation onto the LR grid (``scale`` = reduction factor per axis)."""
    factors = _as_scale3(scale)
    arr = vol.array.astype(np.float64)
    for axis, f in enumerate(factors):
        if f == 1.0:
            continue
        if f < 1.0:
            raise ValueError(f"k-space truncation needs factors >= 1, got {factors}")
        n = arr.shape[2 - axis]
        arr = apply_axis(arr, dirichlet_matrix(n, f), axis)
    return _lr_volume(vol, factors, arr)


def slice_profile(vol: Volume, axis: int, thickness_factor: float, profile: str = "gaussian",
                  gap: float = 0.0) -> Volume:
    """Thick-slice acquisition along index ``axis`` (see module docstring for ``gap``)."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (i, j, k), got {axis}")
    if thickness_factor < 1.0 or not 0.0 <= gap < 1.0:
        raise ValueError(f"need thickness_factor >= 1 and 0 <= gap < 1, got {thickness_factor}, {gap}")
    factors = [1.0, 1.0, 1.0]
    factors[axis] = float(thickness_factor)
    n = vol.array.shape[2 - axis]
    fwhm = thickness_factor * (1.0 - gap)
    mat = profile_matrix(n, thickness_factor, fwhm, profile)
    out = apply_axis(vol.array.astype(np.float64), mat, axis)
    return _lr_volume(vol, tuple(factors), out)  # type: ignore[arg-type]


def gaussian_psf_downsample(vol: Volume, scale: float | tuple[float, ...]) -> Volume:
    """CT resolution loss: Gaussian PSF (FWHM = LR spacing) per axis, then sampling on the LR grid."""
    factors = _as_scale3(scale)
    arr = vol.array.astype(np.float64)
    for axis, f in enumerate(factors):
        if f == 1.0:
            continue
        n = arr.shape[2 - axis]
        arr = apply_axis(arr, profile_matrix(n, f, f, "gaussian"), axis)
    return _lr_volume(vol, factors, arr)
