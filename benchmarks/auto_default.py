"""What `medsr enhance --model auto` gives, as it runs (default parameters, not tuned on the ground truth), scored
as `medsr bench` scores: fg PSNR and fg SSIM of the degraded input and of each model named, on the bench's pairs.

    python benchmarks/auto_default.py ../shared/data/MANIFEST.json ../extra_data/MANIFEST.json \\
        --ids chris_t1,brats_0005_t1c,rorden_trio_b17_mprage_T1w --case mr-motion-4 --models auto \\
        --cache ../medsr_bench_cache

The bench tunes every classical method on the ground truth (the best a user could hope for); a user who runs a
task with no learned model gets the default parameters instead. With ``--cache`` (the bench's folder) the degraded
inputs are the bench's own. Prints Markdown; writes nothing but the cache.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedSREnhanceLib.engine.enhance import enhance  # noqa: E402
from MedSREnhanceLib.evaluation import cases  # noqa: E402
from MedSREnhanceLib.evaluation.scoring import Scorer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="volume files, folders or MANIFEST.json files")
    parser.add_argument("--ids", help="comma-separated ids to keep")
    parser.add_argument("--case", default="mr-motion-4", help="one bench case (default: mr-motion-4)")
    parser.add_argument("--models", default="auto", help="comma-separated models for enhance (default: auto)")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--cache", help="the bench's cache folder")
    args = parser.parse_args()
    case = cases.parse_case(args.case)
    volumes = cases.find_volumes(args.inputs, ids=args.ids.split(",") if args.ids else None)
    settings = cases.BenchSettings(cases=(case.name,), models="none", crop=args.crop, cache=args.cache, png=False)
    models = args.models.split(",")
    print(f"| {case.name} | input | " + " | ".join(models) + " |")
    print("|---|---|" + "---|" * len(models))
    for bv in volumes:
        inp, gt, _, _, _ = cases.degraded_pair(case, bv, settings)
        scorer = Scorer.for_reference(gt, case.modality)
        cells = []
        for vol in [inp] + [enhance(inp, task=case.task, model=m, modality=case.modality,
                                    scale=case.scale if case.task == "sr" else 1).enhanced for m in models]:
            s = scorer.score(vol)[0]
            cells.append(f"{s['psnr_fg']:.2f} dB, SSIM {s['ssim_fg']:.4f}")
        print(f"| {bv.id} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
