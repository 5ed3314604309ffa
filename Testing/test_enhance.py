"""enhance(): validation, model choice, the classical models on small synthetic volumes, the difference map,
progress/cancel, and the learned-model path (with stand-in networks, so geometry is checked without weights)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import LEFT_HANDED, OBLIQUE, make_volume, to_sitk_image
import importlib

from MedSREnhanceLib import enhance
from MedSREnhanceLib.engine import inference
from MedSREnhanceLib.engine.enhance import infer_modality, select_model
from MedSREnhanceLib.core.errors import CancelledError, InputError
from MedSREnhanceLib.models import registry
from MedSREnhanceLib.models.registry import ModelSpec
from MedSREnhanceLib.core.resample import resample_scale
from MedSREnhanceLib.core.volume import Volume, resized_geometry

enhance_mod = importlib.import_module("MedSREnhanceLib.engine.enhance")  # the package's `enhance` is the function


def smooth(shape=(21, 22, 23), direction=np.eye(3), spacing=(1.0, 1.0, 1.0), seed=0) -> Volume:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    arr = 100 + 50 * np.sin(2.5 * x) * np.cos(2 * y) + 30 * z**2
    return Volume(arr.astype(np.float32), spacing, (3.0, -7.0, 11.0), direction)


def noisy(vol: Volume, sigma: float, seed: int = 1) -> Volume:
    rng = np.random.default_rng(seed)
    return vol.with_array(vol.array + rng.normal(0, sigma, vol.array.shape).astype(np.float32))


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("kwargs,match", [
    (dict(task="sr", scale=1), "needs a scale"),
    (dict(task="sr", scale=(0.5, 1, 2)), "scale >= 1"),
    (dict(task="sr", scale=0), "scale must be > 0"),
    (dict(task="denoise", scale=2), "keeps the grid"),
    (dict(task="segment", scale=2), "unknown task"),
    (dict(task="sr", scale=2, modality="pet"), "unknown modality"),
    (dict(task="sr", scale=2, model="nope"), "unknown model"),
    (dict(task="sr", scale=2, model="nlmeans"), "does not serve"),
    (dict(task="denoise", model="bspline"), "does not serve"),
    (dict(task="sr", scale=2, tile=4), "tile"),
])
def test_refusals(kwargs, match) -> None:
    with pytest.raises(InputError, match=match):
        enhance(make_volume(shape_zyx=(5, 6, 7)), **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_and_empty_refused(bad) -> None:
    vol = make_volume(shape_zyx=(5, 6, 7))
    arr = vol.array.copy()
    arr[1, 1, 1] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        enhance(vol.with_array(arr), scale=2)
    with pytest.raises(InputError, match="empty"):
        enhance(Volume(np.zeros((0, 5, 5), np.float32)), scale=2)


def test_input_volume_is_not_modified() -> None:
    vol = make_volume(direction=OBLIQUE)
    before = vol.array.copy()
    for kw in (dict(task="sr", scale=(1, 1, 2), model="sinc"), dict(task="denoise", model="anisotropic-diffusion")):
        enhance(vol, **kw)
        np.testing.assert_array_equal(vol.array, before)


# ------------------------------------------------------------------------------------------- model choice


def test_modality_inference() -> None:
    assert infer_modality(make_volume(kind="ct")) == "ct"
    assert infer_modality(make_volume()) == "mr"
    assert infer_modality(make_volume(kind="ct", metadata={"modality": "MR"})) == "mr"  # DICOM tag wins
    assert infer_modality(make_volume(metadata={"modality": "ct"})) == "ct"
    assert infer_modality(make_volume(metadata={"modality": "PT"})) == "mr"  # unknown tag: inferred


def test_auto_without_learned_models_uses_classical_and_says_so(monkeypatch) -> None:
    monkeypatch.setattr(registry, "LEARNED", ())
    res = enhance(make_volume(shape_zyx=(7, 8, 9)), task="sr", scale=2)
    assert res.model == "bspline"
    assert any("no bundled learned model" in m for m in res.messages)
    res = enhance(make_volume(shape_zyx=(7, 8, 9)), task="denoise")
    assert res.model == "nlmeans"


# -------------------------------------------------------------------------------------- classical models


@pytest.mark.parametrize("model", ["gaussian", "anisotropic-diffusion", "nlmeans"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.5, 3.0)], ids=["iso", "aniso"])
def test_classical_denoisers_reduce_noise(model: str, spacing) -> None:
    clean = smooth(spacing=spacing)
    dirty = noisy(clean, 8.0)
    res = enhance(dirty, task="denoise", model=model)
    out = res.enhanced.array
    assert np.all(np.isfinite(out))
    assert mse(out, clean.array) < 0.7 * mse(dirty.array, clean.array)
    np.testing.assert_allclose(res.difference.array, out - dirty.array, atol=1e-4)
    assert res.task == "denoise" and res.model == model and res.device == "cpu" and res.seconds > 0
    assert res.precision == ""  # no network ran


def test_params_override_changes_the_result() -> None:
    dirty = noisy(smooth(), 8.0)
    weak = enhance(dirty, task="denoise", model="gaussian", params={"sigma": 0.3}).enhanced.array
    strong = enhance(dirty, task="denoise", model="gaussian", params={"sigma": 2.0}).enhanced.array
    assert np.std(np.diff(strong, axis=2)) < 0.5 * np.std(np.diff(weak, axis=2))


def test_nlmeans_on_a_constant_volume() -> None:
    vol = Volume(np.full((6, 7, 8), 5.0, np.float32))
    np.testing.assert_array_equal(enhance(vol, task="denoise", model="nlmeans").enhanced.array, vol.array)


@pytest.mark.parametrize("model", ["linear", "bspline", "sinc"])
@pytest.mark.parametrize("scale", [(2, 2, 2), (1, 1, 3)], ids=["2", "1,1,3"])
def test_interpolators_beat_nearest_on_a_smooth_volume(model: str, scale) -> None:
    """Downsample a smooth volume by whole voxels (so the grids nest) and upsample it back: every interpolator
    must beat nearest neighbour against the original, compared on the same physical grid."""
    hi = smooth(shape=(24, 24, 24), direction=OBLIQUE)
    f = np.asarray(scale)[::-1]  # array order
    lo_arr = hi.array.reshape(24 // f[0], f[0], 24 // f[1], f[1], 24 // f[2], f[2]).mean(axis=(1, 3, 5))
    lo_sp = np.asarray(hi.spacing) * np.asarray(scale)
    # Low-res voxel 0 covers high-res voxels 0..s-1: its centre sits (s - 1)/2 high-res voxels further on.
    lo_origin = np.asarray(hi.origin) + hi.direction @ ((lo_sp - np.asarray(hi.spacing)) / 2)
    lo = Volume(lo_arr, lo_sp, lo_origin, hi.direction)
    res = enhance(lo, task="sr", model=model, scale=scale)
    near = resample_scale(lo, tuple(float(s) for s in scale), "nearest")
    assert res.enhanced.array.shape == hi.array.shape
    np.testing.assert_allclose(res.enhanced.origin, hi.origin, atol=1e-9)
    core = (slice(3, -3),) * 3
    assert mse(res.enhanced.array[core], hi.array[core]) < 0.5 * mse(near.array[core], hi.array[core])


def test_difference_map_is_enhanced_minus_bspline_input_on_output_grid() -> None:
    vol = make_volume(shape_zyx=(9, 10, 11), direction=LEFT_HANDED)
    res = enhance(vol, task="sr", model="linear", scale=(1.5, 2, 1))
    ref = sitk.Resample(to_sitk_image(vol), to_sitk_image(res.enhanced), sitk.Transform(), sitk.sitkBSpline, 0.0,
                        sitk.sitkFloat32, True)
    np.testing.assert_allclose(res.difference.array, res.enhanced.array - sitk.GetArrayFromImage(ref), atol=1e-3)
    assert res.difference.origin == res.enhanced.origin and res.difference.spacing == res.enhanced.spacing


def test_progress_and_cancel_with_classical_models() -> None:
    reports = []
    enhance(make_volume(shape_zyx=(6, 7, 8)), scale=2, model="linear", progress=reports.append)
    assert reports and reports[-1].done == reports[-1].total and reports[-1].eta == 0
    with pytest.raises(CancelledError):
        enhance(make_volume(shape_zyx=(6, 7, 8)), scale=2, model="linear", cancel=lambda: True)


# ------------------------------------------------------------------------ learned path, stand-in networks


class NearestUp:
    """Stands in for an isotropic SR network: nearest-neighbour upsampling by ``factor`` (per tile)."""

    def __init__(self, factor: int):
        import torch

        self.factor, self.halo, self.width, self.shapes = factor, 2, 8, []
        self.torch = torch

    def to(self, device):
        return self

    def __call__(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return self.torch.nn.functional.interpolate(x, scale_factor=self.factor, mode="nearest")


class Identity(NearestUp):
    def __init__(self):
        super().__init__(1)

    def __call__(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return x.clone()


def fake_spec(name: str, **kw) -> ModelSpec:
    return ModelSpec(name, kw.pop("task", "sr"), "learned", kw.pop("modalities", ("mr", "ct")), "stand-in",
                     arch="none", builder="none", **kw)


@pytest.fixture
def learned(monkeypatch):
    """Register stand-in learned models and make ``_load_network`` return stand-in networks."""
    pytest.importorskip("torch")
    specs = [fake_spec("fake-x2", scale_mode="isotropic", scales=(2.0,), modalities=("mr",)),
             fake_spec("fake-x2x4", scale_mode="isotropic", scales=(2.0, 4.0), modalities=("mr",)),
             fake_spec("fake-axis", scale_mode="axis", scale_min=2.0, scale_max=6.0),
             fake_spec("fake-den", task="denoise", scale_mode="none", normalisation="ct", modalities=("ct",))]
    nets = {"fake-x2": NearestUp(2), "fake-x2x4": NearestUp(4), "fake-axis": Identity(), "fake-den": Identity()}
    monkeypatch.setattr(registry, "LEARNED", tuple(specs))
    monkeypatch.setattr(registry, "REGISTRY", {**registry.REGISTRY, **{s.name: s for s in specs}})
    monkeypatch.setattr(enhance_mod, "_load_network", lambda name: nets[name])
    return nets


def test_auto_picks_a_learned_model_that_serves(learned) -> None:
    assert select_model("sr", "mr", (2.0, 2.0, 2.0)).name == "fake-x2"
    assert select_model("sr", "mr", (3.0, 3.0, 3.0)).name == "fake-x2x4"
    assert select_model("sr", "ct", (2.0, 2.0, 2.0)).name == "bspline"  # no CT isotropic model
    assert select_model("sr", "ct", (1.0, 1.0, 4.0)).name == "fake-axis"
    assert select_model("sr", "mr", (1.0, 1.0, 8.0)).name == "bspline"  # beyond the axis model's range
    assert select_model("denoise", "ct", (1.0, 1.0, 1.0)).name == "fake-den"
    assert select_model("denoise", "mr", (1.0, 1.0, 1.0)).name == "nlmeans"


@pytest.mark.parametrize("dname", ["oblique", "left_handed"])
def test_learned_isotropic_output_is_physically_aligned(learned, dname: str) -> None:
    """With a nearest-upsampling 'network', every output voxel must hold the value of the input voxel that
    physically contains its centre: the tiled, normalised learned path may not shift the grid."""
    from conftest import DIRECTIONS

    vol = make_volume(shape_zyx=(13, 14, 15), direction=DIRECTIONS[dname], kind="random")
    res = enhance(vol, task="sr", model="fake-x2", scale=2, tile=8)
    size, spacing, origin = resized_geometry(vol, (2, 2, 2))
    assert res.enhanced.size == size
    np.testing.assert_allclose(res.enhanced.origin, origin, atol=1e-12)
    out = to_sitk_image(res.enhanced)
    src = to_sitk_image(vol)
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = [int(rng.integers(0, n)) for n in size]
        p = out.TransformIndexToPhysicalPoint(idx)
        cont = np.asarray(src.TransformPhysicalPointToContinuousIndex(p))
        containing = tuple(int(np.floor(c + 0.5)) for c in cont)
        assert np.all(np.abs(cont - np.round(cont)) > 0.2)  # centres never sit on an input voxel boundary
        assert res.enhanced.array[idx[2], idx[1], idx[0]] == pytest.approx(
            vol.array[containing[2], containing[1], containing[0]], rel=1e-5, abs=1e-5)
    assert len(learned["fake-x2"].shapes) > 1  # it really was tiled


def test_learned_isotropic_non_integer_is_resampled(learned) -> None:
    vol = make_volume(shape_zyx=(9, 10, 11), direction=OBLIQUE)
    res = enhance(vol, task="sr", model="fake-x2x4", scale=1.5)
    size, spacing, origin = resized_geometry(vol, (1.5, 1.5, 1.5))
    assert res.enhanced.size == size
    np.testing.assert_allclose(res.enhanced.spacing, spacing, rtol=1e-12)
    np.testing.assert_allclose(res.enhanced.origin, origin, atol=1e-12)
    assert any("resampled to x1.5" in m for m in res.messages)


@pytest.mark.parametrize("scale,axis", [((1, 1, 4.33), 2), ((3, 1, 1), 0), ((1, 2.5, 1), 1)])
def test_learned_axis_model_geometry_and_slice_axis(learned, scale, axis: int) -> None:
    vol = make_volume(shape_zyx=(9, 10, 11), direction=LEFT_HANDED)
    res = enhance(vol, task="sr", model="fake-axis", scale=scale, tile=512)
    size, spacing, origin = resized_geometry(vol, scale)
    assert res.enhanced.size == size
    np.testing.assert_allclose(res.enhanced.origin, origin, atol=1e-12)
    (shape,) = learned["fake-axis"].shapes  # one tile: the network's D axis is the upsampled index axis
    assert shape[0] == size[axis]
    # Identity network: the result is the normalised-denormalised B-spline pre-resampling.
    np.testing.assert_allclose(res.enhanced.array, resample_scale(vol, tuple(map(float, scale))).array,
                               rtol=1e-5, atol=1e-3)


def test_learned_denoiser_keeps_grid_and_values(learned) -> None:
    vol = make_volume(shape_zyx=(9, 10, 11), kind="ct", direction=OBLIQUE)
    res = enhance(vol, task="denoise", tile=8)
    assert res.model == "fake-den"
    assert res.precision == ("bf16" if inference.cpu_has_amx() else "fp32")  # auto: bf16 where AMX runs it
    np.testing.assert_allclose(res.enhanced.array, vol.array, atol=1e-3)  # CT normalisation round trip
    assert res.enhanced.origin == vol.origin and res.enhanced.spacing == vol.spacing
    np.testing.assert_allclose(res.difference.array, 0, atol=1e-3)


def test_learned_device_errors_are_input_errors(learned) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="CUDA"):
        enhance(make_volume(shape_zyx=(5, 6, 7)), task="sr", model="fake-x2", scale=2, device="cuda")
    with pytest.raises(InputError):
        enhance(make_volume(shape_zyx=(5, 6, 7)), task="sr", model="fake-x2", scale=2, device="tpu")


def test_ensemble_option_runs_fewer_members_and_restores_the_model() -> None:
    """ensemble=1 is the plain network, 8 the model's own, no option its default (2); the cached network keeps its
    own size afterwards."""
    from MedSREnhanceLib.engine.enhance import _load_network

    vol = Volume(np.random.default_rng(0).random((12, 13, 14)).astype(np.float32) * 100, (1.0, 1.0, 1.0),
                 (0.0, 0.0, 0.0), np.eye(3))
    full = enhance(vol, task="denoise", model="mr-denoise", device="cpu", precision="fp32", ensemble=8)
    one = enhance(vol, task="denoise", model="mr-denoise", device="cpu", precision="fp32", ensemble=1)
    default = enhance(vol, task="denoise", model="mr-denoise", device="cpu", precision="fp32")
    two = enhance(vol, task="denoise", model="mr-denoise", device="cpu", precision="fp32", ensemble=2)
    again = enhance(vol, task="denoise", model="mr-denoise", device="cpu", precision="fp32", ensemble=8)
    assert _load_network("mr-denoise").ensemble == 8
    np.testing.assert_array_equal(again.enhanced.array, full.enhanced.array)
    np.testing.assert_array_equal(default.enhanced.array, two.enhanced.array)
    assert not np.allclose(default.enhanced.array, full.enhanced.array)
    assert not np.allclose(one.enhanced.array, full.enhanced.array)
    assert any("flip ensemble of 1" in m for m in one.messages)
    with pytest.raises(InputError, match="ensemble"):
        enhance(vol, task="denoise", model="mr-denoise", device="cpu", ensemble=9)
    assert _load_network("mr-denoise").ensemble == 8


def _ct_phantom(surround: float, seed: int = 0) -> Volume:
    """A noisy CT slab (z, y, x): a soft-tissue body with lungs and a bone, 10+ voxels of air around it (its noise
    dips below -1024 HU), and ``surround`` outside the reconstruction circle (scanners write -2048..-3024 HU)."""
    rng = np.random.default_rng(seed)
    z, y, x = 12, 72, 72
    yy, xx = np.mgrid[:y, :x] - 35.5
    hu = np.full((y, x), -1000.0)
    hu[(yy / 18) ** 2 + (xx / 22) ** 2 < 1] = 40.0
    hu[((yy / 9) ** 2 + ((np.abs(xx) - 10) / 7) ** 2) < 1] = -850.0
    hu[(yy - 12) ** 2 + xx ** 2 < 9] = 700.0
    hu[np.hypot(yy, xx) > 34] = surround
    arr = np.repeat(hu[None], z, 0) + rng.normal(0, 20, (z, y, x)) * (hu[None] > -1500)
    return Volume(arr.astype(np.float32), spacing=(0.8, 0.8, 3.0), metadata={"modality": "CT"})


def _inside(shape: tuple[int, ...], rim: int) -> np.ndarray:
    yy, xx = np.mgrid[:shape[1], :shape[2]] - (shape[1] - 1) / 2
    return np.repeat((np.hypot(yy, xx) < 34 - rim)[None], shape[0], 0)


@pytest.mark.parametrize("task,scale", [("denoise", 1), ("sr", (1, 1, 2))])
def test_ct_padding_outside_the_circle_neither_reaches_the_body_nor_changes(task: str, scale) -> None:
    air = enhance(_ct_phantom(-1000.0), task=task, scale=scale, modality="ct", model="auto")
    padded = enhance(_ct_phantom(-3024.0), task=task, scale=scale, modality="ct", model="auto")
    assert air.model.startswith("ct-") and padded.model == air.model
    out = padded.enhanced.array
    body = _inside(out.shape, rim=10)
    # the nets see padding as air: the body's output is that of the same scan with air around it
    assert float(np.abs(out - air.enhanced.array)[body].mean()) < 0.5
    # and the padding keeps its value on the output grid, with a message saying so
    assert np.all(out[~_inside(out.shape, rim=-1)] == -3024.0)
    assert any("padding" in m for m in padded.messages)


def test_ct_padding_does_not_leak_into_the_air_under_classical_smoothing() -> None:
    # a classical filter sees the padding as air too: without that, a 2-voxel Gaussian pulls the air next to the
    # reconstruction circle hundreds of HU below -1000
    params = {"sigma": 2.0}
    padded = enhance(_ct_phantom(-3024.0), task="denoise", modality="ct", model="gaussian", params=params)
    out = padded.enhanced.array
    ring = _inside(out.shape, rim=0) & ~_inside(out.shape, rim=4)  # air between the body and the circle
    assert float(np.abs(out[ring] + 1000.0).max()) < 60.0  # air (-1000, or -1024 where padding met it)
    assert np.all(out[~_inside(out.shape, rim=-1)] == -3024.0)
    assert any("padding" in m for m in padded.messages)
