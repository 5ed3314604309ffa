"""Low-dose CT simulated in the projection domain (forward projection, Poisson counts, filtered back projection)."""
from __future__ import annotations

import numpy as np

from ..core.volume import Volume

MU_WATER_PER_MM = 0.0192  # linear attenuation of water at ~70 keV effective energy, 1/mm



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
