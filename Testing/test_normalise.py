"""Intensity normalisation: the noise estimator and the noise-level normalisation the MR denoiser uses."""
from __future__ import annotations

import numpy as np
import pytest

from MedSREnhanceLib.core import normalise
from MedSREnhanceLib.simulate import rician_noise
from MedSREnhanceLib.core.volume import Volume


def _head(shape: tuple[int, int, int] = (47, 50, 53)) -> np.ndarray:
    """A smooth 'head' (ellipsoid, slowly varying tissue contrast) on a zero background."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (x**2 / 0.8 + y**2 / 0.7 + z**2 / 0.9) < 1
    return np.where(inside, 600.0 + 250.0 * np.sin(2 * x) * np.cos(3 * y + z), 0.0).astype(np.float32)


@pytest.mark.parametrize("level", [0.03, 0.05, 0.1])
def test_noise_sigma_measures_rician_noise_inside_the_tissue(level: float) -> None:
    clean = _head()
    noisy = rician_noise(Volume(clean), level, np.random.default_rng(1)).array
    sigma = level * float(np.percentile(clean[clean > 0], 99))
    assert normalise.noise_sigma(noisy) == pytest.approx(sigma, rel=0.1)
    # smooth anatomy is not noise
    assert normalise.noise_sigma(clean) < 0.1 * sigma


def test_noise_sigma_ignores_an_offset_and_scales_with_the_image() -> None:
    noisy = _head() + np.random.default_rng(2).normal(0, 20.0, _head().shape).astype(np.float32)
    s = normalise.noise_sigma(noisy)
    assert normalise.noise_sigma(noisy - 500.0) == pytest.approx(s, rel=1e-6)  # signed (z-scored) images
    assert normalise.noise_sigma(3.0 * noisy) == pytest.approx(3.0 * s, rel=1e-6)


def test_mr_noise_normalisation_fixes_the_noise_std_and_inverts() -> None:
    clean = _head()
    for level in (0.03, 0.08):
        noisy = rician_noise(Volume(clean), level, np.random.default_rng(3)).array
        out, params = normalise.forward(noisy, "mr-noise")
        assert normalise.noise_sigma(out) == pytest.approx(normalise.NOISE_REF, rel=1e-4)
        np.testing.assert_allclose(normalise.inverse(out, params), noisy, rtol=1e-5, atol=1e-3)
    # a noise-free input is clamped to the lowest level instead of being blown up
    out, params = normalise.forward(clean, "mr-noise")
    assert params["scale"] == pytest.approx(normalise.NOISE_LEVEL_RANGE[0] * normalise.robust_max(clean)
                                            / normalise.NOISE_REF, rel=1e-6)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise.forward(clean, "mri")


def _thorax(shape: tuple[int, int, int] = (20, 64, 64)) -> np.ndarray:
    """A CT 'thorax' in HU: air, a soft-tissue body with a smooth contrast, two lungs with vessels, a spine."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    body = (x**2 / 0.8 + y**2 / 0.5) < 1
    hu[body] = 40.0 + 30.0 * np.sin(3 * x[body])
    for cx in (-0.45, 0.45):
        lung = ((x - cx) ** 2 / 0.08 + y**2 / 0.2) < 1
        hu[lung] = -850.0 + 600.0 * (np.sin(25 * x[lung]) * np.sin(23 * y[lung] + 4 * z[lung]) > 0.9)
    hu[((x**2 + (y - 0.45) ** 2) < 0.02)] = 700.0
    return hu.astype(np.float32)


@pytest.mark.parametrize("sigma", [10.0, 30.0, 80.0])
def test_ct_noise_sigma_measures_the_noise_in_soft_tissue(sigma: float) -> None:
    clean = _thorax()
    noisy = clean + np.random.default_rng(4).normal(0, sigma, clean.shape).astype(np.float32)
    assert normalise.ct_noise_sigma(noisy) == pytest.approx(sigma, rel=0.1)
    assert normalise.ct_noise_sigma(clean) < 0.1 * 10.0  # lung edges, vessels and bone are not noise


def test_ct_noise_normalisation_sets_the_noise_std_and_inverts() -> None:
    clean = _thorax()
    for sigma in (15.0, 60.0):
        noisy = clean + np.random.default_rng(5).normal(0, sigma, clean.shape).astype(np.float32)
        out, params = normalise.forward(noisy, "ct-noise")
        plain, _ = normalise.forward(noisy, "ct")
        # the "ct" scale with a gain: the true noise has std CT_NOISE_REF_HU / CT_SCALE in model units
        noise = out - (clean + normalise.CT_OFFSET) / params["scale"]
        assert float(noise.std()) == pytest.approx(normalise.CT_NOISE_REF_HU / normalise.CT_SCALE, rel=0.1)
        np.testing.assert_allclose(out, plain * normalise.CT_NOISE_REF_HU / normalise.ct_noise_sigma(noisy), rtol=1e-5)
        np.testing.assert_allclose(normalise.inverse(out, params), noisy, rtol=1e-5, atol=2e-2)
    # a noise-free input is clamped to the lowest noise level
    _, params = normalise.forward(clean, "ct-noise")
    lowest = normalise.CT_NOISE_RANGE_HU[0]
    assert params["scale"] == pytest.approx(normalise.CT_SCALE * lowest / normalise.CT_NOISE_REF_HU)
