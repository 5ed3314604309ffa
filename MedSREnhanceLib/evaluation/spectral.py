"""Sharpness fidelity: the high-frequency power of an output relative to its ground truth's (issue 15).

PSNR and SSIM reward a smooth mean estimate; a GAN's texture costs PSNR yet may be closer to the truth's spectrum.
``hf_power_ratio`` says which: the radially averaged power spectrum of each volume, summed above half the INPUT's
Nyquist frequency, output over ground truth. 1.0 = as much high-frequency power as the truth; below 1 = smoother
(blurred); above 1 = more (noise, ringing, or invented texture: the figure measures power, not correctness, so it
is read next to PSNR, never alone).

Frequencies are physical (cycles/mm, from the spacing of the grid both volumes share). For an anisotropic input
(through-plane cases) "half the input's Nyquist" is taken per axis: the radius is |f| measured in units of the
input's Nyquist along each axis (an ellipsoid in cycles/mm), so the band is where the input's own sampling starts
to lose detail along every axis. Both volumes get the same separable Hann window first: the crop's edges would
otherwise leak the same broadband power into both spectra and pull every ratio towards 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HF_FRACTION = 0.5  # the band starts at this fraction of the input's Nyquist frequency


def _hann(shape: tuple[int, ...]) -> np.ndarray:
    w = np.ones(shape)
    for axis, n in enumerate(shape):
        v = np.hanning(n) if n > 2 else np.ones(n)
        w = w * v.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return w


def normalised_radius(shape: tuple[int, ...], spacing_zyx: Sequence[float],
                      input_spacing_zyx: Sequence[float]) -> np.ndarray:
    """Per FFT bin of an array of ``shape`` on a grid of ``spacing_zyx`` (mm): |f| in units of the input's Nyquist
    frequency 1 / (2 input spacing) along each axis; 1.0 = the input's Nyquist."""
    r2 = np.zeros(shape)
    for axis, (n, d, d_in) in enumerate(zip(shape, spacing_zyx, input_spacing_zyx)):
        f = np.fft.fftfreq(n, d=float(d)) * (2.0 * float(d_in))  # cycles/mm over the input's Nyquist
        r2 = r2 + (f ** 2).reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return np.sqrt(r2)


def radial_power_spectrum(array: np.ndarray, radius: np.ndarray, bin_width: float) -> np.ndarray:
    """Mean power |FFT|^2 of the Hann-windowed, mean-removed ``array`` in radial bins [k w, (k+1) w) of ``radius``."""
    a = np.asarray(array, np.float64)
    power = np.abs(np.fft.fftn((a - a.mean()) * _hann(a.shape))) ** 2
    bins = np.floor(radius / bin_width).astype(np.int64).ravel()
    sums = np.bincount(bins, weights=power.ravel())
    counts = np.bincount(bins)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def hf_power_ratio(output: np.ndarray, reference: np.ndarray, spacing_ijk: Sequence[float],
                   input_spacing_ijk: Sequence[float], fraction: float = HF_FRACTION) -> float:
    """High-frequency power of ``output`` over that of ``reference`` (same (z, y, x) grid, ``spacing_ijk`` in the
    Volume's (i, j, k) order): the radially averaged power spectra summed over the bins above ``fraction`` of the
    input's Nyquist frequency (``input_spacing_ijk``: the spacing of the degraded input). Bins are the grid's
    smallest frequency step wide, in input-Nyquist units. NaN if the reference has no power there."""
    out, ref = np.asarray(output), np.asarray(reference)
    if out.shape != ref.shape:
        raise ValueError(f"output shape {out.shape} differs from reference shape {ref.shape}: resample it first")
    if len(spacing_ijk) != ref.ndim or len(input_spacing_ijk) != ref.ndim:
        raise ValueError("one spacing per axis is needed for the grid and for the input")
    spacing_zyx, input_zyx = tuple(spacing_ijk)[::-1], tuple(input_spacing_ijk)[::-1]
    radius = normalised_radius(ref.shape, spacing_zyx, input_zyx)
    bin_width = min(2.0 * d_in / (n * d) for n, d, d_in in zip(ref.shape, spacing_zyx, input_zyx))
    p_out = radial_power_spectrum(out, radius, bin_width)
    p_ref = radial_power_spectrum(ref, radius, bin_width)
    centres = (np.arange(p_ref.size) + 0.5) * bin_width
    band = centres > fraction
    total_ref = float(p_ref[band].sum())
    if total_ref <= 0.0:
        return float("nan")
    return float(p_out[band].sum()) / total_ref
