"""Data consistency of super-resolution: re-degrade an output onto its input's grid, and project it so that it
reproduces the input exactly.

The acquisition model A is separable: one (m, n) matrix per upsampled index axis from ``core.acquisition``
("kspace": the k-space truncation an MR acquisition at coarser resolution performs; "gaussian": a Gaussian slice
profile / PSF with FWHM = the LR spacing). The projection ``x + pinv(A) (y - A x)`` is the orthogonal projection
of x onto {x : A x = y}: it changes only what the acquisition could not see is left to the network, and since the
truth lies in that set (when A is the true acquisition) it never moves x further from the truth in L2.
pinv of a Kronecker product is the Kronecker product of the per-axis pinvs, so it runs axis by axis.
Everything here works in intensity units on the whole volume (after denormalisation and tiling).

The k-space model is periodic: exact for a whole field of view, wrong for a crop of a larger acquisition (a user's
region of interest, the bench's crops), where it folds one face onto the other and the projection then costs up to
0.2 dB. "kspace-mirrored" is the truncation of the volume continued by mirroring at its faces; ``best_fit`` picks,
per volume, whichever of the two the network's own output agrees with better (measured: the periodic model on
five whole volumes, the mirrored one on the bench's crops, each time the one that scored higher).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np

from ..core.acquisition import apply_axis, dirichlet_matrix, lr_positions, profile_matrix
from ..core.volume import Scale, Volume

MIRROR_LR_SAMPLES = 16  # LR samples of mirrored continuation on each side (8 and 16 scored alike on the bench)


def mirrored(operator: Callable[[int, float], np.ndarray], n: int, factor: float) -> np.ndarray:
    """(m, n) matrix of ``operator`` applied to the n samples continued by mirroring at both ends (whole LR
    samples, so the LR grid stays where it was); the plain operator when no whole number of LR samples spans a
    whole number of HR samples at this factor."""
    k = next((k for k in range(MIRROR_LR_SAMPLES, 4 * MIRROR_LR_SAMPLES) if abs(k * factor - round(k * factor)) < 1e-6),
             None)
    if k is None:
        return operator(n, factor)
    pad = round(k * factor)
    m = lr_positions(n, factor).size
    extend = np.pad(np.eye(n), ((pad, pad), (0, 0)), mode="symmetric")  # (n + 2 pad, n): repeats reflections
    return operator(n + 2 * pad, factor)[k:k + m] @ extend


# acquisition kind -> (n HR samples, factor) -> (m, n) matrix
OPERATORS: dict[str, Callable[[int, float], np.ndarray]] = {
    "kspace": dirichlet_matrix,
    "kspace-mirrored": lambda n, f: mirrored(dirichlet_matrix, n, f),
    "gaussian": lambda n, f: profile_matrix(n, f, f, "gaussian"),  # not periodic: renormalised at the edges
}
# the operators an acquisition kind may stand for (``best_fit`` chooses)
CANDIDATES: dict[str, tuple[str, ...]] = {"kspace": ("kspace", "kspace-mirrored")}


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


def best_fit(output: Volume, measured: Volume, scale: Scale, kind: str) -> str:
    """Of the operators ``kind`` may stand for, the one under which ``output`` (before any projection) reproduces
    ``measured`` best (least squares): the periodic k-space model for a whole field of view, the mirrored one for a
    crop. The network's output is close to the truth, and the truth fits its own acquisition's model best."""
    candidates = CANDIDATES.get(kind, (kind,))
    if len(candidates) == 1:
        return kind

    def misfit(candidate: str) -> float:
        lr = degrade(output, scale, candidate, measured.array.shape)
        return float("inf") if lr is None else float(np.mean(np.square(measured.array - lr, dtype=np.float64)))

    return min(candidates, key=misfit)


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
