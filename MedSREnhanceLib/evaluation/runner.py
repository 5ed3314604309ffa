"""Runs every case on every volume: degrade, baselines, learned models, score; writes results.json/.md."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..engine.adapt import available as adaptation_available
from ..engine.enhance import SAME_GRID
from ..models import registry
from . import baselines
from .baselines import classical_rows, fourier_zerofill, run_learned
from ..core.io import content_hash
from ..core.normalise import masked_noise_sigma
from .cache import jsonable
from .cases import BenchSettings, BenchVolume, Case, degraded_pair, parse_case
from .report import learned_precision, markdown, plot_case, plot_trust
from .scoring import Scorer, judge

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def learned_models_for(case: Case, requested: Sequence[str] | str) -> list[str]:
    """Learned models to run on a case.

    "auto": the one ``enhance(model="auto")`` picks for the case (what a user gets), if it is learned; "all": every
    learned model that serves the case; "none"; or the requested names, those that serve the case.
    """
    from ..engine.enhance import select_model, serves

    scale = case.scale if case.task == "sr" else (1.0, 1.0, 1.0)
    if requested == "none":
        return []
    if requested == "auto":
        spec = select_model(case.task, case.modality, scale)
        return [spec.name] if spec.kind == "learned" else []
    specs = list(registry.LEARNED) if requested == "all" else [registry.get(n) for n in requested]
    return [s.name for s in specs if s.kind == "learned" and case.modality in s.modalities and serves(s, case.task, scale)]


def provenance(model: str, volume_id: str, volume_hash: str = "") -> dict[str, Any]:
    """Which weights ran, and whether the model card says this volume was seen in training or validation (by its
    id, or by ``volume_hash`` when it comes under another name, e.g. a file path)."""
    spec = registry.get(model)
    card = spec.card_data()
    training = card.get("training", {}) if isinstance(card.get("training"), dict) else {}
    hashes = training.get("volume_hashes") or {}
    known = next((v for v, h in hashes.items() if volume_hash and h == volume_hash), volume_id)
    seen_train = known in (training.get("volumes") or card.get("training_volumes") or [])
    seen_val = known in (training.get("validation_volumes") or [])
    return {"weights_sha256": spec.sha256, "held_out": not (seen_train or seen_val),
            "seen_in": "training" if seen_train else "validation" if seen_val else None}


def bench_one(case: Case, bv: BenchVolume, settings: BenchSettings, out_dir: Path) -> dict[str, Any]:
    """Run one (case, volume): degrade, tune and run baselines, run learned models, score, plot."""
    t_start = time.perf_counter()
    inp, gt, notes, start, size = degraded_pair(case, bv, settings)
    logger.info("%s / %s: ground truth %s voxels, input %s voxels", case.name, bv.id, gt.size, inp.size)
    scorer = Scorer.for_reference(gt, case.modality)
    if case.task == "denoise" and case.modality == "mr":  # a noisy truth caps what removing noise can score
        sigma = masked_noise_sigma(gt.array / scorer.mr_scale, scorer.mask)
        notes = notes + [f"The ground truth carries about {100 * sigma:.1f} % noise of its own (in the data range): "
                         f"a denoiser that removes all noise scores at most {-20 * math.log10(max(sigma, 1e-9)):.1f} dB "
                         "fg PSNR against it (core.normalise.masked_noise_sigma)."]
    rows: list[dict[str, Any]] = []

    if case.task in SAME_GRID:  # the degraded input itself: what every method must improve on
        scores, grid = scorer.score(inp)
        rows.append({"model": "input (degraded)", "kind": "input", "params": {}, "tuned_for": None,
                     "metrics": scores, "seconds": 0.0, "grid": grid})
    base_rows, outputs = classical_rows(case, inp, gt, scorer, settings)
    rows.extend(base_rows)
    if case.degradation == "kspace_truncation":
        # Not a product baseline (GUIDE lists linear, B-spline, sinc) but what scanners do: zero-filled k-space
        # interpolation, the exact inverse of the truncation's band limit. Shown so gains are read against it too.
        t0 = time.perf_counter()
        out = fourier_zerofill(inp, case.scale)
        seconds = time.perf_counter() - t0
        scores, grid = scorer.score(out)
        rows.append({"model": "fourier-zerofill (reference)", "kind": "reference", "params": {}, "tuned_for": None,
                     "metrics": scores, "seconds": seconds, "grid": grid})
        outputs["fourier-zerofill (reference)"] = out

    for name in learned_models_for(case, settings.models):
        rows += _learned_rows(case, bv, inp, name, scorer, settings, outputs)
    _add_hf_ratios(rows, outputs, inp, scorer)

    verdicts = judge(rows, case.modality, case.task)
    png = trust_png = None
    if settings.png:
        png = plot_case(case, bv, gt, inp, rows, outputs, verdicts, scorer, out_dir)
        trust_png = plot_trust(case, bv, gt, rows, outputs, scorer, out_dir)
    for r in rows:
        r.pop("_output", None)
    return {"case": case.name, "volume": bv.id, "file": str(bv.path), "modality": case.modality,
            "notes": notes, "crop": {"start_zyx": list(start), "size_zyx": list(size),
                                     "ground_truth_size_ijk": list(gt.size), "input_size_ijk": list(inp.size),
                                     "input_spacing": list(inp.spacing)},
            "foreground_voxels": int(scorer.mask.sum()), "mr_normaliser": scorer.mr_scale if case.modality == "mr" else None,
            "rows": rows, "verdicts": verdicts, "png": png,
            "trust_png": trust_png, "seconds": time.perf_counter() - t_start}


def _add_hf_ratios(rows: list[dict[str, Any]], outputs: dict[str, Any], inp: Any, scorer: Scorer) -> None:
    """Each row's sharpness figure ``hf_ratio`` (metrics): its output's high-frequency power over the ground truth's
    above half the input's Nyquist; and ``hf_ratio_above_nyquist``, the same above the input's Nyquist itself (the
    band the input lacks: the first figure is dominated by the band below it, which the input still holds).
    Computed here, not in the cached classical rows, so cached baselines get it too (from their cached outputs)."""
    for r in rows:
        out = inp if r["kind"] == "input" else outputs.get(r.get("_output") or r["model"])
        if out is not None:
            r["metrics"]["hf_ratio"] = scorer.hf_ratio(out, inp.spacing)
            r["metrics"]["hf_ratio_above_nyquist"] = scorer.hf_ratio(out, inp.spacing, fraction=1.0)


def _learned_rows(case: Case, bv: BenchVolume, inp: Any, name: str, scorer: Scorer, settings: BenchSettings,
                  outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """A learned model's row (its default) with its trust figures; for an SR model with an acquisition model, also
    the same model with the data-consistency projection switched the other way (kind "ablation": not judged).
    The judged row runs with the uncertainty map, hence the model's full flip ensemble; where a plain
    ``medsr enhance`` runs fewer members (``default_ensemble``) and no ``--ensemble`` is set, an ablation row scores
    that plain run too, so the bench shows what a user gets without the map."""
    spec = registry.get(name)
    variants: list[tuple[str, str, Optional[bool], float, bool]] = [(name, "learned", None, 0.0, True)]
    full = int((spec.kwargs or {}).get("ensemble") or 0)
    if settings.extra.get("ensemble") is None and spec.default_ensemble and spec.default_ensemble < full:
        variants.append((f"{name} (plain run, {spec.default_ensemble} of {full} flips)", "ablation", None, 0.0,
                         False))
    if case.task == "sr" and spec.acquisition:
        other = not spec.consistency_default
        variants.append((f"{name} (consistency {'on' if other else 'off'})", "ablation", other, 0.0, True))
    adapt = float(settings.extra.get("adapt") or 0.0)
    if adapt and adaptation_available(spec):  # judged like the plain model: it is what --adapt gives a user
        variants.append((f"{name} (adapted {adapt:g} s)", "learned", None, adapt, True))
    rows = []
    for label, kind, consistency, seconds_adapt, with_map in variants:
        result, seconds = run_learned(inp, case, name, settings.device, consistency=consistency,
                                      ensemble=settings.extra.get("ensemble"), adapt=seconds_adapt,
                                      uncertainty=with_map)
        scores, grid = scorer.score(result.enhanced)
        rows.append({"model": label, "kind": kind, "params": {}, "tuned_for": None, "metrics": scores,
                     "seconds": seconds, "grid": grid, "messages": list(result.messages),
                     "trust": scorer.trust(result, inp), **provenance(name, bv.id, content_hash(str(bv.path)))})
        outputs[label] = result.enhanced
        if "uncertainty" in result.extras:
            outputs[f"{label}:uncertainty"] = result.extras["uncertainty"]
    return rows


def _git_revision() -> str:
    """Short commit of the library's checkout, "+modified" when the library's files differ from it."""
    import subprocess

    here = Path(__file__).resolve().parents[1]  # the library's root folder
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True,
                               timeout=10, cwd=here).stdout.strip()
        return (rev + ("+modified" if dirty else "")) if rev else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def run_bench(volumes: Sequence[BenchVolume], out_dir: str | Path, settings: Optional[BenchSettings] = None,
              on_result: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Run every case on every volume of its modality; writes results.md, results.json and png/ in ``out_dir``.

    Returns the report (the content of results.json).
    """
    settings = settings or BenchSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = [parse_case(c, settings.photons, settings.electronic_noise, settings.n_angles) for c in settings.cases]
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "command": settings.command, "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "git": _git_revision(),
        "settings": {"cases": list(settings.cases), "models": settings.models if isinstance(settings.models, str)
                     else list(settings.models), "crop": settings.crop, "tune_block": settings.tune_block,
                     "seed": settings.seed, "device": settings.device,
                     "learned_precision": learned_precision(settings.device), **settings.extra},
        "tuning_grids": baselines.TUNING_GRIDS,
        "cases": [{"name": c.name, "modality": c.modality, "task": c.task, "degradation": c.degradation,
                   "params": c.params, "scale": list(c.scale)} for c in cases],
        "volumes": [{"id": v.id, "file": str(v.path), "modality": v.modality} for v in volumes],
        "results": [],
    }
    for case in cases:
        for bv in volumes:
            if bv.modality != case.modality:
                continue
            logger.info("bench %s on %s", case.name, bv.id)
            res = bench_one(case, bv, settings, out)
            report["results"].append(res)
            report["seconds"] = time.perf_counter() - t0
            # Written after every volume: a long run that is stopped still leaves its finished numbers.
            (out / "results.json").write_text(json.dumps(jsonable(report), indent=1))
            (out / "results.md").write_text(markdown(report))
            if on_result is not None:
                on_result(res)
    report["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(jsonable(report), indent=1))
    (out / "results.md").write_text(markdown(report))
    return report
