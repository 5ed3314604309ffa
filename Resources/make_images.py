"""Render the extension's icons and screenshot (run from the repository root: python Resources/make_images.py).

Everything is drawn from a synthetic phantom, so no patient data (and no licence question) ends up in the
repository. The "screenshot" is a matplotlib drawing, not Slicer's rendering (captions say so); it shows what the
module shows: input | enhanced | difference for a through-plane
super-resolution, with the difference in a blue-white-red map around 0 and a symmetric window.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from MedSREnhanceLib import enhance  # noqa: E402
from MedSREnhanceLib.core.volume import Volume  # noqa: E402

DIVERGING = LinearSegmentedColormap.from_list("DivergingBlueRed", [
    (0.02, 0.19, 0.38), (0.26, 0.58, 0.76), (0.82, 0.90, 0.94), (0.97, 0.97, 0.97),
    (0.99, 0.86, 0.78), (0.84, 0.38, 0.30), (0.40, 0.00, 0.12)])


def phantom(shape: tuple[int, int, int] = (96, 96, 96), seed: int = 0) -> np.ndarray:
    """A head-like MR phantom (k, j, i): skull ring, brain, ventricles, small bright lesions, fine stripes."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r_head = (i / 0.85) ** 2 + (j / 0.95) ** 2 + (k / 0.8) ** 2
    r_brain = (i / 0.75) ** 2 + (j / 0.85) ** 2 + (k / 0.7) ** 2
    vol = np.where(r_head < 1, 200.0, 0.0)
    vol = np.where(r_brain < 1, 110.0, vol)
    folds = 15 * np.sin(18 * np.sqrt(i**2 + j**2 + k**2) + 3 * np.arctan2(j, i))
    vol = np.where(r_brain < 1, vol + folds, vol)
    for sx in (-0.18, 0.18):
        vent = ((i - sx) / 0.1) ** 2 + (j / 0.32) ** 2 + ((k - 0.05) / 0.25) ** 2
        vol = np.where(vent < 1, 40.0, vol)
    for _ in range(12):
        c = rng.uniform(-0.5, 0.5, 3)
        rad = rng.uniform(0.03, 0.07)
        blob = (i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2 < rad**2
        vol = np.where(blob, 240.0, vol)
    return (vol + rng.normal(0, 3, shape)).astype(np.float32)


def thick_slices(vol: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` slices along k (a rect slice profile) and keep every ``factor``-th: a 2D acquisition."""
    n = vol.shape[0] // factor * factor
    return vol[:n].reshape(n // factor, factor, *vol.shape[1:]).mean(axis=1).astype(np.float32)


def make_icon(path: Path, size: int = 128) -> None:
    vol = phantom((8, size, size))
    img = vol[4]
    coarse = img.reshape(size // 8, 8, size // 8, 8).mean(axis=(1, 3)).repeat(8, 0).repeat(8, 1)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.where(xx + yy < size, coarse, img)  # top-left blocky, bottom-right sharp
    fig = plt.figure(figsize=(1, 1), dpi=size)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(out, cmap="gray", vmin=0, vmax=240, interpolation="nearest")
    ax.plot([size - 1, 0], [0, size - 1], color="#e8a33d", lw=2.5)
    ax.text(size * 0.93, size * 0.93, "SR", color="#e8a33d", fontsize=26, fontweight="bold",
            ha="right", va="bottom")
    ax.set_axis_off()
    fig.savefig(path, dpi=size, transparent=False)
    plt.close(fig)


def make_screenshot(path: Path) -> None:
    truth = phantom()
    low = thick_slices(truth, 4)
    spacing = (1.0, 1.0, 4.0)  # i, j, k
    result = enhance(Volume(low, spacing), task="sr", model="auto", scale=(1, 1, 4), device="cpu")
    if result.model == "bspline":  # no learned model bundled yet: its difference to the B-spline reference is 0
        result = enhance(Volume(low, spacing), task="sr", model="linear", scale=(1, 1, 4), device="cpu")
    enh, diff = result.enhanced.array, result.difference.array
    jc = truth.shape[1] // 2
    half = float(np.percentile(np.abs(diff), 99.5)) or 1.0
    panels = [
        (np.repeat(low[:, jc, :], 4, axis=0), "Input (4 mm slices)", "gray", 0, 240),
        (enh[:, jc, :], f"Enhanced x4 ({result.model})", "gray", 0, 240),
        (diff[:, jc, :], "Difference (enhanced - input)", DIVERGING, -half, half),
    ]
    from MedSREnhanceLib.mrml.panel import VIEW_COLORS, VIEW_LABELS

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    for ax, (img, title, cmap, vmin, vmax), label, color in zip(axes, panels, VIEW_LABELS, VIEW_COLORS):
        ax.imshow(img[::-1], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
        # a bar like Slicer's slice view controller: view label on the view colour, then the volume shown
        ax.set_title(f" {label} | {title}", color="white", fontsize=10.5, loc="left",
                     backgroundcolor=color, pad=6)
        ax.set_axis_off()
    fig.suptitle("MedSREnhance in 3D Slicer: input | enhanced | difference, linked slice views (coronal)",
                 color="white", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100, facecolor="black")
    plt.close(fig)


if __name__ == "__main__":
    make_icon(ROOT / "Resources" / "MedSREnhance.png")
    make_icon(ROOT / "MedSREnhance" / "Resources" / "Icons" / "MedSREnhance.png")
    make_screenshot(ROOT / "Resources" / "Screenshot01.png")
