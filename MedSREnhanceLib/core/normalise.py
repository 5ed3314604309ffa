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


def robust_range(array: np.ndarray, margin: float = 3.0) -> tuple[float, float]:
    """Range of plausible intensities: the 0.5-99.5th percentiles of the non-zero voxels widened by ``margin``
    times their spread (the spread at least their magnitude, so a sparse or flat volume keeps its values).
    CT (-1000..1500 HU) gives about -8500..9000 HU; MR about -3..4 times the 99.5th percentile. Percentiles of
    a sample of at most ~1M voxels: outliers are too few to move them."""
    flat = array.ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]
    sample = sample[sample != 0]
    if sample.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    spread = max(hi - lo, abs(lo), abs(hi))
    return min(lo - margin * spread, 0.0), max(hi + margin * spread, 0.0)


# "mr-noise": MR scaled so that its estimated noise std is NOISE_REF. Rician noise is scale-covariant
# (Rice(A, s) / s = Rice(A / s, 1)), so every noise level becomes the same problem and the denoiser knows how much
# to remove. The implied noise level is clamped to [0.5 %, 20 %] of the robust maximum (noise-free inputs).
NOISE_REF = 0.05
NOISE_LEVEL_RANGE = (0.005, 0.2)
# "ct-noise": CT scaled so that its estimated noise std is 30 HU of the "ct" scale (the middle of 1e4-1e5 photons
# on a thorax); the estimate is clamped to [2, 300] HU.
CT_NOISE_REF_HU = 30.0
CT_NOISE_RANGE_HU = (2.0, 300.0)


def _haar_finest(array: np.ndarray, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Finest 3D Haar detail ('ddd', orthonormal: white noise of std s gives coefficients of std s) and the
    2x2x2 block means of ``array - offset``, cropped to even sizes. One float64 block at a time: a 512^2 x 300
    CT needs ~3 bytes per voxel here, not a float64 copy of the volume."""
    z, y, x = (d - d % 2 for d in array.shape)
    detail = np.zeros((z // 2, y // 2, x // 2))
    mean = np.zeros_like(detail)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                block = array[i:z:2, j:y:2, k:x:2].astype(np.float64) - offset
                detail += (-1.0) ** (i + j + k) * block
                mean += block
    return detail / np.sqrt(8.0), mean / 8.0


def _mad_sigma(detail: np.ndarray) -> float:
    return float(np.median(np.abs(detail)) / 0.6745) if detail.size else 0.0


def noise_sigma(array: np.ndarray) -> float:
    """Noise std of a 3D MR volume: MAD of the finest 3D Haar detail coefficients inside the tissue.

    Tissue = 2x2x2 blocks whose mean (above the volume minimum) exceeds 0.3 x its 99th percentile, which keeps
    out the dark background where magnitude noise is Rayleigh rather than Gaussian. Measured on real MR with added
    Rician noise: it returns the total noise (added and already present) within ~10 % from 5 % noise upwards.
    """
    if min(d - d % 2 for d in array.shape) == 0:
        return 0.0
    detail, mean = _haar_finest(array, float(array.min()))
    positive = mean[mean > 0]
    if positive.size == 0:
        return 0.0
    return _mad_sigma(detail[mean > 0.3 * float(np.percentile(positive, 99))])


def masked_noise_sigma(array: np.ndarray, mask: np.ndarray) -> float:
    """Noise std of ``array`` (its units): MAD of the finest 3D Haar detail over the 2x2x2 blocks whose first voxel
    lies in ``mask`` (a scoring foreground, say); edges leaking into the detail bias it slightly upwards."""
    if min(d - d % 2 for d in array.shape) == 0:
        return 0.0
    detail, _ = _haar_finest(array)
    z, y, x = detail.shape
    return _mad_sigma(detail[np.asarray(mask, bool)[0:2 * z:2, 0:2 * y:2, 0:2 * x:2]])


# Soft tissue and fat (2x2x2 block means in HU): flat enough that the finest detail is mostly noise; lung, bone
# and air edges are structure. Fewer blocks than this: every block inside the body (> -900 HU) is used instead.
CT_TISSUE_HU = (-200.0, 300.0)
CT_MIN_BLOCKS = 1000


def ct_noise_sigma(hu: np.ndarray) -> float:
    """Noise std (HU) of a 3D CT volume: MAD of the finest 3D Haar detail inside soft tissue."""
    if min(d - d % 2 for d in hu.shape) == 0:
        return 0.0
    detail, mean = _haar_finest(hu)
    tissue = (mean > CT_TISSUE_HU[0]) & (mean < CT_TISSUE_HU[1])
    if int(tissue.sum()) < CT_MIN_BLOCKS:
        tissue = mean > -900.0
    return _mad_sigma(detail[tissue])


def ct_noise_level(hu: np.ndarray) -> float:
    """The noise std (HU) the "ct-noise" normalisation divides by: ct_noise_sigma clamped to CT_NOISE_RANGE_HU."""
    return float(np.clip(ct_noise_sigma(hu), *CT_NOISE_RANGE_HU))


def forward(array: np.ndarray, kind: str) -> tuple[np.ndarray, dict[str, float]]:
    """Normalise ``array`` for a model; returns the array and the parameters ``inverse`` needs (plus, for the
    noise-level normalisations, the estimate they used: ``noise_percent`` of the peak or ``noise_hu``)."""
    if kind == "mr":
        scale = robust_max(array)
        return (array / scale).astype(np.float32), {"offset": 0.0, "scale": scale}
    if kind == "mr-noise":
        peak = robust_max(array)
        level = float(np.clip(noise_sigma(array) / peak, *NOISE_LEVEL_RANGE))
        scale = level * peak / NOISE_REF
        return (array / scale).astype(np.float32), {"offset": 0.0, "scale": scale, "noise_percent": 100 * level}
    if kind == "ct-noise":
        # "ct" with the gain set so that the estimated noise std becomes CT_NOISE_REF_HU: HU are absolute, but
        # a dose-blind net must guess the noise from the image, and over-smoothed every 1e5-photon lung CT
        # (a 0.7 blend with the input was 0.5-1.7 dB better); told the level, it removes what is there.
        sigma_hu = ct_noise_level(array)
        scale = CT_SCALE * sigma_hu / CT_NOISE_REF_HU
        return ((array + CT_OFFSET) / scale).astype(np.float32), {"offset": -CT_OFFSET, "scale": scale,
                                                                   "noise_hu": sigma_hu}
    if kind == "ct":
        return ((array + CT_OFFSET) / CT_SCALE).astype(np.float32), {"offset": -CT_OFFSET, "scale": CT_SCALE}
    raise ValueError(f"unknown normalisation {kind!r}")


def inverse(array: np.ndarray, params: dict[str, float]) -> np.ndarray:
    return (array * params["scale"] + params["offset"]).astype(np.float32)
