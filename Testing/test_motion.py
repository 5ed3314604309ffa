"""MR motion: the k-space simulation (identity without motion, centre line in the reference pose, replayable), the
motion task through Python, the CLI and the bench's case and bar. The Slicer-side naming is in test_mrml."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MedSREnhanceLib import enhance, read_volume, simulate, write_volume
from MedSREnhanceLib.core.errors import InputError
from MedSREnhanceLib.core.volume import Volume
from MedSREnhanceLib.evaluation import cases, scoring
from MedSREnhanceLib.simulate.motion import acquired_kspace

from conftest import make_volume


def _head(shape=(30, 34, 38), spacing=(1.0, 1.2, 1.5)) -> Volume:
    """A non-negative phantom with edges (motion ghosts need structure to show)."""
    vol = make_volume(shape_zyx=shape, spacing=spacing)
    return vol.with_array(np.maximum(vol.array, 0.0))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(float(b.max()) ** 2 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("pe_axis", [0, 1, 2])
def test_no_motion_is_the_identity(pe_axis: int) -> None:
    vol = _head()
    still = [{"time": 0.4, "rotation_deg": [0, 0, 0], "translation_mm": [0, 0, 0]}]
    for events in ([], still):
        out = simulate.rigid_motion(vol, pe_axis, events)
        np.testing.assert_allclose(out.array, vol.array, atol=1e-4 * float(vol.array.max()))
        assert out.spacing == vol.spacing and out.origin == vol.origin
        np.testing.assert_array_equal(out.direction, vol.direction)


def test_kspace_centre_line_keeps_the_reference_position() -> None:
    """A movement before the centre line: the centre (and every line after the movement) comes from the still
    volume; only the lines acquired before the movement differ."""
    vol = _head()
    pe_axis, axis = 1, 1  # j: array axis 1
    events = [{"time": 0.2, "rotation_deg": [3.0, -2.0, 4.0], "translation_mm": [2.5, -1.5, 3.0]}]
    k = acquired_kspace(vol, pe_axis, events)
    ref = np.fft.fftn(vol.array)
    n = vol.array.shape[axis]
    times = (np.fft.fftfreq(n) * n + n // 2 + 0.5) / n
    late, early = np.nonzero(times >= 0.2)[0], np.nonzero(times < 0.2)[0]
    assert 0 in late  # the centre line
    np.testing.assert_allclose(np.take(k, late, axis), np.take(ref, late, axis), rtol=0,
                               atol=1e-4 * np.abs(ref).max())
    early_ref = np.take(ref, early, axis)
    assert np.abs(np.take(k, early, axis) - early_ref).max() > 0.1 * np.abs(early_ref).max()


def test_a_move_before_the_centre_aligns_the_output_with_the_centre_pose() -> None:
    """A 3 mm shift at 5 % of the scan: the image is the shifted pose's, not the initial one's, so it stays close
    to the ground truth (which is that pose), much closer than the ground truth is to a 3 mm-shifted copy."""
    vol = _head(spacing=(1.0, 1.0, 1.0))
    out = simulate.rigid_motion(vol, 0, [{"time": 0.05, "translation_mm": [0.0, 3.0, 0.0]}])
    shifted = np.roll(vol.array, 3, axis=1)  # +3 mm along j
    assert _psnr(out.array, vol.array) > _psnr(shifted, vol.array) + 10.0


def test_a_whole_scan_in_one_moved_pose_is_the_identity() -> None:
    """Moving at time 0 means the whole scan is in that pose: the reference pose, so nothing changes."""
    vol = _head()
    out = simulate.rigid_motion(vol, 2, [{"time": 0.0, "rotation_deg": [5, 0, 0], "translation_mm": [4, 0, 0]}])
    np.testing.assert_allclose(out.array, vol.array, atol=1e-4 * float(vol.array.max()))


def test_motion_corrupts_and_worse_motion_corrupts_more() -> None:
    vol = _head()
    mild = simulate.rigid_motion(vol, 1, [{"time": 0.7, "rotation_deg": [0, 0, 1.0], "translation_mm": [0.5, 0, 0]}])
    strong = simulate.rigid_motion(vol, 1, [{"time": 0.7, "rotation_deg": [0, 0, 6.0], "translation_mm": [5, 0, 0]}])
    assert _psnr(strong.array, vol.array) < _psnr(mild.array, vol.array) < 60.0


def test_random_motion_is_replayable_and_seeded() -> None:
    vol = _head()
    a, record = simulate.random_rigid_motion(vol, np.random.default_rng(3), n_events=2, max_rotation_deg=4,
                                             max_translation_mm=4)
    b, record_b = simulate.random_rigid_motion(vol, np.random.default_rng(3), n_events=2, max_rotation_deg=4,
                                               max_translation_mm=4)
    assert record == record_b and len(record["params"]["events"]) == 2
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(simulate.replay(vol, record).array, a.array)
    for e in record["params"]["events"]:
        assert np.linalg.norm(e["rotation_deg"]) <= 4 + 1e-9 and np.linalg.norm(e["translation_mm"]) <= 4 + 1e-9


def test_a_centre_margin_keeps_movements_off_the_kspace_centre_and_zero_draws_as_before() -> None:
    from MedSREnhanceLib.simulate.motion import random_motion_events

    plain = random_motion_events(np.random.default_rng(5), 2, 4.0, 4.0)
    assert random_motion_events(np.random.default_rng(5), 2, 4.0, 4.0, centre_margin=0.0) == plain
    times = [e["time"] for seed in range(200)
             for e in random_motion_events(np.random.default_rng(seed), 2, 4.0, 4.0, centre_margin=0.1)]
    assert all(0.1 <= t <= 0.4 or 0.6 <= t <= 0.9 for t in times)
    assert 0.35 < np.mean([t < 0.5 for t in times]) < 0.65  # both sides, in proportion to their lengths
    with pytest.raises(ValueError, match="no time"):
        random_motion_events(np.random.default_rng(0), 2, 4.0, 4.0, time_range=(0.45, 0.55), centre_margin=0.1)


def test_event_times_are_checked() -> None:
    with pytest.raises(ValueError, match="scan order"):
        simulate.rigid_motion(_head(), 0, [{"time": 0.6}, {"time": 0.3}])
    with pytest.raises(ValueError, match="pe_axis"):
        simulate.rigid_motion(_head(), 3, [])


# ------------------------------------------------------------------------------------------------ the task


def test_motion_task_keeps_the_grid_and_refuses_a_scale() -> None:
    vol = _head()
    result = enhance(vol, task="motion", model="gaussian", modality="mr")
    assert result.task == "motion" and result.enhanced.array.shape == vol.array.shape
    assert result.enhanced.spacing == vol.spacing and result.enhanced.origin == vol.origin
    np.testing.assert_allclose(result.difference.array, result.enhanced.array - vol.array, atol=1e-5)
    with pytest.raises(InputError, match="keeps the grid"):
        enhance(vol, task="motion", model="gaussian", scale=2)
    with pytest.raises(InputError, match="does not serve"):
        enhance(vol, task="motion", model="bspline")


def test_motion_auto_picks_the_bundled_model_for_mr() -> None:
    from MedSREnhanceLib.engine.enhance import select_model
    from MedSREnhanceLib.models import registry

    spec = select_model("motion", "mr", (1.0, 1.0, 1.0))
    learned = [s.name for s in registry.LEARNED if s.task == "motion"]
    assert spec.name == (learned[0] if learned else "nlmeans")
    if not learned:  # the fallback says it smooths and does not correct
        result = enhance(_head(), task="motion", model="auto", modality="mr")
        assert any("does not undo motion" in m for m in result.messages)


def test_cli_motion_task(tmp_path: Path, run_medsr) -> None:
    vol = _head()
    src, out = tmp_path / "moved.nii.gz", tmp_path / "out.nrrd"
    write_volume(simulate.rigid_motion(vol, 1, [{"time": 0.6, "rotation_deg": [0, 0, 3]}]), src)
    r = run_medsr("enhance", src, out, "--task", "motion", "--model", "gaussian")
    assert r.returncode == 0, r.stderr
    got = read_volume(out)
    assert got.array.shape == vol.array.shape and np.allclose(got.spacing, vol.spacing)
    r = run_medsr("enhance", src, tmp_path / "bad.nrrd", "--task", "motion", "--scale", "2")
    assert r.returncode == 2 and "keeps the grid" in r.stderr and not (tmp_path / "bad.nrrd").exists()


# ------------------------------------------------------------------------------------------------ the bench


def test_bench_motion_case_and_its_bar() -> None:
    case = cases.parse_case("mr-motion-4")
    assert (case.task, case.degradation, case.params["max_rotation_deg"]) == ("motion", "rigid_motion", 4.0)
    vol = _head()
    a, ref = cases.degrade_case(case, vol, np.random.default_rng(0))
    b, _ = cases.degrade_case(case, vol, np.random.default_rng(0))
    assert ref is vol and np.array_equal(a.array, b.array) and not np.allclose(a.array, vol.array)

    def row(model: str, kind: str, psnr: float, ssim: float = 0.9) -> dict:
        return {"model": model, "kind": kind, "params": {},
                "metrics": {"psnr_fg": psnr, "ssim": ssim, "ssim_fg": ssim}}

    # the corrupted input is a baseline for motion: a model 1.2 dB over the filters but 0.5 over the input misses
    rows = [row("input (degraded)", "input", 30.0), row("gaussian", "classical", 28.7), row("net", "learned", 30.5)]
    verdict = scoring.judge(rows, "mr", "motion")
    assert verdict["best_baseline"]["psnr_fg"]["model"] == "input (degraded)"
    assert not verdict["models"]["net"]["passes_bar"]
    rows[-1] = row("net", "learned", 31.1)
    assert scoring.judge(rows, "mr", "motion")["models"]["net"]["passes_bar"]
    # denoising keeps its own bar and baselines (the input row is not one)
    assert scoring.judge(rows, "mr", "denoise")["best_baseline"]["psnr_fg"]["model"] == "gaussian"


# ----------------------------------------------------------------- the independent simulator (TorchIO RandomMotion)


def test_torchio_case_corrupts_reproducibly_and_leaves_the_truth_alone() -> None:
    case = cases.parse_case("mr-motion-torchio-4")
    assert (case.task, case.degradation, case.params) == (
        "motion", "torchio_motion", {"num_transforms": 2, "degrees": 4.0, "translation_mm": 4.0})
    vol = _head()
    before = vol.array.copy()
    a, ref = cases.degrade_case(case, vol, np.random.default_rng(0))
    b, _ = cases.degrade_case(case, vol, np.random.default_rng(0))
    c, _ = cases.degrade_case(case, vol, np.random.default_rng(1))
    assert ref is vol and np.array_equal(vol.array, before)
    assert np.array_equal(a.array, b.array) and not np.allclose(a.array, c.array)
    assert _psnr(a.array, vol.array) < 40.0
    assert a.array.shape == vol.array.shape and a.spacing == vol.spacing and a.origin == vol.origin
    np.testing.assert_array_equal(a.direction, vol.direction)


def test_torchio_without_motion_is_the_identity() -> None:
    from MedSREnhanceLib.evaluation.torchio_motion import torchio_motion

    vol = _head()
    out, record = torchio_motion(vol, 0.0, 0.0, 2, seed=3)
    np.testing.assert_allclose(out.array, vol.array, atol=1e-4 * float(vol.array.max()))
    assert len(record["times"]) == 2 and record["name"] == "torchio_motion"


def test_torchio_fills_kspace_along_the_third_index_with_the_original_pose_at_the_centre() -> None:
    """The adapter hands TorchIO the right axes: TorchIO's phase encoding runs along the volume's k index (array
    axis 0), and the k-space planes acquired in the original pose (the centre segment and its mirror, since the
    output is a real part) are the still volume's exactly, while the outer planes are not."""
    from MedSREnhanceLib.evaluation.torchio_motion import torchio_motion

    vol = _head(shape=(40, 34, 38))
    out, record = torchio_motion(vol, 4.0, 4.0, 2, seed=5)
    n = vol.array.shape[0]
    lo, hi = (int(n * t) for t in record["times"])
    m = np.arange(n)
    clean = (m >= lo) & (m < hi) & ((n - m) % n >= lo) & ((n - m) % n < hi)
    y = np.fft.fftshift(np.fft.fftn(out.array.astype(np.float64)), axes=0)
    x = np.fft.fftshift(np.fft.fftn(vol.array.astype(np.float64)), axes=0)
    err = np.abs(y - x).sum(axis=(1, 2)) / np.abs(x).sum(axis=(1, 2))
    assert clean.sum() >= 2 and (~clean).sum() >= 2
    assert err[clean].max() < 1e-4 < 1e-2 < err[~clean].min()


def test_bench_names_the_missing_torchio_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from MedSREnhanceLib.evaluation import bench

    path = tmp_path / "head.nii.gz"
    write_volume(_head(), path)
    monkeypatch.setitem(sys.modules, "torchio", None)  # import torchio now raises ImportError
    code = bench.main([str(path), "--cases", "mr-motion-torchio-4", "--models", "none", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs TorchIO" in err[0] and "[bench]" in err[0]
    assert not (tmp_path / "out").exists()
