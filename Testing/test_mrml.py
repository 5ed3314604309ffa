"""MedSREnhanceLib.mrml against real MRML (slicer-core): a real vtkMRMLScene, volumes read from files by
vtkMRMLVolumeArchetypeStorageNode, geometry checked against the output-grid rule and against SimpleITK.

Classical models only (linear, gaussian), tiny volumes: no trained weights needed, a few seconds on one core.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):  # the unrelated PyPI package "slicer" shadows slicer-core
    pytest.skip("slicer-core is not installed", allow_module_level=True)

import SimpleITK as sitk  # noqa: E402

from MedSREnhanceLib import mrml  # noqa: E402
from MedSREnhanceLib.core.errors import CancelledError, InputError  # noqa: E402
from MedSREnhanceLib.core.resample import from_sitk  # noqa: E402
from MedSREnhanceLib.core.volume import Volume  # noqa: E402

try:  # keep the shared 2-core machine usable
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is not needed by the classical models
    pass

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
SPACING = (0.9, 1.1, 2.5)
ORIGIN = (12.0, -20.5, 31.0)
SHAPE = (7, 9, 11)  # (k, j, i): odd, distinct sizes catch axis mix-ups


def rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(0.3, -0.2, 0.5)
LEFT_HANDED = OBLIQUE @ np.diag([1.0, 1.0, -1.0])


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = s  # slicer.util helpers look here
    yield s
    s.Clear(1)
    slicer.mrmlScene = previous


def smooth_array(shape=SHAPE, seed: int = 0) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    rng = np.random.default_rng(seed)
    base = 100 * np.exp(-(i**2 + j**2 + k**2) * 2) + 10 * i
    return (base + rng.normal(0, 2, shape)).astype(np.float32)


def write_file(tmp_path: Path, direction: np.ndarray, name: str = "vol.nrrd", array=None) -> tuple[Path, np.ndarray]:
    arr = smooth_array() if array is None else array
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path, arr


def load_node(scene, path: Path, name: str = "MRHeadCrop"):
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetForceRightHandedIJKCoordinateSystem(False)  # keep left-handed grids left-handed
    scene.AddNode(storage)
    assert storage.ReadData(node) == 1
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


@pytest.fixture(params=["oblique", "left-handed"])
def input_node(request, scene, tmp_path):
    direction = OBLIQUE if request.param == "oblique" else LEFT_HANDED
    path, _ = write_file(tmp_path, direction)
    return load_node(scene, path)


def expected_ijk_to_ras(spacing, origin, direction, scale) -> np.ndarray:
    """The output-grid rule written out independently of the library: spacing / scale, direction kept, outer
    voxel edges kept (voxel 0 centre moves by (new - old) / 2 along each axis), then LPS -> RAS."""
    old = np.asarray(spacing, float)
    new = old / np.asarray(scale, float)
    d = np.asarray(direction, float)
    o = np.asarray(origin, float) + d @ ((new - old) / 2)
    m = np.eye(4)
    m[:3, :3] = RAS_FROM_LPS @ d @ np.diag(new)
    m[:3, 3] = RAS_FROM_LPS @ o
    return m


def node_count(scene, cls: str = "vtkMRMLNode") -> int:
    return scene.GetNumberOfNodesByClass(cls)


def snapshot(node) -> tuple[np.ndarray, np.ndarray, str, str | None]:
    return (np.array(slicer.util.arrayFromVolume(node), copy=True), mrml.node_ijk_to_ras(node), node.GetName(),
            node.GetTransformNodeID())


def assert_unchanged(node, before) -> None:
    after = snapshot(node)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1], before[1], atol=0)
    assert after[2:] == before[2:]


# ----------------------------------------------------------------------------------------------------------------
# Volume <-> node
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [OBLIQUE, LEFT_HANDED], ids=["oblique", "left-handed"])
def test_volume_from_node_matches_simpleitk(scene, tmp_path, direction):
    path, arr = write_file(tmp_path, direction)
    node = load_node(scene, path)
    vol = mrml.volume_from_node(node)
    ref = from_sitk(sitk.ReadImage(str(path), sitk.sitkFloat32))
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.spacing, ref.spacing, atol=1e-6)
    np.testing.assert_allclose(vol.origin, ref.origin, atol=1e-6)
    np.testing.assert_allclose(vol.direction, ref.direction, atol=1e-6)
    assert np.sign(np.linalg.det(vol.direction)) == np.sign(np.linalg.det(direction))


def test_dicom_modality_reaches_the_engine(scene, tmp_path):
    path, _ = write_file(tmp_path, OBLIQUE)
    node = load_node(scene, path)
    n = node_count(scene)
    assert "modality" not in mrml.volume_from_node(node).metadata
    assert node_count(scene) == n  # reading never adds nodes (e.g. a subject hierarchy)
    node.SetAttribute("DICOM.Modality", "CT")
    assert mrml.volume_from_node(node).metadata["modality"] == "ct"
    node.RemoveAttribute("DICOM.Modality")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # as Slicer's DICOM import leaves it
    item = sh.CreateItem(sh.GetSceneItemID(), node)
    sh.SetItemAttribute(item, "DICOM.Modality", "MR")
    assert mrml.volume_from_node(node).metadata["modality"] == "mr"


def test_node_round_trip_is_exact(scene):
    vol = Volume(smooth_array(), SPACING, ORIGIN, LEFT_HANDED)
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    mrml.set_node_from_volume(node, vol)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(node), mrml.ijk_to_ras(vol), atol=1e-12)
    back = mrml.volume_from_node(node)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-12)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-12)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-12)
    # MRML keeps the grid in the node, never in the vtkImageData
    assert node.GetImageData().GetOrigin() == (0.0, 0.0, 0.0)
    assert node.GetImageData().GetSpacing() == (1.0, 1.0, 1.0)


def test_ijk_to_ras_maps_voxel_centres_like_simpleitk(scene, tmp_path):
    path, _ = write_file(tmp_path, LEFT_HANDED)
    node = load_node(scene, path)
    image = sitk.ReadImage(str(path))
    m = mrml.node_ijk_to_ras(node)
    for idx in [(0, 0, 0), (10, 0, 0), (0, 8, 6), (10, 8, 6)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(idx))
        ras = (m @ np.array([*idx, 1.0]))[:3]
        np.testing.assert_allclose(ras, RAS_FROM_LPS @ lps, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# enhance_volume_node: geometry
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, (1, 1, 3)], ids=["isotropic-x2", "through-plane-x3"])
def test_sr_output_geometry_follows_the_rule(scene, input_node, scale):
    vol = mrml.volume_from_node(input_node)
    before = snapshot(input_node)
    n_volumes = node_count(scene, "vtkMRMLScalarVolumeNode")
    enh, diff = mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=scale, device="cpu")
    s = np.broadcast_to(np.asarray(scale, float), (3,))

    assert node_count(scene, "vtkMRMLScalarVolumeNode") == n_volumes + 2
    expected = expected_ijk_to_ras(vol.spacing, vol.origin, vol.direction, s)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(enh), expected, atol=1e-9)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(diff), expected, atol=1e-9)
    dims = np.array(enh.GetImageData().GetDimensions())  # (i, j, k)
    np.testing.assert_array_equal(dims, np.array(vol.size) * s)
    np.testing.assert_array_equal(diff.GetImageData().GetDimensions(), dims)

    # Direction unchanged (incl. handedness); physical extent kept: the outer voxel corners coincide.
    out = mrml.volume_from_node(enh)
    np.testing.assert_allclose(out.direction, vol.direction, atol=1e-12)
    for corner in [(0, 0, 0), (1, 1, 1)]:
        c = np.asarray(corner, float)
        in_edge = vol.index_to_physical(c * np.array(vol.size) - 0.5)
        out_edge = out.index_to_physical(c * np.array(out.size) - 0.5)
        np.testing.assert_allclose(out_edge, in_edge, atol=1e-9)

    assert enh.GetName() == ("MRHeadCrop_SRx2" if scale == 2 else "MRHeadCrop_SRx1x1x3")
    assert diff.GetName() == "MRHeadCrop_difference"
    assert enh.GetImageData().GetScalarTypeAsString() == "float"
    assert_unchanged(input_node, before)


def test_sr_values_match_the_engine_on_the_same_grid(scene, input_node):
    """The nodes hold exactly what enhance() returned for the same volume (no hidden flips or offsets)."""
    from MedSREnhanceLib import enhance

    ref = enhance(mrml.volume_from_node(input_node), task="sr", model="linear", scale=(1, 1, 3), device="cpu")
    enh, diff = mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=(1, 1, 3), device="cpu")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(enh), ref.enhanced.array)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(diff), ref.difference.array)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(enh), mrml.ijk_to_ras(ref.enhanced), atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Difference map, display, names, transform, reuse
# ----------------------------------------------------------------------------------------------------------------

def test_motion_task_keeps_the_grid_and_names_the_result(scene, input_node):
    before = snapshot(input_node)
    enh, diff = mrml.enhance_volume_node(input_node, task="motion", model="gaussian", scale=3, device="cpu")
    assert enh.GetName() == "MRHeadCrop_motioncorrected"  # the scale is ignored: the task keeps the grid
    np.testing.assert_allclose(mrml.node_ijk_to_ras(enh), before[1], atol=1e-12)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(diff), slicer.util.arrayFromVolume(enh) - before[0],
                               atol=1e-4)


def test_denoise_difference_map(scene, input_node):
    display = input_node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(180.0, 40.0)
    before = snapshot(input_node)
    enh, diff = mrml.enhance_volume_node(input_node, task="denoise", model="gaussian", device="cpu")

    assert enh.GetName() == "MRHeadCrop_denoised"
    assert diff.GetName() == "MRHeadCrop_difference"
    # Denoising keeps the grid; the difference is enhanced minus input on that grid.
    np.testing.assert_allclose(mrml.node_ijk_to_ras(enh), before[1], atol=1e-12)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(diff), before[1], atol=1e-12)
    d = slicer.util.arrayFromVolume(diff)
    np.testing.assert_allclose(d, slicer.util.arrayFromVolume(enh) - before[0], atol=1e-4)
    assert np.abs(d).max() > 0.1  # the Gaussian changed something

    # Colour table: Slicer's DivergingBlueRed (or the equivalent table slicer-core scenes get), symmetric window.
    ddisp = diff.GetDisplayNode()
    color = scene.GetNodeByID(ddisp.GetColorNodeID())
    assert color is not None and "DivergingBlueRed" in (color.GetName() + color.GetID())
    lut = color.GetLookupTable()
    first, middle, last = (np.array(lut.GetTableValue(i)[:3]) for i in (0, lut.GetNumberOfTableValues() // 2,
                                                                         lut.GetNumberOfTableValues() - 1))
    assert first[2] > first[0] and last[0] > last[2] and middle.min() > 0.9  # blue -> white -> red
    assert not ddisp.GetAutoWindowLevel()
    assert ddisp.GetLevel() == pytest.approx(0.0)
    assert ddisp.GetWindow() == pytest.approx(2 * np.percentile(np.abs(d), 99.5), rel=1e-5)

    # Enhanced keeps the input's window/level and colours.
    edisp = enh.GetDisplayNode()
    assert not edisp.GetAutoWindowLevel()
    assert (edisp.GetWindow(), edisp.GetLevel()) == pytest.approx((180.0, 40.0))
    assert edisp.GetColorNodeID() == display.GetColorNodeID()
    assert_unchanged(input_node, before)


def test_parent_transform_kept(scene, input_node):
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    m = np.eye(4)
    m[:3, 3] = (5, -3, 7)
    transform.SetMatrixTransformToParent(mrml.nodes._vtk_matrix(m))
    input_node.SetAndObserveTransformNodeID(transform.GetID())
    enh, diff = mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=2, device="cpu")
    assert enh.GetTransformNodeID() == transform.GetID()
    assert diff.GetTransformNodeID() == transform.GetID()
    # the node grid itself is the untransformed rule (the transform applies on top, as for the input)
    vol = mrml.volume_from_node(input_node)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(enh),
                               expected_ijk_to_ras(vol.spacing, vol.origin, vol.direction, (2, 2, 2)), atol=1e-9)


def test_rerun_reuses_nodes(scene, input_node):
    enh1, diff1 = mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=2, device="cpu")
    n = node_count(scene)
    enh2, diff2 = mrml.enhance_volume_node(input_node, task="sr", model="bspline", scale=2, device="cpu")
    assert (enh2.GetID(), diff2.GetID()) == (enh1.GetID(), diff1.GetID())
    assert node_count(scene) == n
    assert enh2.GetAttribute(mrml.ATTR_MODEL) == "bspline"
    # a different scale is a different result, so it gets its own node
    enh3, diff3 = mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=3, device="cpu")
    assert enh3.GetID() != enh1.GetID() and enh3.GetName() == "MRHeadCrop_SRx3"
    assert diff3.GetID() == diff1.GetID()  # one difference map per input: the latest run


def test_explicit_output_nodes_are_used(scene, input_node):
    mine_e = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my enhanced")
    mine_d = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my difference")
    n = node_count(scene, "vtkMRMLScalarVolumeNode")
    enh, diff = mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=2, device="cpu",
                                         enhanced_node=mine_e, difference_node=mine_d)
    assert enh is mine_e and diff is mine_d
    assert enh.GetName() == "my enhanced"  # the user's names win
    assert node_count(scene, "vtkMRMLScalarVolumeNode") == n
    with pytest.raises(InputError):
        mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=2, device="cpu",
                                 enhanced_node=input_node)


# ----------------------------------------------------------------------------------------------------------------
# Nothing added when cancelled or failing
# ----------------------------------------------------------------------------------------------------------------

def test_cancel_mid_run_leaves_scene_as_it_was(scene, input_node):
    before = snapshot(input_node)
    n = node_count(scene)
    seen: list = []
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return bool(seen) or calls["n"] > 1  # asked once the run is under way

    with pytest.raises(CancelledError):
        mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=2, device="cpu",
                                 progress=seen.append, cancel=cancel)
    assert node_count(scene) == n
    assert_unchanged(input_node, before)


def test_failure_leaves_scene_as_it_was(scene, tmp_path):
    arr = smooth_array()
    arr[3, 4, 5] = np.nan
    path, _ = write_file(tmp_path, OBLIQUE, "nan.nrrd", arr)
    node = load_node(scene, path)
    n = node_count(scene)
    with pytest.raises(InputError):
        mrml.enhance_volume_node(node, task="sr", model="linear", scale=2, device="cpu")
    with pytest.raises(InputError):
        mrml.enhance_volume_node(node, task="denoise", model="linear", device="cpu")  # wrong task for model
    assert node_count(scene) == n


# ----------------------------------------------------------------------------------------------------------------
# The logic core the scripted module delegates to (blocking and non-blocking)
# ----------------------------------------------------------------------------------------------------------------

def test_logic_process_blocking(scene, input_node):
    logic = mrml.EnhanceLogic()
    n = node_count(scene, "vtkMRMLScalarVolumeNode")
    enh, diff = logic.process(input_node, task="sr", model="linear", scale=(1, 1, 3), device="cpu")
    assert node_count(scene, "vtkMRMLScalarVolumeNode") == n + 2
    vol = mrml.volume_from_node(input_node)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(enh),
                               expected_ijk_to_ras(vol.spacing, vol.origin, vol.direction, (1, 1, 3)), atol=1e-9)
    assert diff.GetDisplayNode().GetLevel() == pytest.approx(0.0)


def test_logic_process_async_reports_and_completes(scene, input_node):
    logic = mrml.EnhanceLogic()
    progress: list = []
    done: list = []
    job = logic.processAsync(input_node, task="denoise", model="gaussian", device="cpu",
                             progressCallback=progress.append, completedCallback=done.append)
    outcome = job.wait(timeout=60)
    assert outcome.ok, outcome.error
    assert done == [outcome]  # called exactly once
    assert outcome.enhanced_node.GetName() == "MRHeadCrop_denoised"
    assert outcome.model == "gaussian" and outcome.device == "cpu"  # no network: no precision to report
    assert job.poll() is True and done == [outcome]


def test_logic_process_async_cancel(scene, input_node):
    n = node_count(scene)
    before = snapshot(input_node)
    logic = mrml.EnhanceLogic()
    job = logic.processAsync(input_node, task="sr", model="linear", scale=2, device="cpu")
    job.cancel()  # immediately: whatever the worker has reached, its result must be dropped
    outcome = job.wait(timeout=60)
    assert outcome.cancelled and outcome.enhanced_node is None
    assert node_count(scene) == n
    assert_unchanged(input_node, before)


def _qt_stubs(monkeypatch) -> list:
    """Stand-ins for the Qt-bound pieces slicer-core lacks (qt.QTimer, ScriptedLoadableModule base classes,
    parameterNodeWrapper), so MedSREnhance.py's Logic runs here; MRML itself stays real."""
    import sys
    import types

    timers: list = []

    class QTimer:
        def __init__(self):
            self.callbacks, self.active = [], False
            timers.append(self)

        def setInterval(self, ms):  # noqa: N802 - Qt API
            self.interval = ms

        def connect(self, signal, callback):
            assert signal == "timeout()"
            self.callbacks.append(callback)

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

        def fire(self):
            for cb in list(self.callbacks):
                cb()

    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    qt.Qt = types.SimpleNamespace(ToolTipRole=3)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget",
                 "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (_Base,), {}))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.Choice = lambda choices: ("Choice", tuple(choices))
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    for name, module in (("qt", qt), ("slicer.ScriptedLoadableModule", slm), ("slicer.parameterNodeWrapper", pnw)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "MedSREnhance", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "MedSREnhance"))
    return timers


def test_scripted_logic_process_and_async(scene, input_node, monkeypatch):
    """MedSREnhanceLogic (the class the console and the panel use) on real MRML, Qt pieces stubbed."""
    import importlib
    import sys

    timers = _qt_stubs(monkeypatch)
    module = importlib.import_module("MedSREnhance")
    try:
        logic = module.MedSREnhanceLogic()
        assert logic.ensureDependencies("sr", "linear") is True
        assert [v for v, _ in logic.deviceChoices(loadTorch=False)][:2] == ["auto", "cpu"]
        enh, diff = logic.process(input_node, task="sr", model="linear", scale=(1, 1, 3), device="cpu")
        vol = mrml.volume_from_node(input_node)
        np.testing.assert_allclose(mrml.node_ijk_to_ras(enh),
                                   expected_ijk_to_ras(vol.spacing, vol.origin, vol.direction, (1, 1, 3)),
                                   atol=1e-9)
        assert (enh.GetName(), diff.GetName()) == ("MRHeadCrop_SRx1x1x3", "MRHeadCrop_difference")

        done: list = []
        job = logic.processAsync(input_node, task="denoise", model="gaussian", device="cpu",
                                 completedCallback=done.append)
        timer = timers[-1]
        assert timer.active
        for _ in range(600):
            timer.fire()
            if job.finished:
                break
            time.sleep(0.05)
        assert job.finished and not timer.active and done and done[0].ok
        assert done[0].enhanced_node.GetName() == "MRHeadCrop_denoised"
        assert logic._activeJobs == {}
    finally:
        sys.modules.pop("MedSREnhance", None)


def test_result_layout_is_accepted_by_mrml_layout_logic(scene):
    """Slicer's own layout logic turns the layout XML into input | enhanced | difference slice views."""
    from MedSREnhanceLib.mrml import panel as helpers

    logic = slicer.vtkMRMLLayoutLogic()
    logic.SetMRMLScene(scene)
    layout = logic.GetLayoutNode()
    layout.AddLayoutDescription(helpers.LAYOUT_ID, helpers.layout_xml())
    layout.SetViewArrangement(helpers.LAYOUT_ID)
    views = {}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        views[node.GetLayoutName()] = node.GetLayoutLabel()
    assert [views.get(name) for name in helpers.VIEW_NAMES] == list(helpers.VIEW_LABELS)


def _doc_python_blocks(section: str) -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "slicer.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_docs_console_examples_run(scene, input_node, monkeypatch):
    """docs/slicer.md's console examples, run as written against real MRML (only Slicer's app-level lookups,
    getModuleLogic and the Qt timer, are stood in for)."""
    import importlib
    import sys

    timers = _qt_stubs(monkeypatch)
    module = importlib.import_module("MedSREnhance")
    try:
        input_node.SetName("MRHead")
        logic = module.MedSREnhanceLogic()
        monkeypatch.setattr(slicer.util, "getModuleLogic", lambda name: logic if name == "MedSREnhance" else None)
        blocking, non_blocking = _doc_python_blocks("Python console")
        n = node_count(scene, "vtkMRMLScalarVolumeNode")
        namespace: dict = {"slicer": slicer}
        exec(compile(blocking, "docs/slicer.md", "exec"), namespace)
        names = {scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName()
                 for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))}
        assert {"MRHead_SRx2", "MRHead_SRx1x1x3", "MRHead_denoised", "MRHead_difference", "MRHead_uncertainty"} <= names
        assert node_count(scene, "vtkMRMLScalarVolumeNode") == n + 5  # one difference map, updated per run

        exec(compile(non_blocking, "docs/slicer.md", "exec"), namespace)
        job = namespace["job"]
        for _ in range(1200):
            timers[-1].fire()
            if job.finished:
                break
            time.sleep(0.05)
        assert job.finished and job.outcome.ok, job.outcome
        assert job.outcome.enhanced_node.GetName() == "MRHead_SRx1x1x4"
        assert job.outcome.device in ("cpu (fp32)", "cpu (bf16)")  # what the panel says ran, arithmetic included
    finally:
        sys.modules.pop("MedSREnhance", None)


def test_show_results_assigns_and_links_views(scene, input_node, monkeypatch):
    """MedSREnhanceLogic.showResults on real MRML layout, slice and composite nodes; only the Qt layout manager
    (which owns the slice widgets) is stood in for."""
    import importlib
    import sys
    import types

    from MedSREnhanceLib.mrml import panel as helpers

    _qt_stubs(monkeypatch)
    module = importlib.import_module("MedSREnhance")
    try:
        layout_logic = slicer.vtkMRMLLayoutLogic()
        layout_logic.SetMRMLScene(scene)
        layout_node = layout_logic.GetLayoutNode()
        widgets: dict = {}

        def slice_widget(name):
            if name not in widgets:
                slice_node = next((scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
                                   for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))
                                   if scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").GetLayoutName() == name), None)
                if slice_node is None:
                    return None
                composite = slicer.vtkMRMLSliceCompositeNode()
                composite.SetLayoutName(name)
                scene.AddNode(composite)
                fitted: list = []
                widgets[name] = types.SimpleNamespace(
                    mrmlSliceCompositeNode=lambda c=composite: c, mrmlSliceNode=lambda s=slice_node: s,
                    sliceLogic=lambda f=fitted: types.SimpleNamespace(FitSliceToAll=lambda: f.append(1)),
                    fitted=fitted)
            return widgets[name]

        manager = types.SimpleNamespace(layoutLogic=lambda: layout_logic, sliceWidget=slice_widget,
                                        setLayout=layout_node.SetViewArrangement)
        monkeypatch.setattr(slicer, "app", types.SimpleNamespace(layoutManager=lambda: manager), raising=False)

        enh, diff = mrml.enhance_volume_node(input_node, task="sr", model="linear", scale=2, device="cpu")
        logic = module.MedSREnhanceLogic()
        logic.showResults(input_node, enh, diff)
        assert layout_node.GetViewArrangement() == helpers.LAYOUT_ID
        for name, node in zip(helpers.VIEW_NAMES, (input_node, enh, diff)):
            composite = widgets[name].mrmlSliceCompositeNode()
            assert composite.GetBackgroundVolumeID() == node.GetID()
            assert composite.GetForegroundVolumeID() is None
            assert composite.GetLinkedControl() and composite.GetHotLinkedControl()
            assert widgets[name].fitted

        logic.showResults(input_node, enh, diff, differenceAsOverlay=True)
        assert layout_node.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
        yellow = widgets["Yellow"].mrmlSliceCompositeNode()
        assert (yellow.GetBackgroundVolumeID(), yellow.GetForegroundVolumeID()) == (enh.GetID(), diff.GetID())
        assert yellow.GetForegroundOpacity() == pytest.approx(0.5)
        assert widgets["Red"].mrmlSliceCompositeNode().GetBackgroundVolumeID() == input_node.GetID()
    finally:
        sys.modules.pop("MedSREnhance", None)


def test_scripted_logic_asks_for_torch_only_when_the_model_needs_it(monkeypatch):
    """A classical model never prompts; auto denoising prompts for torch (too old here) and nothing else."""
    import importlib
    import sys
    import types

    from MedSREnhanceLib.mrml import panel as helpers

    _qt_stubs(monkeypatch)
    module = importlib.import_module("MedSREnhance")
    try:
        requirements: list = []

        class FakeTorchLogic:
            def installTorch(self, askConfirmation=False, torchVersionRequirement=None):  # noqa: N802,N803
                requirements.append(torchVersionRequirement)
                return object()

        monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeTorchLogic))
        monkeypatch.setattr(slicer.util, "infoDisplay", lambda *a, **k: None, raising=False)
        monkeypatch.setattr(helpers, "installed_torch_version", lambda: "1.13.1+cu117")
        logic = module.MedSREnhanceLogic()
        assert logic.ensureDependencies("sr", "linear") and requirements == []
        assert logic.ensureDependencies("denoise", "auto") and requirements == [f">={helpers.MINIMUM_TORCH_VERSION}"]
        monkeypatch.setattr(helpers, "installed_torch_version", lambda: "2.13.0")
        requirements.clear()
        assert logic.ensureDependencies("denoise", "auto") and requirements == []
    finally:
        sys.modules.pop("MedSREnhance", None)


@pytest.mark.parametrize("input_node", ["oblique"], indirect=True)
def test_uncertainty_node_only_when_asked(scene, input_node):
    logic = mrml.EnhanceLogic()
    n = node_count(scene, "vtkMRMLScalarVolumeNode")
    assert len(logic.process(input_node, task="sr", model="mr-sr-x2", scale=2, device="cpu")) == 2
    assert node_count(scene, "vtkMRMLScalarVolumeNode") == n + 2
    composite = slicer.vtkMRMLSliceCompositeNode()
    scene.AddNode(composite)
    enh, diff, unc = logic.process(input_node, task="sr", model="mr-sr-x2", scale=2, device="cpu",
                                   uncertainty=True, showUncertainty=True)
    assert node_count(scene, "vtkMRMLScalarVolumeNode") == n + 3  # enhanced and difference reused
    assert unc.GetAttribute(mrml.ATTR_ROLE) == "uncertainty"
    np.testing.assert_allclose(mrml.node_ijk_to_ras(unc), mrml.node_ijk_to_ras(enh), atol=1e-9)
    display = unc.GetDisplayNode()
    top = float(np.percentile(slicer.util.arrayFromVolume(unc), 99))
    assert display.GetWindow() == pytest.approx(top, rel=1e-5) and display.GetLevel() == pytest.approx(top / 2, rel=1e-5)
    assert "nferno" in scene.GetNodeByID(display.GetColorNodeID()).GetName()
    assert composite.GetForegroundVolumeID() == unc.GetID() and composite.GetBackgroundVolumeID() == enh.GetID()


@pytest.mark.parametrize("input_node", ["oblique"], indirect=True)
def test_classical_uncertainty_refused_scene_unchanged(scene, input_node):
    n = node_count(scene, "vtkMRMLScalarVolumeNode")
    with pytest.raises(InputError, match="not available for classical model linear"):
        mrml.EnhanceLogic().process(input_node, task="sr", model="linear", scale=2, device="cpu", uncertainty=True)
    assert node_count(scene, "vtkMRMLScalarVolumeNode") == n
