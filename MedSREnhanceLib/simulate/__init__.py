"""Physical degradation models on :class:`~MedSREnhanceLib.core.volume.Volume` (training pairs AND evaluation).

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
``random_lowdose_ct(vol, photons_range, electronic_range, rng, n_angles=None)``,
``random_rigid_motion(vol, rng, n_events, max_rotation_deg, max_translation_mm, pe_axes)``.

``rigid_motion(vol, pe_axis, events) -> Volume``
    MR rigid motion during the scan, simulated in k-space (see ``motion``).

Files: ``resolution`` (k-space truncation, slice profile, Gaussian PSF), ``noise`` (Rician), ``lowdose``
(projection-domain low dose), ``motion`` (rigid motion in k-space), ``replay`` (random twins and their replay).
A new degradation is a new file here, plus its entry in ``replay``'s tables when it has a random twin.
"""
from __future__ import annotations

from .lowdose import MU_WATER_PER_MM, lowdose_ct
from .motion import random_motion_events, rigid_motion
from .noise import foreground_mask, rician_noise, rician_sigma
from .replay import (random_kspace_truncation, random_lowdose_ct, random_rician_noise, random_rigid_motion,
                     random_slice_profile, replay)
from .resolution import FWHM_TO_SIGMA, gaussian_psf_downsample, kspace_truncation, lr_positions, slice_profile

__all__ = [
    "FWHM_TO_SIGMA", "MU_WATER_PER_MM", "foreground_mask", "gaussian_psf_downsample", "kspace_truncation",
    "lowdose_ct", "lr_positions", "random_kspace_truncation", "random_lowdose_ct", "random_rician_noise",
    "random_motion_events", "random_rigid_motion", "random_slice_profile", "replay", "rician_noise", "rician_sigma",
    "rigid_motion", "slice_profile",
]
