"""Intensity normalisation shared by training and inference (each model card names the one it used)."""
from __future__ import annotations

import numpy as np

# CT: HU -> (HU + 1000) / 1000, so air is 0 and water 1; no clipping, so bone and metal survive the round trip.
CT_OFFSET = 1000.0
CT_SCALE = 1000.0


def robust_max(array: np.ndarray, percentile: float = 99.5) -> float:
    """The given percentile of |voxel| over the non-zero voxels (MR scale); 1.0 for an all-zero volume."""
    nz = np.abs(array[array != 0])
    if nz.size == 0:
        return 1.0
    value = float(np.percentile(nz, percentile))
    return value if value > 0 else 1.0


# "mr-noise": MR scaled so that its estimated noise std is NOISE_REF. Rician noise is scale-covariant
# (Rice(A, s) / s = Rice(A / s, 1)), so every noise level becomes the same problem and the denoiser knows how much
# to remove. The implied noise level is clamped to [0.5 %, 20 %] of the robust maximum (noise-free inputs).
NOISE_REF = 0.05
NOISE_LEVEL_RANGE = (0.005, 0.2)


def noise_sigma(array: np.ndarray) -> float:
    """Noise std of a 3D volume: MAD of the finest 3D Haar detail ('ddd') coefficients inside the tissue.

    Tissue = 2x2x2 blocks whose mean (above the volume minimum) exceeds 0.3 x its 99th percentile, which keeps
    out the dark background where magnitude noise is Rayleigh rather than Gaussian. Measured on real MR with added
    Rician noise: it returns the total noise (added and already present) within ~10 % from 5 % noise upwards.
    """
    z, y, x = (d - d % 2 for d in array.shape)
    if min(z, y, x) == 0:
        return 0.0
    a = array[:z, :y, :x].astype(np.float64) - float(array.min())
    detail = np.zeros((z // 2, y // 2, x // 2))
    mean = np.zeros_like(detail)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                block = a[i::2, j::2, k::2]
                detail += (-1.0) ** (i + j + k) * block
                mean += block
    detail /= np.sqrt(8.0)  # orthonormal: white noise of std s gives coefficients of std s
    mean /= 8.0
    positive = mean[mean > 0]
    if positive.size == 0:
        return 0.0
    tissue = mean > 0.3 * float(np.percentile(positive, 99))
    return float(np.median(np.abs(detail[tissue])) / 0.6745)


def forward(array: np.ndarray, kind: str) -> tuple[np.ndarray, dict[str, float]]:
    """Normalise ``array`` for a model; returns the array and the parameters ``inverse`` needs."""
    if kind == "mr":
        scale = robust_max(array)
        return (array / scale).astype(np.float32), {"offset": 0.0, "scale": scale}
    if kind == "mr-noise":
        peak = robust_max(array)
        level = float(np.clip(noise_sigma(array) / peak, *NOISE_LEVEL_RANGE))
        scale = level * peak / NOISE_REF
        return (array / scale).astype(np.float32), {"offset": 0.0, "scale": scale}
    if kind == "ct":
        return ((array + CT_OFFSET) / CT_SCALE).astype(np.float32), {"offset": -CT_OFFSET, "scale": CT_SCALE}
    raise ValueError(f"unknown normalisation {kind!r}")


def inverse(array: np.ndarray, params: dict[str, float]) -> np.ndarray:
    return (array * params["scale"] + params["offset"]).astype(np.float32)
