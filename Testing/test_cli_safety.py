"""The CLI under signals, pipes and surprising inputs (issue 17): SIGTERM/SIGINT, `--version`, a closed pipe,
the models table's measured metrics, upper-case outputs, `--dtype keep`, `--force`, outliers and warnings."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import listing, make_volume, sha256, to_sitk_image
from MedSREnhanceLib import cli, enhance, read_volume
from MedSREnhanceLib.core.errors import InputError
from MedSREnhanceLib.core.volume import Volume
from MedSREnhanceLib.models.registry import WEIGHTS_DIR

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

# Runs `medsr` with one stage slowed down: it writes a marker file when it gets there, then sleeps, so the test
# knows when to send the signal.
SLOW_STAGE = r"""
import pathlib, sys, time
marker, stage, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

def arrive():
    pathlib.Path(marker).write_text(stage)
    time.sleep(120)

if stage == "write":
    import SimpleITK as sitk
    real = sitk.WriteImage
    def slow(image, path, *a):
        real(image, path, *a)  # the staged file exists: a partial output if the signal were not handled
        arrive()
    sitk.WriteImage = slow
else:
    from MedSREnhanceLib.engine import enhance
    real = enhance.RUNNERS["classical"]
    def slow(*a):
        arrive()
        return real(*a)
    enhance.RUNNERS["classical"] = slow
from MedSREnhanceLib import cli
sys.exit(cli.main(argv))
"""


def small_input(folder: Path, name: str = "in.nrrd", arr: np.ndarray | None = None) -> Path:
    path = folder / name
    if arr is None:
        sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(7, 8, 9))), str(path))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


@pytest.mark.parametrize("sig,stage,code", [(signal.SIGTERM, "write", 143), (signal.SIGINT, "write", 130),
                                            (signal.SIGTERM, "inference", 143)])
def test_signals_leave_nothing_and_say_one_line(tmp_path: Path, sig: int, stage: str, code: int) -> None:
    case = tmp_path / "case"
    case.mkdir()
    src = small_input(case)
    before, digest = listing(case), sha256(src)
    marker = tmp_path / "marker"
    args = ["enhance", str(src), str(case / "out.nhdr"), "--scale", "2", "--model", "linear", "--quiet",
            "--difference", str(case / "diff.nrrd")]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(marker), stage, *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=5)
        if stage == "write":  # the hidden staging folder is there now
            assert any(n.startswith(".out.nhdr.") for n in listing(case))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0] == f"medsr: error: interrupted by {signal.Signals(sig).name}; nothing " \
                                           "was written", lines
    assert listing(case) == before  # no output, no data file, no staging folder
    assert sha256(src) == digest


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == "medsr 0.1.0"


def test_models_json_into_a_closed_pipe() -> None:
    """`medsr models --json | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "MedSREnhanceLib.cli", "models", "--json"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout.read(1) == b"["
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 0, err
    assert err == ""


def test_models_table_shows_measured_metrics(capsys) -> None:
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((WEIGHTS_DIR / "mr-sr-x2.json").read_text())["metrics"]["mr-sr-x2"]
    lo, hi = metrics["held_out_gain_db_min"], metrics["held_out_gain_db_max"]
    assert f"mr-sr-x2 {lo:+.2f}..{hi:+.2f} dB" in out  # the card's held-out range, as measured
    assert "mr-throughplane-x4" in out


def test_measured_falls_back_to_every_volume_and_says_so() -> None:
    """A card without held-out figures shows the range over every benched volume, labelled as such."""
    from MedSREnhanceLib.models.registry import measured

    volumes = [{"verdict": {"gain_db": {"psnr_fg": g}}} for g in (0.61, 1.42)]
    assert measured({"metrics": {"case-a": {"per_volume": volumes}}}) == "case-a +0.61..+1.42 dB (every volume)"
    held = {"held_out_gain_db_min": 0.5, "held_out_gain_db_max": 2.11, "per_volume": volumes}
    assert measured({"metrics": {"case-a": held}}) == "case-a +0.50..+2.11 dB"
    assert measured({}) == "-"


@pytest.mark.parametrize("name", ["up.MHA", "up.MHD", "up.NII", "up.Nii.gz", "up.NHDR"])
def test_upper_case_output_through_the_cli(tmp_path: Path, name: str, capsys) -> None:
    src = small_input(tmp_path)
    (tmp_path / "up.mhd").write_text("an unrelated file the old writer overwrote")
    assert cli.main(["enhance", str(src), str(tmp_path / name), "--scale", "2", "--model", "linear"]) == 0
    err = capsys.readouterr().err
    assert str(tmp_path / name) in err
    assert (tmp_path / "up.mhd").read_text() == "an unrelated file the old writer overwrote"
    new = listing(tmp_path) - {"in.nrrd", "up.mhd"}
    assert name in new and len(new) == (2 if name.lower().endswith((".mhd", ".nhdr")) else 1), new
    assert read_volume(tmp_path / name).array.shape == (14, 16, 18)


def test_dtype_keep_rounds_clips_and_says_so(tmp_path: Path, capsys) -> None:
    arr = np.zeros((8, 9, 10), np.uint8)
    arr[:, :, 5:] = 255  # a step: the cubic B-spline overshoots above 255 and below 0
    arr[0, 0, 0] = 1  # and a few more values, so it is no label map
    arr[1, :, :5] = np.arange(5 * 9, dtype=np.uint8).reshape(9, 5) + 40
    src = small_input(tmp_path, "in.nii.gz", arr)
    assert cli.main(["enhance", str(src), str(tmp_path / "out.nrrd"), "--scale", "2", "--model", "bspline",
                     "--dtype", "keep"]) == 0
    err = capsys.readouterr().err
    assert "outside the uint8 range [0, 255] were clipped" in err
    out = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert out.GetPixelID() == sitk.sitkUInt8
    assert cli.main(["enhance", str(src), str(tmp_path / "f.nrrd"), "--scale", "2", "--model", "bspline"]) == 0
    assert sitk.ReadImage(str(tmp_path / "f.nrrd")).GetPixelID() == sitk.sitkFloat32  # the default
    assert "clipped" not in capsys.readouterr().err


def test_label_map_refused_unless_forced(tmp_path: Path) -> None:
    arr = np.zeros((8, 9, 10), np.uint8)
    arr[2:6, 3:7, 2:8] = 3
    vol = read_volume(small_input(tmp_path, "seg.nrrd", arr))
    with pytest.raises(InputError, match="label map"):
        enhance(vol, scale=2, model="linear")
    assert enhance(vol, scale=2, model="linear", force=True).enhanced.array.shape == (16, 18, 20)
    enhance(Volume(vol.array, vol.spacing), scale=2, model="linear")  # no file type known: not judged


def test_outliers_clipped_for_the_network_and_reported() -> None:
    """The issue's case: two 1e30 voxels pushed 42 % of a denoised volume above the input's range."""
    vol = make_volume(shape_zyx=(16, 17, 18), seed=3)
    arr = vol.array.copy()
    arr[3, 4, 5] = arr[10, 11, 12] = 1e30
    noisy = vol.with_array(arr)
    result = enhance(noisy, task="denoise", model="mr-denoise", modality="mr", device="cpu", precision="fp32")
    assert any("clipped 2 outlier voxel(s)" in m for m in result.messages), result.messages
    assert np.isfinite(result.enhanced.array).all()
    top = float(vol.array.max())
    above = np.count_nonzero(result.enhanced.array > top + 10) / arr.size
    assert above < 0.01, above
    assert noisy.array[3, 4, 5] == np.float32(1e30)  # the caller's volume untouched


def test_tile_below_twice_the_halo_raises_in_python() -> None:
    from MedSREnhanceLib.models import registry
    from MedSREnhanceLib.models.srnet import SRNet

    halo = SRNet(**registry.get("mr-sr-x2").kwargs).halo  # 15 LR voxels for the 6-block net
    vol = make_volume(shape_zyx=(12, 12, 12))
    with pytest.raises(InputError, match=f"at least {2 * halo} "):
        enhance(vol, scale=2, model="mr-sr-x2", modality="mr", tile=8)


def test_warnings_held_until_success_dropped_on_refusal(tmp_path: Path, capsys, monkeypatch) -> None:
    import logging

    from MedSREnhanceLib.engine import enhance as engine

    real = engine.RUNNERS["classical"]

    def chatty(*args):
        warnings.warn("a library\nwarning over two lines", UserWarning)
        logging.getLogger("MedSREnhanceLib.core.io").warning("a library log line")
        return real(*args)

    monkeypatch.setitem(engine.RUNNERS, "classical", chatty)
    src = small_input(tmp_path)
    assert cli.main(["enhance", str(src), str(tmp_path / "o.nrrd"), "--scale", "2", "--model", "linear"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "medsr: UserWarning: a library warning over two lines" in err
    assert "medsr: a library log line" in err
    assert cli.main(["enhance", str(src), str(tmp_path / "o2.nrrd"), "--scale", "2", "--model", "linear",
                     "--tile", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("medsr: error: tile 2")
