"""Self-supervised adaptation (engine.adapt; enhance(adapt=...), medsr enhance --adapt, the Slicer job).

What it must do: pairs made only from the input that carry the degradation the model undoes (through-plane: an
in-plane axis thickened by the model's slice profile; isotropic SR: the input degraded again by the model's own
acquisition), a copy of the network trained within
the budget (the cached network untouched), the bundled weights kept when no step beats them on held-out slices,
the output on the plain run's grid, Cancel during adaptation, and a one-line refusal where it does not apply
(classical models; denoisers, where Noise2Self lowered the bench).
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from MedSREnhanceLib import InputError, simulate  # noqa: E402
from MedSREnhanceLib.core.errors import CancelledError  # noqa: E402
from MedSREnhanceLib.core.io import write_volume  # noqa: E402
from MedSREnhanceLib.core.volume import Volume  # noqa: E402
from MedSREnhanceLib.engine import adapt as adaptation  # noqa: E402
from MedSREnhanceLib.engine.enhance import _load_network, enhance  # noqa: E402
from MedSREnhanceLib.models import registry  # noqa: E402


def phantom(shape_zyx: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0) -> Volume:
    """Blobs and edges at several sizes (an MR-like magnitude image)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    a = 300 * np.exp(-(x**2 + y**2 + z**2) * 2)
    for _ in range(12):
        c = rng.uniform(-0.7, 0.7, 3)
        r = rng.uniform(0.05, 0.3)
        a += rng.uniform(50, 200) * (((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < r**2)
    return Volume(a.astype(np.float32), spacing, (3.0, -4.0, 10.0))


def thick(vol: Volume, factor: float) -> Volume:
    return simulate.slice_profile(vol, axis=2, thickness_factor=factor)


def test_through_plane_pairs_thicken_an_in_plane_axis_only() -> None:
    """Stripes along i (period 3 voxels): thickening i by 4 wipes them out, thickening j leaves them as they are."""
    z, y, x = np.indices((12, 40, 40))
    stripes = 100 + 50 * np.sin(2 * np.pi * x / 3.0)
    vol = Volume(stripes.astype(np.float32), (1.0, 1.0, 4.0), (3.0, -4.0, 10.0))  # 12 slices of 4 mm along k
    spec = registry.get("mr-throughplane")
    planes = adaptation._Planes(vol.array / 150.0, vol, spec, (1.0, 1.0, 4.0))
    assert len(planes.pairs) == 2  # each in-plane axis thickened in turn: j (numpy y) first, then i
    (xj, yj), (xi, yi) = planes.pairs
    for a, b in planes.pairs:
        assert a.shape == b.shape and a.shape[2] == 12  # the thick axis (k) last, untouched
    inner = (slice(6, -6), slice(6, -6))  # away from the B-spline's boundary handling
    np.testing.assert_allclose(xj[inner], yj[inner], atol=1e-3)  # constant along j: nothing to lose
    assert float(np.std(xi[inner])) < 0.05 * float(np.std(yi[inner]))  # the stripes are gone along i
    assert float(xi.mean()) == pytest.approx(float(yi.mean()), rel=0.01)  # the profile keeps the mean


def test_zssr_pairs_are_the_input_degraded_by_the_model_acquisition() -> None:
    vol = phantom((32, 36, 40), (1.0, 1.0, 1.0))
    spec = registry.get("mr-sr-x2")
    cubes = adaptation._Cubes(vol.array, vol, spec, (2.0, 2.0, 2.0))
    expected = simulate.kspace_truncation(vol, (2, 2, 2)).array
    assert cubes.lr.shape == (16, 18, 20) and cubes.hr.shape == vol.array.shape
    np.testing.assert_allclose(cubes.lr, expected, atol=1e-3 * float(np.abs(expected).max()))
    x, y = cubes.batch(3, np.random.default_rng(0))
    assert x.shape == (3, 1, 16, 16, 16) and y.shape == (3, 1, 32, 32, 32)


def test_enhance_adapts_a_copy_and_keeps_the_plain_grid() -> None:
    vol = thick(phantom((48, 48, 48), (1.0, 1.0, 1.0), seed=2), 4.0)
    cached = _load_network("mr-throughplane")
    before = {k: v.clone() for k, v in cached.state_dict().items()}
    plain = enhance(vol, scale=(1, 1, 4), model="mr-throughplane", device="cpu")
    adapted = enhance(vol, scale=(1, 1, 4), model="mr-throughplane", device="cpu", adapt=3, keep_adapted=True)
    for name, value in cached.state_dict().items():  # the cached network is not the one that trained
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    grid = plain.enhanced
    assert adapted.enhanced.array.shape == grid.array.shape
    np.testing.assert_allclose(adapted.enhanced.spacing, grid.spacing)
    np.testing.assert_allclose(adapted.enhanced.origin, grid.origin)
    note = next(m for m in adapted.messages if m.startswith("adapted to this volume"))
    assert adapted.timings["adapt"] < 3 + 10  # the budget, plus at most one step and a validation pass
    if "kept" in note and "not kept" not in note:
        assert adapted.adapted_weights is not None
        assert not np.array_equal(adapted.enhanced.array, plain.enhanced.array)
    else:
        assert adapted.adapted_weights is None
        np.testing.assert_allclose(adapted.enhanced.array, plain.enhanced.array, atol=1e-4)


def test_adaptation_that_loses_keeps_the_bundled_weights(monkeypatch) -> None:
    """A learning rate that wrecks the net: no step beats the bundled weights on the held-out slices."""
    monkeypatch.setattr(adaptation, "VAL_EVERY", 0.01)
    vol = thick(phantom((48, 48, 48), (1.0, 1.0, 1.0), seed=3), 4.0)
    net = _load_network("mr-throughplane")
    spec = dataclasses.replace(registry.get("mr-throughplane"), adapt_lr=1.0)
    out, info = adaptation.adapt(net, spec, vol.array / 300.0, vol, (1.0, 1.0, 4.0), 2.0, torch.device("cpu"),
                                 lambda spent, message: None)
    assert info.steps >= 1 and not info.kept and out is net
    assert "not kept" in info.summary()


@pytest.mark.parametrize("model, rate", [("mr-throughplane", 3e-4), ("ct-throughplane", adaptation.LEARNING_RATE),
                                         ("mr-sr-x2", adaptation.LEARNING_RATE)])
def test_adaptation_runs_at_the_rate_the_model_names(monkeypatch, model, rate) -> None:
    """Each model adapts at its own bench-chosen rate (ModelSpec.adapt_lr), the engine's default where it names
    none."""
    rates: list[float] = []

    class Spy(torch.optim.Adam):
        def __init__(self, params, lr):  # type: ignore[no-untyped-def]
            rates.append(lr)
            super().__init__(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", Spy)
    spec = registry.get(model)
    assert spec.adapt_lr == (None if rate == adaptation.LEARNING_RATE else rate)
    vol = phantom((32, 32, 32), (1.0, 1.0, 1.0), seed=5)
    scale = (1.0, 1.0, 4.0) if spec.scale_mode == "axis" else (2.0, 2.0, 2.0)
    if spec.scale_mode == "axis":
        vol = thick(vol, 4.0)
    adaptation.adapt(_load_network(model), spec, vol.array / 300.0, vol, scale, 0.5, torch.device("cpu"),
                     lambda spent, message: None)
    assert rates == [rate]


def test_cancel_during_adaptation() -> None:
    vol = thick(phantom((48, 48, 48), (1.0, 1.0, 1.0)), 4.0)
    stages: list[str] = []

    def cancel() -> bool:
        return "adapting" in stages

    with pytest.raises(CancelledError):
        enhance(vol, scale=(1, 1, 4), model="mr-throughplane", device="cpu", adapt=60,
                progress=lambda p: stages.append(p.stage), cancel=cancel)


@pytest.mark.parametrize("kwargs, words", [
    (dict(model="bspline", scale=2, adapt=5), "not available for classical model bspline"),
    (dict(model="mr-throughplane", scale=(1, 1, 4), adapt=-1), "time budget"),
    (dict(model="mr-denoise", task="denoise", adapt=5), "not available for denoising"),
])
def test_refusals(kwargs, words) -> None:
    with pytest.raises(InputError, match=words):
        enhance(phantom((16, 16, 16), (1.0, 1.0, 1.0)), device="cpu", **kwargs)


def test_cli_refuses_adapt_where_it_does_not_apply(tmp_path) -> None:
    src = tmp_path / "in.nii.gz"
    write_volume(phantom((16, 16, 16), (1.0, 1.0, 1.0)), str(src))
    runs = {
        "classical": ["--model", "bspline", "--scale", "2", "--adapt", "5"],
        "save without adapt": ["--model", "mr-throughplane", "--scale", "1,1,4", "--adapt-save",
                               str(tmp_path / "w.pt")],
        "save to a non-.pt": ["--model", "mr-throughplane", "--scale", "1,1,4", "--adapt", "5", "--adapt-save",
                              str(tmp_path / "w.txt")],
    }
    for what, extra in runs.items():
        out = tmp_path / "out.nii.gz"
        proc = subprocess.run([sys.executable, "-m", "MedSREnhanceLib.cli", "enhance", str(src), str(out), "--quiet",
                               *extra], capture_output=True, text=True)
        assert proc.returncode == 2, what
        assert len(proc.stderr.strip().splitlines()) == 1, (what, proc.stderr)
        assert not out.exists() and not (tmp_path / "w.pt").exists() and not (tmp_path / "w.txt").exists()


def test_cli_adapts_and_saves_the_weights_it_kept(tmp_path) -> None:
    src, out, weights = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", tmp_path / "adapted.pt"
    write_volume(thick(phantom((48, 48, 48), (1.0, 1.0, 1.0), seed=4), 4.0), str(src))
    proc = subprocess.run([sys.executable, "-m", "MedSREnhanceLib.cli", "enhance", str(src), str(out),
                           "--model", "mr-throughplane", "--scale", "1,1,4", "--device", "cpu", "--adapt", "4",
                           "--adapt-save", str(weights)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "adapted to this volume" in proc.stderr and out.exists()
    if "saved to" in proc.stderr:  # kept: the file holds the 2D net's weights, loadable into the model
        state = torch.load(weights, weights_only=True)
        net = _load_network("mr-throughplane")
        assert set(state) == set(net.state_dict())
    else:
        assert "nothing saved" in proc.stderr and not weights.exists()
