"""Per-voxel uncertainty of a learned enhancement: the expected absolute error, in output intensity units.

    u = k * sqrt((a * spread)^2 + (b * grad)^2 + (c * sigma)^2)

spread: standard deviation of the model's ensemble members (flipped copies of the input, or the through-plane
net's two slice orientations): where the network's answer depends on how it looks at the input it is guessing.
grad: gradient magnitude of the enhanced volume (intensity per output voxel), smoothed: errors of super-
resolution and denoising concentrate on edges and fine texture, which is where the members also disagree but
more reliably ranked. sigma: the input's noise level (MAD of its finest wavelet detail): the floor of residual
noise a denoiser leaves in flat tissue. The weights (a, b, c) and the scale k are per model, fitted on development
volumes (``evaluation.calibration``) so that median |error| / median u = 1 there, and read from the model card's
"uncertainty" entry. A model that serves a range of upsampling factors (through-plane: 2-6) may also carry
``factor_ref`` and ``factor_exponent`` (gamma): k is then multiplied by (factor / factor_ref)^gamma, fitted on the
development volumes at several factors, since the error grows with the factor faster than the members' spread.
A denoiser that serves a range of noise levels may likewise carry ``level_ref`` and ``level_exponent``: k times
(level / level_ref)^exponent, level = the input's noise sigma over its robust maximum (what the MR denoiser's
normalisation estimates), fitted at several noise levels: calibrated at one, the map over-stated the error at a
lower level and under-stated it at a higher one.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from ..core import normalise
from ..core.volume import Volume

SMOOTH_SIGMA = 1.0  # voxels: |error| is spatially correlated over about an output voxel


def features(enhanced: Volume, spread: Volume, noisy_input: Volume) -> dict[str, np.ndarray | float]:
    """The estimator's inputs on the output grid (arrays), the input's noise sigma and its level (sigma over the
    robust maximum; floats)."""
    out = enhanced.array.astype(np.float32)
    sigma = normalise.noise_sigma(noisy_input.array)
    grad = np.sqrt(sum(np.square(ndimage.sobel(out, axis=a) / 8.0) for a in range(3)))
    return {"spread": ndimage.gaussian_filter(spread.array.astype(np.float32), SMOOTH_SIGMA),
            "grad": ndimage.gaussian_filter(grad, SMOOTH_SIGMA),
            "sigma": sigma, "level": sigma / normalise.robust_max(noisy_input.array)}


def scale_at(constants: Mapping[str, float], factor: float = 1.0, level: float | None = None) -> float:
    """k at an upsampling ``factor`` (the largest per-axis factor; 1 for denoising) and an input noise ``level``
    (sigma / robust maximum; used only by a calibration that carries a level exponent)."""
    k = float(constants.get("scale", 1.0))
    if "factor_ref" in constants and "factor_exponent" in constants:
        k *= (float(factor) / float(constants["factor_ref"])) ** float(constants["factor_exponent"])
    if "level_ref" in constants and "level_exponent" in constants and level is not None and level > 0:
        k *= (float(level) / float(constants["level_ref"])) ** float(constants["level_exponent"])
    return k


def combine(feats: Mapping[str, Any], constants: Mapping[str, float], factor: float = 1.0) -> np.ndarray:
    """u from the features and a model's calibration constants (missing weights count as 0)."""
    total = np.zeros_like(feats["spread"], dtype=np.float32)
    for name in ("spread", "grad", "sigma"):
        weight = float(constants.get(name, 0.0))
        if weight:
            total = total + np.square(weight * np.asarray(feats[name], np.float32))
    level = feats.get("level")
    return (scale_at(constants, factor, None if level is None else float(level)) * np.sqrt(total)).astype(np.float32)


def estimate(enhanced: Volume, spread: Volume, noisy_input: Volume, constants: Mapping[str, float],
             factor: float = 1.0) -> Volume:
    """The uncertainty map on the output grid; ``factor``: the largest upsampling factor of the run."""
    return enhanced.with_array(combine(features(enhanced, spread, noisy_input), constants, factor))
