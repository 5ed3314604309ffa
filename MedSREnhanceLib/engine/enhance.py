"""The high-level call: ``enhance(volume, task=..., model=..., scale=...) -> EnhanceResult``.

Flow: validate -> pick the model (registry; "auto" by task, modality and scale) -> run it (classical: SimpleITK /
scikit-image; learned: normalise, tiled network, denormalise) -> data-consistency projection (SR models that know
their acquisition) -> difference map on the output grid, residual on the input grid, optional uncertainty map.
Tasks are entries of ``TASKS`` and model kinds entries of ``RUNNERS`` so new ones (motion) slot in without
if-chains.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..core import normalise
from ..models import classical
from . import adapt as adaptation
from . import consistency as data_consistency
from . import guards
from . import uncertainty as uncertainty_map
from ..core.errors import CancelledError, InputError
from ..core.progress import CancelFn, Progress, ProgressFn
from ..models import registry
from ..models.registry import ModelSpec
from ..core.resample import resample_scale, resample_to
from ..core.volume import Scale, Volume, empty_like_resized, parse_scale, resized_geometry, validate

logger = logging.getLogger(__name__)

TASKS: dict[str, str] = {"sr": "super-resolution", "denoise": "denoising", "motion": "motion-artifact reduction"}
# Tasks that keep the grid, and the classical methods (by their registry task) that can serve them too: a filter
# is what a user would otherwise try on motion artifacts, and the bench compares against it.
SAME_GRID: dict[str, str] = {"denoise": "denoise", "motion": "denoise"}
# What auto's classical fallback cannot do (README, Motion: at its defaults NLM moved mr-motion-4 by -0.24..+0.05 dB)
FALLBACK_NOTE: dict[str, str] = {"motion": " (a smoothing filter: it does not undo motion and may lower fidelity)"}


@dataclass
class EnhanceResult:
    enhanced: Volume
    # the difference map, or the function computing it on first use (``difference``)
    _difference: Volume | Callable[[], Volume] = field(repr=False)
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
    # seconds per stage ("normalise", "network", "denormalise", "residual", ...): where the time went
    timings: dict[str, float] = field(default_factory=dict)
    dtype: str = "float32"  # the voxel type to store ``enhanced`` in (its values already fit it)
    # enhance(adapt=..., keep_adapted=True): the adapted network's state dict (None when not asked or not kept)
    adapted_weights: Optional[dict[str, Any]] = field(default=None, repr=False)

    @property
    def difference(self) -> Volume:
        """Enhanced minus the input resampled (cubic B-spline) onto the output grid. Computed on first use: the
        resampling takes seconds on a large SR output, and a CLI run without --difference never needs it."""
        if callable(self._difference):
            self._difference = self._difference()
        return self._difference

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
    classical_stand_in = spec.kind == "classical" and SAME_GRID.get(task) == spec.task
    if spec.task != task and not classical_stand_in:
        return False
    if task in SAME_GRID or spec.scale_mode == "any":
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
    candidates = [s for s in registry.LEARNED if s.auto and modality in s.modalities and serves(s, task, scale)]
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
    # CT scanner padding (-2048/-3024 HU outside the reconstruction circle) as air, as for the nets: smoothing and
    # interpolation would otherwise spread a 2000 HU step into the air next to it
    unpadded = guards.ct_padding_as_air(volume.array, ctx["modality"], ctx["messages"])
    with _timed(ctx, "classical"):
        out = classical.run(spec.method, volume.with_array(unpadded), scale, params)
    _report(ctx, 1, 1)
    return out


@contextlib.contextmanager
def _timed(ctx: dict[str, Any], stage: str) -> Iterator[None]:
    """Add the seconds of the block to ``ctx["timings"][stage]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        ctx["timings"][stage] = ctx["timings"].get(stage, 0.0) + time.perf_counter() - t0


def _report(ctx: dict[str, Any], done: int, total: int, stage: str = "inference", message: str = "",
            eta: Optional[float] = None) -> None:
    if ctx["cancel"] is not None and ctx["cancel"]():
        raise CancelledError("cancelled by the user")
    if ctx["progress"] is not None:
        elapsed = time.perf_counter() - ctx["t0"]
        if eta is None and total and done == total:
            eta = 0.0
        ctx["progress"](Progress(done, total, elapsed, eta, message=message, stage=stage))


class _WithSpread:
    """A net that returns (N, 2, ...): its members fused as its forward does (mean, or ``fuse``) and their std."""

    def __init__(self, net: Any) -> None:
        self.net = net

    def __call__(self, x: Any) -> Any:
        import torch

        members = self.net.members(x)  # (N, n, ...)
        fused = self.net.fuse(members) if hasattr(self.net, "fuse") else members.mean(dim=1, keepdim=True)
        return torch.cat([fused, members.std(dim=1, unbiased=False, keepdim=True)], 1)


def _nonnegative(spec: ModelSpec, volume: Volume, result: Volume) -> Volume:
    """Magnitude MR images stay non-negative."""
    if spec.normalisation.startswith("mr") and float(volume.array.min()) >= 0:
        return result.with_array(np.maximum(result.array, 0))
    return result


def _run_learned(spec: ModelSpec, volume: Volume, scale: Scale, ctx: dict[str, Any]) -> Volume:
    """Normalise, run the tiled network, denormalise; with ``ctx["uncertainty"]`` also puts the members' spread
    (intensity units, output grid) in ``ctx["spread"]``."""
    # Loading (the torch import, weights, hash check) takes seconds on a cold start: say so before it begins.
    _report(ctx, 0, 0, "loading", f"loading {spec.name}")
    from .inference import choose_device  # imports torch: after the "loading" report

    with _timed(ctx, "load"):
        try:
            device = choose_device(ctx["device"])
        except (ValueError, RuntimeError) as exc:
            raise InputError(str(exc)) from None
        net = _load_network(spec.name)
    with _ensemble_size(net, ctx["ensemble"], spec.name, ctx["messages"] if ctx["ensemble_asked"] else []):
        return _run_network(net, spec, volume, scale, ctx, device)


@contextlib.contextmanager
def _ensemble_size(net: Any, n: Optional[int], name: str, messages: list[str]) -> Iterator[None]:
    """Run the cached network with ``n`` flip-ensemble members instead of its own number, then restore it.

    Speed against quality: every member is one more full pass (the benchmarks/README_models.md table gives the cost
    in MACs; the bench the quality of each size)."""
    full = getattr(net, "ensemble", None)
    if n is None or n == full:
        yield
        return
    if full is None:
        messages.append(f"{name} has no flip ensemble: --ensemble does not apply")
        yield
        return
    from ..models.ensemble import check_ensemble  # torch: only here, where a network is loaded

    try:
        net.ensemble = check_ensemble(n, int(getattr(net, "spatial_dims", 3)))
    except ValueError as exc:
        raise InputError(f"--ensemble: {exc}") from None
    messages.append(f"flip ensemble of {n} instead of the model's {full}")
    try:
        yield
    finally:
        net.ensemble = full


def _run_network(net: Any, spec: ModelSpec, volume: Volume, scale: Scale, ctx: dict[str, Any], device: Any) -> Volume:
    import torch

    from .inference import autocast_dtype, place, precision_name

    halo = int(getattr(net, "tile_halo", getattr(net, "halo", 16)))  # tile_halo: where the net allows less
    with _timed(ctx, "normalise"):
        unpadded = guards.ct_padding_as_air(volume.array, spec.normalisation, ctx["messages"])
        array, norm = normalise.forward(guards.clip_outliers(unpadded, ctx["messages"]), spec.normalisation)
    if "noise_percent" in norm:
        logger.info("noise level estimated: %.2f %% of the 99.5th percentile", norm["noise_percent"])
    elif "noise_hu" in norm:
        logger.info("noise level estimated: %.1f HU (soft tissue)", norm["noise_hu"])
    if ctx["adapt"]:
        net = _adapted(net, spec, array, volume, scale, ctx, device)

    def make_net(dev: torch.device) -> Any:
        moved = place(net, dev)
        return _WithSpread(moved) if ctx["uncertainty"] else moved

    # peak floats per voxel a window reads (feature maps and output); unknown nets: 64 channels x 3 + output
    floats = float(getattr(net, "working_floats", 3 * 64 + 4 * max(spec.scales or (1.0,)) ** 3))
    common = dict(halo=halo, floats_per_voxel=floats, device=device, precision=ctx["precision"], tile=ctx["tile"],
                  progress=ctx["progress"], cancel=ctx["cancel"], messages=ctx["messages"],
                  align=int(getattr(net, "shift_multiple", 1)))
    out, grid, used, factor = _tiles(array, volume, spec, scale, make_net, common, ctx)
    with _timed(ctx, "denormalise"):
        result = _denormalise(out, grid, norm, volume, spec, scale, factor, ctx)
    ctx["device_used"] = str(used)
    ctx["precision_used"] = precision_name(autocast_dtype(used, ctx["precision"]))
    logger.info("ran on %s in %s", used, ctx["precision_used"])
    return result


def _adapted(net: Any, spec: ModelSpec, array: np.ndarray, volume: Volume, scale: Scale, ctx: dict[str, Any],
             device: Any) -> Any:
    """A copy of ``net`` fine-tuned on the normalised input for ``ctx["adapt"]`` seconds (engine.adapt), its
    weights kept in ``ctx["adapted_weights"]`` when asked; the cached network is left as it is."""
    budget = float(ctx["adapt"])

    def report(spent: float, message: str) -> None:
        _report(ctx, min(int(spent), int(budget)), int(budget), "adapting", message, eta=max(0.0, budget - spent))

    with _timed(ctx, "adapt"):
        tuned, info = adaptation.adapt(net, spec, array, volume, scale, budget, device, report)
    ctx["messages"].append(info.summary())
    if ctx["keep_adapted"] and info.kept:
        ctx["adapted_weights"] = {k: v.detach().cpu().clone() for k, v in tuned.state_dict().items()}
    return tuned


def _tiles(array: np.ndarray, volume: Volume, spec: ModelSpec, scale: Scale, make_net: Callable[[Any], Any],
           common: dict[str, Any], ctx: dict[str, Any]) -> tuple[np.ndarray, Volume, Any, int]:
    """The tiled network on the normalised array: (output, its grid, the device used, the integer factor run)."""
    from .inference import run_with_fallback

    factor = 1
    if spec.scale_mode == "none":
        with _timed(ctx, "network"):
            out, used = run_with_fallback(array, make_net, scale=(1, 1, 1), **common)
        grid = volume
    elif spec.scale_mode == "isotropic":
        factor = min(int(f) for f in spec.scales if f >= scale[0] - 1e-9)
        with _timed(ctx, "network"):
            out, used = run_with_fallback(array, make_net, scale=(factor,) * 3, **common)
        grid = empty_like_resized(volume, (factor,) * 3)
    elif spec.scale_mode == "axis":
        axis = next(i for i, s in enumerate(scale) if abs(s - 1.0) > 1e-9)  # index axis i/j/k
        with _timed(ctx, "resample"):
            grid = resample_scale(volume.with_array(array), scale, "bspline")
        dim = 2 - axis  # the array is (k, j, i)
        moved = np.moveaxis(grid.array, dim, 0)  # slice axis first: the network's D
        with _timed(ctx, "network"):
            out, used = run_with_fallback(np.ascontiguousarray(moved), make_net, scale=(1, 1, 1), **common)
        out = np.moveaxis(out, -3, -3 + dim)
    else:
        raise ValueError(f"model {spec.name} has an unknown scale mode {spec.scale_mode!r}")
    return out, grid, used, factor


def _denormalise(out: np.ndarray, grid: Volume, norm: dict[str, Any], volume: Volume, spec: ModelSpec,
                 scale: Scale, factor: int, ctx: dict[str, Any]) -> Volume:
    """Intensity units (and the spread, with an uncertainty map), resampled to a non-integer factor."""
    mean, spread = (out[0], out[1]) if ctx["uncertainty"] else (out, None)
    result = grid.with_array(normalise.inverse(mean, norm))
    if spread is not None:
        ctx["spread"] = grid.with_array((spread * norm["scale"]).astype(np.float32))
    if spec.scale_mode == "isotropic" and abs(factor - scale[0]) > 1e-9:
        ctx["messages"].append(f"ran the x{factor} model and resampled to x{scale[0]:g} (cubic B-spline)")
        target = empty_like_resized(volume, scale)
        result = resample_to(result, target, "bspline")
        if "spread" in ctx:
            ctx["spread"] = resample_to(ctx["spread"], target, "linear")
    return _nonnegative(spec, volume, result)


def _min_tile(spec: ModelSpec) -> int:
    """Smallest useful tile core: twice the net's halo (below it each tile computes more than 8x its own voxels
    again, for nothing) and 8 voxels in any case. Classical models run in one piece: 8."""
    if spec.kind != "learned":
        return 8
    return max(8, 2 * int(getattr(_load_network(spec.name), "halo", 16)))


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
    dtype: str = "float32",
    force: bool = False,
    uncertainty: bool = False,
    consistency: Optional[bool] = None,
    ensemble: Optional[int] = None,
    adapt: float = 0.0,
    keep_adapted: bool = False,
) -> EnhanceResult:
    """Enhance ``volume``; returns the enhanced volume (output grid), the difference map and ``extras``.

    ``scale`` is in index order (i, j, k): 2 is isotropic, (1, 1, 4) through-plane along k; non-integer factors
    are fine. ``task="denoise"`` and ``task="motion"`` keep the grid. ``params`` overrides a classical model's
    parameters.
    ``dtype``: "float32" (default: enhancement creates values between the input's levels, and the stored result
    should keep them) or "keep" (round and clip to ``volume.metadata["dtype"]``, the file's type; a message says
    how many voxels were clipped); ``result.dtype`` names the type to write. Integer volumes with few distinct
    values are refused as label maps unless ``force``.
    ``uncertainty``: add ``extras["uncertainty"]``, the expected absolute error per output voxel (learned models
    only). ``consistency``: project an SR model's output so that its acquisition model reproduces the input (None:
    the model's default, ``ModelSpec.consistency_default``).
    ``extras["residual"]`` (input grid) is always there when the output grid nests with the input's.
    ``ensemble``: flip-ensemble members of a learned model (None: the model's own number, 8 for the bundled
    models); fewer is proportionally faster (with the uncertainty map, the spread of that many members).
    ``adapt``: seconds to fine-tune a copy of a learned model on pairs made from this volume first (engine.adapt:
    SMORE for through-plane, ZSSR for isotropic SR; denoisers refuse it); 0 = off. ``keep_adapted``: put
    the adapted state dict in ``result.adapted_weights`` (otherwise it is dropped with the run).
    """
    t0 = time.perf_counter()
    validate(volume)
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if dtype not in ("float32", "keep"):
        raise InputError(f"unknown dtype {dtype!r}; use float32 or keep")
    named = None if model == "auto" else registry.get(model)  # an unknown name is the first thing to report
    factors = parse_scale(scale)
    if task in SAME_GRID and not _is_identity(factors):
        raise InputError(f"{TASKS[task]} keeps the grid: leave --scale at 1")
    if task == "sr" and (_is_identity(factors) or min(factors) < 1):
        raise InputError(f"super-resolution needs a scale >= 1 on every axis and > 1 on one: --scale 2 "
                         f"(isotropic) or --scale 1,1,4 (through-plane; scale= in Python), got "
                         f"{','.join(f'{s:g}' for s in factors)}; --task denoise keeps the grid")
    if modality == "auto":
        modality = infer_modality(volume)
    if modality not in ("mr", "ct"):
        raise InputError(f"unknown modality {modality!r}; use mr, ct or auto")
    if not force:
        guards.refuse_label_map(volume)
    messages: list[str] = []
    if named is None:
        spec = select_model(task, modality, factors)
        if spec.kind == "classical":
            messages.append(f"no bundled learned model for {TASKS[task]} of {modality.upper()} at scale "
                            f"{','.join(f'{s:g}' for s in factors)}: used {spec.summary}" + FALLBACK_NOTE.get(task, ""))
    else:
        spec = named
        if not serves(spec, task, factors):
            raise InputError(f"model {spec.name!r} does not serve {TASKS[task]} at scale "
                             f"{','.join(f'{s:g}' for s in factors)}")
    if tile is not None and tile < _min_tile(spec):
        raise InputError(f"tile {tile} is too small for {spec.name}: at least {_min_tile(spec)} voxels (twice its "
                         "halo; smaller tiles recompute their surroundings many times over), or leave it out")
    if adapt < 0 or not math.isfinite(adapt):
        raise InputError(f"adapt is a time budget in seconds (>= 0), got {adapt}")
    if adapt and (why := adaptation.refusal(spec)):
        raise InputError(why)
    if uncertainty and spec.kind == "classical":
        raise InputError(f"uncertainty is not available for classical model {spec.name}")
    if uncertainty and not hasattr(_load_network(spec.name), "members"):
        raise InputError(f"uncertainty is not available for model {spec.name}: its network has no ensemble members")
    if spec.kind == "classical" and (device not in ("auto", "cpu") or tile is not None):
        messages.append(f"{spec.name} is a classical method: it runs on the CPU in one piece, so the device and "
                        "tile options do not apply")
    total_voxels = math.prod(resized_geometry(volume, factors)[0])
    logger.info("enhance: %s with %s, scale %s, %d output voxels", task, spec.name, factors, total_voxels)
    reports: list[Progress] = []

    def tracked(p: Progress) -> None:
        reports[:] = [p]
        progress(p)  # type: ignore[misc] - only installed when progress is given

    ctx: dict[str, Any] = {"device": device, "tile": tile, "precision": precision,
                           "progress": tracked if progress is not None else None,
                           "cancel": cancel, "messages": messages, "params": params, "t0": t0,
                           "device_used": "cpu", "precision_used": "", "uncertainty": uncertainty,
                           # a plain run uses the model's chosen number of members; an uncertainty map the full
                           # ensemble its calibration was fitted with (unless asked otherwise)
                           "ensemble": ensemble if ensemble is not None or uncertainty else spec.default_ensemble,
                           "ensemble_asked": ensemble is not None, "timings": {}, "adapt": float(adapt),
                           "keep_adapted": keep_adapted, "modality": modality}
    logger.info("model %s: %s", spec.name, spec.summary)
    enhanced = RUNNERS[spec.kind](spec, volume, factors, ctx)
    kind = spec.acquisition or data_consistency.default_acquisition(modality, factors)
    if task == "sr":  # periodic k-space for a whole field of view, mirrored edges for a crop: what the output fits
        kind = data_consistency.best_fit(enhanced, volume, factors, kind)
    if consistency is None:
        consistency = spec.consistency_default
    if task == "sr" and consistency and spec.acquisition:
        with _timed(ctx, "consistency"):
            enhanced = _project(volume, enhanced, factors, kind, messages)
    enhanced = guards.restore_ct_padding(volume, enhanced, spec.normalisation if spec.kind == "learned" else modality)
    last = reports[-1] if reports else None  # what the run finished: the final report keeps its count
    done = last.total if last is not None and last.total else 1
    _report(ctx, done, done, "finishing", "residual map")
    out_dtype = str(volume.metadata.get("dtype", "float32")) if dtype == "keep" else "float32"
    enhanced = guards.keep_dtype(enhanced, out_dtype, messages)

    def difference() -> Volume:
        reference = volume if task in SAME_GRID else resample_to(volume, enhanced, "bspline")
        return enhanced.with_array(enhanced.array - reference.array)

    extras: dict[str, Volume] = {}
    with _timed(ctx, "residual"):
        residual = data_consistency.residual(volume, enhanced, task, factors, kind)
    if residual is not None:
        extras["residual"] = residual
    if uncertainty:
        extras["ensemble_spread"] = ctx["spread"]
        with _timed(ctx, "uncertainty"):
            extras["uncertainty"] = uncertainty_map.estimate(
                enhanced, ctx["spread"], volume, uncertainty_constants(spec, messages), factor=max(factors))
    return EnhanceResult(enhanced, difference, spec.name, task, factors, ctx["device_used"],
                         time.perf_counter() - t0, messages, extras, precision=ctx["precision_used"],
                         dtype=out_dtype, timings=ctx["timings"], adapted_weights=ctx.get("adapted_weights"))


def _project(volume: Volume, enhanced: Volume, factors: Scale, kind: str, messages: list[str]) -> Volume:
    """The data-consistency projection of an SR output under acquisition ``kind`` (unchanged, with a message, if
    the grids do not nest).

    Not clamped at 0 afterwards: the band limit rings slightly below 0 next to a zero background (as a zero-filled
    reconstruction does), and clamping it broke the consistency by 0.3-0.5 % RMS on the development volumes."""
    projected = data_consistency.project(enhanced, volume, factors, kind)
    if projected is None:
        messages.append("data consistency skipped: the output grid does not nest with the input grid at this scale")
        return enhanced
    if kind == "kspace-mirrored":
        messages.append("data consistency: the input looks cropped from a larger field of view (the output fits "
                        "k-space truncation with mirrored edges better than a periodic one), projected with that")
    return projected


def uncertainty_constants(spec: ModelSpec, messages: Optional[list[str]] = None) -> dict[str, float]:
    """A learned model's calibration from its card ("uncertainty"); uncalibrated: the raw ensemble spread."""
    constants = spec.card_data().get("uncertainty", {}).get("constants")
    if constants:
        return {k: float(v) for k, v in constants.items()}
    if messages is not None:
        messages.append(f"the uncertainty of {spec.name} is not calibrated: the map is the raw ensemble spread")
    return {"spread": 1.0, "scale": 1.0}
