"""Degradations: output geometry in physical space, exact replay from records, noise levels, k-space alignment."""
from __future__ import annotations

import numpy as np
import pytest

from MedSREnhanceLib import simulate as degrade
from MedSREnhanceLib.core.resample import resample_to
from MedSREnhanceLib.core.volume import Volume, resized_geometry

ORIGIN = (5.0, -3.0, 2.0)
SPACING = (0.9, 1.1, 1.3)
DIRECTION = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # permuted, left-handed


def smooth_pattern(points: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """A periodic, band-limited pattern of physical position (3 and 2 cycles over the extent)."""
    u = points / extent
    return (np.cos(2 * np.pi * 3 * u[..., 0]) + np.sin(2 * np.pi * 2 * u[..., 1])
            + np.cos(2 * np.pi * u[..., 2] + 0.3)).astype(np.float32)


def index_grid(vol: Volume) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(n) for n in vol.array.shape], indexing="ij")
    return np.stack([i, j, k], -1).astype(np.float64)


def local_coords(vol: Volume, ref: Volume) -> np.ndarray:
    """Physical points of ``vol``'s voxels in ``ref``'s index-aligned frame, in mm from ref's outer corner."""
    phys = vol.index_to_physical(index_grid(vol))
    rel = (phys - np.asarray(ref.origin)) @ ref.direction  # undo the direction: mm along ref's i, j, k
    return rel + 0.5 * np.asarray(ref.spacing)


@pytest.fixture
def pattern_volume() -> Volume:
    shape_zyx = (30, 36, 40)
    base = Volume(np.zeros(shape_zyx, np.float32), SPACING, ORIGIN, DIRECTION)
    extent = np.asarray(SPACING) * np.asarray(base.size)
    return base.with_array(smooth_pattern(local_coords(base, base), extent))


@pytest.mark.parametrize("scale", [(2.0, 2.0, 2.0), (3.0, 3.0, 3.0), (2.5, 1.0, 1.7)])
def test_kspace_truncation_samples_the_band_limited_signal_at_lr_centres(pattern_volume: Volume, scale) -> None:
    lr = degrade.kspace_truncation(pattern_volume, scale)
    size, spacing, origin = resized_geometry(pattern_volume, tuple(1 / s for s in scale))
    assert lr.size == size and np.allclose(lr.spacing, spacing) and np.allclose(lr.origin, origin)
    extent = np.asarray(SPACING) * np.asarray(pattern_volume.size)
    expected = smooth_pattern(local_coords(lr, pattern_volume), extent)
    # a plain FFT crop (no sub-voxel phase shift) would be off by (s-1)/2 HR voxels: errors of order 1
    assert np.abs(lr.array - expected).max() < 1e-4


def test_kspace_truncation_upsampled_back_has_no_shift(pattern_volume: Volume) -> None:
    lr = degrade.kspace_truncation(pattern_volume, (2.0, 2.0, 2.0))
    back = resample_to(lr, pattern_volume, "sinc")
    inner = (slice(4, -4),) * 3
    err = np.abs(back.array - pattern_volume.array)[inner]
    shifted = np.abs(np.roll(back.array, 1, axis=0) - pattern_volume.array)[inner]
    assert err.mean() < 0.05 < shifted.mean()


def test_kspace_truncation_keeps_the_mean() -> None:
    rng = np.random.default_rng(0)
    vol = Volume(rng.random((17, 22, 25)).astype(np.float32) + 2.0)
    lr = degrade.kspace_truncation(vol, (2.0, 2.0, 2.0))
    assert abs(lr.array.mean() - vol.array.mean()) < 0.05


@pytest.mark.parametrize("profile", ["gaussian", "rect"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_profile_grid_and_smooth_signal(pattern_volume: Volume, profile: str, axis: int) -> None:
    lr = degrade.slice_profile(pattern_volume, axis, 3.0, profile)
    factors = [1.0, 1.0, 1.0]
    factors[axis] = 1 / 3.0
    size, spacing, origin = resized_geometry(pattern_volume, tuple(factors))
    assert lr.size == size and np.allclose(lr.spacing, spacing) and np.allclose(lr.origin, origin)
    assert np.allclose(lr.direction, DIRECTION)
    # the profile is symmetric about each LR centre: a linear ramp along the axis is reproduced exactly there
    ramp_base = Volume(np.zeros_like(pattern_volume.array), SPACING, ORIGIN, DIRECTION)
    ramp = ramp_base.with_array(local_coords(ramp_base, ramp_base)[..., axis].astype(np.float32))
    lr_ramp = degrade.slice_profile(ramp, axis, 3.0, profile)
    expected = local_coords(lr_ramp, ramp)[..., axis]
    n = lr_ramp.array.shape[2 - axis]
    inner = [slice(None)] * 3
    inner[2 - axis] = slice(2, n - 2)  # away from the renormalised edges
    assert np.abs(lr_ramp.array - expected)[tuple(inner)].max() < 1e-3


def test_slice_profile_rect_is_a_block_average() -> None:
    arr = np.arange(2 * 3 * 12, dtype=np.float32).reshape(12, 3, 2)
    lr = degrade.slice_profile(Volume(arr), 2, 3.0, "rect")
    assert np.allclose(lr.array, arr.reshape(4, 3, 3, 2).mean(axis=1), atol=1e-4)


def test_slice_profile_gap_narrows_the_profile() -> None:
    rng = np.random.default_rng(1)
    vol = Volume(rng.random((24, 9, 7)).astype(np.float32))
    thick = degrade.slice_profile(vol, 2, 4.0, "gaussian")
    gapped = degrade.slice_profile(vol, 2, 4.0, "gaussian", gap=0.5)
    assert thick.array.shape == gapped.array.shape
    assert gapped.array.std() > thick.array.std()  # less averaging of white noise


def test_gaussian_psf_downsample_grid(pattern_volume: Volume) -> None:
    lr = degrade.gaussian_psf_downsample(pattern_volume, (2.0, 2.0, 1.0))
    size, spacing, origin = resized_geometry(pattern_volume, (0.5, 0.5, 1.0))
    assert lr.size == size and np.allclose(lr.origin, origin)
    const = degrade.gaussian_psf_downsample(pattern_volume.with_array(np.full_like(pattern_volume.array, 7.0)), 2)
    assert np.allclose(const.array, 7.0, atol=1e-4)


def test_rician_noise_level_and_floor() -> None:
    arr = np.zeros((33, 34, 35), np.float32)
    arr[5:28, 6:29, 7:30] = 100.0
    vol = Volume(arr)
    noisy = degrade.rician_noise(vol, 0.05, np.random.default_rng(0))
    fg = arr > 0
    assert abs(np.std(noisy.array[fg]) - 5.0) < 0.3  # sigma = 5 % of the foreground's 99th percentile
    # background: Rayleigh with mean sigma * sqrt(pi / 2), a positive floor
    assert abs(noisy.array[~fg].mean() - 5.0 * np.sqrt(np.pi / 2)) < 0.3
    assert noisy.array.min() >= 0


def test_rician_noise_on_signed_volume_keeps_range() -> None:
    rng = np.random.default_rng(3)
    arr = np.zeros((21, 22, 23), np.float32)
    arr[4:17, 4:18, 4:19] = rng.normal(0.0, 1.0, (13, 14, 15))
    noisy = degrade.rician_noise(Volume(arr), 0.02, np.random.default_rng(0))
    assert noisy.array.min() >= arr.min() - 1e-5
    assert np.abs(noisy.array - arr)[arr > 1.0].mean() < 0.2


def test_random_twins_replay_exactly(pattern_volume: Volume) -> None:
    rng = np.random.default_rng(42)
    vol = pattern_volume.with_array(pattern_volume.array + 3.0)
    for out, record in (
        degrade.random_kspace_truncation(vol, (1.5, 3.0), rng),
        degrade.random_slice_profile(vol, 2, (2.0, 6.0), rng, gap_range=(0.0, 0.3)),
        degrade.random_rician_noise(vol, (0.02, 0.1), rng),
    ):
        again = degrade.replay(vol, record)
        assert np.array_equal(out.array, again.array), record
        assert out.origin == again.origin


def test_random_draws_are_per_generator(pattern_volume: Volume) -> None:
    a = degrade.random_rician_noise(pattern_volume, (0.02, 0.1), np.random.default_rng(5))
    b = degrade.random_rician_noise(pattern_volume, (0.02, 0.1), np.random.default_rng(5))
    np.random.seed(0)  # the global RNG must play no part
    c = degrade.random_rician_noise(pattern_volume, (0.02, 0.1), np.random.default_rng(5))
    assert a[1] == b[1] == c[1] and np.array_equal(a[0].array, c[0].array)


def test_lowdose_ct_reference_and_noise() -> None:
    arr = np.full((2, 31, 29), -1000.0, np.float32)
    yy, xx = np.mgrid[:31, :29]
    disk = (yy - 15) ** 2 + (xx - 14) ** 2 < 11**2
    arr[:, disk] = 40.0
    vol = Volume(arr, (1.0, 1.0, 3.0))
    rng = np.random.default_rng(0)
    noisy, ref = degrade.lowdose_ct(vol, 1e4, 2.0, rng, n_angles=60)
    assert noisy.array.shape == ref.array.shape == arr.shape and noisy.origin == vol.origin
    inner = (yy - 15) ** 2 + (xx - 14) ** 2 < 7**2
    assert abs(float(np.median(ref.array[:, inner])) - 40.0) < 40.0  # FBP of the clean sinogram ~ the input
    assert float(np.std((noisy.array - ref.array)[:, inner])) > 1.0  # quantum noise present
    (noisy2, ref2), record = degrade.random_lowdose_ct(vol, (1e4, 1e5), (0.0, 5.0), np.random.default_rng(1),
                                                       n_angles=60)
    again = degrade.replay(vol, record)
    assert np.array_equal(noisy2.array, again[0].array) and np.array_equal(ref2.array, again[1].array)
