"""The evaluation harness: case parsing, tuning, scoring on the ground-truth grid, and the files it writes.

All synthetic and tiny (classical models only); the one test on ../shared/data skips where that folder is absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedSREnhanceLib import simulate as degrade
from MedSREnhanceLib.engine import inference
from MedSREnhanceLib.evaluation import baselines, bench, cases, runner, scoring
from MedSREnhanceLib.core.io import content_hash
from MedSREnhanceLib.core.resample import to_sitk
from MedSREnhanceLib.core.volume import Volume

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def phantom(shape: tuple[int, int, int] = (24, 26, 28), seed: int = 0, ct: bool = False,
            spacing: tuple[float, float, float] = (0.9, 1.0, 1.2)) -> Volume:
    """An ellipsoid with a bright and a dark inclusion and smooth texture, on a zero (MR) or air (CT) background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.8) ** 2 + (z / 0.9) ** 2 < 1
    from scipy import ndimage

    arr = np.where(body, 100.0, 0.0) + 40.0 * ((x - 0.3) ** 2 + y**2 + z**2 < 0.08)
    arr -= 50.0 * ((x + 0.35) ** 2 + (y - 0.2) ** 2 + z**2 < 0.05)
    arr += body * 60.0 * ndimage.gaussian_filter(rng.random(shape), 1.5)
    if ct:
        arr = np.where(body, arr - 60.0, -1000.0)
    return Volume(arr.astype(np.float32), spacing, (3.0, -7.5, 11.0))


def test_parse_case_names_and_parameters() -> None:
    c = cases.parse_case("mr-sr-x3")
    assert (c.task, c.modality, c.scale, c.params["scale"]) == ("sr", "mr", (3.0, 3.0, 3.0), [3.0, 3.0, 3.0])
    c = cases.parse_case("mr-throughplane-x4")
    assert c.scale == (1.0, 1.0, 4.0) and c.params["axis"] == 2 and c.params["profile"] == "gaussian"
    assert cases.parse_case("mr-denoise-5").params["level"] == pytest.approx(0.05)
    assert cases.parse_case("ct-lowdose").params["photons_per_ray"] == cases.DEFAULT_PHOTONS
    assert cases.parse_case("ct-lowdose-1e4").params["photons_per_ray"] == 1e4
    c = cases.parse_case("ct-throughplane-x3")  # default: the thin in-plane axis j
    assert (c.modality, c.task, c.scale, c.params["axis"]) == ("ct", "sr", (1.0, 3.0, 1.0), 1)
    c = cases.parse_case("ct-throughplane-x2.5-k")
    assert c.scale == (1.0, 1.0, 2.5) and c.params["axis"] == 2 and c.params["thickness_factor"] == 2.5
    with pytest.raises(ValueError, match="unknown case"):
        cases.parse_case("mr-magic")


def test_crop_sizes_divide_the_scale() -> None:
    vol = phantom((23, 30, 27))
    mask = np.ones(vol.array.shape, bool)
    start, size = cases.crop_box(vol, cases.parse_case("mr-sr-x2"), 25, mask)
    assert size == (22, 24, 24)
    start, size = cases.crop_box(vol, cases.parse_case("mr-throughplane-x4"), None, mask)
    assert size == (20, 30, 27)  # only k (array axis 0) must divide by 4
    # The crop keeps physical positions: voxel 0 of the crop is voxel `start` of the original.
    crop = cases.crop_volume(vol, start, size)
    np.testing.assert_allclose(crop.origin, vol.index_to_physical(np.asarray(start[::-1], float)))
    np.testing.assert_array_equal(crop.array, vol.array[start[0]:start[0] + 20])


@pytest.mark.parametrize("case_name", ["mr-sr-x2", "mr-throughplane-x4", "mr-sr-x2.5"])
def test_degraded_crop_nests_in_the_ground_truth_crop(tmp_path: Path, case_name: str) -> None:
    from MedSREnhanceLib.core.volume import resized_geometry

    path = tmp_path / "v.nii.gz"
    sitk.WriteImage(to_sitk(phantom((27, 31, 29))), str(path))
    bv = cases.find_volumes([path], modality="mr")[0]
    case = cases.parse_case(case_name)
    inp, gt, _, start, size = cases.degraded_pair(case, bv, cases.BenchSettings(crop=20))
    assert all(st % cases.grid_step(f) == 0 for st, f in zip(start, cases.case_factors_zyx(case)))
    lr_size, lr_spacing, lr_origin = resized_geometry(gt, tuple(1.0 / f for f in case.scale))
    assert inp.size == lr_size
    np.testing.assert_allclose(inp.spacing, lr_spacing, atol=1e-6)
    np.testing.assert_allclose(inp.origin, lr_origin, atol=1e-5)


def test_fourier_zerofill_inverts_kspace_truncation_of_a_band_limited_volume() -> None:
    n = 24
    z, y, x = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    arr = np.cos(2 * np.pi * 3 * x / n) + np.sin(2 * np.pi * 2 * y / n + 0.3) + np.cos(2 * np.pi * 5 * z / n)
    vol = Volume(arr.astype(np.float32), (0.9, 1.0, 1.1), (2.0, 3.0, 4.0))
    up = baselines.fourier_zerofill(degrade.kspace_truncation(vol, (2.0, 2.0, 2.0)), (2.0, 2.0, 2.0))
    assert up.size == vol.size
    np.testing.assert_allclose(up.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(up.array, arr, atol=1e-5)


def test_zscored_mr_is_shifted_to_a_zero_background() -> None:
    vol = phantom()
    z = vol.with_array((vol.array - 50.0) / 30.0)  # background at the minimum, negative
    shifted, notes = cases.prepare_ground_truth(z, "mr")
    assert shifted.array.min() == pytest.approx(0.0) and notes and "z-scored" in notes[0]
    same, notes = cases.prepare_ground_truth(vol, "mr")
    assert same is vol and not notes


def test_tuning_picks_the_best_parameter() -> None:
    from scipy import ndimage

    sharp = phantom()
    gt = sharp.with_array(ndimage.gaussian_filter(sharp.array, 2.0))  # smooth: Gaussian smoothing has an optimum
    case = cases.parse_case("mr-denoise-8")
    noisy, _ = cases.degrade_case(case, gt, np.random.default_rng(3))
    scorer = scoring.Scorer.for_reference(gt, "mr")
    grid = [{"sigma": s} for s in (0.2, 0.5, 0.8, 1.2, 3.0)]
    best, trials, _ = baselines.tune(case, "gaussian", noisy, scorer, grid)
    values = [t["scores"]["psnr_fg"] for t in trials]
    assert best["psnr_fg"] == grid[int(np.argmax(values))]
    # A real optimum: strictly inside the grid, and better than both ends.
    assert best["psnr_fg"]["sigma"] not in (0.2, 3.0)
    assert max(values) > values[0] + 0.5 and max(values) > values[-1] + 0.5


def test_scoring_on_the_reference_grid_catches_a_half_voxel_shift() -> None:
    gt = phantom()
    scorer = scoring.Scorer.for_reference(gt, "mr")
    exact, grid = scorer.score(gt)
    assert grid["grid_matches_reference"] and np.isinf(exact["psnr"])
    # Same voxels, origin moved by half a voxel along i: the content is now misplaced in physical space.
    shift = np.asarray(gt.origin) + gt.direction[:, 0] * gt.spacing[0] / 2
    shifted = Volume(gt.array, gt.spacing, tuple(shift), gt.direction)
    scores, grid = scorer.score(shifted)
    assert not grid["grid_matches_reference"]
    assert grid["origin_offset_mm"] == pytest.approx(gt.spacing[0] / 2)
    assert scores["psnr_fg"] < 35.0 and scores["ssim"] < exact["ssim"]
    # An upsampled output on a wrongly placed grid (origin copied from the input) scores worse than the right one.
    case = cases.parse_case("mr-sr-x2")
    lr = degrade.kspace_truncation(gt, (2.0, 2.0, 2.0))
    good, _, _ = baselines.run_method(lr, case, "bspline", None, "cpu")
    wrong = Volume(good.array, good.spacing, lr.origin, good.direction)  # the classic geometry bug
    assert scorer.score(wrong)[0]["psnr_fg"] < scorer.score(good)[0]["psnr_fg"] - 1.0


def test_harness_writes_markdown_json_and_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small grids keep the test fast; the logic is the same as with the full ones.
    monkeypatch.setattr(baselines, "TUNING_GRIDS", {
        "gaussian": [{"sigma": 0.5}, {"sigma": 1.0}],
        "anisotropic-diffusion": [{"iterations": 2, "conductance": 1.0, "time_step": 0.0625}],
        "nlmeans": [{"h_factor": 0.4, "patch_size": 3, "patch_distance": 2},
                    {"h_factor": 0.8, "patch_size": 3, "patch_distance": 2}],
    })
    files = []
    for name, vol in (("mr_tiny", phantom((20, 22, 24))), ("ct_tiny", phantom((12, 22, 24), ct=True))):
        path = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(to_sitk(vol), str(path))
        files.append(path)
    volumes = cases.find_volumes(files)
    assert [v.modality for v in volumes] == ["mr", "ct"]
    out = tmp_path / "results"
    settings = cases.BenchSettings(cases=("mr-sr-x2", "mr-denoise-5", "ct-lowdose"), models="none", crop=20,
                                   tune_block=16, n_angles=24, command="medsr bench (test)")
    report = runner.run_bench(volumes, out, settings)
    md = (out / "results.md").read_text()
    data = json.loads((out / "results.json").read_text())
    assert "medsr bench (test)" in md and "### mr_tiny" in md and "### ct_tiny" in md
    assert "**(best baseline)**" in md
    precision = "bf16" if inference.cpu_has_amx() else "fp32"  # auto: bf16 on AMX CPUs
    assert data["settings"]["learned_precision"] == precision and f"on cpu (learned models in {precision})" in md
    assert [(r["case"], r["volume"]) for r in data["results"]] == [
        ("mr-sr-x2", "mr_tiny"), ("mr-denoise-5", "mr_tiny"), ("ct-lowdose", "ct_tiny")]
    sr = data["results"][0]
    assert {r["model"] for r in sr["rows"]} == {"linear", "bspline", "sinc", "fourier-zerofill (reference)"}
    assert all(r["grid"]["grid_matches_reference"] for r in sr["rows"])
    assert sr["crop"]["input_size_ijk"] == [10, 10, 10]
    # the sharpness figures: on every row of every case (the input row of denoising too), in the tables
    assert all(0.0 < r["metrics"]["hf_ratio"] and 0.0 <= r["metrics"]["hf_ratio_above_nyquist"]
               for res in data["results"] for r in res["rows"])
    assert "| HF ratio | HF > Nyq |" in md
    # linear interpolation is smoother than sinc
    hf = {r["model"]: r["metrics"]["hf_ratio"] for r in sr["rows"]}
    assert hf["linear"] < hf["sinc"]
    dn = data["results"][1]
    assert {r["model"] for r in dn["rows"]} == {"input (degraded)", "gaussian", "anisotropic-diffusion", "nlmeans"}
    # an MR denoising case says how noisy its own ground truth is (it caps what removing noise can score)
    truth_noise = next(n for n in dn["notes"] if "noise of its own" in n)
    assert truth_noise in md and not any("noise of its own" in n for n in sr["notes"])
    nlm = next(r for r in dn["rows"] if r["model"] == "nlmeans")
    assert "block" in nlm["tuning"] and len(nlm["tuning_trials"]) == 2
    ct = data["results"][2]
    assert set(ct["verdicts"]["best_baseline"]) == {"psnr_fg_full", "psnr_fg_soft"}
    assert data["cases"][2]["params"]["photons_per_ray"] == cases.DEFAULT_PHOTONS
    for res in data["results"]:
        png = out / res["png"]
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    # Every denoiser beats the noisy input on the phantom once tuned (sanity of tuning + scoring).
    for res in (dn,):
        base = next(r for r in res["rows"] if r["kind"] == "input")["metrics"]["psnr_fg"]
        assert res["verdicts"]["best_baseline"]["psnr_fg"]["value"] > base
    assert report["results"][0]["verdicts"]["models"] == {}


def test_cache_reuses_identical_work(tmp_path: Path) -> None:
    path = tmp_path / "mr.nii.gz"
    sitk.WriteImage(to_sitk(phantom((16, 18, 20))), str(path))
    volumes = cases.find_volumes([path], modality="mr")
    settings = cases.BenchSettings(cases=("mr-sr-x2",), models="none", crop=16, cache=str(tmp_path / "cache"))
    first = runner.run_bench(volumes, tmp_path / "a", settings)
    second = runner.run_bench(volumes, tmp_path / "b", settings)
    rows1, rows2 = first["results"][0]["rows"], second["results"][0]["rows"]
    assert not any(r.get("cached") for r in rows1)
    assert all(r.get("cached") for r in rows2 if r["kind"] == "classical")
    assert [r["metrics"] for r in rows1] == [r["metrics"] for r in rows2]
    assert "(cached)" in (tmp_path / "b" / "results.md").read_text()
    # A different seed means a different degraded input: nothing may be reused for classical rows of a noisy case.
    noisy = cases.BenchSettings(cases=("mr-denoise-5",), models="none", crop=16, cache=str(tmp_path / "cache"),
                                png=False)
    runner.run_bench(volumes, tmp_path / "c", noisy)
    other = runner.run_bench(volumes, tmp_path / "d", cases.BenchSettings(
        cases=("mr-denoise-5",), models="none", crop=16, cache=str(tmp_path / "cache"), png=False, seed=1))
    assert not any(r.get("cached") for r in other["results"][0]["rows"])


def test_judge_marks_the_bar() -> None:
    rows = [
        {"model": "bspline", "kind": "classical", "params": {}, "metrics": {"psnr_fg": 30.0, "ssim": 0.9, "ssim_fg": 0.8}},
        {"model": "sinc", "kind": "classical", "params": {}, "metrics": {"psnr_fg": 30.4, "ssim": 0.88, "ssim_fg": 0.85}},
        {"model": "good", "kind": "learned", "params": {}, "metrics": {"psnr_fg": 31.0, "ssim": 0.91, "ssim_fg": 0.86}},
        {"model": "close", "kind": "learned", "params": {}, "metrics": {"psnr_fg": 30.8, "ssim": 0.95, "ssim_fg": 0.9}},
        {"model": "blurry", "kind": "learned", "params": {}, "metrics": {"psnr_fg": 32.0, "ssim": 0.89, "ssim_fg": 0.9}},
    ]
    v = scoring.judge(rows, "mr")
    assert v["best_baseline"]["psnr_fg"]["model"] == "sinc"
    assert v["models"]["good"]["passes_bar"]
    assert v["models"]["good"]["gain_db"]["psnr_fg"] == pytest.approx(0.6)
    assert not v["models"]["close"]["passes_bar"]  # +0.4 dB only
    assert not v["models"]["blurry"]["passes_bar"]  # SSIM below bspline's 0.9


def test_cli_glue_parses_and_refuses_bad_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--cases", "mr-sr-x2,nonsense", "--quiet"])
    assert bench.run_from_args(args) == 2
    assert "unknown case" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "MANIFEST.json").exists(), reason="../shared/data is absent")
def test_manifest_ids_and_modalities() -> None:
    vols = cases.find_volumes([SHARED_DATA / "MANIFEST.json"], ids=["mr_gd", "lung_ct_pat_2"])
    assert [(v.id, v.modality) for v in vols] == [("mr_gd", "mr"), ("lung_ct_pat_2", "ct")]
    assert all(v.path.exists() for v in vols)


def test_learned_model_selection_follows_enhance_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from MedSREnhanceLib.models import registry

    fake = registry.ModelSpec("fake-ct-denoise", "denoise", "learned", ("ct",), "test double")
    monkeypatch.setattr(registry, "LEARNED", (fake,))
    monkeypatch.setitem(registry.REGISTRY, fake.name, fake)
    assert runner.learned_models_for(cases.parse_case("ct-lowdose"), "auto") == ["fake-ct-denoise"]
    assert runner.learned_models_for(cases.parse_case("ct-lowdose"), "all") == ["fake-ct-denoise"]
    assert runner.learned_models_for(cases.parse_case("mr-denoise-5"), "auto") == []  # no MR model: nothing
    assert runner.learned_models_for(cases.parse_case("ct-lowdose"), "none") == []
    assert runner.learned_models_for(cases.parse_case("mr-sr-x2"), ["fake-ct-denoise"]) == []  # does not serve


def test_a_model_marked_not_auto_is_never_the_auto_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    from MedSREnhanceLib.engine.enhance import select_model
    from MedSREnhanceLib.models import registry

    gan = registry.ModelSpec("fake-sr-gan", "sr", "learned", ("mr",), "test double", scale_mode="isotropic",
                             scales=(2.0,), auto=False)
    monkeypatch.setattr(registry, "LEARNED", (gan,) + registry.LEARNED)  # first in line, and still not picked
    monkeypatch.setitem(registry.REGISTRY, gan.name, gan)
    assert select_model("sr", "mr", (2.0, 2.0, 2.0)).name == "mr-sr-x2"
    assert runner.learned_models_for(cases.parse_case("mr-sr-x2"), "auto") == ["mr-sr-x2"]
    assert "fake-sr-gan" in runner.learned_models_for(cases.parse_case("mr-sr-x2"), ["fake-sr-gan"])  # by name


def test_a_training_volume_under_another_name_is_not_called_held_out(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    from MedSREnhanceLib.models.registry import ModelSpec

    card = {"training": {"volumes": ["vol_a"], "validation_volumes": ["vol_b"],
                         "volume_hashes": {"vol_a": "aaaa", "vol_b": "bbbb"}}}
    monkeypatch.setattr(ModelSpec, "card_data", lambda self: card)
    assert runner.provenance("mr-sr-x2", "renamed_copy", "aaaa")["seen_in"] == "training"
    assert runner.provenance("mr-sr-x2", "renamed_copy", "bbbb")["seen_in"] == "validation"
    assert runner.provenance("mr-sr-x2", "vol_a")["held_out"] is False  # by id, as before
    other = runner.provenance("mr-sr-x2", "renamed_copy", "cccc")
    assert other["held_out"] is True and other["seen_in"] is None
    # the hash is that of the volume as read, whatever the file is called
    vol = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nrrd"
    for path in (a, b):
        sitk.WriteImage(to_sitk(vol), str(path))
    assert content_hash(str(a)) == content_hash(str(b))


def test_a_plain_run_with_fewer_flips_is_scored_beside_the_judged_row(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The judged row carries the uncertainty map, so it runs all 8 flips of mr-denoise; a plain `medsr enhance`
    runs 2 (its default_ensemble): the bench scores that run too, as an unjudged row; --ensemble removes it."""
    monkeypatch.setattr(baselines, "TUNING_GRIDS", {"gaussian": [{"sigma": 0.5}],
                                                    "anisotropic-diffusion": [{"iterations": 1, "conductance": 1.0,
                                                                               "time_step": 0.0625}],
                                                    "nlmeans": [{"h_factor": 0.8, "patch_size": 3,
                                                                 "patch_distance": 1}]})
    path = tmp_path / "mr_tiny.nii.gz"
    sitk.WriteImage(to_sitk(phantom((20, 22, 24))), str(path))
    volumes = cases.find_volumes([path])
    settings = cases.BenchSettings(cases=("mr-denoise-5",), models=("mr-denoise",), crop=20, tune_block=16,
                                   png=False)
    rows = {r["model"]: r for r in runner.run_bench(volumes, tmp_path / "a", settings)["results"][0]["rows"]}
    plain = rows["mr-denoise (plain run, 2 of 8 flips)"]
    assert plain["kind"] == "ablation" and rows["mr-denoise"]["kind"] == "learned"
    assert "spearman" not in plain["trust"] and "spearman" in rows["mr-denoise"]["trust"]
    assert plain["metrics"]["psnr_fg"] != rows["mr-denoise"]["metrics"]["psnr_fg"]  # other members, other output
    settings.extra["ensemble"] = 2
    rows = runner.run_bench(volumes, tmp_path / "b", settings)["results"][0]["rows"]
    assert not any("plain run" in r["model"] for r in rows)
