"""MRML adapter: Volume <-> vtkMRMLScalarVolumeNode, and blocking enhancement of a volume node into result nodes.

The only module of the library that imports ``slicer``; it runs inside 3D Slicer and with slicer-core (Slicer's
MRML/logic libraries without Qt), where it is tested. Geometry is exact: MRML stores IJK->RAS, the library
LPS (ITK), and the two differ by diag(-1, -1, 1) on the physical side only, so oblique and left-handed grids
survive the round trip.

Scene rule: the engine runs first on a copy of the input voxels; nodes are created or modified only after it
succeeds and no cancel was requested, so a failed or cancelled run leaves the scene exactly as it was.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Optional, Sequence

import numpy as np

try:
    import slicer
    import vtk
except ImportError as exc:  # say what is missing instead of a bare "No module named slicer"
    raise ImportError("MedSREnhanceLib.mrml runs inside 3D Slicer or needs the slicer-core package "
                      "(pip install slicer-core)") from exc
if not hasattr(slicer, "vtkMRMLScene"):
    raise ImportError("the 'slicer' module found is not 3D Slicer's (the unrelated PyPI package 'slicer' hides "
                      "slicer-core: pip uninstall slicer, then reinstall slicer-core)")

from . import panel as helpers
from ..core.errors import CancelledError, InputError
from ..core.volume import Volume, parse_scale

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# ID under which Slicer's colour logic registers Base/Logic/Resources/ColorFiles/DivergingBlueRed.txt.
DIVERGING_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
FALLBACK_COLOR_NODE_NAME = "DivergingBlueRed"
# Slicer's Inferno (Base/Logic/Resources/ColorFiles/Inferno.txt): sequential, for the uncertainty map
INFERNO_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
ATTR_ROLE = "MedSREnhance.Role"  # "enhanced" | "difference" | "uncertainty" | "colors" | "colors-sequential"
ATTR_INPUT = "MedSREnhance.InputNodeID"
ATTR_MODEL = "MedSREnhance.Model"

ProgressFn = Callable[[Any], None]
CancelFn = Callable[[], bool]


# ----------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------

def ijk_to_ras(volume: Volume) -> np.ndarray:
    """4x4 IJK->RAS of ``volume``: LPS->RAS applied to [direction * spacing | origin]."""
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ volume.direction @ np.diag(volume.spacing)
    m[:3, 3] = LPS_TO_RAS @ np.asarray(volume.origin)
    return m


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """(spacing, origin, direction) in the library's LPS convention from a 4x4 IJK->RAS."""
    m = np.asarray(matrix, dtype=np.float64)
    lps = LPS_TO_RAS @ m[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"volume has a degenerate IJK->RAS matrix (spacing {tuple(spacing)})")
    direction = lps / spacing
    origin = LPS_TO_RAS @ m[:3, 3]
    return tuple(float(s) for s in spacing), tuple(float(o) for o in origin), direction


def _vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def node_ijk_to_ras(node: Any) -> np.ndarray:
    vm = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vm)
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(node: Any) -> Volume:
    """A copy of the node's voxels (float32, (k, j, i)) with its own grid; the parent transform is not applied
    (results are placed under the same transform instead, which is exact and keeps them editable)."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("input must be a scalar volume node")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"volume {node.GetName()!r} has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume {node.GetName()!r} has {image.GetNumberOfScalarComponents()} components; "
                         "a scalar volume is needed")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    spacing, origin, direction = geometry_from_ijk_to_ras(node_ijk_to_ras(node))
    metadata: dict[str, Any] = {"name": node.GetName()}
    modality = _dicom_modality(node)
    if modality:
        metadata["modality"] = modality
    return Volume(array, spacing, origin, direction, metadata)


def set_node_from_volume(node: Any, volume: Volume) -> None:
    """Replace the node's voxels and grid by ``volume``'s (float32)."""
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array, dtype=np.float32))
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras(volume)))
    node.Modified()


def _subject_hierarchy(scene: Any) -> Any:
    """The scene's subject hierarchy node if it has one (never created here: reading must not change the scene)."""
    return scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") if scene is not None else None


def _dicom_modality(node: Any) -> Optional[str]:
    """"mr"/"ct" from the DICOM Modality Slicer's DICOM import keeps (on the node or its subject hierarchy item),
    else None (then the engine infers it from the intensities)."""
    raw = node.GetAttribute("DICOM.Modality") or ""
    sh = _subject_hierarchy(node.GetScene())
    if not raw and sh is not None:
        item = sh.GetItemByDataNode(node)
        raw = sh.GetItemAttribute(item, "DICOM.Modality") if item else ""
    return {"MR": "mr", "CT": "ct"}.get((raw or "").strip().upper())


# ----------------------------------------------------------------------------------------------------------------
# Scene helpers
# ----------------------------------------------------------------------------------------------------------------

def _diverging_colors(n: int = 256) -> np.ndarray:
    """Blue -> near white -> red ramp (n x 3, 0..1) for scenes without Slicer's colour files (slicer-core)."""
    stops = np.array([
        [0.02, 0.19, 0.38], [0.26, 0.58, 0.76], [0.82, 0.90, 0.94],
        [0.97, 0.97, 0.97],
        [0.99, 0.86, 0.78], [0.84, 0.38, 0.30], [0.40, 0.00, 0.12],
    ])
    x = np.linspace(0.0, 1.0, len(stops))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, x, stops[:, c]) for c in range(3)], axis=1)


def _inferno_colors(n: int = 256) -> np.ndarray:
    """Black -> purple -> orange -> pale yellow (matplotlib's inferno at 7 stops; n x 3, 0..1)."""
    stops = np.array([
        [0.001, 0.000, 0.014], [0.193, 0.039, 0.378], [0.416, 0.090, 0.433], [0.645, 0.173, 0.376],
        [0.865, 0.317, 0.226], [0.988, 0.645, 0.040], [0.988, 0.998, 0.645],
    ])
    x = np.linspace(0.0, 1.0, len(stops))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, x, stops[:, c]) for c in range(3)], axis=1)


def diverging_color_node_id(scene: Any) -> str:
    """Slicer's DivergingBlueRed colour table, or an equivalent one made once per scene where it is missing."""
    return _color_node_id(scene, DIVERGING_COLOR_NODE_ID, "colors", FALLBACK_COLOR_NODE_NAME, _diverging_colors)


def inferno_color_node_id(scene: Any) -> str:
    """Slicer's Inferno colour table, or an equivalent one made once per scene where it is missing."""
    return _color_node_id(scene, INFERNO_COLOR_NODE_ID, "colors-sequential", "Inferno", _inferno_colors)


def _color_node_id(scene: Any, slicer_id: str, role: str, name: str, ramp: Callable[[], np.ndarray]) -> str:
    if scene.GetNodeByID(slicer_id) is not None:
        return slicer_id
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetAttribute(ATTR_ROLE) == role:
            return node.GetID()
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    colors = ramp()
    node.SetNumberOfColors(len(colors))
    for i, (r, g, b) in enumerate(colors):
        node.SetColor(i, "", float(r), float(g), float(b), 1.0)
    node.SetAttribute(ATTR_ROLE, role)
    node.SetAttribute("Category", "Continuous")
    scene.AddNode(node)
    return node.GetID()


def _find_previous_output(scene: Any, input_node: Any, role: str, name: str) -> Any:
    """The node an earlier run made for the same input, role and name (so re-runs update instead of piling up)."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if (node.GetAttribute(ATTR_ROLE) == role and node.GetAttribute(ATTR_INPUT) == input_node.GetID()
                and node.GetName() == name):
            return node
    return None


def _place_in_hierarchy(scene: Any, input_node: Any, node: Any) -> None:
    """Put the result next to its input in the Data module tree (where subject hierarchy exists)."""
    sh = _subject_hierarchy(scene)
    if sh is None:
        return
    parent = sh.GetItemParent(sh.GetItemByDataNode(input_node))
    item = sh.GetItemByDataNode(node)
    if parent and item:
        sh.SetItemParent(item, parent)


# ----------------------------------------------------------------------------------------------------------------
# Enhancement
# ----------------------------------------------------------------------------------------------------------------

def normalised_scale(task: str, scale: Any) -> tuple[float, float, float]:
    if task in helpers.SAME_GRID_SUFFIX:  # the grid is kept: a scale given with it is ignored
        return (1.0, 1.0, 1.0)
    return parse_scale(scale)


def _engine_call(volume: Volume, *, task: str, model: str, modality: str, scale: Sequence[float], device: str,
                 tile: Optional[int], precision: str, progress: Optional[ProgressFn],
                 cancel: Optional[CancelFn], uncertainty: bool = False, adapt: float = 0.0) -> Any:
    """MedSREnhanceLib.enhance.enhance with the options it supports (imported here: it pulls in torch)."""
    from ..engine.enhance import enhance

    kwargs: dict[str, Any] = dict(task=task, model=model, modality=modality, scale=tuple(scale), device=device,
                                  tile=tile or None, progress=progress, cancel=cancel)
    if uncertainty:
        kwargs["uncertainty"] = True
    if adapt:
        kwargs["adapt"] = float(adapt)
    if precision and precision != "auto":
        if "precision" in inspect.signature(enhance).parameters:
            kwargs["precision"] = precision
        else:
            logger.warning("precision %r ignored: this engine version chooses precision itself", precision)
    return enhance(volume, **kwargs)


def _new_or_reused(scene: Any, given: Any, input_node: Any, role: str, name: str) -> tuple[Any, bool]:
    if given is not None:
        if not given.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"{role} output must be a scalar volume node")
        if given is input_node:
            raise InputError(f"{role} output must not be the input volume (the input is never modified)")
        return given, False
    previous = _find_previous_output(scene, input_node, role, name)
    if previous is not None:
        return previous, False
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    return node, True


def _copy_display(input_node: Any, node: Any) -> None:
    """Same colour table and window/level as the input: enhancement keeps intensities, so should the display."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    src, dst = input_node.GetDisplayNode(), node.GetDisplayNode()
    if src is None or dst is None:
        return
    if src.GetColorNodeID():
        dst.SetAndObserveColorNodeID(src.GetColorNodeID())
    if src.GetAutoWindowLevel():
        dst.AutoWindowLevelOn()
    else:
        dst.AutoWindowLevelOff()
        dst.SetWindowLevel(src.GetWindow(), src.GetLevel())


def _show_map(node: Any, color_node_id: str, window_level: tuple[float, float]) -> None:
    """A map's display: its colour table and a fixed window (not auto: the window says what the colours mean)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_node_id)
    display.AutoWindowLevelOff()
    display.SetWindowLevel(*window_level)


def _show_difference(scene: Any, node: Any, difference: Volume) -> None:
    _show_map(node, diverging_color_node_id(scene), helpers.symmetric_window(difference.array))


def _show_uncertainty(scene: Any, node: Any, uncertainty: Volume) -> None:
    """Inferno colours, window 0 .. the 99th percentile."""
    _show_map(node, inferno_color_node_id(scene), helpers.sequential_window(uncertainty.array))


def show_uncertainty_overlay(enhanced_node: Any, uncertainty_node: Any, opacity: float = 0.4) -> int:
    """Every slice view: the enhanced volume as background, the uncertainty as a foreground overlay. Returns the
    number of slice views set (0 without views, e.g. in slicer-core)."""
    scene = enhanced_node.GetScene()
    count = scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(count):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(enhanced_node.GetID())
        composite.SetForegroundVolumeID(uncertainty_node.GetID())
        composite.SetForegroundOpacity(float(opacity))
    return count


def apply_result(
    input_node: Any,
    result: Any,
    *,
    task: str,
    scale: Sequence[float],
    enhanced_node: Any = None,
    difference_node: Any = None,
    uncertainty_node: Any = None,
) -> tuple[Any, ...]:
    """Put an EnhanceResult into the scene as (enhanced, difference) nodes next to ``input_node``, plus an
    uncertainty node when the result has an uncertainty map: (enhanced, difference, uncertainty).

    Must run in the thread that owns the scene. Newly created nodes are removed again if anything fails here.
    """
    scene = input_node.GetScene()
    if scene is None:
        raise InputError("input volume is not in a scene")
    base = input_node.GetName() or "Volume"
    created: list[Any] = []
    try:
        enh, new = _new_or_reused(scene, enhanced_node, input_node, "enhanced",
                                  helpers.enhanced_name(base, task, scale))
        if new:
            created.append(enh)
        diff, new = _new_or_reused(scene, difference_node, input_node, "difference", helpers.difference_name(base))
        if new:
            created.append(diff)
        outputs = [(enh, result.enhanced, "enhanced"), (diff, result.difference, "difference")]
        unc_map = (getattr(result, "extras", None) or {}).get("uncertainty")
        if unc_map is not None:
            unc, new = _new_or_reused(scene, uncertainty_node, input_node, "uncertainty",
                                      helpers.uncertainty_name(base))
            if new:
                created.append(unc)
            outputs.append((unc, unc_map, "uncertainty"))
        if len({id(node) for node, _, _ in outputs}) < len(outputs):
            raise InputError("enhanced, difference and uncertainty outputs must be different nodes")
        for node, vol, role in outputs:
            was_modifying = node.StartModify()
            set_node_from_volume(node, vol)
            node.SetAttribute(ATTR_ROLE, role)
            node.SetAttribute(ATTR_INPUT, input_node.GetID())
            node.SetAttribute(ATTR_MODEL, str(getattr(result, "model", "")))
            node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
            node.EndModify(was_modifying)
            _place_in_hierarchy(scene, input_node, node)
        _copy_display(input_node, enh)
        _show_difference(scene, diff, result.difference)
        if unc_map is not None:
            _show_uncertainty(scene, outputs[2][0], unc_map)
    except BaseException:
        for node in created:
            scene.RemoveNode(node)
        raise
    return tuple(node for node, _, _ in outputs)


def compute(
    input_node: Any,
    *,
    task: str,
    model: str = "auto",
    scale: Any = 1,
    device: str = "auto",
    modality: str = "auto",
    tile: Optional[int] = None,
    precision: str = "auto",
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelFn] = None,
    uncertainty: bool = False,
    adapt: float = 0.0,
) -> Any:
    """Read the node (scene thread) and run the engine; returns the EnhanceResult, touching no node."""
    return compute_volume(volume_from_node(input_node), task=task, model=model, scale=scale, device=device,
                          modality=modality, tile=tile, precision=precision, progress=progress, cancel=cancel,
                          uncertainty=uncertainty, adapt=adapt)


def compute_volume(volume: Volume, *, task: str, model: str = "auto", scale: Any = 1, device: str = "auto",
                   modality: str = "auto", tile: Optional[int] = None, precision: str = "auto",
                   progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                   uncertainty: bool = False, adapt: float = 0.0) -> Any:
    """The engine call alone (safe in a worker thread: no MRML access). ``adapt``: seconds of self-supervised
    adaptation to this volume first (engine.adapt; 0 = off)."""
    if task not in helpers.TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(helpers.TASKS)}")
    if modality == "auto" and volume.metadata.get("modality"):
        modality = volume.metadata["modality"]
    result = _engine_call(volume, task=task, model=model, modality=modality, scale=normalised_scale(task, scale),
                          device=device, tile=tile, precision=precision, progress=progress, cancel=cancel,
                          uncertainty=uncertainty, adapt=adapt)
    # A cancel that arrives during the last tile still wins: the user asked for the scene to stay as it was.
    if cancel is not None and cancel():
        raise CancelledError("cancelled by the user")
    for msg in getattr(result, "messages", []) or []:
        logger.warning("%s", msg)
    return result


def enhance_volume_node(
    input_node: Any,
    *,
    task: str,
    model: str = "auto",
    scale: Any = 1,
    device: str = "auto",
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelFn] = None,
    enhanced_node: Any = None,
    difference_node: Any = None,
    modality: str = "auto",
    tile: Optional[int] = None,
    precision: str = "auto",
    uncertainty: bool = False,
    uncertainty_node: Any = None,
    show_uncertainty: bool = False,
    adapt: float = 0.0,
) -> tuple[Any, ...]:
    """Enhance ``input_node`` (blocking) and return (enhanced, difference) volume nodes; with ``uncertainty=True``
    (enhanced, difference, uncertainty): the expected absolute error per voxel, shown with Inferno colours from 0
    to its 99th percentile, and with ``show_uncertainty`` overlaid on the enhanced volume in every slice view.

    Outputs are ``enhanced_node``/``difference_node`` when given, else the nodes an earlier run made for the same
    input and name, else new nodes named ``<input>_SRx2`` / ``<input>_denoised`` and ``<input>_difference``.
    They keep the input's parent transform; the enhanced one its window/level; the difference map (enhanced minus
    the input resampled to the output grid) gets the DivergingBlueRed colours and a window symmetric about 0.
    Raises InputError for bad input and CancelledError when ``cancel()`` returns True; either way no node is added
    or changed.
    """
    result = compute(input_node, task=task, model=model, scale=scale, device=device, modality=modality, tile=tile,
                     precision=precision, progress=progress, cancel=cancel, uncertainty=uncertainty, adapt=adapt)
    nodes = apply_result(input_node, result, task=task, scale=normalised_scale(task, scale),
                         enhanced_node=enhanced_node, difference_node=difference_node,
                         uncertainty_node=uncertainty_node)
    if uncertainty and show_uncertainty:
        show_uncertainty_overlay(nodes[0], nodes[2])
    return nodes
