"""Copies of low-noise bench volumes with Rician noise added (truths as noisy as a clinical 3T scan's), or cut to
coarser voxels.

    python benchmarks/noisy_truth.py ../shared/data/MANIFEST.json --ids chris_t1,spm_single_subj_t1 --level 0.04 --out /tmp/noisytruth
    python benchmarks/noisy_truth.py ../shared/data/MANIFEST.json --ids chris_t1 --level 0 --voxel 2 --out /tmp/truth2mm
    python -m MedSREnhanceLib.bench ../shared/data/MANIFEST.json /tmp/noisytruth --ids chris_t1,chris_t1_nt --cases mr-denoise-5 ...

`medsr bench` scores every case against the volume itself, so a truth carrying its own scanner noise (the Trio
MPRAGE: 4.0 % of the bench range, `benchmarks/truth_noise.py`) charges that noise to every method, and a model that
estimates the clean signal is charged most. Benching a volume next to its noisy copy separates what the truth's
noise costs from what the volume's content costs. With --voxel MM the volume is first k-space-truncated to MM-mm
isotropic voxels (the same grid extent), which separates what a coarse voxel costs. Writes `<id>_nt.nii.gz` (noise
added, same grid) or `<id>_<MM>mm.nii.gz` (--voxel, --level 0), float32, into --out, which must lie outside the
project: the copies are cut from the data and are never committed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from MedSREnhanceLib import read_volume, simulate  # noqa: E402
from MedSREnhanceLib.core.io import write_volumes  # noqa: E402
from MedSREnhanceLib.evaluation.cases import find_volumes  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="MANIFEST.json files or volume folders")
    parser.add_argument("--ids", required=True, help="comma-separated MR volume ids")
    parser.add_argument("--level", type=float, default=0.04, help="Rician sigma over the foreground's 99th percentile")
    parser.add_argument("--voxel", type=float, default=0.0, help="k-space-truncate to this isotropic voxel (mm) first")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--out", required=True, type=Path, help="folder outside the project")
    args = parser.parse_args()
    if args.level <= 0 and args.voxel <= 0:
        parser.error("nothing to do: give --level > 0 or --voxel > 0")
    out = args.out.resolve()
    if out == ROOT or ROOT in out.parents:
        parser.error(f"--out {args.out} is inside the project; the noisy copies are data and are never committed")
    out.mkdir(parents=True, exist_ok=True)
    for bv in find_volumes(args.inputs, args.ids.split(",")):
        vol = read_volume(bv.path)
        name = bv.id
        if args.voxel > 0:
            if args.voxel < max(vol.spacing) - 1e-6:
                parser.error(f"--voxel {args.voxel:g} is finer than {bv.id}'s {max(vol.spacing):g} mm voxels")
            vol = simulate.kspace_truncation(vol, tuple(args.voxel / s for s in vol.spacing))
            name += f"_{args.voxel:g}mm"
        if args.level > 0:
            vol = simulate.rician_noise(vol, args.level, np.random.default_rng(args.seed))
            name += "_nt"
        (path,) = write_volumes([(vol, out / f"{name}.nii.gz")])
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
