"""Reference metrics for the evaluation harness (GUIDE section 3): PSNR, 3D SSIM, foreground masks, intensity maps.

Every metric takes an explicit data range: PSNR and SSIM mean nothing without one, and library defaults differ
(scikit-image silently guesses R = 1 or 2 for floats). The conventions:

- MR: both volumes are divided by the 99.5th percentile of the ground truth's non-zero voxels (the same robust
  maximum the models normalise with), no clipping, data range 1.
- CT: both volumes are clipped to an HU window and mapped to [0, 1], data range 1. ``CT_WINDOWS`` holds the full
  window [-1000, 1000] and a soft-tissue window (centre 40, width 400).
- SSIM follows Wang et al. 2004: Gaussian window sigma 1.5 truncated at 3.5 sigma (11 taps per axis), K1 = 0.01,
  K2 = 0.03, population (not sample) covariances, computed natively in 3D. Without a mask the mean is over the
  voxels at least a half window from the border (as scikit-image does); with a mask, over mask voxels.

Pure numpy/scipy (scikit-image only for Otsu's threshold); float64 inside, Python floats out.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TRUNCATE = 3.5  # scikit-image's Gaussian truncation: sigma 1.5 -> 11-tap window


@dataclass(frozen=True)
class Window:
    """An intensity window in HU: values are clipped to [low, high] and mapped to [0, 1]."""

    name: str
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


CT_WINDOWS: tuple[Window, ...] = (
    Window("full", -1000.0, 1000.0),
    Window("soft", 40.0 - 200.0, 40.0 + 200.0),  # soft tissue: C40 / W400
)


def _check_pair(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}: "
                         "resample the prediction to the reference grid first")
    if mask is not None and mask.shape != ref.shape:
        raise ValueError(f"mask shape {mask.shape} differs from reference shape {ref.shape}")


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(R^2 / MSE), the MSE over ``mask`` when given (inf if exact)."""
    _check_pair(pred, ref, mask)
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    diff = np.asarray(pred, np.float64) - np.asarray(ref, np.float64)
    if mask is not None:
        m = np.asarray(mask, bool)
        if not m.any():
            raise ValueError("mask is empty")
        diff = diff[m]
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range * data_range / mse))


def ssim_map(pred: np.ndarray, ref: np.ndarray, data_range: float, sigma: float = 1.5) -> np.ndarray:
    """Voxelwise SSIM with a Gaussian window (any dimensionality; the harness uses 3D)."""
    _check_pair(pred, ref, None)
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    x = np.asarray(pred, np.float64)
    y = np.asarray(ref, np.float64)

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sigma, mode="reflect", truncate=SSIM_TRUNCATE)

    mu_x, mu_y = blur(x), blur(y)
    # Population (co)variances: E[xy] - E[x]E[y] under the Gaussian weights, as in Wang et al.
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


def ssim3d(pred: np.ndarray, ref: np.ndarray, data_range: float, sigma: float = 1.5,
           mask: np.ndarray | None = None) -> float:
    """Mean 3D SSIM (see the module docstring for the window, constants and which voxels are averaged)."""
    _check_pair(pred, ref, mask)
    smap = ssim_map(pred, ref, data_range, sigma)
    if mask is not None:
        m = np.asarray(mask, bool)
        if not m.any():
            raise ValueError("mask is empty")
        return float(smap[m].mean())
    # Skip the half-window border where the reflected padding, not the data, fills the window (skimage's rule).
    pad = int(SSIM_TRUNCATE * sigma + 0.5)
    inner = tuple(slice(pad, n - pad) if n > 2 * pad else slice(None) for n in smap.shape)
    return float(smap[inner].mean())


def mr_scale(ref: np.ndarray, percentile: float = 99.5) -> float:
    """The ground truth's robust maximum: ``percentile`` of |voxel| over its non-zero voxels (1.0 if all zero)."""
    nz = np.abs(np.asarray(ref, np.float64)[ref != 0])
    if nz.size == 0:
        return 1.0
    value = float(np.percentile(nz, percentile))
    return value if value > 0 else 1.0


def normalise_mr(array: np.ndarray, scale: float) -> np.ndarray:
    """Divide by the ground truth's robust maximum (no clipping: overshoot is error too)."""
    return np.asarray(array, np.float64) / scale


def apply_window(array: np.ndarray, window: Window) -> np.ndarray:
    """Clip HU to the window and map it to [0, 1] (so the data range is 1)."""
    a = np.clip(np.asarray(array, np.float64), window.low, window.high)
    return (a - window.low) / window.width


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in 3D and in every axial (k) slice: catches cavities that touch the top or bottom slice."""
    out = ndimage.binary_fill_holes(mask)
    for k in range(out.shape[0]):
        out[k] = ndimage.binary_fill_holes(out[k])
    return out


def foreground_mask(ref: np.ndarray, modality: str, smooth_sigma: float = 1.0) -> np.ndarray:
    """Foreground of a ground-truth volume (z, y, x): the head/brain for MR, the body (lungs included) for CT.

    MR: Otsu's threshold on the Gaussian-smoothed volume, halved so dark tissue (CSF, cortex in T1) stays in,
    largest connected component, holes filled. CT: smoothed HU > -900 (air outside is -1000; lung parenchyma,
    around -850, is body), largest component, holes filled. Falls back to all voxels if nothing is found.
    """
    from skimage.filters import threshold_otsu

    a = ndimage.gaussian_filter(np.asarray(ref, np.float64), smooth_sigma)
    if modality == "ct":
        mask = a > -900.0
    elif modality == "mr":
        if float(a.max()) <= float(a.min()):
            return np.ones(ref.shape, bool)
        mask = a > 0.5 * float(threshold_otsu(a))
    else:
        raise ValueError(f"modality must be 'mr' or 'ct', got {modality!r}")
    if not mask.any():
        logger.warning("foreground mask is empty; using the whole volume")
        return np.ones(ref.shape, bool)
    mask = _fill_holes_per_slice(_largest_component(mask))
    return mask


def score(pred: np.ndarray, ref: np.ndarray, modality: str, mask: np.ndarray,
          mr_ref_scale: float | None = None) -> dict[str, float]:
    """All harness metrics of one output against its ground truth (same grid, (z, y, x)).

    MR keys: psnr, psnr_fg, ssim, ssim_fg (data range 1 after dividing by the ground truth's 99.5th percentile).
    CT keys: the same with a ``_<window>`` suffix per entry of ``CT_WINDOWS``, e.g. psnr_fg_full, ssim_soft.
    """
    if modality == "mr":
        s = mr_ref_scale if mr_ref_scale is not None else mr_scale(ref)
        p, r = normalise_mr(pred, s), normalise_mr(ref, s)
        return {
            "psnr": psnr(p, r, 1.0),
            "psnr_fg": psnr(p, r, 1.0, mask),
            "ssim": ssim3d(p, r, 1.0),
            "ssim_fg": ssim3d(p, r, 1.0, mask=mask),
        }
    if modality == "ct":
        out: dict[str, float] = {}
        for w in CT_WINDOWS:
            p, r = apply_window(pred, w), apply_window(ref, w)
            out[f"psnr_{w.name}"] = psnr(p, r, 1.0)
            out[f"psnr_fg_{w.name}"] = psnr(p, r, 1.0, mask)
            out[f"ssim_{w.name}"] = ssim3d(p, r, 1.0)
            out[f"ssim_fg_{w.name}"] = ssim3d(p, r, 1.0, mask=mask)
        return out
    raise ValueError(f"modality must be 'mr' or 'ct', got {modality!r}")
