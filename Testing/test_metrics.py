"""Metrics: agreement with scikit-image where the definitions coincide, plus hand-checkable cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from MedSREnhanceLib.evaluation import metrics


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ref = rng.random((17, 18, 19))
    pred = ref + 0.05 * rng.standard_normal(ref.shape)
    return pred, ref


def test_psnr_matches_skimage(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, ref = pair
    assert metrics.psnr(pred, ref, 1.0) == pytest.approx(peak_signal_noise_ratio(ref, pred, data_range=1.0), abs=1e-9)
    assert metrics.psnr(pred * 300, ref * 300, 300.0) == pytest.approx(
        peak_signal_noise_ratio(ref * 300, pred * 300, data_range=300.0), abs=1e-9)


def test_psnr_by_hand() -> None:
    ref = np.zeros((4, 4, 4))
    pred = np.full_like(ref, 0.1)  # MSE = 0.01 -> 20 dB at R = 1, 40 dB at R = 10
    assert metrics.psnr(pred, ref, 1.0) == pytest.approx(20.0)
    assert metrics.psnr(pred, ref, 10.0) == pytest.approx(40.0)
    assert math.isinf(metrics.psnr(ref, ref, 1.0))
    # Mask: the error lives outside the mask only -> infinite inside, finite overall.
    pred2 = ref.copy()
    pred2[0] = 1.0
    mask = np.zeros(ref.shape, bool)
    mask[2:] = True
    assert math.isinf(metrics.psnr(pred2, ref, 1.0, mask))
    assert metrics.psnr(pred2, ref, 1.0) == pytest.approx(10 * math.log10(4.0))  # MSE = 1/4


def test_ssim_matches_skimage_wang_settings(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, ref = pair
    expected = structural_similarity(pred, ref, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert metrics.ssim3d(pred, ref, 1.0) == pytest.approx(expected, abs=1e-10)


def test_ssim_by_hand() -> None:
    rng = np.random.default_rng(1)
    ref = rng.random((15, 15, 15))
    assert metrics.ssim3d(ref, ref, 1.0) == pytest.approx(1.0)
    # Constant volumes: mu_x = a, mu_y = b, no variance -> SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.2, 0.6
    c1 = (0.01 * 1.0) ** 2
    got = metrics.ssim3d(np.full((13, 13, 13), a), np.full((13, 13, 13), b), 1.0)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    # The data range matters: a larger range makes the same difference look smaller.
    noisy = ref + 0.1 * rng.standard_normal(ref.shape)
    assert metrics.ssim3d(noisy, ref, 10.0) > metrics.ssim3d(noisy, ref, 1.0)


def test_ssim_mask_averages_the_map(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, ref = pair
    mask = np.zeros(ref.shape, bool)
    mask[5:10, 6:12, 4:9] = True
    smap = metrics.ssim_map(pred, ref, 1.0)
    assert metrics.ssim3d(pred, ref, 1.0, mask=mask) == pytest.approx(smap[mask].mean())


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="resample"):
        metrics.psnr(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), 1.0)


def test_mr_normalisation_and_ct_windows() -> None:
    ref = np.zeros((10, 10, 10))
    ref[2:8, 2:8, 2:8] = np.linspace(1, 200, 216).reshape(6, 6, 6)
    s = metrics.mr_scale(ref)
    assert s == pytest.approx(np.percentile(ref[ref != 0], 99.5))
    assert metrics.normalise_mr(ref, s).max() > 1.0  # no clipping
    full, soft = metrics.CT_WINDOWS
    assert (full.low, full.high) == (-1000.0, 1000.0)
    assert (soft.low, soft.high) == (-160.0, 240.0)
    hu = np.array([-2000.0, -1000.0, 0.0, 40.0, 1000.0, 3000.0])
    np.testing.assert_allclose(metrics.apply_window(hu, full), [0, 0, 0.5, 0.52, 1, 1])
    np.testing.assert_allclose(metrics.apply_window(hu, soft), [0, 0, 0.4, 0.5, 1, 1])


def test_foreground_masks() -> None:
    z, y, x = np.mgrid[:30, :32, :34]
    ball = (z - 15) ** 2 + (y - 16) ** 2 + (x - 17) ** 2 < 10 ** 2
    inner = (z - 15) ** 2 + (y - 16) ** 2 + (x - 17) ** 2 < 4 ** 2
    mr = np.where(ball, 100.0, 0.0)
    mr[inner] = 5.0  # dark ventricle-like core must stay foreground
    m = metrics.foreground_mask(mr, "mr")
    assert m[inner].all() and not m[0, 0, 0]
    # The mask hugs the object: it holds the object and stays within a 2-voxel rim of it.
    near = (z - 15) ** 2 + (y - 16) ** 2 + (x - 17) ** 2 < 12 ** 2
    assert m[ball].all() and not m[~near].any()
    ct = np.where(ball, 40.0, -1000.0)
    ct[inner] = -850.0  # lung inside the body is body
    m = metrics.foreground_mask(ct, "ct")
    assert m[inner].all() and not m[0, 0, 0]


def test_score_keys() -> None:
    rng = np.random.default_rng(2)
    ref = rng.random((12, 12, 12)) * 100
    mask = np.ones(ref.shape, bool)
    mr = metrics.score(ref + 1, ref, "mr", mask)
    assert set(mr) == {"psnr", "psnr_fg", "ssim", "ssim_fg"}
    ct = metrics.score(ref + 1, ref, "ct", mask)
    assert {"psnr_full", "psnr_fg_soft", "ssim_full", "ssim_fg_soft"} <= set(ct)
