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
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from ..core import normalise
from ..core.volume import Volume

SMOOTH_SIGMA = 1.0  # voxels: |error| is spatially correlated over about an output voxel


def features(enhanced: Volume, spread: Volume, noisy_input: Volume) -> dict[str, np.ndarray | float]:
    """The estimator's inputs on the output grid (arrays) and the input's noise level (a float)."""
    out = enhanced.array.astype(np.float32)
    grad = np.sqrt(sum(np.square(ndimage.sobel(out, axis=a) / 8.0) for a in range(3)))
    return {"spread": ndimage.gaussian_filter(spread.array.astype(np.float32), SMOOTH_SIGMA),
            "grad": ndimage.gaussian_filter(grad, SMOOTH_SIGMA),
            "sigma": normalise.noise_sigma(noisy_input.array)}


def scale_at(constants: Mapping[str, float], factor: float = 1.0) -> float:
    """k at an upsampling ``factor`` (the largest per-axis factor; 1 for denoising)."""
    k = float(constants.get("scale", 1.0))
    if "factor_ref" in constants and "factor_exponent" in constants:
        k *= (float(factor) / float(constants["factor_ref"])) ** float(constants["factor_exponent"])
    return k


def combine(feats: Mapping[str, Any], constants: Mapping[str, float], factor: float = 1.0) -> np.ndarray:
    """u from the features and a model's calibration constants (missing weights count as 0)."""
    total = np.zeros_like(feats["spread"], dtype=np.float32)
    for name in ("spread", "grad", "sigma"):
        weight = float(constants.get(name, 0.0))
        if weight:
            total = total + np.square(weight * np.asarray(feats[name], np.float32))
    return (scale_at(constants, factor) * np.sqrt(total)).astype(np.float32)


def estimate(enhanced: Volume, spread: Volume, noisy_input: Volume, constants: Mapping[str, float],
             factor: float = 1.0) -> Volume:
    """The uncertainty map on the output grid; ``factor``: the largest upsampling factor of the run."""
    return enhanced.with_array(combine(features(enhanced, spread, noisy_input), constants, factor))
