"""Trust outputs (issue 13): uncertainty calibration and ranking on a case with known error, the data-consistency
projection, the residual, and the CLI maps with exact grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import OBLIQUE, make_volume, to_sitk_image
from MedSREnhanceLib import cli
from MedSREnhanceLib.core.acquisition import dirichlet_matrix, profile_matrix
from MedSREnhanceLib.core.errors import InputError
from MedSREnhanceLib.core.volume import Volume, resized_geometry
from MedSREnhanceLib.engine import consistency, uncertainty
from MedSREnhanceLib.evaluation.calibration import Sample, evaluate, fit, fit_factor_exponent, fit_level_exponent
from MedSREnhanceLib.evaluation.scoring import trust_scores
from MedSREnhanceLib.simulate import kspace_truncation, slice_profile

torch = pytest.importorskip("torch")


def _known_error_samples(seed: int, n_volumes: int = 3) -> list[Sample]:
    """Volumes whose error is drawn from |N(0, s)| with s a smooth known field that the spread feature sees."""
    rng = np.random.default_rng(seed)
    samples = []
    for v in range(n_volumes):
        s = np.exp(rng.normal(0.0, 0.8, 20000)) * (1 + v)  # per-voxel expected error scale, differs by volume
        error = np.abs(rng.normal(0.0, s))
        feats = {"spread": (0.3 * s).astype(np.float32), "grad": rng.random(s.size).astype(np.float32),
                 "sigma": 0.0}
        samples.append(Sample(f"v{v}", error, feats))
    return samples


def test_calibration_and_ranking_on_a_known_error() -> None:
    dev, test = _known_error_samples(0), _known_error_samples(1)
    constants = fit(dev)
    assert constants["grad"] <= 0.2  # the uninformative feature is (nearly) left out
    for row in evaluate(test, constants):  # fitted on one draw, judged on another
        assert row["spearman"] > 0.5
        assert 0.8 < row["calibration_ratio"] < 1.25


def test_trust_scores_of_a_perfect_and_a_useless_map() -> None:
    rng = np.random.default_rng(2)
    scale = np.exp(rng.normal(0, 1, 50000))
    err = np.abs(rng.normal(0, scale))
    good = trust_scores(err, scale * np.sqrt(2 / np.pi))  # the expected |error| of each voxel
    # medians of half-normal draws sit below their means: a perfect expected-error map reads ~0.75, not 1
    assert good["spearman"] > 0.5 and 0.6 < good["calibration_ratio"] < 1.0
    assert abs(trust_scores(err, rng.random(err.size))["spearman"]) < 0.05


def test_uncertainty_map_combines_on_the_output_grid() -> None:
    vol = make_volume(shape_zyx=(9, 10, 11))
    spread = vol.with_array(np.full(vol.array.shape, 2.0, np.float32))
    unc = uncertainty.estimate(vol, spread, vol, {"spread": 1.0, "scale": 0.5})
    assert unc.array.shape == vol.array.shape and unc.origin == vol.origin
    np.testing.assert_allclose(unc.array, 1.0, rtol=1e-5)  # scale x spread where the other weights are 0


def test_the_factor_exponent_scales_the_map_and_is_recovered_from_errors_that_grow_with_the_factor() -> None:
    constants = {"spread": 1.0, "scale": 2.0, "factor_ref": 3.0, "factor_exponent": 1.3}
    assert uncertainty.scale_at(constants, 3.0) == pytest.approx(2.0)
    assert uncertainty.scale_at(constants, 6.0) == pytest.approx(2.0 * 2.0 ** 1.3)
    assert uncertainty.scale_at({"spread": 1.0, "scale": 2.0}, 6.0) == 2.0  # no exponent: one k for all
    rng = np.random.default_rng(3)

    def samples(factor: float) -> list[Sample]:  # the expected |error| grows as factor^1.3, the spread does not
        out = []
        for v in range(3):
            s = np.exp(rng.normal(0.0, 0.8, 20000))
            error = np.abs(rng.normal(0.0, s * (factor / 3.0) ** 1.3))
            out.append(Sample(f"v{v}", error, {"spread": (0.3 * s).astype(np.float32),
                                                "grad": np.zeros(s.size, np.float32), "sigma": 0.0}, factor))
        return out

    reference, others = samples(3.0), samples(2.0) + samples(5.0)
    fitted = fit_factor_exponent(reference, others, fit(reference))
    assert fitted["factor_ref"] == 3.0 and fitted["factor_exponent"] == pytest.approx(1.3, abs=0.1)
    for row in evaluate(samples(2.0) + samples(6.0), fitted):  # new draws, one factor outside the fit
        assert 0.8 < row["calibration_ratio"] < 1.25
    unfitted = evaluate(samples(6.0), fit(reference))
    assert all(row["calibration_ratio"] > 2.0 for row in unfitted)  # one k would under-report at x6


def test_the_level_exponent_is_recovered_from_errors_that_grow_faster_than_the_noise() -> None:
    """A denoiser's |error| grows with the input's noise level faster than the map's features do: calibrated at
    one level, the map over-states the error below it and under-states it above. The level exponent fixes both."""
    constants = {"spread": 1.0, "scale": 2.0, "level_ref": 0.05, "level_exponent": 0.5}
    feats = {"spread": np.ones(4, np.float32), "level": 0.2}
    np.testing.assert_allclose(uncertainty.combine(feats, constants), 2.0 * 4.0 ** 0.5)
    np.testing.assert_allclose(uncertainty.combine({**feats, "level": 0.05}, constants), 2.0)
    np.testing.assert_allclose(uncertainty.combine(feats, {"spread": 1.0, "scale": 2.0}), 2.0)  # no exponent
    rng = np.random.default_rng(4)

    def samples(level: float) -> list[Sample]:  # spread grows as level, the |error| as level^1.5
        out = []
        for v in range(3):
            lv = level * float(np.exp(rng.normal(0.0, 0.05)))  # each volume's own noise shifts its level
            s = np.exp(rng.normal(0.0, 0.8, 20000))
            error = np.abs(rng.normal(0.0, s * lv * (lv / 0.05) ** 0.5))
            out.append(Sample(f"v{v}", error, {"spread": (0.3 * s * lv).astype(np.float32),
                                                "grad": np.zeros(s.size, np.float32), "sigma": 0.0, "level": lv}))
        return out

    reference, others = samples(0.05), samples(0.02) + samples(0.10)
    fitted = fit_level_exponent(reference, others, fit(reference))
    assert fitted["level_ref"] == pytest.approx(0.05, rel=0.1)
    assert fitted["level_exponent"] == pytest.approx(0.5, abs=0.1)
    for row in evaluate(samples(0.02) + samples(0.15), fitted):  # new draws, one level outside the fit
        assert 0.8 < row["calibration_ratio"] < 1.25
    assert all(row["calibration_ratio"] < 0.8 for row in evaluate(samples(0.02), fit(reference)))


@pytest.mark.parametrize("kind,scale", [("kspace", (2.0, 2.0, 2.0)), ("kspace", (1.0, 3.0, 2.0)),
                                        ("gaussian", (1.0, 1.0, 4.0))])
def test_projection_reproduces_the_input_and_keeps_the_grid(kind: str, scale: tuple[float, ...]) -> None:
    hr = make_volume(shape_zyx=(24, 18, 20), direction=OBLIQUE, kind="random")
    lr = kspace_truncation(hr, scale) if kind == "kspace" else slice_profile(hr, 2, scale[2])
    size, spacing, origin = resized_geometry(lr, scale)
    guess = Volume(np.random.default_rng(1).random(size[::-1]).astype(np.float32), spacing, origin, lr.direction)
    out = consistency.project(guess, lr, scale, kind)
    assert out is not None
    assert out.array.shape == guess.array.shape and out.spacing == guess.spacing and out.origin == guess.origin
    again = consistency.degrade(out, scale, kind, lr.array.shape)
    span = float(np.ptp(lr.array))
    assert np.sqrt(np.mean((again - lr.array) ** 2)) / span < 1e-5  # float tolerance
    # a second projection changes nothing: it is a projection
    np.testing.assert_allclose(consistency.project(out, lr, scale, kind).array, out.array, atol=1e-4 * span)


def test_operators_are_the_ones_simulate_degrades_with() -> None:
    hr = make_volume(shape_zyx=(16, 12, 14), kind="random")
    lr = kspace_truncation(hr, (2, 2, 2))
    np.testing.assert_allclose(consistency.degrade(hr, (2.0, 2.0, 2.0), "kspace", lr.array.shape), lr.array,
                               atol=1e-4)
    assert dirichlet_matrix(14, 2).shape == (7, 14) and profile_matrix(16, 4, 4, "gaussian").shape == (4, 16)


def _ramp_phantom(n: int) -> Volume:
    """Structure up to the faces (a ramp and blobs), so that a crop's opposite faces differ."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    arr = 60.0 + 40.0 * x + 20.0 * y + 80.0 * np.exp(-((x - 0.2) ** 2 + y ** 2 + (z + 0.1) ** 2) / 0.05)
    arr += 50.0 * (np.sin(9.0 * x) * np.cos(7.0 * z) > 0.3)
    return Volume(arr.astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def test_crops_get_the_mirrored_kspace_model_and_whole_fields_of_view_the_periodic_one() -> None:
    whole = _ramp_phantom(64)
    lr_whole = kspace_truncation(whole, (2, 2, 2))
    scale = (2.0, 2.0, 2.0)
    # a whole field of view: the periodic model is the acquisition itself
    assert consistency.best_fit(whole, lr_whole, scale, "kspace") == "kspace"
    # a crop of it (what a region of interest or the bench's crops are): the periodic model folds one face onto the
    # other; the mirrored continuation misses the crop's own acquisition far less
    crop = Volume(whole.array[8:56, 8:56, 8:56].copy(), whole.spacing, (8.0, 8.0, 8.0), whole.direction)
    lr_crop = Volume(lr_whole.array[4:28, 4:28, 4:28].copy(), lr_whole.spacing, (8.5, 8.5, 8.5), whole.direction)
    misfit = {kind: float(np.sqrt(np.mean((consistency.degrade(crop, scale, kind, lr_crop.array.shape)
                                            - lr_crop.array) ** 2))) for kind in ("kspace", "kspace-mirrored")}
    assert misfit["kspace-mirrored"] < 0.85 * misfit["kspace"], misfit
    assert consistency.best_fit(crop, lr_crop, scale, "kspace") == "kspace-mirrored"
    assert consistency.best_fit(crop, lr_crop, scale, "gaussian") == "gaussian"  # one candidate: kept
    # and projecting a smooth guess with the mirrored model lands closer to the truth than with the periodic one
    guess = crop.with_array(ndimage.zoom(lr_crop.array, 2.0, order=1).astype(np.float32))
    error = {kind: float(np.sqrt(np.mean((consistency.project(guess, lr_crop, scale, kind).array - crop.array) ** 2)))
             for kind in ("kspace", "kspace-mirrored")}
    assert error["kspace-mirrored"] < error["kspace"], error
    again = consistency.degrade(consistency.project(guess, lr_crop, scale, "kspace-mirrored"), scale,
                                "kspace-mirrored", lr_crop.array.shape)
    np.testing.assert_allclose(again, lr_crop.array, atol=1e-3)


def test_mirrored_operator_keeps_the_lr_grid_and_falls_back_where_it_cannot() -> None:
    # a constant continues as itself under mirroring, so each LR sample is the constant (the LR grid is unmoved)
    for n, f in ((20, 2.0), (21, 2.5), (7, 3.0)):
        a = consistency.mirrored(dirichlet_matrix, n, f)
        assert a.shape == dirichlet_matrix(n, f).shape
        np.testing.assert_allclose(a @ np.ones(n), 1.0, atol=1e-9)
    # a ramp stays a ramp near the middle, with the LR centres where the extent-preserving grid puts them
    ramp = np.arange(40, dtype=float)
    lr = consistency.mirrored(dirichlet_matrix, 40, 2.0) @ ramp
    np.testing.assert_allclose(lr[8:12], 2.0 * np.arange(8, 12) + 0.5, atol=0.05)
    # no whole number of LR samples spans whole HR samples at an irrational factor: the plain operator
    np.testing.assert_array_equal(consistency.mirrored(dirichlet_matrix, 30, np.e), dirichlet_matrix(30, np.e))


def test_enhance_sr_is_consistent_and_maps_sit_on_their_grids() -> None:
    from MedSREnhanceLib import enhance

    torch.set_num_threads(1)
    lr = kspace_truncation(make_volume(shape_zyx=(24, 22, 20), direction=OBLIQUE), (2, 2, 2))
    result = enhance(lr, task="sr", model="mr-sr-x2", scale=2, uncertainty=True, consistency=True)
    unc, res = result.extras["uncertainty"], result.extras["residual"]
    assert unc.array.shape == result.enhanced.array.shape and unc.origin == result.enhanced.origin
    assert res.array.shape == lr.array.shape and res.origin == lr.origin and res.spacing == lr.spacing
    assert consistency.relative_rms(res, lr) < 1e-5
    assert np.all(unc.array >= 0) and float(unc.array.max()) > 0
    default = enhance(lr, task="sr", model="mr-sr-x2", scale=2)  # on by default: measured on whole volumes
    assert consistency.relative_rms(default.extras["residual"], lr) < 1e-5
    off = enhance(lr, task="sr", model="mr-sr-x2", scale=2, consistency=False)
    assert consistency.relative_rms(off.extras["residual"], lr) > 1e-4
    assert "uncertainty" not in off.extras


def test_through_plane_projects_by_default_and_the_cli_can_switch_it_off(tmp_path: Path) -> None:
    from MedSREnhanceLib import enhance, read_volume

    thick = slice_profile(make_volume(shape_zyx=(32, 14, 13), direction=OBLIQUE), 2, 4.0)
    assert consistency.relative_rms(enhance(thick, task="sr", scale=(1, 1, 4)).extras["residual"], thick) < 1e-5
    src, out, res = tmp_path / "thick.nrrd", tmp_path / "thin.nrrd", tmp_path / "res.nrrd"
    sitk.WriteImage(to_sitk_image(thick), str(src))
    assert cli.main(["enhance", str(src), str(out), "--scale", "1,1,4", "--no-consistency", "--residual", str(res),
                     "--quiet"]) == 0
    assert consistency.relative_rms(read_volume(res), thick) > 1e-4


def test_denoise_residual_is_the_removed_component() -> None:
    from MedSREnhanceLib import enhance

    vol = make_volume(shape_zyx=(12, 13, 14))
    result = enhance(vol, task="denoise", model="gaussian")
    np.testing.assert_allclose(result.extras["residual"].array, vol.array - result.enhanced.array, atol=1e-5)


def test_classical_models_refuse_uncertainty() -> None:
    from MedSREnhanceLib import enhance

    with pytest.raises(InputError, match="uncertainty is not available for classical model bspline"):
        enhance(make_volume(shape_zyx=(8, 8, 8)), task="sr", model="bspline", scale=2, uncertainty=True)


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Size and the physical positions of the first and last voxel centres (SimpleITK)."""
    image = sitk.ReadImage(str(path))
    last = [n - 1 for n in image.GetSize()]
    return (image.GetSize(), np.asarray(image.TransformIndexToPhysicalPoint([0, 0, 0])),
            np.asarray(image.TransformIndexToPhysicalPoint(last)))


def test_cli_writes_both_maps_on_exact_grids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.nii.gz"
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(10, 12, 11), direction=OBLIQUE)), str(src))
    out, unc, res = tmp_path / "out.nii.gz", tmp_path / "unc.nrrd", tmp_path / "res.nii.gz"
    assert cli.main(["enhance", str(src), str(out), "--model", "mr-sr-x2", "--scale", "2", "--uncertainty", str(unc),
                     "--residual", str(res), "--device", "cpu"]) == 0
    assert "residual (input minus the output degraded back) RMS" in capsys.readouterr().err
    for a, b in ((_grid(unc), _grid(out)), (_grid(res), _grid(src))):
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], atol=1e-4)
        np.testing.assert_allclose(a[2], b[2], atol=1e-4)


def test_cli_classical_model_refuses_uncertainty_in_one_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.nii.gz"
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(8, 9, 10))), str(src))
    out = tmp_path / "out.nii.gz"
    assert cli.main(["enhance", str(src), str(out), "--model", "bspline", "--scale", "2",
                     "--uncertainty", str(tmp_path / "u.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medsr: error: uncertainty is not available for classical model bspline"]
    assert not out.exists() and not (tmp_path / "u.nii.gz").exists()


def test_enhance_scales_the_map_by_the_run_s_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    from MedSREnhanceLib import enhance
    from MedSREnhanceLib.engine import enhance as enhance_module

    torch.set_num_threads(1)
    thick = slice_profile(make_volume(shape_zyx=(32, 14, 13), direction=OBLIQUE), 2, 4.0)
    maps = []
    for exponent in (0.0, 1.0):
        monkeypatch.setattr(enhance_module, "uncertainty_constants", lambda spec, messages=None, e=exponent: {
            "spread": 1.0, "scale": 1.0, "factor_ref": 2.0, "factor_exponent": e})
        maps.append(enhance(thick, task="sr", model="mr-throughplane", scale=(1, 1, 4),
                            uncertainty=True).extras["uncertainty"].array)
    assert float(maps[0].max()) > 0
    np.testing.assert_allclose(maps[1], 2.0 * maps[0], rtol=1e-5)  # (4 / 2)^1


def test_enhance_scales_a_denoiser_s_map_by_the_input_s_noise_level(monkeypatch: pytest.MonkeyPatch) -> None:
    from MedSREnhanceLib import enhance
    from MedSREnhanceLib.core import normalise
    from MedSREnhanceLib.engine import enhance as enhance_module

    torch.set_num_threads(1)
    vol = make_volume(shape_zyx=(20, 18, 16))
    noisy = vol.with_array(np.abs(vol.array + np.random.default_rng(0).normal(0, 0.05, vol.array.shape)).astype(np.float32))
    maps = []
    for exponent in (0.0, 1.0):
        monkeypatch.setattr(enhance_module, "uncertainty_constants", lambda spec, messages=None, e=exponent: {
            "spread": 1.0, "scale": 1.0, "level_ref": 0.01, "level_exponent": e})
        maps.append(enhance(noisy, task="denoise", model="mr-denoise", uncertainty=True).extras["uncertainty"].array)
    level = normalise.noise_sigma(noisy.array) / normalise.robust_max(noisy.array)
    assert float(maps[0].max()) > 0 and level > 0.01
    np.testing.assert_allclose(maps[1], maps[0] * level / 0.01, rtol=1e-4)


def test_every_bundled_learned_model_carries_a_calibration() -> None:
    from MedSREnhanceLib.models import registry

    for spec in registry.LEARNED:  # an uncalibrated map is the raw spread, several times too small (ct-denoise was)
        entry = spec.card_data().get("uncertainty", {})
        assert entry.get("constants", {}).get("scale", 0) > 0, f"{spec.name} has no uncertainty calibration"
        assert entry.get("development_volumes") and entry.get("command"), spec.name
