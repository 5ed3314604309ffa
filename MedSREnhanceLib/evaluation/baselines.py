"""The classical comparators of a case, each tuned on the ground truth (the strongest honest version)."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core.volume import Scale, Volume, array_hash
from ..engine.enhance import SAME_GRID
from ..models import registry
from ..models.registry import ModelSpec
from . import metrics
from .cache import jsonable, load_volumes, save_volumes, source_hash
from .cases import BenchSettings, Case, central_block, crop_volume
from .scoring import Scorer, objectives

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


# Tuning grids per classical denoiser (SR interpolators have no free parameter). Ranges are wide enough that the
# optimum sits inside for 2-10 % Rician and 1e4-1e5 photons; a best value on the edge is flagged in the output.
TUNING_GRIDS: dict[str, list[dict[str, Any]]] = {
    "gaussian": [{"sigma": s} for s in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5)],
    # Diffusion time = iterations x time_step; one half step covers "less than one iteration".
    "anisotropic-diffusion": [{"iterations": i, "conductance": c, "time_step": t}
                              for i, t in ((1, 0.03125), (1, 0.0625), (2, 0.0625), (3, 0.0625), (5, 0.0625),
                                           (8, 0.0625), (13, 0.0625), (21, 0.0625))
                              for c in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)],
    # h is relative to the estimated noise sigma, which skimage also subtracts (2 sigma^2) from patch distances,
    # so good values sit well below 1. A small search window is often better on fine anatomy (and 5x faster).
    "nlmeans": [{"h_factor": h, "patch_size": 3, "patch_distance": d}
                for d in (2, 4) for h in (0.25, 0.35, 0.45, 0.6, 0.8, 1.0, 1.3, 1.7)],
}


# Expensive methods are tuned on a central block of the foreground, then run once on the whole (cropped) volume.
TUNE_ON_BLOCK = ("nlmeans", "anisotropic-diffusion")


RunFn = Callable[..., Any]


def run_method(inp: Volume, case: Case, model: str, params: Optional[dict[str, Any]], device: str) -> tuple[Volume, float, list[str]]:
    from ..engine.enhance import enhance

    t0 = time.perf_counter()
    result = enhance(inp, task=case.task, model=model, modality=case.modality,
                     scale=case.scale if case.task == "sr" else 1, device=device, params=params)
    return result.enhanced, time.perf_counter() - t0, list(result.messages)


def run_learned(inp: Volume, case: Case, model: str, device: str,
                consistency: Optional[bool] = None, ensemble: Optional[int] = None,
                adapt: float = 0.0, uncertainty: bool = True) -> tuple[Any, float]:
    """A learned model, by default with its uncertainty map (the trust figures; enhance then runs the model's full
    flip ensemble): the EnhanceResult and the seconds (with ``adapt``, the seconds include the adaptation)."""
    from ..engine.enhance import enhance

    t0 = time.perf_counter()
    result = enhance(inp, task=case.task, model=model, modality=case.modality,
                     scale=case.scale if case.task == "sr" else 1, device=device, uncertainty=uncertainty,
                     consistency=consistency, ensemble=ensemble, adapt=adapt)
    return result, time.perf_counter() - t0


def tune(case: Case, model: str, inp: Volume, scorer: Scorer, grid: Sequence[dict[str, Any]], device: str = "cpu",
         ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], float]:
    """Grid search of a classical model's parameters against the ground truth.

    Returns (best params per objective, every trial with its scores, seconds spent).
    """
    t0 = time.perf_counter()
    trials: list[dict[str, Any]] = []
    for params in grid:
        out, seconds, _ = run_method(inp, case, model, params, device)
        scores, _ = scorer.score(out)
        trials.append({"params": dict(params), "scores": scores, "seconds": seconds})
    best = {obj: max(trials, key=lambda t: t["scores"][obj])["params"] for obj in objectives(scorer.modality)}
    return best, trials, time.perf_counter() - t0


def _at_edge(grid: Sequence[dict[str, Any]], params: dict[str, Any]) -> bool:
    """Whether a tuned value lies on the boundary of its grid axis (the optimum may lie outside).

    Diffusion is judged by its diffusion time (iterations x time_step), the quantity the two parameters share.
    """
    def axes(p: dict[str, Any]) -> dict[str, Any]:
        q = dict(p)
        if "iterations" in q and "time_step" in q:
            q["diffusion_time"] = q.pop("iterations") * q.pop("time_step")
        return q

    grid_axes = [axes(g) for g in grid]
    for key, value in axes(params).items():
        values = sorted({g[key] for g in grid_axes})
        if len(values) > 2 and value in (values[0], values[-1]):
            return True
    return False


def _fourier_matrix(m: int, factor: float) -> np.ndarray:
    """(n, m) band-limited periodic interpolation from m LR samples to the n = m * factor HR voxel centres.

    LR voxel k sits at HR continuous index factor * k + (factor - 1) / 2 (extent-keeping grids), so HR voxel n is
    at LR coordinate (n - (factor - 1) / 2) / factor; the Nyquist pair gets half weight (as in simulate.resolution).
    """
    n = int(round(m * factor))
    u = (np.arange(n) - (factor - 1.0) / 2.0) / factor
    freqs = np.arange(0, m // 2 + 1)
    weights = np.where(freqs == 0, 1.0, 2.0)
    if m % 2 == 0:
        weights[-1] = 1.0
    d = u[:, None] - np.arange(m)[None, :]  # (n, m)
    return (np.cos(2.0 * np.pi * d[..., None] * freqs[None, None, :] / m) @ weights) / m


def fourier_zerofill(volume: Volume, scale: Scale) -> Volume:
    """Zero-filled k-space interpolation (sinc interpolation of the periodic band-limited signal) onto the
    extent-keeping grid of ``scale`` (integer or not; per axis)."""
    from ..core.volume import resized_geometry

    size, spacing, origin = resized_geometry(volume, scale)
    arr = volume.array.astype(np.float64)
    for axis, f in enumerate(scale):  # index axis i, j, k -> array axis 2, 1, 0
        if abs(f - 1.0) < 1e-9:
            continue
        dim = 2 - axis
        mat = _fourier_matrix(arr.shape[dim], f)[: size[axis]]
        arr = np.moveaxis(np.moveaxis(arr, dim, -1) @ mat.T, -1, dim)
    return Volume(arr.astype(np.float32), spacing, origin, volume.direction.copy(), dict(volume.metadata))


def comparators(case: Case) -> list[ModelSpec]:
    """The classical methods a user would otherwise run on the case: the task's own, or for a task that keeps the
    grid without classical methods of its own (motion), the same-grid filters that stand in for them."""
    task = SAME_GRID.get(case.task, case.task)
    return [s for s in registry.CLASSICAL if s.task == task and case.modality in s.modalities]


def classical_rows(case: Case, inp: Volume, gt: Volume, scorer: Scorer, settings: BenchSettings,
                   ) -> tuple[list[dict[str, Any]], dict[str, Volume]]:
    """Every classical baseline of the task (denoisers tuned per objective on the ground truth), scored.

    With ``settings.cache`` the rows and outputs of an earlier run are reused when the degraded input, the ground
    truth, the tuning grids and the baseline code are identical (hash-checked); such rows carry ``"cached": true``.
    """
    cache_json = cache_npz = None
    if settings.cache:
        cache_json, cache_npz = _classical_cache_paths(case, inp, gt, settings)
        if cache_json.exists() and cache_npz.exists():
            rows = json.loads(cache_json.read_text())
            for r in rows:
                r["cached"] = True
            logger.info("%s: classical baselines from the cache (%s)", case.name, cache_json.name)
            return rows, load_volumes(cache_npz)

    rows: list[dict[str, Any]] = []
    outputs: dict[str, Volume] = {}
    for spec in comparators(case):
        if TUNING_GRIDS.get(spec.name):
            spec_rows, spec_outputs = _tuned_rows(spec.name, case, inp, gt, scorer, settings)
        else:
            out, seconds, _ = run_method(inp, case, spec.name, None, settings.device)
            scores, grid = scorer.score(out)
            spec_rows = [{"model": spec.name, "kind": "classical", "params": {}, "tuned_for": None,
                          "tuning": "no free parameter", "metrics": scores, "seconds": seconds, "grid": grid,
                          "_output": spec.name}]
            spec_outputs = {spec.name: out}
        rows.extend(spec_rows)
        outputs.update(spec_outputs)
    if cache_json is not None and cache_npz is not None:
        cache_json.parent.mkdir(parents=True, exist_ok=True)
        save_volumes(cache_npz, outputs)
        cache_json.write_text(json.dumps(jsonable(rows)))
    return rows, outputs


def _classical_cache_paths(case: Case, inp: Volume, gt: Volume, settings: BenchSettings) -> tuple[Path, Path]:
    """Cache files keyed by everything the classical rows depend on: inputs, grids, baseline code, registry."""
    from ..models import classical

    task_grids = {s.name: TUNING_GRIDS.get(s.name) for s in comparators(case)}
    key = hashlib.sha256(json.dumps([array_hash(inp, gt), case.name, task_grids, list(TUNE_ON_BLOCK),
                                     settings.tune_block, source_hash(classical, metrics),
                                     [(s.name, s.method, s.params) for s in registry.CLASSICAL]],
                                    default=str).encode()).hexdigest()[:16]
    stem = Path(str(settings.cache)) / f"classical__{case.name}__{key}"
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def _tuned_rows(name: str, case: Case, inp: Volume, gt: Volume, scorer: Scorer, settings: BenchSettings,
                ) -> tuple[list[dict[str, Any]], dict[str, Volume]]:
    """One tunable baseline: grid search per objective (on a central block for slow methods), then one full run
    per distinct best setting."""
    grid_params = TUNING_GRIDS[name]
    tune_note = "tuned on the whole (cropped) volume"
    t_inp, t_scorer = inp, scorer
    if name in TUNE_ON_BLOCK and max(inp.array.shape) > settings.tune_block:
        b_start, b_size = central_block(scorer.mask, settings.tune_block)
        t_inp = crop_volume(inp, b_start, b_size)
        t_scorer = Scorer.for_reference(crop_volume(gt, b_start, b_size), case.modality)
        t_scorer.mr_scale = scorer.mr_scale  # same intensity normalisation as the full volume
        tune_note = f"tuned on a central {b_size[2]}x{b_size[1]}x{b_size[0]} block, then run on the whole volume"
    logger.info("%s: tuning %s (%d settings)", case.name, name, len(grid_params))
    best, trials, tune_seconds = tune(case, name, t_inp, t_scorer, grid_params, settings.device)
    done: dict[str, dict[str, Any]] = {}
    outputs: dict[str, Volume] = {}
    for obj, params in best.items():
        key = json.dumps(params, sort_keys=True)
        if key in done:
            done[key]["tuned_for"].append(obj)
            continue
        out, seconds, _ = run_method(inp, case, name, params, settings.device)
        scores, grid = scorer.score(out)
        done[key] = {"model": name, "kind": "classical", "params": params, "tuned_for": [obj],
                     "tuning": tune_note, "tuning_seconds": tune_seconds, "tuning_trials": trials,
                     "at_grid_edge": _at_edge(grid_params, params), "metrics": scores, "seconds": seconds,
                     "grid": grid, "_output": f"{name}:{key}"}
        outputs[f"{name}:{key}"] = out
    return list(done.values()), outputs
