"""The sharpness-fidelity figure (evaluation/spectral.py): high-frequency power of an output over the truth's."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MedSREnhanceLib.core.volume import Volume
from MedSREnhanceLib.evaluation.scoring import Scorer
from MedSREnhanceLib.evaluation.spectral import hf_power_ratio, normalised_radius
from MedSREnhanceLib.simulate import kspace_truncation


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """A 34x36x38 phantom with sharp edges (a ball and a slab) and fine texture inside: detail at every frequency."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:34, :36, :38]
    ball = ((z - 17) ** 2 + (y - 18) ** 2 + (x - 19) ** 2 < 12**2).astype(float)
    texture = ndimage.gaussian_filter(rng.normal(size=ball.shape), 0.7)
    return (ball * (1.0 + 0.3 * texture) + 0.5 * (x > 30)).astype(np.float32)


SPACING = (0.9, 0.9, 1.1)  # (i, j, k): anisotropic, in mm
INPUT_SPACING = (1.8, 1.8, 2.2)  # an x2 input


def test_the_truth_itself_scores_exactly_one(truth: np.ndarray) -> None:
    assert hf_power_ratio(truth, truth, SPACING, INPUT_SPACING) == 1.0


def test_blur_lowers_the_ratio_and_white_noise_raises_it(truth: np.ndarray) -> None:
    blurred = ndimage.gaussian_filter(truth, 1.0)
    noisy = truth + np.random.default_rng(1).normal(0.0, 0.2, truth.shape).astype(np.float32)
    r_blur = hf_power_ratio(blurred, truth, SPACING, INPUT_SPACING)
    r_noise = hf_power_ratio(noisy, truth, SPACING, INPUT_SPACING)
    assert r_blur < 0.5
    assert r_noise > 1.3
    # more blur, less high-frequency power: the figure is monotone in the smoothing
    assert hf_power_ratio(ndimage.gaussian_filter(truth, 2.0), truth, SPACING, INPUT_SPACING) < r_blur


def test_it_is_a_power_ratio_and_ignores_the_mean(truth: np.ndarray) -> None:
    assert hf_power_ratio(2.0 * truth, truth, SPACING, INPUT_SPACING) == pytest.approx(4.0, rel=1e-9)
    assert hf_power_ratio(truth + 100.0, truth, SPACING, INPUT_SPACING) == pytest.approx(1.0, rel=1e-6)  # float32


def test_the_band_starts_at_half_the_inputs_nyquist_in_physical_units() -> None:
    # along k the grid step is 1.1 mm and the input's 2.2 mm: its Nyquist is 1/4.4 cycles/mm, the grid's 1/2.2
    radius = normalised_radius((8, 4, 4), SPACING[::-1], INPUT_SPACING[::-1])
    k_freqs = np.fft.fftfreq(8, d=1.1)
    assert radius[:, 0, 0] == pytest.approx(np.abs(k_freqs) * 4.4)
    assert radius.max() == pytest.approx(np.sqrt(3) * 2.0)  # every axis at the grid's Nyquist = 2x the input's
    # a sinusoid below the band adds nothing to the figure; one inside it does
    z = np.arange(64)[:, None, None] * np.ones((1, 32, 32))  # wide enough that the window's leakage is small
    ref = np.sin(2 * np.pi * z / 4.0) + 0.0  # 0.25 cycles/voxel = the input's Nyquist (x2): inside the band
    low = np.sin(2 * np.pi * z / 32.0)  # 1/32 cycles/voxel: far below it
    sp, sp_in = (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)
    assert hf_power_ratio(ref + low, ref, sp, sp_in) == pytest.approx(1.0, abs=1e-3)
    assert hf_power_ratio(2 * ref + low, ref, sp, sp_in) == pytest.approx(4.0, rel=1e-3)


def test_an_x2_kspace_truncation_loses_high_frequency_power_on_the_scorers_grid(truth: np.ndarray) -> None:
    gt = Volume(truth, SPACING, (0.0, 0.0, 0.0), np.eye(3))
    lr = kspace_truncation(gt, (2, 2, 2))
    scorer = Scorer.for_reference(gt, "mr")
    assert scorer.hf_ratio(gt, lr.spacing) == 1.0
    assert scorer.hf_ratio(lr, lr.spacing) < 0.7  # resampled linearly onto the truth's grid: smoother than the truth


def test_mismatched_grids_are_refused(truth: np.ndarray) -> None:
    with pytest.raises(ValueError, match="resample"):
        hf_power_ratio(truth[1:], truth, SPACING, INPUT_SPACING)
    with pytest.raises(ValueError, match="spacing"):
        hf_power_ratio(truth, truth, SPACING[:2], INPUT_SPACING)
