"""Classical enhancement methods, run through the same interface as learned models.

They are what users compare against (each takes explicit parameters so the benchmark can tune them on the ground
truth) and they make every path of the product work without trained weights.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from ..core.resample import from_sitk, resample_scale, to_sitk
from ..core.volume import Scale, Volume

SR_METHODS = ("linear", "bspline", "sinc")
DENOISE_METHODS = ("gaussian", "curvature_diffusion", "nlmeans")


def interpolate(volume: Volume, scale: Scale, method: str = "bspline") -> Volume:
    """Super-resolution by interpolation onto the extent-keeping grid of ``scale``."""
    if method not in SR_METHODS:
        raise ValueError(f"unknown interpolation {method!r}")
    return resample_scale(volume, scale, method)


def gaussian(volume: Volume, sigma: float = 0.8) -> Volume:
    """Gaussian smoothing; ``sigma`` in voxels of the finest axis (converted to mm for SimpleITK)."""
    sigma_mm = [float(sigma) * min(volume.spacing)] * 3
    out = sitk.SmoothingRecursiveGaussian(to_sitk(volume), sigma_mm)
    return from_sitk(out, volume.metadata)


def curvature_diffusion(
    volume: Volume, iterations: int = 5, conductance: float = 1.0, time_step: float = 0.0625
) -> Volume:
    """Curvature anisotropic diffusion (ITK). ``time_step`` is for unit spacing and scaled by the finest spacing,
    because ITK's stability limit is spacing / 2^(dim+1)."""
    step = float(time_step) * min(volume.spacing)
    out = sitk.CurvatureAnisotropicDiffusion(to_sitk(volume), step, float(conductance), 1, int(iterations))
    return from_sitk(out, volume.metadata)


def nlmeans(volume: Volume, h_factor: float = 0.8, patch_size: int = 3, patch_distance: int = 4) -> Volume:
    """3D non-local means (scikit-image, fast mode); h = h_factor x the input's estimated noise sigma."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    arr = volume.array.astype(np.float64)
    sigma = float(estimate_sigma(arr, channel_axis=None))
    if sigma <= 0:
        return volume
    out = denoise_nl_means(
        arr, patch_size=int(patch_size), patch_distance=int(patch_distance), h=float(h_factor) * sigma,
        sigma=sigma, fast_mode=True, channel_axis=None,
    )
    return volume.with_array(out.astype(np.float32))


def run(method: str, volume: Volume, scale: Scale, params: dict[str, Any]) -> Volume:
    """Dispatch a classical method by name with explicit parameters."""
    if method in SR_METHODS:
        return interpolate(volume, scale, method)
    if method == "gaussian":
        return gaussian(volume, **params)
    if method == "curvature_diffusion":
        return curvature_diffusion(volume, **params)
    if method == "nlmeans":
        return nlmeans(volume, **params)
    raise ValueError(f"unknown classical method {method!r}")
