"""The bench's Markdown report and its per-case figure."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core.resample import resample_to
from ..core.volume import Volume
from . import metrics
from .cases import BenchVolume, Case
from .scoring import BAR_DB, BAR_DB_BY_TASK, Scorer, objectives


def _fmt(v: Optional[float], digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
                     if k not in ("patch_size", "patch_distance", "time_step")) or "-"


def _metric_columns(modality: str) -> list[tuple[str, str, int]]:
    # "HF ratio" (evaluation/spectral.py): high-frequency power over the ground truth's; 1 = as sharp as the truth
    if modality == "mr":
        return [("psnr", "PSNR", 2), ("psnr_fg", "PSNR fg", 2), ("ssim", "SSIM", 4), ("ssim_fg", "SSIM fg", 4),
                ("hf_ratio", "HF ratio", 3), ("hf_ratio_above_nyquist", "HF > Nyq", 3)]
    cols: list[tuple[str, str, int]] = []
    for w in metrics.CT_WINDOWS:
        cols += [(f"psnr_{w.name}", f"PSNR {w.name}", 2), (f"psnr_fg_{w.name}", f"PSNR fg {w.name}", 2),
                 (f"ssim_{w.name}", f"SSIM {w.name}", 4)]
    return cols + [("hf_ratio", "HF ratio", 3), ("hf_ratio_above_nyquist", "HF > Nyq", 3)]


def learned_precision(device: str) -> str:
    """What --precision auto runs the learned models in on ``device`` (bf16 on AMX CPUs, fp32 on other CPUs)."""
    try:
        from ..engine.inference import autocast_dtype, choose_device, precision_name
    except ImportError:  # no torch: only classical models can run
        return "n/a"
    return precision_name(autocast_dtype(choose_device(device), "auto"))


def markdown(report: dict[str, Any]) -> str:
    """results.md: how the run was made, the summary against the bar, then every case and volume in full."""
    lines = _header_lines(report) + _summary_lines(report) + [""]
    for case in report["cases"]:
        lines += _case_lines(report, case)
    return "\n".join(lines) + "\n"


def _header_lines(report: dict[str, Any]) -> list[str]:
    lines = ["# MedSREnhance benchmark", ""]
    if report.get("command"):
        lines += ["Command:", "", "```", report["command"], "```", ""]
    s = report["settings"]
    precision = f" (learned models in {s['learned_precision']})" if s.get("learned_precision") else ""
    lines += [f"Run {report['started']} UTC, git {report.get('git', '?')}, {report['seconds']:.0f} s on {s['device']}"
              f"{precision}. "
              f"Crop: central {s['crop'] or 'none'} voxel block per ground truth (centred on the foreground, sizes "
              f"divisible by the scale). Denoisers tuned on the ground truth by grid search; NLM and anisotropic "
              f"diffusion on a central {s['tune_block']}^3 block, then run on the whole cropped volume. Outputs "
              "resampled onto the ground-truth grid by physical coordinates (linear) before scoring.", "",
              "Metrics: MR divided by the ground truth's 99.5th percentile (non-zero voxels), data range 1; CT HU "
              "windows full [-1000, 1000] and soft tissue C40/W400, data range 1. PSNR over the whole volume and "
              "inside a foreground mask (fg); 3D SSIM, Gaussian sigma 1.5, K1 0.01, K2 0.03. HF ratio: the output's "
              "radially averaged power spectrum summed above half the input's Nyquist frequency, over the ground "
              "truth's (Hann-windowed crop; 1 = as much fine detail as the truth, < 1 smoother, > 1 more, which may be "
              "noise or invented texture); HF > Nyq: the same above the input's Nyquist itself, the band the input lacks. "
              "Bar: a learned model "
              f"gains >= {BAR_DB} dB fg PSNR over the best tuned baseline (per CT window) and its SSIM (whole and fg) "
              "is no worse than the best baseline SSIM. 'held out' comes from the model card: a volume the model was "
              "trained or validated on (early stopping) is not a held-out test, whether named by its id or found by the "
              "content hash the card records (benchmarks/card_hashes.py).", ""]
    if any(c["task"] == "motion" for c in report["cases"]):
        lines += [f"Motion cases: the bar is >= {BAR_DB_BY_TASK['motion']} dB over the best of the tuned filters AND the "
                  "corrupted input (SSIM likewise).", ""]
    if any(r.get("cached") for res in report["results"] for r in res["rows"]):
        lines += ["Rows marked (cached) come from an earlier run of this harness on identical inputs (degraded volume, "
                  "ground truth, tuning grids and baseline code hash-checked, `--cache`); their seconds are that "
                  "run's.", ""]
    return lines


def _summary_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += ["## Summary: learned models against the best tuned baseline", ""]
    summary = [r for r in report["results"] if r["verdicts"].get("models")]
    if summary:
        lines += ["| case | volume | model | held out | best baseline | fg PSNR gain (dB) | SSIM delta (min) | bar |",
                  "|---|---|---|---|---|---|---|---|"]
        for res in summary:
            for name, v in res["verdicts"]["models"].items():
                row = next(r for r in res["rows"] if r["model"] == name)
                held = "yes" if row.get("held_out", True) else f"no ({row.get('seen_in')})"
                base = "; ".join(f"{b['model']}" for b in res["verdicts"]["best_baseline"].values())
                gains = " / ".join(f"{g:+.2f}" for g in v["gain_db"].values())
                dmin = min(v["ssim_delta_vs_best_baseline"].values())
                lines.append(f"| {res['case']} | {res['volume']} | {name} | {held} | {base} | {gains} | {dmin:+.4f} | "
                             f"{'PASS' if v['passes_bar'] else '**MISS**'} |")
        if any(res.get("modality") == "ct" for res in summary):
            lines += ["", "CT gains are given per window (full / soft)."]
    else:
        lines.append("No learned model ran.")
    return lines + _trust_lines(report)


def _trust_lines(report: dict[str, Any]) -> list[str]:
    """Per case and volume: how well the uncertainty map ranks and sizes the actual error, and how consistent
    the output is with its input (with the SR models' projection on, and off)."""
    rows = [(res, r) for res in report["results"] for r in res["rows"] if r.get("trust")]
    if not rows:
        return []
    obj = {"mr": "psnr_fg", "ct": "psnr_fg_full"}
    lines = ["", "## Trust: uncertainty against the actual error, consistency with the input", "",
             "Spearman: rank correlation of the uncertainty map with |error| over the foreground; ratio: median "
             "|error| / median uncertainty (1 = calibrated); consistency: RMS of the input minus the output degraded "
             "back (SR) or minus the output (denoising), in % of the input's 0.5-99.5th percentile range.", "",
             "| case | volume | model | Spearman | ratio | consistency RMS (%) | fg PSNR |", "|---|---|---|---|---|---|---|"]
    for res, r in rows:
        t = r["trust"]
        lines.append(f"| {res['case']} | {res['volume']} | {r['model']} | {_fmt(t.get('spearman'), 3)} | "
                     f"{_fmt(t.get('calibration_ratio'), 2)} | {_fmt(t.get('consistency_rms_pct'), 3)} | "
                     f"{_fmt(r['metrics'].get(obj[res['modality']]), 2)} |")
    return lines


def _case_lines(report: dict[str, Any], case: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += [f"## {case['name']}", "", f"Degradation: `{case['degradation']}` {json.dumps(case['params'])}; "
              f"enhancement scale (i, j, k) = {tuple(case['scale'])}; noise seeded per volume from "
              f"seed {report['settings']['seed']}.", ""]
    for res in [r for r in report["results"] if r["case"] == case["name"]]:
        c = res["crop"]
        lines += [f"### {res['volume']}", "",
                  f"Ground truth {'x'.join(map(str, c['ground_truth_size_ijk']))} voxels (crop start z,y,x "
                  f"{tuple(c['start_zyx'])}), input {'x'.join(map(str, c['input_size_ijk']))} voxels; "
                  f"foreground {res['foreground_voxels']} voxels." + (" " + " ".join(res["notes"]) if res["notes"] else ""),
                  ""]
        cols = _metric_columns(res["modality"])
        lines.append("| model | params | " + " | ".join(c[1] for c in cols) + " | s |")
        lines.append("|---|---|" + "---|" * len(cols) + "---|")
        best_models = {(b["model"], json.dumps(b["params"], sort_keys=True))
                       for b in res["verdicts"].get("best_baseline", {}).values()}
        for row in res["rows"]:
            name = row["model"]
            if (name, json.dumps(row["params"], sort_keys=True)) in best_models:
                name += " **(best baseline)**"
            if row.get("tuned_for") and len(objectives(res["modality"])) > 1:
                name += f" [tuned for {', '.join(row['tuned_for'])}]"
            if row.get("at_grid_edge"):
                name += " (edge of grid)"
            if row.get("cached"):
                name += " (cached)"
            if row.get("seen_in"):
                name += f" (**{row['seen_in']} volume of this model**)"
            if not row["grid"]["grid_matches_reference"]:
                name += f" (off-grid, {row['grid']['origin_offset_mm']:.2f} mm origin offset)"
            vals = " | ".join(_fmt(row["metrics"].get(k), d) for k, _, d in cols)
            lines.append(f"| {name} | {_params_text(row['params'])} | {vals} | {row['seconds']:.1f} |")
        for name, v in res["verdicts"].get("models", {}).items():
            gains = ", ".join(f"{k} {g:+.2f} dB" for k, g in v["gain_db"].items())
            lines.append("")
            lines.append(f"{name}: {gains} over the best tuned baseline; SSIM deltas "
                         + ", ".join(f"{k} {d:+.4f}" for k, d in v["ssim_delta_vs_best_baseline"].items())
                         + f": {'passes' if v['passes_bar'] else 'MISSES'} the bar.")
            for ref_name, g in v.get("gain_vs_reference_db", {}).items():
                lines.append(f"Against {ref_name} (not a bar baseline): "
                             + ", ".join(f"{k} {d:+.2f} dB" for k, d in g.items()) + ".")
        if res.get("png"):
            lines += ["", f"![{res['case']} {res['volume']}]({res['png']})"]
        if res.get("trust_png"):
            lines += ["", f"![trust {res['case']} {res['volume']}]({res['trust_png']})"]
        lines.append("")
    return lines


def plot_case(case: Case, bv: BenchVolume, gt: Volume, inp: Volume, rows: list[dict[str, Any]],
          outputs: dict[str, Volume], verdicts: dict[str, Any], scorer: Scorer, out_dir: Path) -> Optional[str]:
    """Ground truth, degraded, best baseline, ours and their error maps: an axial and a coronal slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = objectives(case.modality)[0]
    best = verdicts.get("best_baseline", {}).get(obj)
    base_row = next((r for r in rows if best and r["model"] == best["model"] and r["params"] == best["params"]), None)
    learned = [r for r in rows if r["kind"] == "learned"]
    ours_row = max(learned, key=lambda r: r["metrics"][obj]) if learned else None

    def key_of(row: Optional[dict[str, Any]]) -> Optional[str]:
        if row is None:
            return None
        return row.get("_output") or row["model"]

    def grid(v: Optional[Volume]) -> Optional[np.ndarray]:
        if v is None:
            return None
        # nearest for the degraded input, so its voxels are shown as acquired
        return resample_to(v, gt, "nearest").array if v is inp else scorer.on_grid(v)[0].array

    panels = [("ground truth", gt.array), ("degraded", grid(inp)),
              (f"best baseline: {best['model']}" if best else "best baseline", grid(outputs.get(key_of(base_row) or ""))),
              (f"ours: {ours_row['model']}" if ours_row else "ours: none", grid(outputs.get(key_of(ours_row) or "")))]
    if case.modality == "mr":
        lo, hi = 0.0, scorer.mr_scale
    else:
        lo, hi = -1000.0, 1000.0
    ref = gt.array
    errs = [np.abs(p - ref) if p is not None else None for _, p in panels[2:]]
    emax = max((float(np.percentile(e[scorer.mask], 99)) for e in errs if e is not None), default=1.0) or 1.0
    zc, yc = ref.shape[0] // 2, ref.shape[1] // 2
    sx, sy, sz = gt.spacing
    fig, axes = plt.subplots(2, 6, figsize=(15, 5.6))
    titles = [t for t, _ in panels] + ["|error| best baseline", "|error| ours"]
    images = [p for _, p in panels] + errs
    for col, (title, img) in enumerate(zip(titles, images)):
        for row, (sl, aspect) in enumerate(((lambda a: a[zc], sy / sx), (lambda a: a[:, yc][::-1], sz / sx))):
            ax = axes[row, col]
            ax.axis("off")
            if img is None:
                continue
            if col < 4:
                ax.imshow(sl(img), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            else:
                ax.imshow(sl(img), cmap="magma", vmin=0, vmax=emax, aspect=aspect, interpolation="nearest")
        axes[0, col].set_title(title, fontsize=8)
    label = {r_key: r for r_key, r in (("base", base_row), ("ours", ours_row))}
    sub = [f"{case.name} / {bv.id}"]
    for tag, r in label.items():
        if r is not None:
            sub.append(f"{tag} {r['model']}: {obj} {r['metrics'][obj]:.2f} dB")
    fig.suptitle("   ".join(sub), fontsize=9)
    return _write_figure(fig, out_dir, f"{case.name}__{bv.id}.png")


def plot_trust(case: Case, bv: BenchVolume, gt: Volume, rows: list[dict[str, Any]], outputs: dict[str, Volume],
               scorer: Scorer, out_dir: Path) -> Optional[str]:
    """Enhanced, |error| and uncertainty side by side (axial and coronal) for the first learned model."""
    row = next((r for r in rows if r["kind"] == "learned" and f"{r['model']}:uncertainty" in outputs), None)
    if row is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    enhanced = scorer.on_grid(outputs[row["model"]])[0].array
    unc = scorer.on_grid(outputs[f"{row['model']}:uncertainty"])[0].array
    err = np.abs(enhanced - gt.array)
    top = float(np.percentile(np.concatenate([err[scorer.mask], unc[scorer.mask]]), 99)) or 1.0
    hi = scorer.mr_scale if case.modality == "mr" else 1000.0
    lo = 0.0 if case.modality == "mr" else -1000.0
    panels = [("enhanced", enhanced, "gray", lo, hi), ("|error|", err, "inferno", 0.0, top),
              ("uncertainty", unc, "inferno", 0.0, top)]
    zc, yc = gt.array.shape[0] // 2, gt.array.shape[1] // 2
    sx, sy, sz = gt.spacing
    fig, axes = plt.subplots(2, 3, figsize=(7.5, 5.2))
    for col, (title, img, cmap, vmin, vmax) in enumerate(panels):
        for r, (sl, aspect) in enumerate(((img[zc], sy / sx), (img[:, yc][::-1], sz / sx))):
            axes[r, col].imshow(sl, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            axes[r, col].axis("off")
        axes[0, col].set_title(title, fontsize=9)
    t = row["trust"]
    fig.suptitle(f"{case.name} / {bv.id} / {row['model']}: Spearman {t.get('spearman', float('nan')):.2f}, "
                 f"median |err| / median unc {t.get('calibration_ratio', float('nan')):.2f}", fontsize=9)
    return _write_figure(fig, out_dir, f"trust__{case.name}__{bv.id}.png")


def _write_figure(fig: Any, out_dir: Path, name: str) -> str:
    """Lay out, write ``out_dir/png/name`` as a palette PNG, close; returns the path relative to ``out_dir``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png_dir = out_dir / "png"
    png_dir.mkdir(parents=True, exist_ok=True)
    path = png_dir / name
    _save_palette_png(fig, path)
    plt.close(fig)
    return str(path.relative_to(out_dir))


def _save_palette_png(fig: Any, path: Path) -> None:
    """Grey images plus one colour map fit a 256-colour palette: a third of the bytes, for a committed figure."""
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    fig.savefig(buf, dpi=65)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)
