"""Scoring against a ground truth on its own grid, and the bar a learned model must pass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.resample import resample_to
from ..core.volume import Volume
from . import metrics, spectral


def objectives(modality: str) -> tuple[str, ...]:
    """Metrics each baseline is tuned for and models are judged on (foreground PSNR; per window for CT)."""
    return ("psnr_fg",) if modality == "mr" else tuple(f"psnr_fg_{w.name}" for w in metrics.CT_WINDOWS)


def ssim_keys(modality: str) -> tuple[str, ...]:
    if modality == "mr":
        return ("ssim", "ssim_fg")
    return tuple(k for w in metrics.CT_WINDOWS for k in (f"ssim_{w.name}", f"ssim_fg_{w.name}"))


@dataclass
class Scorer:
    """Scores outputs against one ground truth: resampled onto its grid by physical coordinates first."""

    reference: Volume
    modality: str
    mask: np.ndarray
    mr_scale: float = 1.0

    @classmethod
    def for_reference(cls, reference: Volume, modality: str) -> "Scorer":
        mask = metrics.foreground_mask(reference.array, modality)
        return cls(reference, modality, mask, metrics.mr_scale(reference.array) if modality == "mr" else 1.0)

    def on_grid(self, output: Volume) -> tuple[Volume, dict[str, Any]]:
        ref = self.reference
        same = (output.array.shape == ref.array.shape
                and np.allclose(output.spacing, ref.spacing, atol=1e-5)
                and np.allclose(output.origin, ref.origin, atol=1e-4)
                and np.allclose(output.direction, ref.direction, atol=1e-6))
        offset = float(np.linalg.norm(np.asarray(output.origin) - np.asarray(ref.origin)))
        # Linear, not B-spline: no ringing is added to a misplaced output, and on a matching grid it is exact.
        aligned = output if same else resample_to(output, ref, "linear")
        return aligned, {"grid_matches_reference": bool(same), "origin_offset_mm": offset,
                         "output_size": list(output.size), "output_spacing": list(output.spacing)}

    def score(self, output: Volume) -> tuple[dict[str, float], dict[str, Any]]:
        aligned, grid = self.on_grid(output)
        return metrics.score(aligned.array, self.reference.array, self.modality, self.mask, self.mr_scale), grid

    def hf_ratio(self, output: Volume, input_spacing: tuple[float, ...],
                 fraction: float = spectral.HF_FRACTION) -> float:
        """High-frequency power of ``output`` over the ground truth's, above ``fraction`` of the input's Nyquist
        (spectral.py; the bench's figure is at half of it)."""
        aligned, _ = self.on_grid(output)
        return spectral.hf_power_ratio(aligned.array, self.reference.array, self.reference.spacing, input_spacing,
                                       fraction)


    def trust(self, result: Any, inp: Volume) -> dict[str, Any]:
        """Uncertainty against the actual |error| over the foreground (Spearman, calibration ratio) and the
        consistency RMS: the residual (input minus the output degraded back) in % of the input's range."""
        from ..engine.consistency import relative_rms

        aligned, _ = self.on_grid(result.enhanced)
        out: dict[str, Any] = {}
        if "uncertainty" in result.extras:
            unc, _ = self.on_grid(result.extras["uncertainty"])
            err = aligned.array - self.reference.array
            out.update(trust_scores(err[self.mask], unc.array[self.mask]))
        residual = result.extras.get("residual")
        out["consistency_rms_pct"] = 100.0 * relative_rms(residual, inp) if residual is not None else None
        return out


# (here rather than in metrics.py, whose source keys the cache of classical results)
def trust_scores(error: np.ndarray, uncertainty: np.ndarray) -> dict[str, float]:
    """How well an uncertainty map estimates |error| (both over the same voxels, e.g. the foreground): the
    Spearman rank correlation and the calibration ratio median |error| / median uncertainty (1 = calibrated)."""
    from scipy.stats import spearmanr

    err = np.abs(np.asarray(error, np.float64)).ravel()
    unc = np.asarray(uncertainty, np.float64).ravel()
    med_u = float(np.median(unc))
    return {"spearman": float(spearmanr(unc, err).statistic),
            "calibration_ratio": float(np.median(err)) / med_u if med_u > 0 else float("inf")}


BAR_DB = 0.5
# Per task, where it differs: the bar (dB) and the rows a learned model is judged against. Motion correction must
# beat the corrupted input as well as every tuned filter, by 1 dB (issue 15); a filter can be no better than its input.
BAR_DB_BY_TASK: dict[str, float] = {"motion": 1.0}
BASELINE_KINDS: dict[str, tuple[str, ...]] = {"motion": ("classical", "input")}


SSIM_TOLERANCE = 5e-5  # rounding: "no worse" at four decimals


def judge(rows: list[dict[str, Any]], modality: str, task: str = "sr") -> dict[str, Any]:
    """Best baseline per objective, and each learned model's gains against it (the bar of issue 3)."""
    classical = [r for r in rows if r["kind"] in BASELINE_KINDS.get(task, ("classical",))]
    bar = BAR_DB_BY_TASK.get(task, BAR_DB)
    out: dict[str, Any] = {"best_baseline": {}, "models": {}}
    if not classical:
        return out
    for obj in objectives(modality):
        best = max(classical, key=lambda r: r["metrics"][obj])
        out["best_baseline"][obj] = {"model": best["model"], "params": best["params"], "value": best["metrics"][obj]}
    best_ssim = {k: max(r["metrics"][k] for r in classical) for k in ssim_keys(modality)}
    for r in rows:
        if r["kind"] != "learned":
            continue
        gains = {obj: r["metrics"][obj] - out["best_baseline"][obj]["value"] for obj in objectives(modality)}
        dssim = {k: r["metrics"][k] - best_ssim[k] for k in ssim_keys(modality)}
        passed = all(g >= bar for g in gains.values()) and all(d >= -SSIM_TOLERANCE for d in dssim.values())
        out["models"][r["model"]] = {"gain_db": gains, "ssim_delta_vs_best_baseline": dssim, "passes_bar": passed}
        for ref in (x for x in rows if x["kind"] == "reference"):  # informational, not part of the bar
            out["models"][r["model"]].setdefault("gain_vs_reference_db", {})[ref["model"]] = {
                obj: r["metrics"][obj] - ref["metrics"][obj] for obj in objectives(modality)}
    return out
