"""benchmarks/bench_models.py and benchmarks/bench_enhance.py run end to end and print their tables."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "MANIFEST.json"


def test_bench_models_prints_a_row_with_macs_throughput_and_memory() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--models", "mr-denoise",
                           "--block", "16,24,24", "--precisions", "fp32", "--threads", "1", "--ensemble", "1",
                           "--layers"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "matmul 2048^2 (GMAC/s): fp32 " in proc.stdout
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| mr-denoise | fp32"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1" and 20000 < float(cells[3]) < 40000  # one member of the U-Net: ~28 k MACs per voxel
    assert float(cells[4]) > 0 and float(cells[5]) > 0 and cells[6].endswith("%")
    assert "enc0.0" in proc.stdout and "(whole window)" in proc.stdout  # the per-layer table


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not here")
def test_bench_enhance_runs_the_cli_and_checks_the_budget(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_enhance.py"), str(DATA),
                           "--cases", "mr-sr-x2", "--keep", str(tmp_path), "--extra=--ensemble=1"],
                          capture_output=True, text=True, timeout=900)
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| mr-sr-x2"))
    assert "| 128x128x80 | 256x256x160 |" in row
    assert (tmp_path / "mr-sr-x2-out.nii.gz").exists()
    assert proc.returncode == (0 if row.rstrip().endswith("yes |") else 1)


def test_loso_table_pairs_each_volume_with_the_run_that_left_its_group_out(tmp_path: Path) -> None:
    def res(volume: str, gains: dict[str, float]) -> dict:
        return {"case": "mr-sr-x2", "volume": volume,
                "verdicts": {"models": {m: {"gain_db": {"psnr_fg": g}} for m, g in gains.items()}}}

    results = {"results": [res("mr_gd", {"m": 1.5, "m-without-figshare-gd": 1.1, "old": 1.0}),
                           res("stroke_t1", {"m": 2.0, "m-without-figshare-gd": 2.1}),
                           res("chris_t1", {"m": 1.2})]}
    path = tmp_path / "results.json"
    path.write_text(__import__("json").dumps(results))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loso_table.py"), str(path), "--model", "m",
                           "--before", "old"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {ln.split("|")[2].strip(): [c.strip() for c in ln.strip("|").split("|")]
            for ln in proc.stdout.splitlines()[2:]}
    assert rows["mr_gd"][2:] == ["figshare-gd", "+1.50", "+1.10", "+1.00", "-0.40"]
    assert rows["stroke_t1"][2] == "cstar-stroke" and rows["stroke_t1"][4] == rows["stroke_t1"][6] == "-"
    assert rows["chris_t1"][2] == "(evaluation only)"


def test_loso_table_gives_both_ct_windows(tmp_path: Path) -> None:
    results = {"results": [{"case": "ct-throughplane-x3", "volume": "hn_ct_cerr", "verdicts": {"models": {
        "c": {"gain_db": {"psnr_fg_full": 3.0, "psnr_fg_soft": 3.2}},
        "c-without-cerr-hn": {"gain_db": {"psnr_fg_full": 2.5, "psnr_fg_soft": 3.4}}}}}]}
    path = tmp_path / "results.json"
    path.write_text(__import__("json").dumps(results))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loso_table.py"), str(path), "--model", "c"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    row = [c.strip() for c in proc.stdout.splitlines()[2].strip("|").split("|")]
    assert row[2:] == ["cerr-hn", "+3.00 / +3.20", "+2.50 / +3.40", "-0.50 / +0.20"]


def _moving_phantom(n_j: int) -> tuple:
    """An ellipsoid 'head' with texture (24 x n_j x 26, phase encoding along j) moved twice during its scan: the
    volume, the corrupted magnitude image, and the poses relative to the centre line with their start times."""
    from MedSREnhanceLib.core.volume import Volume
    from MedSREnhanceLib.simulate.motion import poses_relative_to_centre, rigid_motion

    zz, yy, xx = np.mgrid[:24, :n_j, :26] - np.array([11.5, (n_j - 1) / 2, 12.5])[:, None, None, None]
    head = ((zz / 7) ** 2 + (yy / 9) ** 2 + (xx / 8) ** 2 < 1) * (1.0 + 0.5 * np.sin(yy / 2.0) * np.cos(xx / 3.0))
    vol = Volume(head.astype(np.float32), spacing=(1.0, 1.0, 1.2))
    events = [{"time": 0.3, "rotation_deg": [0, 0, 3.0], "translation_mm": [1.5, 0, 0]},
              {"time": 0.75, "rotation_deg": [2.0, 0, 0], "translation_mm": [0, -1.0, 0.5]}]
    y = rigid_motion(vol, 1, events).array
    poses, starts = poses_relative_to_centre(events, n_j)
    return vol, y, poses, starts


def test_motion_criterion_model_is_the_simulator_and_its_floor_is_the_ghosts_outside_the_head() -> None:
    """benchmarks/motion_criterion.py: with the simulator's poses its acquisition reproduces the corrupted magnitude
    image from the ground truth; with no correction the criterion is the energy the corrupted image has outside the
    head support (the ghosts), since the best x on the support is the image there."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import motion_criterion as mc

    vol, y, poses, starts = _moving_phantom(28)
    half = np.asarray(vol.spacing) * np.asarray(vol.array.shape[::-1]) / 2.0
    truth = mc.Acquisition(vol.array.shape, 1, starts, poses, half)
    again = truth.forward(torch.from_numpy(vol.array)).abs().numpy()
    assert np.abs(again - y).max() < 0.02 * np.abs(y).max()  # trilinear warps here and in the simulator
    support = mc.head_support(y, 2)
    none = mc.Acquisition(vol.array.shape, 1, starts, [mc.scaled(q, 0.0) for q in poses], half)
    r_none, x = mc.criterion(torch.from_numpy(y), support, none, outer=3, inner=3)
    outside = float((y[support.numpy() == 0] ** 2).sum() / (y ** 2).sum())
    assert outside > 0 and abs(r_none - outside) < 1e-3 * outside
    np.testing.assert_allclose(x.numpy(), y * support.numpy(), atol=1e-5)


def test_truth_noise_recovers_a_known_noise_level() -> None:
    from MedSREnhanceLib.core.normalise import masked_noise_sigma

    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 40)] * 3, indexing="ij")
    smooth = np.exp(-(x ** 2 + y ** 2 + z ** 2)) + 0.3 * x  # anatomy-like smooth content cancels in the subband
    noisy = smooth + np.random.default_rng(0).normal(0.0, 0.03, smooth.shape)
    mask = np.ones(smooth.shape, bool)
    assert abs(masked_noise_sigma(noisy, mask) - 0.03) < 0.002
    assert masked_noise_sigma(smooth, mask) < 0.002


def test_motion_search_ghost_criterion_is_one_without_motion_and_low_at_the_true_poses() -> None:
    """benchmarks/motion_search.py: its differentiable rotation is the simulator's; with no movement modelled the
    criterion is 1 (the ghosts outside the head unexplained), at the simulator's segments and poses far lower."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import motion_search as ms

    from MedSREnhanceLib.simulate.motion import _rotation

    angles = [1.5, -2.0, 3.0]
    np.testing.assert_allclose(ms.rotation(torch.tensor(angles)).numpy(), _rotation(angles), atol=1e-6)
    vol, y, poses, starts = _moving_phantom(40)
    crit = ms.GhostCriterion(y, np.asarray(vol.spacing), 1, y.shape[1])
    segments = ms.schedule_segments(starts)
    truth = torch.tensor(np.stack([ms.as_params(q) for q in poses]), dtype=torch.float32)
    r_none = float(crit(segments, torch.zeros_like(truth)))
    r_true = float(crit(segments, truth))
    assert abs(r_none - 1.0) < 1e-4
    assert r_true < 0.5 * r_none, (r_true, r_none)
    # the inversion from segments (identity between them) is the known-pose inversion of the same schedule
    from motion_known_pose import invert, plane_weights

    half = np.asarray(vol.spacing) * np.asarray(y.shape[::-1]) / 2.0
    reference = invert(y, poses, plane_weights(y.shape, 1, starts), half, 5)
    moved_only = [segments[0], segments[2]]
    np.testing.assert_allclose(ms.invert_segments(y, np.asarray(vol.spacing), 1, moved_only, truth.numpy()),
                               reference, atol=1e-6)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_fetched_volumes_rebuilds_from_a_clone_at_the_commit_and_checks_the_card_hash(tmp_path: Path) -> None:
    """benchmarks/fetched_volumes.py reads each source at its commit (a later commit changing the file does not
    matter), writes ID.nii.gz and MANIFEST.json, exits 1 when a card records another hash, and refuses an LFS
    pointer instead of converting it."""
    import SimpleITK as sitk
    from MedSREnhanceLib.core.io import content_hash

    repo = tmp_path / "clones" / "someone+vols" / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q")
    img = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    img.SetSpacing((0.5, 0.7, 2.0))
    sitk.WriteImage(img, str(repo / "t1.nii.gz"))
    (repo / "big.nii.gz").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "vols")
    commit = _git(repo, "rev-parse", "HEAD")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(repo / "t1.nii.gz"))
    _git(repo, "commit", "-q", "-am", "later change")
    sources = tmp_path / "sources.toml"
    sources.write_text('[roots]\nfetched = "extra"\n\n' + "".join(  # read as training reads it: roots declared
        f'[volumes.{vid}]\nroot = "fetched"\ngroup = "g"\nmodality = "MR"\nsource = "someone/vols@{commit[:10]}:{f}"\n'
        f'licence = "MIT"\nweights_ok = "yes"\n\n' for vid, f in (("vol_a", "t1.nii.gz"), ("vol_b", "big.nii.gz"))))
    weights = tmp_path / "weights"
    weights.mkdir()
    out = tmp_path / "extra"

    def run(ids: str, recorded: str) -> subprocess.CompletedProcess:
        (weights / "m.json").write_text('{"training": {"volume_hashes": {"vol_a": "%s"}}}' % recorded)
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fetched_volumes.py"), "--mirror",
                               str(tmp_path / "clones"), "--out", str(out), "--sources", str(sources),
                               "--weights-dir", str(weights), "--ids", ids], capture_output=True, text=True)

    proc = run("vol_a", "0" * 16)
    assert proc.returncode == 1 and "MISMATCH" in proc.stdout
    written = out / "vol_a.nii.gz"
    got = sitk.ReadImage(str(written))
    assert sitk.GetArrayFromImage(got).shape == (4, 5, 6) and np.allclose(got.GetSpacing(), (0.5, 0.7, 2.0))
    proc = run("vol_a", content_hash(str(written)))
    assert proc.returncode == 0 and "matches the cards" in proc.stdout, proc.stdout + proc.stderr
    assert [e["id"] for e in json.loads((out / "MANIFEST.json").read_text())] == ["vol_a"]
    proc = run("vol_b", "0" * 16)
    assert proc.returncode == 1 and "git-LFS pointer" in proc.stderr and not (out / "vol_b.nii.gz").exists()


def test_auto_default_scores_what_enhance_gives_untuned(tmp_path: Path) -> None:
    """benchmarks/auto_default.py: one row per volume, the degraded input's fg PSNR then each model's; on a smooth
    phantom under 5 % Rician noise the default Gaussian is above the input (its scoring is the bench's)."""
    import SimpleITK as sitk

    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij")
    arr = (100.0 * np.exp(-(x ** 2 + y ** 2 + z ** 2) / 0.5) * (1.0 + 0.3 * x)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "phantom.nii.gz"))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "auto_default.py"),
                           str(tmp_path / "phantom.nii.gz"), "--case", "mr-denoise-5", "--models", "gaussian",
                           "--crop", "20"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| phantom |"))
    psnr = [float(cell.split(" dB")[0]) for cell in row.strip("|").split("|")[1:]]
    assert len(psnr) == 2 and psnr[1] > psnr[0]


def test_spearman_ceiling_extrapolates_an_average_of_noisy_copies_to_infinitely_many() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("spearman_ceiling", ROOT / "benchmarks" / "spearman_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]

    def r(n: int, r_inf: float, c: float) -> float:
        return r_inf * float(np.sqrt(n / (n + c)))

    for r_inf, c in ((0.5, 3.0), (0.39, 0.5), (0.62, 8.0)):
        assert module.extrapolate(r(8, r_inf, c), 8, r(16, r_inf, c), 16) == pytest.approx(r_inf, rel=1e-9)
    assert module.extrapolate(0.4, 8, 0.4, 16) == pytest.approx(0.4)  # no rise with n: nothing to add


def test_motion_linear_ceiling_oracles_are_exact_where_they_must_be() -> None:
    """benchmarks/motion_linear_ceiling.py: the centre planes are TorchIO's original-pose planes (the low-pass keeps
    them exactly), the per-plane weights are 1 there, and an oracle linear filter never scores below the input."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import motion_linear_ceiling as mlc
    from MedSREnhanceLib.evaluation.torchio_motion import torchio_motion

    from conftest import make_volume

    vol = make_volume(shape_zyx=(40, 30, 32))
    vol = vol.with_array(np.maximum(vol.array, 0.0))
    moved, record = torchio_motion(vol, 4.0, 4.0, 2, seed=2)
    clean = mlc.centre_planes(40, record["times"])
    assert 2 <= clean.sum() < 40 and np.array_equal(clean, clean[(40 - np.arange(40)) % 40])  # mirror-symmetric
    out = mlc.oracle_filters(moved.array, vol.array, record["times"])
    low = np.fft.fftshift(np.fft.fftn(out["oracle low-pass (original pose's planes only)"]), axes=0)
    truth = np.fft.fftshift(np.fft.fftn(vol.array), axes=0)
    assert np.abs(low[clean] - truth[clean]).max() < 1e-3 * np.abs(truth).max()
    assert np.abs(low[~clean]).max() < 1e-3 * np.abs(truth).max()
    err = {k: float(np.mean((v - vol.array) ** 2)) for k, v in out.items() if not k.startswith("_")}
    err_in = float(np.mean((moved.array - vol.array) ** 2))
    assert err["oracle linear filter per plane"] <= err_in and err["oracle linear filter per plane and ring"] <= err[
        "oracle linear filter per plane"] + 1e-12
    assert out["_plane_error"][clean].max() < 1e-4


def test_known_pose_perturbation_keeps_the_reference_and_bounds_the_error() -> None:
    """benchmarks/motion_known_pose.py --tolerance: the reference (identity) pose stays, every moving pose is off by
    at most delta degrees per angle and delta mm per translation, and times move by exactly the lines asked."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from motion_known_pose import perturbed
    from scipy.spatial.transform import Rotation

    from MedSREnhanceLib.simulate.motion import _pose

    moving = _pose({"rotation_deg": [2.0, -3.0, 1.0], "translation_mm": [1.0, 0.5, -2.0]})
    poses, starts = [moving, np.eye(4)], [0.0, 0.4]
    same, same_starts = perturbed(poses, starts, 200, 0.0, 0, np.random.default_rng(0))
    np.testing.assert_allclose(same[0], moving, atol=1e-12)
    assert same_starts == starts
    for seed in range(5):
        out, t = perturbed(poses, starts, 200, 0.5, 3, np.random.default_rng(seed))
        assert np.array_equal(out[1], np.eye(4))
        error = out[0] @ np.linalg.inv(moving)
        angles = Rotation.from_matrix(error[:3, :3]).as_euler("xyz", degrees=True)
        assert 0 < np.abs(angles).max() <= 0.5 + 1e-9 and 0 < np.abs(error[:3, 3]).max() <= 0.5 + 1e-9
        assert t[0] == 0.0 and abs(abs(t[1] - 0.4) - 3 / 200) < 1e-12


def test_noisy_truth_adds_the_requested_noise_on_the_same_grid(tmp_path: Path) -> None:
    import SimpleITK as sitk
    from MedSREnhanceLib import read_volume
    from MedSREnhanceLib.core.normalise import masked_noise_sigma

    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 40)] * 3, indexing="ij")
    image = sitk.GetImageFromArray((100.0 * np.exp(-(x ** 2 + y ** 2 + z ** 2))).astype(np.float32))
    image.SetSpacing((0.9, 1.1, 2.0))
    image.SetOrigin((-5.0, 3.0, 7.5))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    (tmp_path / "in").mkdir()
    sitk.WriteImage(image, str(tmp_path / "in" / "blob.nii.gz"))
    script = str(ROOT / "benchmarks" / "noisy_truth.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path / "in"), "--ids", "blob", "--level", "0.05",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    clean, noisy = read_volume(tmp_path / "in" / "blob.nii.gz"), read_volume(tmp_path / "out" / "blob_nt.nii.gz")
    assert noisy.spacing == clean.spacing and np.allclose(noisy.origin, clean.origin)
    assert np.allclose(noisy.direction, clean.direction)
    inside = clean.array > 50.0  # where Rician noise is near Gaussian: sigma = 5 % of the foreground's 99th percentile
    sigma = masked_noise_sigma(noisy.array, inside) / np.percentile(clean.array[clean.array > 5.0], 99)
    assert 0.04 < sigma < 0.06
    coarse = subprocess.run([sys.executable, script, str(tmp_path / "in"), "--ids", "blob", "--level", "0", "--voxel",
                             "2.2", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert coarse.returncode == 0, coarse.stderr
    cut = read_volume(tmp_path / "out" / "blob_2.2mm.nii.gz")
    assert np.allclose(cut.spacing, (2.2, 2.2, 2.2), atol=0.15) and np.allclose(cut.direction, clean.direction)
    extent = np.asarray(clean.array.shape[::-1]) * np.asarray(clean.spacing)  # same field of view in physical space
    assert np.allclose(np.asarray(cut.array.shape[::-1]) * np.asarray(cut.spacing), extent, rtol=0.06)
    factors = 2.2 / np.asarray(clean.spacing)  # LR voxel 0 sits at HR index (f - 1) / 2 (core.acquisition.lr_positions)
    assert np.allclose(cut.index_to_physical(np.zeros(3)), clean.index_to_physical((factors - 1) / 2), atol=1e-4)
    inside_repo = subprocess.run([sys.executable, script, str(tmp_path / "in"), "--ids", "blob", "--out",
                                  str(ROOT / "benchmarks")], capture_output=True, text=True, timeout=120)
    assert inside_repo.returncode == 2 and "inside the project" in inside_repo.stderr
