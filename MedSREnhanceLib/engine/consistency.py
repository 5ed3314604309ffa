"""Data consistency of super-resolution: re-degrade an output onto its input's grid, and project it so that it
reproduces the input exactly.

The acquisition model A is separable: one (m, n) matrix per upsampled index axis from ``core.acquisition``
("kspace": the k-space truncation an MR acquisition at coarser resolution performs; "gaussian": a Gaussian slice
profile / PSF with FWHM = the LR spacing). The projection ``x + pinv(A) (y - A x)`` is the orthogonal projection
of x onto {x : A x = y}: it changes only what the acquisition could not see is left to the network, and since the
truth lies in that set (when A is the true acquisition) it never moves x further from the truth in L2.
pinv of a Kronecker product is the Kronecker product of the per-axis pinvs, so it runs axis by axis.
Everything here works in intensity units on the whole volume (after denormalisation and tiling).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np

from ..core.acquisition import apply_axis, dirichlet_matrix, profile_matrix
from ..core.volume import Scale, Volume

# acquisition kind -> (n HR samples, factor) -> (m, n) matrix
OPERATORS: dict[str, Callable[[int, float], np.ndarray]] = {
    "kspace": dirichlet_matrix,
    "gaussian": lambda n, f: profile_matrix(n, f, f, "gaussian"),
}


def default_acquisition(modality: str, scale: Scale) -> str:
    """The acquisition a model without its own is judged by: one MR axis = thick slices; other MR = k-space."""
    upsampled = [s for s in scale if abs(s - 1.0) > 1e-9]
    return "kspace" if modality == "mr" and len(upsampled) > 1 else "gaussian"


@functools.lru_cache(maxsize=32)
def _matrices(kind: str, n: int, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, pinv(A)) of one axis, float32 (A: (m, n)); cached, volumes of one series share them."""
    a = OPERATORS[kind](n, factor)
    return a.astype(np.float32), np.linalg.pinv(a).astype(np.float32)


def _axes(scale: Scale) -> list[tuple[int, float]]:
    return [(axis, float(f)) for axis, f in enumerate(scale) if abs(f - 1.0) > 1e-9]


def degrade(output: Volume, scale: Scale, kind: str, lr_shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """A(output): the output seen by acquisition ``kind`` on the LR grid (z, y, x); None when the output grid
    does not nest with an input of ``lr_shape`` (e.g. a rounded non-integer factor)."""
    arr = output.array
    for axis, f in _axes(scale):
        a, _ = _matrices(kind, arr.shape[2 - axis], f)
        arr = apply_axis(arr, a, axis)
    return arr.astype(np.float32) if arr.shape == tuple(lr_shape) else None


def project(output: Volume, measured: Volume, scale: Scale, kind: str) -> Optional[Volume]:
    """``output + pinv(A)(measured - A output)``: the output that reproduces ``measured`` exactly (None when the
    grids do not nest)."""
    lr = degrade(output, scale, kind, measured.array.shape)
    if lr is None:
        return None
    correction = measured.array.astype(np.float32) - lr
    for axis, f in _axes(scale):
        _, p = _matrices(kind, output.array.shape[2 - axis], f)
        correction = apply_axis(correction, p, axis)
    return output.with_array((output.array + correction).astype(np.float32))


def residual(volume: Volume, enhanced: Volume, task: str, scale: Scale, kind: str) -> Optional[Volume]:
    """The input minus the enhanced volume degraded back onto the input grid (SR), or the removed component
    (tasks that keep the grid, denoising and motion: input minus output). None when the grids do not nest."""
    if task != "sr":
        return volume.with_array(volume.array - enhanced.array)
    lr = degrade(enhanced, scale, kind, volume.array.shape)
    return None if lr is None else volume.with_array(volume.array - lr)


def relative_rms(residual_map: Volume, reference: Volume) -> float:
    """RMS of a residual relative to the intensity range of ``reference`` (its 0.5th to 99.5th percentile)."""
    lo, hi = np.percentile(reference.array, (0.5, 99.5))
    span = float(hi - lo) or 1.0
    return float(np.sqrt(np.mean(np.square(residual_map.array, dtype=np.float64)))) / span
