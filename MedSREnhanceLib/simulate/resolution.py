"""Resolution loss on the extent-preserving low-resolution grid: k-space truncation (MR), slice profile
(thick slices), Gaussian PSF (CT)."""
from __future__ import annotations

import numpy as np

from ..core.volume import Volume, resized_geometry

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

Scale3 = tuple[float, float, float]


def _lr_volume(vol: Volume, factors: Scale3, array: np.ndarray) -> Volume:
    """Wrap ``array`` (z, y, x) on the LR grid of ``vol`` for per-axis reduction ``factors`` (i, j, k)."""
    size, spacing, origin = resized_geometry(vol, tuple(1.0 / f for f in factors))  # type: ignore[arg-type]
    if array.shape != tuple(size[::-1]):
        raise RuntimeError(f"internal: LR array {array.shape} does not match grid {size[::-1]}")
    return Volume(array.astype(np.float32), spacing, origin, vol.direction.copy(), dict(vol.metadata))


def lr_positions(n: int, factor: float) -> np.ndarray:
    """HR continuous indices of the LR voxel centres along one axis (extent-preserving grid)."""
    m = int(max(1, np.floor(n / factor + 0.5)))
    return factor * np.arange(m) + (factor - 1.0) / 2.0


def _apply_axis(array: np.ndarray, matrix: np.ndarray, axis_ijk: int) -> np.ndarray:
    """Contract index axis ``axis_ijk`` (0=i ... 2=k) of a (z, y, x) array with ``matrix`` (m, n)."""
    np_axis = 2 - axis_ijk
    moved = np.moveaxis(array, np_axis, -1)  # (..., n)
    out = moved @ matrix.T  # (..., m)
    return np.moveaxis(out, -1, np_axis)


def _dirichlet_matrix(n: int, factor: float) -> np.ndarray:
    """(m, n) operator: band-limit to the central m Fourier coefficients, evaluate at the LR centres.

    The band-limited periodic interpolant of samples v[0..n-1] keeping frequencies |f| < m/2 (and half of the
    Nyquist pair when m is even) is  u(x) = sum_i v[i] * (1/n) * sum_f w_f cos(2 pi f (x - i) / n).
    Evaluating it at x_k = s*k + (s-1)/2 (not at s*k as a plain FFT crop would) puts the LR voxels where the
    extent-preserving grid says they are.
    """
    x = lr_positions(n, factor)
    m = x.size
    freqs = np.arange(0, m // 2 + 1)
    weights = np.where(freqs == 0, 1.0, 2.0)  # +f and -f
    if m % 2 == 0:
        weights[-1] = 1.0  # Nyquist pair: half weight each
    d = x[:, None] - np.arange(n)[None, :]  # (m, n)
    phase = 2.0 * np.pi * d[..., None] * freqs[None, None, :] / n  # (m, n, F)
    return (np.cos(phase) @ weights) / n


def _profile_matrix(n: int, factor: float, fwhm: float, profile: str) -> np.ndarray:
    """(m, n) operator: normalised slice-profile weights of HR voxel i for the LR voxel at x_k."""
    x = lr_positions(n, factor)
    d = np.arange(n)[None, :] - x[:, None]  # (m, n), in HR voxels
    if profile == "gaussian":
        sigma = max(fwhm, 1e-6) * FWHM_TO_SIGMA
        w = np.exp(-0.5 * (d / sigma) ** 2)
    elif profile == "rect":
        # exact overlap of each HR voxel [d-1/2, d+1/2] with the slab [-fwhm/2, fwhm/2]
        half = max(fwhm, 1e-6) / 2.0
        w = np.clip(np.minimum(d + 0.5, half) - np.maximum(d - 0.5, -half), 0.0, None)
    else:
        raise ValueError(f"unknown slice profile {profile!r}; use 'gaussian' or 'rect'")
    total = w.sum(axis=1, keepdims=True)
    # at the volume edges the profile is renormalised over the voxels that exist
    return w / np.where(total > 0, total, 1.0)


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
        arr = _apply_axis(arr, _dirichlet_matrix(n, f), axis)
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
    mat = _profile_matrix(n, thickness_factor, fwhm, profile)
    out = _apply_axis(vol.array.astype(np.float64), mat, axis)
    return _lr_volume(vol, tuple(factors), out)  # type: ignore[arg-type]


def gaussian_psf_downsample(vol: Volume, scale: float | tuple[float, ...]) -> Volume:
    """CT resolution loss: Gaussian PSF (FWHM = LR spacing) per axis, then sampling on the LR grid."""
    factors = _as_scale3(scale)
    arr = vol.array.astype(np.float64)
    for axis, f in enumerate(factors):
        if f == 1.0:
            continue
        n = arr.shape[2 - axis]
        arr = _apply_axis(arr, _profile_matrix(n, f, f, "gaussian"), axis)
    return _lr_volume(vol, factors, arr)
