"""Data consistency on WHOLE volumes: an SR model's foreground PSNR with and without the projection (issue 13).

    python benchmarks/bench_consistency.py ../shared/data/MANIFEST.json --ids mr_gd,chris_t1 --model mr-sr-x2

`medsr bench` scores 112-voxel crops, and a crop's periodic k-space model misses its own ground truth by ~1 % RMS,
so the projection can look harmful there while on a whole acquisition (where the ground truth lies in the
consistent set) it cannot increase the L2 error. This measures the whole-volume case: each ground truth (made
magnitude-like as the bench does, sizes trimmed to a multiple of the factor) is degraded by the model's own
acquisition (k-space truncation x2 for mr-sr-x2; a Gaussian slice profile for mr-throughplane), enhanced with
``consistency=False`` and ``True``, and scored like the bench (foreground PSNR, MR data range = the ground truth's
99.5th percentile). Also printed: the consistency RMS (input minus the output degraded back, % of the input's
range) of both. Prints Markdown; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedSREnhanceLib import enhance, read_volume  # noqa: E402
from MedSREnhanceLib.engine.consistency import relative_rms  # noqa: E402
from MedSREnhanceLib.evaluation.cases import (  # noqa: E402
    crop_box, crop_volume, degrade_case, parse_case, prepare_ground_truth)
from MedSREnhanceLib.evaluation.metrics import foreground_mask, score  # noqa: E402

CASE_OF_MODEL = {"mr-sr-x2": "mr-sr-x2", "mr-sr-x3": "mr-sr-x3", "mr-sr-x4": "mr-sr-x4",
                 "mr-throughplane": "mr-throughplane-x4"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--ids", required=True, help="comma-separated manifest ids (held-out volumes)")
    parser.add_argument("--model", default="mr-sr-x2", choices=sorted(CASE_OF_MODEL))
    args = parser.parse_args()
    entries = {e["id"]: e for e in json.loads(args.manifest.read_text())}
    case = parse_case(CASE_OF_MODEL[args.model])
    print(f"{args.model} on whole volumes, case {case.name}; `consistency` off -> on\n")
    print("| volume | output voxels | fg PSNR off (dB) | fg PSNR on (dB) | on - off (dB) | consistency RMS off | "
          "on | seconds off / on |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for vol_id in args.ids.split(","):
        gt, _ = prepare_ground_truth(read_volume(args.manifest.parent / entries[vol_id]["file"]), "mr")
        start, size = crop_box(gt, case, None, gt.array > 0)  # the whole volume, trimmed so the grids nest
        gt = crop_volume(gt, start, size)
        lr, reference = degrade_case(case, gt, rng)
        mask = foreground_mask(reference.array, "mr")
        row = []
        for consistency in (False, True):
            t0 = time.perf_counter()
            res = enhance(lr, task="sr", model=args.model, scale=case.scale, consistency=consistency)
            seconds = time.perf_counter() - t0
            fg = score(res.enhanced.array, reference.array, "mr", mask)["psnr_fg"]
            rms = relative_rms(res.extras["residual"], lr) if "residual" in res.extras else float("nan")
            row.append((fg, rms, seconds, res.enhanced.array.shape))
        (off, rms_off, s_off, shape), (on, rms_on, s_on, _) = row
        print(f"| {vol_id} | {'x'.join(map(str, shape[::-1]))} | {off:.2f} | {on:.2f} | {on - off:+.2f} | "
              f"{100 * rms_off:.3f} % | {100 * rms_on:.3f} % | {s_off:.0f} / {s_on:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
