"""Pure helpers behind the Slicer panel: choice lists, scale rules, output names, layout XML, dependency checks,
progress and log text.

Nothing here imports slicer, qt, vtk or torch (only the light parts of the library), so all of it is tested with
plain pytest and the panel's setup() stays fast; the scripted module (MedSREnhance/MedSREnhance.py) only binds
these to widgets.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("sr", "denoise", "motion")
TASK_LABELS: dict[str, str] = {"sr": "Super-resolution", "denoise": "Denoising",
                               "motion": "Motion artifact reduction"}
SAME_GRID_SUFFIX: dict[str, str] = {"denoise": "denoised", "motion": "motioncorrected"}  # tasks that keep the grid
SCALE_MODES: tuple[str, ...] = ("isotropic", "per-axis", "through-plane")
ISOTROPIC_FACTORS: tuple[int, ...] = (2, 3, 4)
AXES: tuple[str, ...] = ("i", "j", "k")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
MAX_FACTOR = 8.0

# Custom layout id: above Slicer's built-in ids (< 1000) and away from the common user slots used by other
# extensions, so registering it never replaces someone else's layout.
LAYOUT_ID = 5301
VIEW_NAMES: tuple[str, str, str] = ("MedSRInput", "MedSREnhanced", "MedSRDifference")
VIEW_LABELS: tuple[str, str, str] = ("In", "SR", "Diff")
VIEW_COLORS: tuple[str, str, str] = ("#8C8C8C", "#5D8C3E", "#B04A4A")


@dataclass(frozen=True)
class ModelChoice:
    name: str
    label: str
    summary: str


def model_choices(task: str, registry: Optional[dict[str, Any]] = None) -> list[ModelChoice]:
    """Entries of the model combo for ``task``: "auto" first, then learned models, then classical ones.

    ``registry`` defaults to MedSREnhanceLib.models.registry.REGISTRY.
    """
    if registry is None:
        from ..models.registry import REGISTRY as registry  # noqa: N811 - local alias of the static registry
    specs = [s for s in registry.values() if s.task == task]
    specs.sort(key=lambda s: (s.kind != "learned", s.name))
    out = [ModelChoice("auto", "auto (best bundled model)", "The best bundled model for the task and modality; "
                       "a classical method when no trained model fits.")]
    for spec in specs:
        card = spec.card_data() if hasattr(spec, "card_data") else {}
        out.append(ModelChoice(spec.name, f"{spec.name} ({spec.kind})", card_summary(spec.summary, card)))
    return out


def card_summary(summary: str, card: Any) -> str:
    """One line for the panel from a model card: size, training data and the first measured metrics."""
    if not isinstance(card, dict):
        return summary
    parts = [summary]
    if isinstance(card.get("parameters"), (int, float)):
        parts.append(f"{card['parameters'] / 1e6:.2g} M parameters")
    volumes = (card.get("training") or {}).get("volumes") if isinstance(card.get("training"), dict) else None
    if isinstance(volumes, (list, tuple)) and volumes:
        parts.append(f"trained on {len(volumes)} volumes")
    numbers = _numbers(card.get("metrics"))
    if numbers:
        parts.append("measured: " + ", ".join(f"{k} {v:.3g}" for k, v in numbers[:3]))
    risk = card.get("hallucination_risk")
    if isinstance(risk, str) and risk:  # a GAN's card: its first sentence belongs in front of the radiologist
        parts.append("hallucination risk: " + risk.split(". ")[0].rstrip(".") + ".")
    return " | ".join(parts)


def _numbers(tree: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, number) pairs of a nested metrics dict, in order."""
    out: list[tuple[str, float]] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((name, float(value)))
            else:
                out.extend(_numbers(value, name))
    return out


# Python packages a classical method needs beyond what Slicer bundles (numpy, SimpleITK, scipy).
# nlmeans: scikit-image's estimate_sigma needs PyWavelets.
METHOD_PACKAGES: dict[str, tuple[str, ...]] = {"nlmeans": ("scikit-image", "PyWavelets")}
IMPORT_NAMES: dict[str, str] = {"scikit-image": "skimage", "PyWavelets": "pywt"}
AUTO_CLASSICAL: dict[str, str] = {"sr": "bspline", "denoise": "nlmeans", "motion": "nlmeans"}  # select_model's fallback


def needs_torch(task: str, model: str, registry: Optional[dict[str, Any]] = None) -> bool:
    """Whether running ``model`` for ``task`` may import torch ("auto" may pick any learned model of the task)."""
    if registry is None:
        from ..models.registry import REGISTRY as registry  # noqa: N811
    if model == "auto":
        return any(s.task == task and s.kind == "learned" for s in registry.values())
    spec = registry.get(model)
    return spec is not None and spec.kind == "learned"


def required_packages(task: str, model: str, registry: Optional[dict[str, Any]] = None) -> list[str]:
    """pip requirements (other than torch, which comes from the PyTorch extension) the run may import."""
    if registry is None:
        from ..models.registry import REGISTRY as registry  # noqa: N811
    if model == "auto":
        # "auto" falls back to the classical method only for a modality no learned model of the task serves
        # (denoising: both MR and CT have one, so no scikit-image; SR of CT uses B-spline, which needs nothing).
        learned = {m for s in registry.values() if s.task == task and s.kind == "learned" for m in s.modalities}
        names = [] if {"mr", "ct"} <= learned else [AUTO_CLASSICAL.get(task, "")]
    else:
        names = [model]
    out: list[str] = []
    for name in names:
        spec = registry.get(name)
        for pkg in METHOD_PACKAGES.get(getattr(spec, "method", "") or "", ()):
            if pkg not in out:
                out.append(pkg)
    return out


def missing_packages(requirements: Sequence[str]) -> list[str]:
    """The requirements whose import package is not importable (checked without importing it)."""
    import importlib.util

    return [r for r in requirements
            if importlib.util.find_spec(IMPORT_NAMES.get(r, r).replace("-", "_")) is None]


def device_choices(cuda_names: Sequence[str] = (), mps: bool = False) -> list[tuple[str, str]]:
    """(value, label) pairs for the device combo: auto, cpu, one cuda:N per GPU, mps if present."""
    out = [("auto", "auto (GPU if available)"), ("cpu", "cpu")]
    out += [(f"cuda:{i}", f"cuda:{i} ({name})") for i, name in enumerate(cuda_names)]
    if mps:
        out.append(("mps", "mps (Apple GPU)"))
    return out


def torch_summary(torch_module: Any) -> str:
    """One line naming torch, its CUDA build and the GPUs, for the panel (a CUDA mismatch is the top GPU complaint)."""
    version = getattr(torch_module, "__version__", "?")
    cuda_build = getattr(getattr(torch_module, "version", None), "cuda", None)
    line = f"torch {version}, CUDA build {cuda_build or 'none (CPU only)'}"
    try:
        if torch_module.cuda.is_available():
            names = [torch_module.cuda.get_device_name(i) for i in range(torch_module.cuda.device_count())]
            line += f"; GPUs: {', '.join(names)}"
        elif cuda_build:
            line += "; no usable GPU found (driver too old or no device)"
        if not torch_module.cuda.is_available():  # what "auto" precision does on this CPU (inference.autocast_dtype)
            from ..engine.inference import cpu_has_amx  # torch is loaded by now: the caller passed it in

            line += "; CPU inference in bf16 (AMX)" if cpu_has_amx(torch_module) else "; CPU inference in fp32"
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install must not break the panel
        line += f"; CUDA query failed: {exc}"
    return line


def through_plane_axis(spacing: Sequence[float]) -> int:
    """The index axis (0=i, 1=j, 2=k) with the coarsest spacing: the slice direction of a 2D-acquired scan."""
    return int(np.argmax(np.asarray(spacing, dtype=float)))


def suggest_through_plane(spacing: Sequence[float]) -> tuple[int, float]:
    """(axis, factor) that makes the coarsest axis as fine as the in-plane ones (factor rounded to 0.5, 1..8).

    1.0 means the volume is already near isotropic and through-plane SR would add nothing.
    """
    sp = np.asarray(spacing, dtype=float)
    axis = through_plane_axis(sp)
    in_plane = np.delete(sp, axis)
    ratio = float(sp[axis] / max(float(in_plane.min()), 1e-9))
    factor = min(MAX_FACTOR, max(1.0, round(ratio * 2.0) / 2.0))
    return axis, factor


def scale_from_choice(
    mode: str,
    *,
    isotropic_factor: float = 2,
    per_axis: Sequence[float] = (1.0, 1.0, 1.0),
    axis: int | str = "auto",
    through_plane_factor: float = 2.0,
    spacing: Optional[Sequence[float]] = None,
) -> tuple[float, float, float]:
    """The (i, j, k) scale the panel's scale controls describe. ``axis="auto"`` needs ``spacing``."""
    if mode == "isotropic":
        f = float(isotropic_factor)
        return (f, f, f)
    if mode == "per-axis":
        vals = tuple(float(v) for v in per_axis)
        if len(vals) != 3:
            raise ValueError(f"per-axis scale needs 3 values, got {vals}")
        return vals  # type: ignore[return-value]
    if mode == "through-plane":
        if axis == "auto":
            if spacing is None:
                raise ValueError("through-plane axis 'auto' needs the input spacing")
            ax = through_plane_axis(spacing)
        else:
            ax = AXES.index(axis) if isinstance(axis, str) else int(axis)
        out = [1.0, 1.0, 1.0]
        out[ax] = float(through_plane_factor)
        return (out[0], out[1], out[2])
    raise ValueError(f"unknown scale mode {mode!r}; expected one of {SCALE_MODES}")


def _fmt(v: float) -> str:
    return f"{v:g}"


def enhanced_name(input_name: str, task: str, scale: float | Sequence[float] = 1) -> str:
    """``<input>_SRx2`` (isotropic), ``<input>_SRx1x1x3`` (per axis, i,j,k), ``<input>_denoised`` or
    ``<input>_motioncorrected``."""
    if task in SAME_GRID_SUFFIX:
        return f"{input_name}_{SAME_GRID_SUFFIX[task]}"
    s = (float(scale),) * 3 if isinstance(scale, (int, float)) else tuple(float(v) for v in scale)
    if len(s) == 1:
        s = s * 3
    tag = _fmt(s[0]) if s[0] == s[1] == s[2] else "x".join(_fmt(v) for v in s)
    return f"{input_name}_SRx{tag}"


def difference_name(input_name: str) -> str:
    return f"{input_name}_difference"


def uncertainty_name(input_name: str) -> str:
    return f"{input_name}_uncertainty"


def sequential_window(array: np.ndarray, percentile: float = 99.0) -> tuple[float, float]:
    """(window, level) from 0 to the ``percentile`` of a non-negative map (the uncertainty's display)."""
    top = float(np.percentile(np.asarray(array, dtype=np.float32), percentile)) if np.size(array) else 0.0
    top = top if top > 0 else 1.0
    return top, top / 2.0


def symmetric_window(array: np.ndarray, percentile: float = 99.5) -> tuple[float, float]:
    """(window, level) centred on 0 that covers ``percentile`` of |difference| (so sign reads as colour)."""
    a = np.abs(np.asarray(array, dtype=np.float32))
    a = a[np.isfinite(a)]
    half = float(np.percentile(a, percentile)) if a.size else 0.0
    if not half > 0:
        half = float(a.max()) if a.size and a.max() > 0 else 1.0
    return 2.0 * half, 0.0


def layout_xml(orientation: str = "Axial") -> str:
    """Slicer layout description: input | enhanced | difference, three slice views in one row."""
    views = []
    for name, label, color in zip(VIEW_NAMES, VIEW_LABELS, VIEW_COLORS):
        views.append(
            "  <item>\n"
            f'   <view class="vtkMRMLSliceNode" singletontag="{name}">\n'
            f'    <property name="orientation" action="default">{orientation}</property>\n'
            f'    <property name="viewlabel" action="default">{label}</property>\n'
            f'    <property name="viewcolor" action="default">{color}</property>\n'
            "   </view>\n"
            "  </item>\n"
        )
    return '<layout type="horizontal">\n' + "".join(views) + "</layout>\n"


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


STAGE_LABELS: dict[str, str] = {"starting": "Starting the engine", "loading": "Loading the model",
                                 "inference": "Enhancing", "finishing": "Computing the difference map"}


def format_progress(progress: Any) -> str:
    """"Enhancing 3/16, 0:07 elapsed, about 0:21 left" from an engine Progress (done, total, elapsed, eta,
    message, stage); before the first unit of work, what the engine is doing ("Loading the model, 0:02 elapsed")."""
    stage = getattr(progress, "stage", "")
    label = STAGE_LABELS.get(stage, "Step" if not stage else stage.capitalize())
    text = f"{label} {progress.done}/{progress.total}" if progress.total else label
    text += f", {format_duration(progress.elapsed)} elapsed"
    if progress.eta is not None and progress.total:
        text += f", about {format_duration(progress.eta)} left"
    message = getattr(progress, "message", "")
    if message and stage not in ("starting", "loading", "finishing"):  # those messages repeat the label
        text += f" - {message}"
    return text


def format_log_line(elapsed: float, text: str) -> str:
    """One line of the panel's log box: "[0:07] tiled inference on cpu, tile 64, halo 8"."""
    return f"[{format_duration(elapsed)}] {text}"


MINIMUM_TORCH_VERSION = "2.1"


def version_tuple(version: str) -> tuple[int, ...]:
    """(2, 13, 0) from "2.13.0+cpu" or "2.6.0a0": the leading numeric release parts only."""
    out = []
    for part in version.split("+")[0].split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
        if digits != part:
            break
    return tuple(out)


def torch_version_ok(version: Optional[str], minimum: str = MINIMUM_TORCH_VERSION) -> bool:
    return bool(version) and version_tuple(version) >= version_tuple(minimum)  # type: ignore[arg-type]


def installed_torch_version() -> Optional[str]:
    """The installed torch's version from its metadata, without importing it (an import costs seconds and, for a
    broken install, can lock files a reinstall must replace); None when torch is not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class DependencyPlan:
    """What a run of (task, model) needs that is not there: prompts are shown only for these."""
    torch: str  # "" (not needed or fine), "missing" or "too old"
    torch_version: Optional[str]
    packages: tuple[str, ...]  # pip requirements other than torch that are not importable

    @property
    def ready(self) -> bool:
        return not self.torch and not self.packages


def dependency_plan(task: str, model: str, *, torch_version: Optional[str] = None, check_torch: bool = True,
                    registry: Optional[dict[str, Any]] = None) -> DependencyPlan:
    """Which dependencies the selected model is missing. ``torch_version``: the installed one (default: read
    from the package metadata); ``check_torch=False`` skips torch (e.g. the caller forces it)."""
    needs = check_torch and needs_torch(task, model, registry)
    version = (torch_version if torch_version is not None else installed_torch_version()) if needs else None
    state = "" if not needs else ("missing" if not version else ("" if torch_version_ok(version) else "too old"))
    return DependencyPlan(state, version, tuple(missing_packages(required_packages(task, model, registry))))
