"""Physical degradation models on :class:`~MedSREnhanceLib.volume.Volume` (training pairs AND evaluation).

Every function is deterministic given its explicit parameters; the noise functions take a
``numpy.random.Generator`` (never the global RNG). The ``random_*`` twins draw parameters from a per-instance
generator and return ``(degraded, record)``; ``replay(volume, record)`` reproduces the degradation exactly
(TorchIO style: the record holds the drawn parameters and, for noise, an integer seed).

Resolution loss lands on the low-resolution grid of ``resized_geometry(vol, 1/scale)``: extent kept, spacing
multiplied by the factor, the centre of LR voxel k at HR continuous index ``s*k + (s-1)/2`` along each axis.

Signatures (scale tuples are in index order (i, j, k) = (x, y, z), like ``Volume.spacing``):

``kspace_truncation(vol, scale) -> Volume``
    MR resolution loss: keep the central ``round(n/s)`` Fourier coefficients per axis and evaluate the
    band-limited (periodic) interpolant at the LR voxel centres (sub-voxel phase shift included). Non-integer
    factors welcome; a factor of 1 leaves that axis alone.
``slice_profile(vol, axis, thickness_factor, profile="gaussian"|"rect", gap=0.0) -> Volume``
    Through-plane resolution loss along index axis ``axis`` (0=i/x, 1=j/y, 2=k/z): each LR slice is the
    profile-weighted average of the HR voxels. The slice spacing is ``thickness_factor * spacing[axis]``; the
    profile FWHM (slice thickness) is ``thickness_factor * (1 - gap) * spacing[axis]`` (``gap`` = the fraction
    of the slice spacing left unsampled, e.g. 5 mm slices with a 1 mm gap: factor 6 mm/sp, gap 1/6).
``gaussian_psf_downsample(vol, scale) -> Volume``
    CT resolution loss: Gaussian PSF with FWHM = the LR spacing on each axis, then sampling on the LR grid.
``rician_noise(vol, level, rng) -> Volume``
    Magnitude of complex Gaussian noise, sigma = ``level`` * 99th percentile of |foreground|
    (``foreground_mask``). Volumes with negative values (z-scored) take the magnitude of ``vol - min + noise``
    and get the minimum added back: Rician statistics then hold near the minimum, Gaussian-like elsewhere.
``lowdose_ct(vol_hu, photons_per_ray, electronic_noise_std, rng, n_angles=None) -> (noisy, reference)``
    Per axial slice: HU -> attenuation (mu_water 0.0192/mm), parallel-beam projection (skimage radon), Poisson
    counts at ``photons_per_ray`` plus Gaussian electronic noise (std in counts), log, ramp-filtered back
    projection; ``reference`` is the same pipeline on the noise-free sinogram. Both in HU.

Random twins (all return ``(volume(s), record)``; ``replay(vol, record)`` returns the same volume(s)):
``random_kspace_truncation(vol, scales, rng)``, ``random_slice_profile(vol, axis, factor_range, rng,
profiles=("gaussian", "rect"), gap_range=(0, 0))``, ``random_rician_noise(vol, level_range, rng)``,
``random_lowdose_ct(vol, photons_range, electronic_range, rng, n_angles=None)``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from .volume import Volume, resized_geometry

logger = logging.getLogger(__name__)

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at ~70 keV effective energy, 1/mm
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

Scale3 = tuple[float, float, float]


# ----------------------------------------------------------------------------------------------- helpers


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


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Voxels with |value| above 5% of the 99.5th percentile of the non-zero |values|.

    Works for magnitude images (background ~0) and for brain-z-scored volumes (background exactly 0, tissue
    values of either sign).
    """
    mag = np.abs(array)
    nz = mag[mag > 0]
    if nz.size == 0:
        return np.zeros(array.shape, bool)
    return mag > 0.05 * float(np.percentile(nz, 99.5))


# -------------------------------------------------------------------------------------- deterministic


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


def rician_sigma(array: np.ndarray, level: float) -> tuple[float, float]:
    """(sigma, base): noise std for ``level`` and the background offset used for signed volumes."""
    base = min(0.0, float(array.min())) if array.size else 0.0
    mask = foreground_mask(array)
    ref = float(np.percentile(np.abs(array[mask]), 99)) if mask.any() else 1.0
    return level * ref, base


def rician_noise(vol: Volume, level: float, rng: np.random.Generator) -> Volume:
    """|x + n_re + i n_im| with n ~ N(0, sigma^2), sigma = level * p99(foreground)."""
    sigma, base = rician_sigma(vol.array, level)
    x = vol.array.astype(np.float64) - base
    n_re = rng.normal(0.0, sigma, x.shape)
    n_im = rng.normal(0.0, sigma, x.shape)
    out = np.sqrt((x + n_re) ** 2 + n_im**2) + base
    return vol.with_array(out.astype(np.float32))


def _square_pad(slice_mu: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad a 2D slice with air into a square whose inscribed circle holds the whole slice (radon circle)."""
    h, w = slice_mu.shape
    size = int(np.ceil(np.hypot(h, w))) + 2
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((size, size), slice_mu.dtype)
    out[top:top + h, left:left + w] = slice_mu
    return out, (top, left)


def lowdose_ct(vol_hu: Volume, photons_per_ray: float, electronic_noise_std: float, rng: np.random.Generator,
               n_angles: int | None = None) -> tuple[Volume, Volume]:
    """Low-dose CT simulated in the projection domain, slice by slice; returns (noisy, reference) in HU.

    ``n_angles`` defaults to ceil(pi/2 * detector size) (angular Nyquist for the padded square); fewer angles
    are faster and add the same streaks to both outputs.
    """
    from skimage.transform import iradon, radon

    sy, sx = vol_hu.spacing[1], vol_hu.spacing[0]
    pixel = float(np.sqrt(sx * sy))  # in-plane pixel size (mm); anisotropic pixels are rare in CT
    mu = np.clip(MU_WATER_PER_MM * (1.0 + vol_hu.array.astype(np.float64) / 1000.0), 0.0, None)
    noisy = np.empty(vol_hu.array.shape, np.float32)
    ref = np.empty(vol_hu.array.shape, np.float32)
    h, w = mu.shape[1:]
    for z in range(mu.shape[0]):
        padded, (top, left) = _square_pad(mu[z] * pixel)  # attenuation per pixel -> line integrals
        size = padded.shape[0]
        angles = np.linspace(0.0, 180.0, n_angles or int(np.ceil(np.pi / 2 * size)), endpoint=False)
        sino = radon(padded, theta=angles, circle=True)
        expected = photons_per_ray * np.exp(-sino)
        counts = rng.poisson(expected).astype(np.float64)
        if electronic_noise_std > 0:
            counts += rng.normal(0.0, electronic_noise_std, counts.shape)
        sino_noisy = -np.log(np.clip(counts, 1.0, None) / photons_per_ray)  # at least one count: no log(0)
        for target, s in ((noisy, sino_noisy), (ref, sino)):
            rec = iradon(s, theta=angles, filter_name="ramp", circle=True, output_size=size)
            rec = rec[top:top + h, left:left + w] / pixel  # back to 1/mm
            target[z] = (1000.0 * (rec / MU_WATER_PER_MM - 1.0)).astype(np.float32)
    return vol_hu.with_array(noisy), vol_hu.with_array(ref)


# -------------------------------------------------------------------------------- random twins + replay


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def random_kspace_truncation(vol: Volume, scales: tuple[float, float], rng: np.random.Generator,
                             isotropic: bool = True) -> tuple[Volume, dict[str, Any]]:
    """Reduction factor(s) drawn uniformly in ``scales`` (same on all axes when ``isotropic``)."""
    if isotropic:
        f = float(rng.uniform(*scales))
        scale = (f, f, f)
    else:
        scale = tuple(float(v) for v in rng.uniform(scales[0], scales[1], 3))
    record = {"name": "kspace_truncation", "params": {"scale": list(scale)}}
    return replay(vol, record), record  # type: ignore[return-value]


def random_slice_profile(vol: Volume, axis: int, factor_range: tuple[float, float], rng: np.random.Generator,
                         profiles: tuple[str, ...] = ("gaussian", "rect"),
                         gap_range: tuple[float, float] = (0.0, 0.0)) -> tuple[Volume, dict[str, Any]]:
    record = {"name": "slice_profile", "params": {
        "axis": int(axis),
        "thickness_factor": float(rng.uniform(*factor_range)),
        "profile": str(profiles[int(rng.integers(len(profiles)))]),
        "gap": float(rng.uniform(*gap_range)) if gap_range[1] > gap_range[0] else float(gap_range[0]),
    }}
    return replay(vol, record), record  # type: ignore[return-value]


def random_rician_noise(vol: Volume, level_range: tuple[float, float],
                        rng: np.random.Generator) -> tuple[Volume, dict[str, Any]]:
    record = {"name": "rician_noise", "params": {"level": float(rng.uniform(*level_range))}, "seed": _seed(rng)}
    return replay(vol, record), record  # type: ignore[return-value]


def random_lowdose_ct(vol_hu: Volume, photons_range: tuple[float, float], electronic_range: tuple[float, float],
                      rng: np.random.Generator, n_angles: int | None = None,
                      ) -> tuple[tuple[Volume, Volume], dict[str, Any]]:
    """Photons drawn log-uniformly in ``photons_range``, electronic noise std uniformly."""
    lo, hi = np.log(photons_range[0]), np.log(photons_range[1])
    record = {"name": "lowdose_ct", "params": {
        "photons_per_ray": float(np.exp(rng.uniform(lo, hi))),
        "electronic_noise_std": float(rng.uniform(*electronic_range)),
        "n_angles": n_angles,
    }, "seed": _seed(rng)}
    return replay(vol_hu, record), record  # type: ignore[return-value]


_DETERMINISTIC: dict[str, Callable[..., Any]] = {
    "kspace_truncation": kspace_truncation,
    "slice_profile": slice_profile,
    "gaussian_psf_downsample": gaussian_psf_downsample,
}
_NOISY: dict[str, Callable[..., Any]] = {
    "rician_noise": rician_noise,
    "lowdose_ct": lowdose_ct,
}


def replay(vol: Volume, record: dict[str, Any]) -> Volume | tuple[Volume, Volume]:
    """Re-run the degradation a ``random_*`` call recorded (same params, same noise seed)."""
    name = record["name"]
    params = dict(record["params"])
    if "scale" in params:
        params["scale"] = tuple(params["scale"])
    if name in _DETERMINISTIC:
        return _DETERMINISTIC[name](vol, **params)
    if name in _NOISY:
        return _NOISY[name](vol, rng=np.random.default_rng(int(record["seed"])), **params)
    raise ValueError(f"unknown degradation {name!r}")
