"""The high-level call: ``enhance(volume, task=..., model=..., scale=...) -> EnhanceResult``.

Flow: validate -> pick the model (registry; "auto" by task, modality and scale) -> run it (classical: SimpleITK /
scikit-image; learned: normalise, tiled network, denormalise) -> data-consistency projection (SR models that know
their acquisition) -> difference map on the output grid, residual on the input grid, optional uncertainty map.
Tasks are entries of ``TASKS`` and model kinds entries of ``RUNNERS`` so new ones (motion) slot in without
if-chains.
"""
from __future__ import annotations

import functools
import importlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..core import normalise
from ..models import classical
from . import consistency as data_consistency
from . import uncertainty as uncertainty_map
from ..core.errors import CancelledError, InputError
from ..core.progress import CancelFn, Progress, ProgressFn
from ..models import registry
from ..models.registry import ModelSpec
from ..core.resample import resample_scale, resample_to
from ..core.volume import Scale, Volume, empty_like_resized, parse_scale, resized_geometry, validate

logger = logging.getLogger(__name__)

TASKS: dict[str, str] = {"sr": "super-resolution", "denoise": "denoising"}


@dataclass
class EnhanceResult:
    enhanced: Volume
    difference: Volume  # enhanced minus the input resampled (cubic B-spline) onto the output grid
    model: str
    task: str
    scale: Scale
    device: str
    seconds: float
    messages: list[str] = field(default_factory=list)
    # "residual" (input grid: the input minus the output degraded back, or the removed noise), "uncertainty" and
    # "ensemble_spread" (output grid, when asked for)
    extras: dict[str, Volume] = field(default_factory=dict)
    precision: str = ""  # a learned model's forward-pass arithmetic: "fp32", "bf16" or "fp16" autocast

    @property
    def ran_on(self) -> str:
        """Device, and for a learned model its arithmetic: "cpu (bf16)", "cuda (fp16)", "cpu"."""
        return f"{self.device} ({self.precision})" if self.precision else self.device


def infer_modality(volume: Volume) -> str:
    """DICOM Modality when known, else CT if the volume holds air-like HU values (far below 0), else MR."""
    tag = str(volume.metadata.get("modality", "")).upper()
    if tag in ("CT", "MR"):
        return tag.lower()
    low = float(np.percentile(volume.array, 1))
    return "ct" if low < -500 else "mr"


def _is_identity(scale: Scale) -> bool:
    return all(abs(s - 1.0) < 1e-9 for s in scale)


def serves(spec: ModelSpec, task: str, scale: Scale) -> bool:
    """Whether ``spec`` can run ``task`` at ``scale`` (in index order)."""
    if spec.task != task:
        return False
    if task == "denoise" or spec.scale_mode == "any":
        return True
    if spec.scale_mode == "isotropic":
        # One integer model serves isotropic factors up to its own (finer ones are resampled after it).
        return len(set(scale)) == 1 and 1 < scale[0] <= max(spec.scales)
    if spec.scale_mode == "axis":
        up = [s for s in scale if abs(s - 1.0) > 1e-9]
        return len(up) == 1 and spec.scale_min - 1e-9 <= up[0] <= spec.scale_max + 1e-9
    return False


def select_model(task: str, modality: str, scale: Scale) -> ModelSpec:
    """Best bundled model for the request: a learned one that serves it, else the classical default."""
    candidates = [s for s in registry.LEARNED if modality in s.modalities and serves(s, task, scale)]
    if candidates:
        # Isotropic: the smallest integer factor >= the request (least resampling after the network).
        return min(candidates, key=lambda s: max(s.scales) if s.scales else 0)
    return registry.get("bspline" if task == "sr" else "nlmeans")


@functools.lru_cache(maxsize=8)
def _load_network(name: str) -> Any:
    """Build a learned model and load its sha256-verified weights (cached per process)."""
    import torch

    spec = registry.get(name)
    module = importlib.import_module(f"..models.{spec.arch}", __package__)
    net = getattr(module, spec.builder)(**spec.kwargs)
    state = torch.load(registry.verified_weights_path(spec), map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


def _run_classical(spec: ModelSpec, volume: Volume, scale: Scale, ctx: dict[str, Any]) -> Volume:
    params = {**spec.params, **(ctx["params"] or {})}
    _report(ctx, 0, 1)
    out = classical.run(spec.method, volume, scale, params)
    _report(ctx, 1, 1)
    return out


def _report(ctx: dict[str, Any], done: int, total: int) -> None:
    if ctx["cancel"] is not None and ctx["cancel"]():
        raise CancelledError("cancelled by the user")
    if ctx["progress"] is not None:
        elapsed = time.perf_counter() - ctx["t0"]
        ctx["progress"](Progress(done, total, elapsed, 0.0 if done == total else None))


class _WithSpread:
    """A net that returns (N, 2, ...): its members' mean (the usual output) and their standard deviation."""

    def __init__(self, net: Any) -> None:
        self.net = net

    def __call__(self, x: Any) -> Any:
        import torch

        members = self.net.members(x)  # (N, n, ...)
        return torch.cat([members.mean(dim=1, keepdim=True), members.std(dim=1, unbiased=False, keepdim=True)], 1)


def _nonnegative(spec: ModelSpec, volume: Volume, result: Volume) -> Volume:
    """Magnitude MR images stay non-negative."""
    if spec.normalisation.startswith("mr") and float(volume.array.min()) >= 0:
        return result.with_array(np.maximum(result.array, 0))
    return result


def _run_learned(spec: ModelSpec, volume: Volume, scale: Scale, ctx: dict[str, Any]) -> Volume:
    """Normalise, run the tiled network, denormalise; with ``ctx["uncertainty"]`` also puts the members' spread
    (intensity units, output grid) in ``ctx["spread"]``."""
    import torch

    from .inference import autocast_dtype, choose_device, precision_name, run_with_fallback

    try:
        device = choose_device(ctx["device"])
    except (ValueError, RuntimeError) as exc:
        raise InputError(str(exc)) from None
    net = _load_network(spec.name)
    halo = int(getattr(net, "halo", 16))
    width = int(getattr(net, "width", 64))
    array, norm = normalise.forward(volume.array, spec.normalisation)

    def make_net(dev: torch.device) -> Any:
        return _WithSpread(net.to(dev)) if ctx["uncertainty"] else net.to(dev)

    def split(out: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        return (out[0], out[1]) if ctx["uncertainty"] else (out, None)

    common = dict(halo=halo, width=width, device=device, precision=ctx["precision"], tile=ctx["tile"],
                  progress=ctx["progress"], cancel=ctx["cancel"], messages=ctx["messages"],
                  align=int(getattr(net, "shift_multiple", 1)))
    factor = 1
    if spec.scale_mode == "none":
        out, used = run_with_fallback(array, make_net, scale=(1, 1, 1), **common)
        grid = volume
    elif spec.scale_mode == "isotropic":
        factor = min(int(f) for f in spec.scales if f >= scale[0] - 1e-9)
        out, used = run_with_fallback(array, make_net, scale=(factor,) * 3, **common)
        grid = empty_like_resized(volume, (factor,) * 3)
    elif spec.scale_mode == "axis":
        axis = next(i for i, s in enumerate(scale) if abs(s - 1.0) > 1e-9)  # index axis i/j/k
        grid = resample_scale(volume.with_array(array), scale, "bspline")
        dim = 2 - axis  # the array is (k, j, i)
        moved = np.moveaxis(grid.array, dim, 0)  # slice axis first: the network's D
        out, used = run_with_fallback(np.ascontiguousarray(moved), make_net, scale=(1, 1, 1), **common)
        out = np.moveaxis(out, -3, -3 + dim)
    else:
        raise ValueError(f"model {spec.name} has an unknown scale mode {spec.scale_mode!r}")
    mean, spread = split(out)
    result = grid.with_array(normalise.inverse(mean, norm))
    if spread is not None:
        ctx["spread"] = grid.with_array((spread * norm["scale"]).astype(np.float32))
    if spec.scale_mode == "isotropic" and abs(factor - scale[0]) > 1e-9:
        ctx["messages"].append(f"ran the x{factor} model and resampled to x{scale[0]:g} (cubic B-spline)")
        target = empty_like_resized(volume, scale)
        result = resample_to(result, target, "bspline")
        if "spread" in ctx:
            ctx["spread"] = resample_to(ctx["spread"], target, "linear")
    ctx["device_used"] = str(used)
    ctx["precision_used"] = precision_name(autocast_dtype(used, ctx["precision"]))
    return _nonnegative(spec, volume, result)


RUNNERS: dict[str, Callable[[ModelSpec, Volume, Scale, dict[str, Any]], Volume]] = {
    "classical": _run_classical,
    "learned": _run_learned,
}


def enhance(
    volume: Volume,
    *,
    task: str = "sr",
    model: str = "auto",
    modality: str = "auto",
    scale: float | str | tuple[float, ...] = 1,
    device: str = "auto",
    tile: Optional[int] = None,
    precision: str = "auto",
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelFn] = None,
    params: Optional[dict[str, Any]] = None,
    uncertainty: bool = False,
    consistency: Optional[bool] = None,
) -> EnhanceResult:
    """Enhance ``volume``; returns the enhanced volume (output grid), the difference map and ``extras``.

    ``scale`` is in index order (i, j, k): 2 is isotropic, (1, 1, 4) through-plane along k; non-integer factors
    are fine. ``task="denoise"`` keeps the grid. ``params`` overrides a classical model's parameters.
    ``uncertainty``: add ``extras["uncertainty"]``, the expected absolute error per output voxel (learned models
    only). ``consistency``: project an SR model's output so that its acquisition model reproduces the input (None:
    the model's default, ``ModelSpec.consistency_default``).
    ``extras["residual"]`` (input grid) is always there when the output grid nests with the input's.
    """
    t0 = time.perf_counter()
    validate(volume)
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    factors = parse_scale(scale)
    if task == "denoise" and not _is_identity(factors):
        raise InputError("denoising keeps the grid: leave --scale at 1")
    if task == "sr" and (_is_identity(factors) or min(factors) < 1):
        raise InputError(f"super-resolution needs a scale >= 1 on every axis and > 1 on one, got {factors}")
    if modality == "auto":
        modality = infer_modality(volume)
    if modality not in ("mr", "ct"):
        raise InputError(f"unknown modality {modality!r}; use mr, ct or auto")
    if tile is not None and tile < 8:
        raise InputError(f"tile must be at least 8 voxels, got {tile}")
    messages: list[str] = []
    if model == "auto":
        spec = select_model(task, modality, factors)
        if spec.kind == "classical":
            messages.append(f"no bundled learned model for {TASKS[task]} of {modality.upper()} at scale "
                            f"{','.join(f'{s:g}' for s in factors)}: used {spec.summary}")
    else:
        spec = registry.get(model)
        if not serves(spec, task, factors):
            raise InputError(f"model {spec.name!r} does not serve {TASKS[task]} at scale "
                             f"{','.join(f'{s:g}' for s in factors)}")
    if uncertainty and spec.kind == "classical":
        raise InputError(f"uncertainty is not available for classical model {spec.name}")
    if uncertainty and not hasattr(_load_network(spec.name), "members"):
        raise InputError(f"uncertainty is not available for model {spec.name}: its network has no ensemble members")
    if spec.kind == "classical" and (device not in ("auto", "cpu") or tile is not None):
        messages.append(f"{spec.name} is a classical method: it runs on the CPU in one piece, so the device and "
                        "tile options do not apply")
    total_voxels = math.prod(resized_geometry(volume, factors)[0])
    logger.info("enhance: %s with %s, scale %s, %d output voxels", task, spec.name, factors, total_voxels)
    ctx: dict[str, Any] = {"device": device, "tile": tile, "precision": precision, "progress": progress,
                           "cancel": cancel, "messages": messages, "params": params, "t0": t0,
                           "device_used": "cpu", "precision_used": "", "uncertainty": uncertainty}
    enhanced = RUNNERS[spec.kind](spec, volume, factors, ctx)
    kind = spec.acquisition or data_consistency.default_acquisition(modality, factors)
    if consistency is None:
        consistency = spec.consistency_default
    if task == "sr" and consistency and spec.acquisition:
        enhanced = _project(spec, volume, enhanced, factors, messages)
    reference = volume if task == "denoise" else resample_to(volume, enhanced, "bspline")
    difference = enhanced.with_array(enhanced.array - reference.array)
    extras: dict[str, Volume] = {}
    residual = data_consistency.residual(volume, enhanced, task, factors, kind)
    if residual is not None:
        extras["residual"] = residual
    if uncertainty:
        extras["ensemble_spread"] = ctx["spread"]
        extras["uncertainty"] = uncertainty_map.estimate(enhanced, ctx["spread"], volume,
                                                         uncertainty_constants(spec, messages))
    return EnhanceResult(enhanced, difference, spec.name, task, factors, ctx["device_used"],
                         time.perf_counter() - t0, messages, extras, precision=ctx["precision_used"])


def _project(spec: ModelSpec, volume: Volume, enhanced: Volume, factors: Scale, messages: list[str]) -> Volume:
    """The data-consistency projection of an SR output (unchanged, with a message, if the grids do not nest).

    Not clamped at 0 afterwards: the band limit rings slightly below 0 next to a zero background (as a zero-filled
    reconstruction does), and clamping it broke the consistency by 0.3-0.5 % RMS on the development volumes."""
    projected = data_consistency.project(enhanced, volume, factors, spec.acquisition)
    if projected is None:
        messages.append("data consistency skipped: the output grid does not nest with the input grid at this scale")
        return enhanced
    return projected


def uncertainty_constants(spec: ModelSpec, messages: Optional[list[str]] = None) -> dict[str, float]:
    """A learned model's calibration from its card ("uncertainty"); uncalibrated: the raw ensemble spread."""
    constants = spec.card_data().get("uncertainty", {}).get("constants")
    if constants:
        return {k: float(v) for k, v in constants.items()}
    if messages is not None:
        messages.append(f"the uncertainty of {spec.name} is not calibrated: the map is the raw ensemble spread")
    return {"spread": 1.0, "scale": 1.0}
