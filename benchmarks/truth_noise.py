"""How noisy is each ground truth? The ceiling a denoiser meets when the bench scores it against a noisy truth.

    python benchmarks/truth_noise.py ../shared/data/MANIFEST.json ../extra_data/MANIFEST.json --ids rorden_trio_b17_mprage_T1w,chris_t1

`medsr bench` scores denoising (mr-denoise-<percent>) against the volume itself, which carries its own scanner
noise. A denoiser that removes all noise, its own included, leaves at least that noise as error, so its foreground
PSNR cannot exceed 20 log10(1 / sigma) with sigma in the bench's units (the ground truth divided by its 99.5th
percentile). sigma is estimated per volume as the median absolute value of the finest Haar subband (the
alternating-sign sum of 2x2x2 blocks, which cancels smooth anatomy) over the foreground, / 0.6745; edges leak a
little into that subband, so it slightly overestimates sigma (``core.normalise.masked_noise_sigma``, the Haar detail the MR denoiser's noise estimate uses; `medsr bench`
prints the same figure, on its crop, under every MR denoising case). Prints Markdown; writes nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedSREnhanceLib import read_volume  # noqa: E402
from MedSREnhanceLib.evaluation.cases import find_volumes, prepare_ground_truth  # noqa: E402
from MedSREnhanceLib.core.normalise import masked_noise_sigma  # noqa: E402
from MedSREnhanceLib.evaluation.metrics import foreground_mask, mr_scale  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="MANIFEST.json files or volume folders")
    parser.add_argument("--ids", required=True, help="comma-separated MR volume ids")
    args = parser.parse_args()
    print("| volume | noise sigma (% of the bench range) | fg PSNR ceiling of a full denoiser (dB) |")
    print("|---|---|---|")
    for bv in find_volumes(args.inputs, args.ids.split(",")):
        gt, _ = prepare_ground_truth(read_volume(bv.path), "mr")
        sigma = masked_noise_sigma(gt.array / mr_scale(gt.array), foreground_mask(gt.array, "mr"))
        print(f"| {bv.id} | {100 * sigma:.2f} | {20 * np.log10(1 / sigma):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
