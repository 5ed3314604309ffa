"""Calibration of the uncertainty maps on development volumes: fit each learned model's constants, write its card.

For every (case, volume): degrade the ground truth as the bench does (same crops), enhance with
``uncertainty=True``, and keep, over the foreground, the actual |error| and the estimator's features. The weights
of spread / gradient / noise are chosen for the mean Spearman rank correlation over the volumes, penalised by how
far their calibration ratios spread (one scale must fit every volume), then the scale so that the geometric mean
over the volumes of median |error| / median uncertainty is 1. Usage (development volumes only, never the held-out bench ones):

    python -m MedSREnhanceLib.evaluation.calibration ../shared/data/MANIFEST.json --model mr-sr-x2 \\
        --case mr-sr-x2 --ids stroke_t1,stroke_flair,mr_gd --crop 96 --write

A model that serves several factors can be calibrated at several (``--case ct-throughplane-x3,ct-throughplane-x5``):
the weights and k are fitted at the first, then gamma of k * (factor / factor_ref)^gamma (engine/uncertainty.py)
by least squares on the log of each other factor's geometric-mean ratio. A denoiser likewise at several noise
levels (``--case mr-denoise-5,mr-denoise-2,mr-denoise-10``): the exponent of k * (level / level_ref)^exponent,
level = each input's estimated noise sigma over its robust maximum (the features' "level").
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..engine import uncertainty as uncertainty_map
from ..engine.enhance import enhance
from ..models import registry
from . import metrics
from .scoring import trust_scores
from .cases import BenchSettings, case_factors_zyx, degraded_pair, find_volumes, parse_case

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# candidate weights relative to the spread's (1); the noise weight is in units of the input's noise sigma
GRID = {"grad": (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0), "sigma": (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)}
SPREAD_PENALTY = 0.25  # Spearman points traded per unit of log(max ratio / min ratio) over the volumes
MAX_VOXELS = 200_000  # foreground voxels kept per volume for the rank statistics (a fixed random subset)


@dataclass
class Sample:
    volume: str
    error: np.ndarray  # |enhanced - truth| over the (subsampled) foreground
    feats: dict[str, Any]  # estimator features over the same voxels (sigma: a float)
    factor: float = 1.0  # the run's largest upsampling factor (1 for denoising)


def collect(model: str, case_name: str, volumes: Sequence[Any], crop: Optional[int]) -> list[Sample]:
    case = parse_case(case_name)
    settings = BenchSettings(cases=(case_name,), crop=crop)
    factor = max(case_factors_zyx(case))  # the largest upsampling factor (1 for denoising)
    rng = np.random.default_rng(0)
    samples = []
    for bv in volumes:
        inp, gt, _, _, _ = degraded_pair(case, bv, settings)
        result = enhance(inp, task=case.task, model=model, modality=case.modality,
                         scale=case.scale if case.task == "sr" else 1, uncertainty=True)
        mask = metrics.foreground_mask(gt.array, case.modality)
        feats = uncertainty_map.features(result.enhanced, result.extras["ensemble_spread"], inp)
        idx = np.flatnonzero(mask)
        if idx.size > MAX_VOXELS:
            idx = np.sort(rng.choice(idx, MAX_VOXELS, replace=False))
        err = np.abs(result.enhanced.array - gt.array).ravel()[idx]
        kept = {k: (v.ravel()[idx] if isinstance(v, np.ndarray) else v) for k, v in feats.items()}
        samples.append(Sample(bv.id, err, kept, factor))
        logger.info("%s / %s: %d foreground voxels, median |error| %.4g", case_name, bv.id, idx.size,
                    float(np.median(err)))
    return samples


def fit(samples: Sequence[Sample]) -> dict[str, float]:
    """Weights maximising the mean per-volume Spearman minus a penalty on how far the volumes' calibration ratios
    spread (log of max / min): a scale that fits every development volume is what carries over to new scanners.
    Then the scale for a geometric-mean ratio of 1."""
    best, constants = -np.inf, {"spread": 1.0, "scale": 1.0}
    for grad, sigma in itertools.product(GRID["grad"], GRID["sigma"]):
        trial = {"spread": 1.0, "grad": grad, "sigma": sigma, "scale": 1.0}
        scores = [trust_scores(s.error, uncertainty_map.combine(s.feats, trial)) for s in samples]
        ratios = [sc["calibration_ratio"] for sc in scores]
        key = float(np.mean([sc["spearman"] for sc in scores])) - SPREAD_PENALTY * float(np.log(max(ratios) / min(ratios)))
        if key > best:
            best, constants = key, trial
    ratios = [trust_scores(s.error, uncertainty_map.combine(s.feats, constants))["calibration_ratio"]
              for s in samples]
    constants["scale"] = float(np.exp(np.mean(np.log(ratios))))
    return constants


def fit_factor_exponent(reference: Sequence[Sample], others: Sequence[Sample],
                        constants: dict[str, float]) -> dict[str, float]:
    """``constants`` (fitted on ``reference``, one factor) with factor_ref and factor_exponent: gamma such that
    k * (f / f_ref)^gamma calibrates the ``others`` (other factors) in the least-squares sense on log ratios."""
    f_ref = reference[0].factor
    x, y = [], []
    for s in others:
        ratio = trust_scores(s.error, uncertainty_map.combine(s.feats, constants, f_ref))["calibration_ratio"]
        x.append(np.log(s.factor / f_ref))
        y.append(np.log(ratio))
    return {**constants, "factor_ref": float(f_ref), "factor_exponent": _slope(x, y)}


def fit_level_exponent(reference: Sequence[Sample], others: Sequence[Sample],
                       constants: dict[str, float]) -> dict[str, float]:
    """``constants`` (fitted on ``reference``, one noise level) with level_ref (the geometric mean of the reference
    inputs' noise levels) and level_exponent: the least-squares slope of log ratio on log(level / level_ref) over
    every sample (each volume's input level differs a little even within one case: its own noise adds)."""
    level_ref = float(np.exp(np.mean([np.log(s.feats["level"]) for s in reference])))
    x = np.asarray([np.log(s.feats["level"] / level_ref) for s in [*reference, *others]])
    y = np.asarray([np.log(trust_scores(s.error, uncertainty_map.combine(s.feats, constants))["calibration_ratio"])
                    for s in [*reference, *others]])
    return {**constants, "level_ref": level_ref, "level_exponent": _slope(x, y)}


def _slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x through the origin (0 when every x is 0): an exponent from log-log points."""
    x_arr, y_arr = np.asarray(x, float), np.asarray(y, float)
    return float((x_arr * y_arr).sum() / (x_arr * x_arr).sum()) if np.any(x_arr != 0) else 0.0


def evaluate(samples: Sequence[Sample], constants: dict[str, float]) -> list[dict[str, Any]]:
    return [{"volume": s.volume, "factor": s.factor, "level": round(float(s.feats.get("level", 0.0)), 5),
             **trust_scores(s.error, uncertainty_map.combine(s.feats, constants, s.factor))} for s in samples]


def write_card(model: str, entry: dict[str, Any]) -> None:
    """Add the "uncertainty" entry to a model card (calibration fields only; weights untouched)."""
    path = registry.WEIGHTS_DIR / registry.get(model).card
    card = json.loads(path.read_text())
    card["uncertainty"] = entry
    path.write_text(json.dumps(card, indent=2) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MedSREnhanceLib.evaluation.calibration",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="volume files, folders or a MANIFEST.json")
    parser.add_argument("--model", required=True)
    parser.add_argument("--case", required=True,
                        help="the bench case the model is calibrated on; several (comma-separated, the first the "
                             "reference) fit the factor exponent too")
    parser.add_argument("--ids", required=True, help="comma-separated development volume ids")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="store the constants in the model card")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    logging.basicConfig(level=logging.INFO, format="calibration: %(message)s")
    volumes = find_volumes(args.inputs, [i for i in args.ids.split(",") if i])
    cases = [c for c in args.case.split(",") if c]
    samples = collect(args.model, cases[0], volumes, args.crop or None)
    constants = fit(samples)
    others = [s for c in cases[1:] for s in collect(args.model, c, volumes, args.crop or None)]
    estimator = "k * sqrt((a spread)^2 + (b grad)^2 + (c sigma)^2)"
    if others and all(s.factor == 1.0 for s in samples + others):  # denoising at several noise levels
        constants = fit_level_exponent(samples, others, constants)
        estimator += ", k times (level / level_ref)^level_exponent"
    elif others:
        constants = fit_factor_exponent(samples, others, constants)
        estimator += ", k times (factor / factor_ref)^factor_exponent"
    rows = evaluate(samples + others, constants)
    entry = {"estimator": estimator + ", see engine/uncertainty.py",
             "constants": constants, "case": args.case, "crop": args.crop, "development_volumes": rows,
             "command": shlex.join(["python", "-m", "MedSREnhanceLib.evaluation.calibration"] + list(sys.argv[1:]))}
    sys.stdout.write(json.dumps(entry, indent=1) + "\n")
    if args.write:
        write_card(args.model, entry)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
