"""How far can a linear filter undo TorchIO motion? The oracle per-plane filter, which knows the ground truth.

    python benchmarks/motion_linear_ceiling.py ../shared/data/MANIFEST.json ../extra_data/MANIFEST.json --ids chris_t1,mr_gd

The bench's independent motion case (mr-motion-torchio-<M>, evaluation/torchio_motion.py) corrupts the whole volume
with TorchIO's RandomMotion: the k-space planes along the k index are taken from three poses, the original one
in the middle. This script corrupts each volume the same way (same seed as the bench: the case's per-volume
generator), then scores on the bench's crop (fg PSNR, data range 1 after the 99.5th percentile):
- the corrupted input;
- the oracle low-pass: the k-space planes of the original pose only (the centre band, and its mirror, since
  TorchIO keeps the real part): every plane with motion in it dropped;
- the oracle linear filter: every k-space plane of the input scaled by the least-squares weight against the ground
  truth's plane (w = Re<Y, X> / |Y|^2; planes above 1 where half of the plane is the still pose's);
- the same with a weight per (plane, in-plane frequency ring).
No filter that is linear along the phase-encode axis can beat the last two rows, since they are fitted on the
truth; a correction that clears issue 15's bar (+1 dB) must therefore be nonlinear (a learned prior, or poses
estimated and inverted). Also prints the plane error |Y - X| / |X| along k. Prints Markdown; writes nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedSREnhanceLib import read_volume  # noqa: E402
from MedSREnhanceLib.core.volume import Volume  # noqa: E402
from MedSREnhanceLib.evaluation import metrics  # noqa: E402
from MedSREnhanceLib.evaluation.cache import seed_for  # noqa: E402
from MedSREnhanceLib.evaluation.cases import (crop_box, crop_volume, find_volumes, parse_case,  # noqa: E402
                                              prepare_ground_truth)
from MedSREnhanceLib.evaluation.scoring import Scorer  # noqa: E402
from MedSREnhanceLib.evaluation import torchio_motion  # noqa: E402

RINGS = 16  # in-plane frequency rings up to the in-plane Nyquist (corners in one more)


def centre_planes(n: int, times: list[float]) -> np.ndarray:
    """Which centred k-space planes along k (fftshift order) hold only the original pose, given TorchIO's two
    movement times: the plane (TorchIO fills [n t0, n t1) from it) and its mirror (the real part mixes them)."""
    lo, hi = int(n * times[0]), int(n * times[1])
    m = np.arange(n)
    mirror = (n - m) % n
    return (m >= lo) & (m < hi) & (mirror >= lo) & (mirror < hi)


def oracle_filters(corrupted: np.ndarray, truth: np.ndarray, times: list[float]) -> dict[str, np.ndarray]:
    """The three oracle outputs (low-pass, per-plane weights, per-plane-and-ring weights) and the plane error."""
    y = np.fft.fftshift(np.fft.fftn(corrupted.astype(np.float64)), axes=0)
    x = np.fft.fftshift(np.fft.fftn(truth.astype(np.float64)), axes=0)

    def back(spectrum: np.ndarray) -> np.ndarray:
        return np.real(np.fft.ifftn(np.fft.ifftshift(spectrum, axes=0))).astype(np.float32)

    def weights(groups: np.ndarray) -> np.ndarray:
        """Least-squares weight per (plane, group) of in-plane frequencies."""
        w = np.zeros(y.shape)
        for g in np.unique(groups):
            sel = groups == g
            num = np.real(np.conj(y[:, sel]) * x[:, sel]).sum(axis=1)
            den = (np.abs(y[:, sel]) ** 2).sum(axis=1) + 1e-12
            w[:, sel] = (num / den)[:, None]
        return w

    fy, fx = np.meshgrid(np.fft.fftfreq(y.shape[1]), np.fft.fftfreq(y.shape[2]), indexing="ij")
    rings = np.minimum((np.hypot(fy, fx) / 0.5 * RINGS).astype(int), RINGS)
    clean = centre_planes(y.shape[0], times)
    plane_error = np.sqrt((np.abs(y - x) ** 2).sum(axis=(1, 2)) / ((np.abs(x) ** 2).sum(axis=(1, 2)) + 1e-12))
    return {"oracle low-pass (original pose's planes only)": back(y * clean[:, None, None]),
            "oracle linear filter per plane": back(y * weights(np.zeros(fy.shape, int))),
            "oracle linear filter per plane and ring": back(y * weights(rings)),
            "_plane_error": plane_error}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="MANIFEST.json files or volume folders")
    parser.add_argument("--ids", required=True, help="comma-separated MR volume ids")
    parser.add_argument("--case", default="mr-motion-torchio-4", help="a mr-motion-torchio-<M> case")
    parser.add_argument("--crop", type=int, default=112, help="the bench's --crop (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the bench's --seed (default %(default)s)")
    args = parser.parse_args()
    case = parse_case(args.case)
    if case.degradation != "torchio_motion":
        parser.error(f"{args.case} is not a TorchIO motion case (mr-motion-torchio-<M>)")
    print("| volume | movement times | planes of the original pose | output | fg PSNR | SSIM |")
    print("|---|---|---|---|---|---|")
    for bv in find_volumes(args.inputs, args.ids.split(",")):
        gt, _ = prepare_ground_truth(read_volume(bv.path), "mr")
        moved, record = torchio_motion.for_case(gt, case.params, seed_for(args.seed, case.name, bv.id))
        start, size = crop_box(gt, case, args.crop, metrics.foreground_mask(gt.array, "mr", smooth_sigma=2.0))
        scorer = Scorer.for_reference(crop_volume(gt, start, size), "mr")
        outputs = oracle_filters(moved.array, gt.array, record["times"])
        plane_error = outputs.pop("_plane_error")
        n_clean = int(centre_planes(gt.array.shape[0], record["times"]).sum())
        for name, array in [("input (corrupted)", moved.array), *outputs.items()]:
            s, _ = scorer.score(crop_volume(Volume(array, gt.spacing, gt.origin, gt.direction), start, size))
            print(f"| {bv.id} | {record['times']} | {n_clean} of {gt.array.shape[0]} | {name} | "
                  f"{s['psnr_fg']:.2f} | {s['ssim']:.4f} |", flush=True)
        step = max(1, len(plane_error) // 16)
        print(f"|  |  |  | plane error along k, every {step}th plane: "
              f"{' '.join(f'{e:.2f}' for e in plane_error[::step])} |  |  |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
