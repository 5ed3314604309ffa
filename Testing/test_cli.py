"""The `medsr` contract: exit codes, one-line errors, no partial output, the input untouched.

Every bad input runs twice: in-process through ``cli.main([...])`` (fast, and the traceback would show in pytest)
and as a real subprocess (what users and scripts see: stderr, exit status, leftovers). The subprocesses are
started together once per module, so the suite stays quick on two cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import LEFT_HANDED, OBLIQUE, listing, make_volume, sha256, to_sitk_image, write_dicom_series
from MedSREnhanceLib import cli, read_volume, write_volume

# ----------------------------------------------------------------------------------------- bad-input cases


def good_input(folder: Path, name: str = "in.nii.gz") -> Path:
    path = folder / name
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(7, 8, 9), direction=OBLIQUE)), str(path))
    return path


def image_with(folder: Path, name: str, arr: np.ndarray) -> Path:
    path = folder / name
    sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.float32)), str(path))
    return path


def _missing(f: Path):
    return [f / "nope.nii.gz", f / "out.nii.gz"], r"not found"


def _truncated(f: Path):
    full = good_input(f, "full.nii.gz")
    data = full.read_bytes()
    full.unlink()
    (f / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return [f / "cut.nii.gz", f / "out.nii.gz"], r"truncated|cannot read"


def _truncated_mha(f: Path):
    full = f / "v.mha"
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(7, 8, 9))), str(full), True)
    full.write_bytes(full.read_bytes()[:-300])
    return [full, f / "out.nrrd", "--scale", "2"], r"truncated"


def _nhdr_without_data(f: Path):
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(7, 8, 9))), str(f / "v.nhdr"), True)
    for data in f.glob("v.raw*"):
        data.unlink()
    return [f / "v.nhdr", f / "out.nrrd", "--scale", "2"], r"cannot read"


def _garbage_nrrd(f: Path):
    (f / "bad.nrrd").write_bytes(b"NRRD0004\nthis is: garbage\nsizes: x y\n\n\x00\x01\x02")
    return [f / "bad.nrrd", f / "out.nrrd"], r"cannot read"


def _two_d(f: Path):
    return [image_with(f, "flat.nrrd", np.ones((6, 7))), f / "out.nrrd"], r"2D"


def _four_d(f: Path):
    path = f / "series4d.nii.gz"
    sitk.WriteImage(sitk.Image([5, 6, 7, 3], sitk.sitkFloat32), str(path))
    return [path, f / "out.nii.gz"], r"4D"


def _nan(f: Path):
    arr = np.ones((6, 7, 8))
    arr[1, 2, 3] = np.nan
    return [image_with(f, "nan.nrrd", arr), f / "out.nrrd"], r"NaN or infinite"


def _inf(f: Path):
    arr = np.ones((6, 7, 8))
    arr[4, 2, 1] = np.inf
    arr[0, 0, 0] = -np.inf
    return [image_with(f, "inf.nii", arr), f / "out.nii"], r"2 NaN or infinite"


def _empty(f: Path):
    path = f / "empty.mha"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 5 5 0\nElementType = MET_FLOAT\n"
                    "ElementDataFile = LOCAL\n")
    return [path, f / "out.mha"], r"empty"


def _scale_zero(f: Path):
    return [good_input(f), f / "out.nii.gz", "--scale", "0"], r"scale"


def _scale_negative(f: Path):
    return [good_input(f), f / "out.nii.gz", "--scale", "1,1,-4"], r"scale"


def _scale_garbage(f: Path):
    return [good_input(f), f / "out.nii.gz", "--scale", "two"], r"scale"


def _unknown_model(f: Path):
    return [good_input(f), f / "out.nii.gz", "--scale", "2", "--model", "superduper"], r"unknown model"


def _wrong_task_model(f: Path):
    return [good_input(f), f / "out.nii.gz", "--scale", "2", "--model", "gaussian"], r"does not serve"


def _missing_folder(f: Path):
    return [good_input(f), f / "no" / "such" / "out.nii.gz", "--scale", "2"], r"does not exist"


def _missing_difference_folder(f: Path):
    return [good_input(f), f / "out.nii.gz", "--scale", "2", "--difference", f / "no" / "d.nii.gz"], r"not exist"


def _read_only_folder(f: Path):
    if os.geteuid() != 0:
        ro = f / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return [good_input(f), ro / "out.nii.gz", "--scale", "2"], r"not writable"
    # root writes through chmod; /sys is a read-only place for everyone (sysfs refuses new files).
    return [good_input(f), Path("/sys") / "medsr-test-out.nii.gz", "--scale", "2"], r"not writable"


def _unsupported_output(f: Path):
    return [good_input(f), f / "out.png", "--scale", "2"], r"unsupported format"


def _output_is_input(f: Path):
    src = good_input(f)
    return [src, src, "--scale", "2"], r"overwrite the input"


def _output_is_input_other_spelling(f: Path):
    src = good_input(f)
    return [src, f / "." / "in.nii.gz", "--scale", "2", "--model", "linear"], r"overwrite the input"


def _difference_is_input(f: Path):
    src = good_input(f)
    return [src, f / "out.nii.gz", "--scale", "2", "--difference", src], r"overwrite the input"


def _difference_is_output(f: Path):
    return [good_input(f), f / "out.nrrd", "--scale", "2", "--model", "linear", "--difference",
            f / "." / "out.nrrd"], r"same file as the output"


def _denoise_with_scale(f: Path):
    return [good_input(f), f / "out.nii.gz", "--task", "denoise", "--scale", "2"], r"keeps the grid"


def _sr_without_scale(f: Path):
    return [good_input(f), f / "out.nii.gz"], r"super-resolution needs a scale.*--scale 2.*--task denoise"


def _tiny_tile(f: Path):
    return [good_input(f), f / "out.nii.gz", "--scale", "2", "--tile", "2"], r"tile"


def _empty_dicom_folder(f: Path):
    (f / "dicom").mkdir()
    (f / "dicom" / "readme.txt").write_text("no images")
    return [f / "dicom", f / "out.nii.gz", "--scale", "2"], r"no DICOM series"


def _unknown_series_uid(f: Path):
    write_dicom_series(make_volume(shape_zyx=(4, 6, 7), kind="int"), f / "dicom")
    return [f / "dicom", f / "out.nii.gz", "--scale", "2", "--series-uid", "9.9.9"], r"not in"


def _dicom_4d(f: Path):
    vol = make_volume(shape_zyx=(4, 6, 7), kind="int")
    uid = write_dicom_series(vol, f / "dicom4d", prefix="t0")
    write_dicom_series(vol.with_array(vol.array + 5), f / "dicom4d", prefix="t1", series_uid=uid)
    return [f / "dicom4d", f / "out.nii.gz", "--scale", "2"], r"4D"


def _tile_below_halo(f: Path):
    return [good_input(f), f / "out.nii.gz", "--task", "denoise", "--model", "mr-denoise", "--tile", "16"], \
        r"tile 16 is too small for mr-denoise: at least 48"


def _unknown_model_without_scale(f: Path):
    return [good_input(f), f / "out.nii.gz", "--model", "superduper"], r"unknown model 'superduper'"


def _label_map(f: Path):
    path = f / "labels.nii.gz"
    arr = np.zeros((7, 8, 9), np.uint8)
    arr[2:5, 2:6, 3:7] = 1
    arr[4:, :3, :] = 7
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return [path, f / "out.nii.gz", "--scale", "2"], r"label map \(3 distinct.*--force"


def _data_file_outside(f: Path):
    (f / "secret.raw").write_bytes(b"\x01" * 7 * 8 * 9 * 4)
    (f / "upload").mkdir()
    (f / "upload" / "v.nhdr").write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 9 8 7\nendian: little\n"
                                         "encoding: raw\ndata file: ../secret.raw\n")
    return [f / "upload" / "v.nhdr", f / "out.nrrd", "--scale", "2", "--difference", f / "d.nrrd"], r"'\.\.'"


def _hostile_nrrd(f: Path):
    (f / "big.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1200 1200 1200\n"
                                 b"endian: little\nencoding: raw\n\n")
    return [f / "big.nrrd", f / "out.nrrd", "--scale", "2"], r"truncated|memory budget"


def _pixdim_zero(f: Path):
    path = good_input(f, "in.nii")
    raw = bytearray(path.read_bytes())
    raw[84:88] = np.float32(0).tobytes()  # pixdim[2]
    path.write_bytes(bytes(raw))
    return [path, f / "out.nii.gz", "--scale", "2"], r"zero.*spacing"


def _data_file_collision(f: Path):
    (f / "up.zraw").write_bytes(b"unrelated")
    return [good_input(f), f / "up.MHD", "--scale", "2", "--model", "linear"], r"up.zraw would replace"


BAD_CASES: dict[str, Callable[[Path], tuple[list, str]]] = {
    "missing-file": _missing, "truncated-nii-gz": _truncated, "truncated-mha": _truncated_mha,
    "nhdr-without-data-file": _nhdr_without_data, "garbage-nrrd-header": _garbage_nrrd,
    "2d-image": _two_d, "4d-series": _four_d, "4d-dicom-series": _dicom_4d, "nan-voxels": _nan, "inf-voxels": _inf, "empty-volume": _empty,
    "scale-zero": _scale_zero, "scale-negative": _scale_negative, "scale-garbage": _scale_garbage,
    "unknown-model": _unknown_model, "model-wrong-task": _wrong_task_model,
    "output-folder-missing": _missing_folder, "difference-folder-missing": _missing_difference_folder,
    "output-folder-read-only": _read_only_folder, "output-unsupported-format": _unsupported_output,
    "output-is-input": _output_is_input, "output-is-input-other-spelling": _output_is_input_other_spelling,
    "difference-is-input": _difference_is_input, "difference-is-output": _difference_is_output,
    "denoise-with-scale": _denoise_with_scale,
    "sr-without-scale": _sr_without_scale, "tile-too-small": _tiny_tile, "folder-without-dicom": _empty_dicom_folder,
    "unknown-series-uid": _unknown_series_uid,
    "tile-below-halo": _tile_below_halo, "unknown-model-without-scale": _unknown_model_without_scale,
    "label-map": _label_map, "data-file-outside-folder": _data_file_outside, "hostile-nrrd-header": _hostile_nrrd,
    "nifti-pixdim-zero": _pixdim_zero, "output-data-file-collision": _data_file_collision,
}


def prepare(name: str, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    argv, pattern = BAD_CASES[name](folder)
    if name == "output-folder-read-only" and os.geteuid() == 0 and os.access("/sys", os.W_OK):
        try:  # only a real refusal from the file system makes this case meaningful as root
            probe = Path("/sys") / ".medsr-probe"
            probe.write_bytes(b"")
            probe.unlink()
            pytest.skip("running as root and /sys accepts new files: no read-only folder to test with")
        except OSError:
            pass
    args = ["enhance", *map(str, argv[:2]), "--quiet", *map(str, argv[2:])]
    src = Path(argv[0])
    return {"args": args, "pattern": pattern, "folder": folder, "input": src,
            "input_hash": sha256(src) if src.exists() else None, "listing": listing(folder),
            "outputs": [Path(a) for a in (argv[1], *argv[3:]) if str(a).endswith((".nii.gz", ".nrrd", ".png"))]}


def check_refusal(case: dict, code: int, stderr: str) -> None:
    lines = stderr.splitlines()
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("medsr: error: "), lines
    import re

    assert re.search(case["pattern"], lines[0], re.IGNORECASE), lines[0]
    # No output or temp file left anywhere in the case folder; the input bytes unchanged.
    assert listing(case["folder"]) == case["listing"]
    for out in case["outputs"]:
        if out != case["input"]:
            assert not out.exists()
    if case["input_hash"] is not None:
        assert sha256(case["input"]) == case["input_hash"]


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_in_process(name: str, tmp_path: Path, capsys) -> None:
    case = prepare(name, tmp_path / "case")
    code = cli.main(case["args"])
    captured = capsys.readouterr()
    check_refusal(case, code, captured.err)
    assert captured.out == ""


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory) -> dict:
    """Run every bad case as a real `python -m MedSREnhanceLib.cli` process, three at a time."""
    root = tmp_path_factory.mktemp("cli_bad")
    cases = {}
    for name in BAD_CASES:
        try:
            cases[name] = prepare(name, root / name)
        except pytest.skip.Exception as exc:
            cases[name] = exc
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def run(case):
        if isinstance(case, BaseException):
            return case
        return subprocess.run([sys.executable, "-m", "MedSREnhanceLib.cli", *case["args"]], capture_output=True,
                              text=True, encoding="utf-8", errors="replace", timeout=180, env=env)

    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = dict(zip(cases, pool.map(run, cases.values())))
    return {name: (cases[name], procs[name]) for name in cases}


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_subprocess(name: str, subprocess_results: dict) -> None:
    case, proc = subprocess_results[name]
    if isinstance(case, BaseException):
        pytest.skip(str(case))
    check_refusal(case, proc.returncode, proc.stderr)
    assert proc.stdout == ""


# ------------------------------------------------------------------------------------------ good paths


def test_enhance_success_writes_both_outputs(tmp_path: Path, run_medsr) -> None:
    src = good_input(tmp_path)
    before = sha256(src)
    out, diff = tmp_path / "out.nrrd", tmp_path / "diff.mha"
    proc = run_medsr("enhance", src, out, "--scale", "1,1,2", "--model", "linear", "--difference", diff)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "linear" in proc.stderr and str(out) in proc.stderr  # the summary line names model and output
    assert sha256(src) == before
    enhanced, difference = read_volume(out), read_volume(diff)
    assert enhanced.array.shape == (14, 8, 9)
    assert difference.array.shape == enhanced.array.shape
    np.testing.assert_allclose(difference.origin, enhanced.origin, atol=1e-9)
    assert listing(tmp_path) == {"in.nii.gz", "out.nrrd", "diff.mha"}


def test_enhance_quiet_prints_nothing(tmp_path: Path, capsys) -> None:
    src = good_input(tmp_path)
    assert cli.main(["enhance", str(src), str(tmp_path / "o.nii.gz"), "--scale", "2", "--model", "linear",
                     "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_timings_name_every_stage_even_when_quiet(tmp_path: Path, capsys) -> None:
    src = good_input(tmp_path)
    assert cli.main(["enhance", str(src), str(tmp_path / "o.nii.gz"), "--task", "denoise", "--model", "mr-denoise",
                     "--modality", "mr", "--ensemble", "1", "--quiet", "--timings"]) == 0
    line, = capsys.readouterr().err.splitlines()
    assert line.startswith("medsr: seconds: read ")
    stages = dict(part.rsplit(" ", 1) for part in line.split(": ", 2)[2].split(", "))
    assert list(stages)[0] == "read" and list(stages)[-1] == "write"
    assert {"load", "normalise", "network", "denormalise", "residual"} <= set(stages)
    assert all(float(v) >= 0 for v in stages.values())


def test_progress_bar_shows_stages_counts_and_eta(tmp_path: Path, capsys) -> None:
    """The bar starts at "loading" (before torch and the weights), then counts ensemble members with an ETA."""
    src = tmp_path / "in.nii.gz"
    write_volume(make_volume(shape_zyx=(10, 12, 11)), src)
    assert cli.main(["enhance", str(src), str(tmp_path / "o.nii.gz"), "--scale", "2", "--model", "mr-sr-x2",
                     "--modality", "mr", "--device", "cpu", "--ensemble", "8"]) == 0
    err = capsys.readouterr().err
    assert "loading" in err and "inference" in err
    assert "/8" in err and "left" in err  # 8 ensemble members of the one window, each reported with an ETA


def test_denoise_and_dicom_input(tmp_path: Path) -> None:
    vol = make_volume(shape_zyx=(6, 9, 10), kind="ct")
    write_dicom_series(vol, tmp_path / "ct", modality="CT")
    before = sha256(tmp_path / "ct")
    out = tmp_path / "den.nii.gz"
    assert cli.main(["enhance", str(tmp_path / "ct"), str(out), "--task", "denoise", "--model", "gaussian",
                     "--quiet"]) == 0
    assert read_volume(out).array.shape == vol.array.shape
    assert sha256(tmp_path / "ct") == before


def test_difference_write_failure_leaves_no_enhanced_file(tmp_path: Path, monkeypatch, capsys) -> None:
    """All or nothing: when the difference map cannot be written, no enhanced volume appears either."""
    from MedSREnhanceLib.core import io as mio

    real = mio.sitk.WriteImage
    calls = []

    def flaky(image, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(image, path, *a, **k)

    monkeypatch.setattr(mio.sitk, "WriteImage", flaky)
    src = good_input(tmp_path)
    code = cli.main(["enhance", str(src), str(tmp_path / "o.nrrd"), "--scale", "2", "--model", "linear",
                     "--difference", str(tmp_path / "d.nrrd"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("medsr: error:") and len(err.splitlines()) == 1
    assert len(calls) == 2
    assert listing(tmp_path) == {"in.nii.gz"}


def test_models_table_and_json(run_medsr) -> None:
    from MedSREnhanceLib.models import registry

    proc = run_medsr("models")
    assert proc.returncode == 0, proc.stderr
    for name in registry.REGISTRY:
        assert name in proc.stdout
    proc = run_medsr("models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["name"] for r in rows} == set(registry.REGISTRY)
    for r in rows:
        assert {"name", "task", "modality", "scales", "size_bytes", "training_data", "metrics"} <= set(r)
        assert r["task"] in ("sr", "denoise")


def test_models_json_in_process(capsys) -> None:
    assert cli.main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "bspline" and r["kind"] == "classical" for r in rows)


def test_info(run_medsr) -> None:
    proc = run_medsr("info")
    assert proc.returncode == 0, proc.stderr
    import SimpleITK
    import torch

    assert SimpleITK.Version.VersionString() in proc.stdout
    assert torch.__version__ in proc.stdout
    assert "device auto -> cpu" in proc.stdout or torch.cuda.is_available()


def test_help_is_fast_and_light() -> None:
    """`medsr --help` must not import torch, scikit-image or matplotlib (Slicer's module scan and shells)."""
    code = ("import sys, time; t = time.perf_counter()\n"
            "from MedSREnhanceLib import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = sorted(m for m in ('torch', 'skimage', 'matplotlib', 'nilearn') if m in sys.modules)\n"
            "sys.stderr.write(f'HEAVY={heavy} SECONDS={time.perf_counter() - t:.2f}')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "enhance" in proc.stdout and "models" in proc.stdout
    assert "HEAVY=[]" in proc.stderr, proc.stderr
    seconds = float(proc.stderr.rsplit("SECONDS=", 1)[1])
    assert seconds < 15, proc.stderr  # generous: a loaded 2-core machine; the point is no torch import


def test_enhance_help_lists_the_contract_options(run_medsr) -> None:
    proc = run_medsr("enhance", "--help")
    assert proc.returncode == 0
    for opt in ("--task", "--model", "--modality", "--scale", "--device", "--tile", "--difference", "--quiet"):
        assert opt in proc.stdout


def test_usage_error_exit_code(run_medsr) -> None:
    proc = run_medsr("enhance")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_medsr("frobnicate")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_left_handed_nrrd_round_trip_through_cli(tmp_path: Path) -> None:
    vol = make_volume(shape_zyx=(5, 6, 7), direction=LEFT_HANDED)
    src = tmp_path / "lh.nrrd"
    sitk.WriteImage(to_sitk_image(vol), str(src))
    out = tmp_path / "lh_x2.nrrd"
    assert cli.main(["enhance", str(src), str(out), "--scale", "2", "--model", "linear", "--quiet"]) == 0
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(np.asarray(back.GetDirection()).reshape(3, 3), LEFT_HANDED, atol=1e-12)


def test_train_runs_several_configs_in_order(monkeypatch) -> None:
    # a model trained in stages is reproduced by one command listing its configs
    from MedSREnhanceLib.training import loop
    calls: list[str] = []
    monkeypatch.setattr(loop, "run_training", lambda config, **kw: calls.append(config) or Path(config))
    assert cli.main(["train", "base.toml", "stage2.toml", "final.toml", "--quiet"]) == 0
    assert calls == ["base.toml", "stage2.toml", "final.toml"]
