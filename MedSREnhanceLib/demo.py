"""`medsr demo`: the main job end to end on a real MR volume that a PyPI package carries.

nilearn ships the ICBM152 2009a T1 template (1 mm). The demo degrades it the way a lower-resolution MR
acquisition loses detail (k-space truncation, x2), enhances it back with the bundled model that `--model auto`
picks, and writes the volumes, a comparison PNG and the measured gain over cubic B-spline interpolation.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .core.errors import InputError
from .core.volume import Volume

TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
SAMPLE_ID = "nilearn_mni_icbm152_t1_tal_nlin_sym_09a_converted"  # its id in model cards' training lists
SCALE = 2


def sample_path() -> Path:
    """The template inside the installed nilearn package (found without importing nilearn, which is slow)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("medsr demo needs nilearn's MNI152 template: pip install 'nilearn>=0.10'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / TEMPLATE
    if not path.exists():
        raise InputError(f"nilearn is installed but lacks {TEMPLATE}")
    return path


def _crop_to_multiple(volume: Volume, m: int) -> Volume:
    """Crop the far end of each axis so sizes divide by ``m`` (the origin, at voxel 0, does not move)."""
    z, y, x = (n - n % m for n in volume.array.shape)
    return Volume(volume.array[:z, :y, :x], volume.spacing, volume.origin, volume.direction, dict(volume.metadata))


def comparison_png(path: Path, panels: list[tuple[str, np.ndarray]], difference: np.ndarray, title: str) -> None:
    """One row per orientation (axial, coronal): each panel, then the difference map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = panels[-1][1]
    vmax = float(np.percentile(ref, 99.5))
    dmax = float(np.percentile(np.abs(difference), 99.5)) or 1.0
    views = [("axial", lambda a: a[a.shape[0] // 2]), ("coronal", lambda a: a[:, a.shape[1] // 2, :])]
    fig, axes = plt.subplots(len(views), len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.4 * len(views)))
    for r, (view, cut) in enumerate(views):
        for c, (name, arr) in enumerate(panels):
            axes[r, c].imshow(cut(arr), cmap="gray", vmin=0, vmax=vmax, origin="lower")
            axes[r, c].set_title(f"{name}" if r == 0 else "", fontsize=9)
        im = axes[r, -1].imshow(cut(difference), cmap="RdBu_r", vmin=-dmax, vmax=dmax, origin="lower")
        axes[r, -1].set_title("difference (enhanced - input)" if r == 0 else "", fontsize=9)
        axes[r, 0].set_ylabel(view)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, -1].tolist(), shrink=0.7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run_demo(out_dir: str | Path = "medsr_demo", quiet: bool = False) -> str:
    """Degrade, enhance and measure; returns a short summary (also written to summary.json)."""
    from . import simulate
    from .evaluation import metrics
    from .engine.enhance import enhance
    from .core.io import read_volume, write_volume
    from .core.resample import resample_to

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = _crop_to_multiple(read_volume(sample_path()), SCALE)
    low = simulate.kspace_truncation(truth, SCALE)
    progress, close_bar = _progress_bar(quiet)
    result = enhance(low, task="sr", scale=SCALE, model="auto", modality="mr", progress=progress)
    close_bar()
    baseline = enhance(low, task="sr", scale=SCALE, model="bspline", modality="mr")
    mask = metrics.foreground_mask(truth.array, "mr")
    scores = {}
    for name, vol in (("bspline", baseline.enhanced), (result.model, result.enhanced)):
        on_truth = resample_to(vol, truth, "linear")  # by physical coordinates: a shift would show as error
        scores[name] = metrics.score(on_truth.array, truth.array, "mr", mask)
    for name, vol in (("ground_truth", truth), ("input_lowres", low), ("enhanced", result.enhanced),
                      ("bspline", baseline.enhanced), ("difference", result.difference)):
        write_volume(vol, out / f"{name}.nii.gz")
    nearest = resample_to(low, truth, "nearest")
    comparison_png(
        out / "comparison.png",
        [("input (x2 k-space truncation)", nearest.array), ("cubic B-spline", baseline.enhanced.array),
         (f"{result.model}", result.enhanced.array), ("ground truth", truth.array)],
        result.difference.array,
        f"MNI152 T1 x{SCALE}: PSNR B-spline {scores['bspline']['psnr_fg']:.2f} dB, "
        f"{result.model} {scores[result.model]['psnr_fg']:.2f} dB (foreground)",
    )
    card = {}
    from .models.registry import REGISTRY

    if result.model in REGISTRY:
        card = REGISTRY[result.model].card_data()
    training = card.get("training", {})
    seen = SAMPLE_ID in training.get("volumes", []) + training.get("validation_volumes", [])
    gain = scores[result.model]["psnr_fg"] - scores["bspline"]["psnr_fg"]
    summary = {
        "sample": str(sample_path().name), "scale": SCALE, "model": result.model, "device": result.device,
        "precision": result.precision,
        "seconds": round(result.seconds, 1), "scores": scores, "gain_psnr_fg_db": round(gain, 2),
        "sample_in_training_set": seen, "messages": result.messages,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return "\n".join(_report_lines(result, scores, gain, seen, out))


def _progress_bar(quiet: bool) -> tuple[Any, Callable[[], None]]:
    """(progress callback, close) of a tqdm bar over tiles; (None, no-op) when quiet."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(unit="pass", desc="enhance", leave=False)  # ensemble members of each window

    def progress(p: Any) -> None:
        bar.total = p.total
        bar.n = p.done
        bar.refresh()

    return progress, bar.close


def _report_lines(result: Any, scores: dict[str, dict[str, float]], gain: float, seen: bool, out: Path) -> list[str]:
    """What `medsr demo` prints: model, device, time, the measured gain and the files written."""
    lines = [
        f"medsr demo: MNI152 T1 template, x{SCALE} k-space truncation, enhanced with {result.model} on "
        f"{result.ran_on} in {result.seconds:.1f} s",
        f"  foreground PSNR: B-spline {scores['bspline']['psnr_fg']:.2f} dB, {result.model} "
        f"{scores[result.model]['psnr_fg']:.2f} dB (gain {gain:+.2f} dB); SSIM {scores['bspline']['ssim']:.4f} -> "
        f"{scores[result.model]['ssim']:.4f}",
        f"  wrote {out}/: ground_truth, input_lowres, enhanced, bspline, difference (.nii.gz), comparison.png, "
        "summary.json",
    ]
    if seen:
        lines.append("  note: this template is among the model's training volumes; held-out figures are in "
                     "benchmarks/results/results.md")
    lines += [f"  {m}" for m in result.messages]
    return lines
