"""How well can ANY uncertainty map rank a denoiser's per-voxel |error|? The oracle ceiling (issue 13).

    python benchmarks/spearman_ceiling.py ../shared/data/MANIFEST.json ../extra_data/MANIFEST.json \\
        --ids chris_t1,brats_0005_flair --case mr-denoise-5 --draws 17

Issue 13 asks the uncertainty map to rank the actual absolute error with Spearman >= 0.4 over the foreground. For
denoising, part of every voxel's error is the noise the denoiser could not tell from anatomy: it is random, so no
map computed from the input can predict it voxel by voxel, only its expected size. This measures the best any map
can do: the ground truth (the bench's crop) is corrupted by independent noise draws (the bench's Rician model and
level), the model denoises each, and the mean |error| over draws 2..n (an estimate of E|error| per voxel, which
needs the ground truth, so no real map has it) is rank-correlated with draw 1's |error| over the foreground.
With n draws the estimate is noisy, so its correlation r_n rises with n; it is extrapolated to infinitely many
draws with r_n = r_inf * sqrt(n / (n + c)), c fitted to the last two n. Draw 1 is also scored with the model's
own map (``uncertainty=True``). Knowing the input realisation adds nothing here the denoiser could not have used
itself: what of the noise is identifiable from the input is what it removes.
Prints Markdown; writes nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedSREnhanceLib import enhance, read_volume  # noqa: E402
from MedSREnhanceLib.evaluation.cases import (  # noqa: E402
    crop_box, crop_volume, find_volumes, parse_case, prepare_ground_truth)
from MedSREnhanceLib.evaluation.metrics import foreground_mask  # noqa: E402
from MedSREnhanceLib.simulate import rician_noise  # noqa: E402

CHECKPOINTS = (2, 4, 8, 16, 32, 64)


def extrapolate(r_a: float, n_a: int, r_b: float, n_b: int) -> float:
    """r_inf from two estimates under r_n = r_inf * sqrt(n / (n + c)) (an average of n noisy copies)."""
    q = (r_b / r_a) ** 2  # = n_b (n_a + c) / (n_a (n_b + c))
    c = (q - 1.0) * n_a * n_b / max(n_b - q * n_a, 1e-9)
    return r_b * float(np.sqrt((n_b + max(c, 0.0)) / n_b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="MANIFEST.json files or volume folders")
    parser.add_argument("--ids", required=True, help="comma-separated MR volume ids")
    parser.add_argument("--case", default="mr-denoise-5", help="an MR denoising case, mr-denoise-<percent>")
    parser.add_argument("--model", default="mr-denoise")
    parser.add_argument("--draws", type=int, default=17, help="noise draws per volume (the first is the one scored)")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    case = parse_case(args.case)
    if case.degradation != "rician_noise":
        raise SystemExit(f"{args.case} is not an MR denoising case")
    shown = [n for n in CHECKPOINTS if n < args.draws]
    print(f"{args.case}, model {args.model}, crop {args.crop}, {args.draws} noise draws per volume\n")
    print("| volume | the model's map | oracle, mean abs error of " + " / ".join(f"{n}" for n in shown)
          + " draws | oracle, extrapolated | s |")
    print("|---|---|---|---|---|")
    for bv in find_volumes(args.inputs, args.ids.split(",")):
        full, _ = prepare_ground_truth(read_volume(bv.path), "mr")
        start, size = crop_box(full, case, args.crop, foreground_mask(full.array, "mr", smooth_sigma=2.0))
        gt = crop_volume(full, start, size)
        mask = foreground_mask(gt.array, "mr")
        t0 = time.perf_counter()
        errors, first_map = [], None
        for k in range(args.draws):
            noisy = rician_noise(gt, case.params["level"], np.random.default_rng(1000 + k))
            result = enhance(noisy, task="denoise", model=args.model, modality="mr", uncertainty=k == 0)
            errors.append(np.abs(result.enhanced.array - gt.array)[mask])
            if k == 0:
                first_map = result.extras["uncertainty"].array[mask]
        own = float(spearmanr(first_map, errors[0]).statistic)
        oracle = {n: float(spearmanr(np.mean(errors[1:1 + n], 0), errors[0]).statistic) for n in shown}
        r_inf = extrapolate(oracle[shown[-2]], shown[-2], oracle[shown[-1]], shown[-1]) if len(shown) > 1 else np.nan
        print(f"| {bv.id} | {own:.3f} | " + " / ".join(f"{oracle[n]:.3f}" for n in shown)
              + f" | {r_inf:.3f} | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
