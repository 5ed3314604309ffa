"""How much a physics-based motion correction could recover: invert the simulated motion with the TRUE poses (issue 15).

    python benchmarks/motion_known_pose.py ../shared/data/MANIFEST.json --ids mr_gd,stroke_t1 --case mr-motion-4
    python benchmarks/motion_known_pose.py ... --tolerance 0.1,0.25,0.5,1 --lines 1,3   (how exact an estimate must be)

Two learned attempts at `mr-motion` gave no gain over the corrupted input (README, Motion). This measures the
ceiling of the other route, estimate the poses then invert the acquisition: each whole ground truth is corrupted
exactly as `medsr bench` does (same generator, same events), then reconstructed by conjugate gradients on the
acquisition model with the poses and event times the simulator recorded, and scored on the bench's crop (foreground
PSNR, MR data range = the ground truth's 99.5th percentile). It is an upper bound: a real corrector has to
estimate the phase-encode axis, event times and poses from the corrupted magnitude image alone.

Acquisition model: every k-space plane along the phase-encode axis comes from the object in one pose (the pose at
that plane's time); the corrupted volume is a magnitude image, so its spectrum is Hermitian and each plane holds the
mean of the spectra of its own pose and of the mirrored plane's pose (the real part of the complex image; exact
where the image is positive, the rectified background ghosts excepted). Rigid warps by trilinear resampling; their
adjoint is taken as the inverse warp. With --tolerance it also inverts with the true poses perturbed (a random error
pose of up to +-d degrees and mm per parameter on every moving pose) and with the movement times moved by a few
lines: the precision a pose estimator needs (benchmarks/results/motion/pose_tolerance.md). Prints Markdown; writes
nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedSREnhanceLib import read_volume  # noqa: E402
from MedSREnhanceLib.evaluation.cache import seed_for  # noqa: E402
from MedSREnhanceLib.evaluation.cases import (  # noqa: E402
    Case, crop_box, crop_volume, find_volumes, parse_case, prepare_ground_truth)
from MedSREnhanceLib.evaluation.metrics import foreground_mask, score  # noqa: E402
from MedSREnhanceLib.simulate import random_rigid_motion  # noqa: E402
from MedSREnhanceLib.core.volume import Volume  # noqa: E402
from MedSREnhanceLib.simulate.motion import _pose, line_poses, poses_relative_to_centre  # noqa: E402


def warp(x: torch.Tensor, pose: np.ndarray, half_extent: np.ndarray, inverse: bool = False) -> torch.Tensor:
    """The object (array z, y, x) after a rigid ``pose`` (4x4, physical (i, j, k) mm about the volume centre, the
    simulator's convention: out(p) = in(pose^-1 p)), or after its inverse."""
    p = np.linalg.inv(pose) if inverse else pose
    d = np.diag(half_extent)  # normalised grid coordinates (i, j, k) -> mm from the centre
    back = np.diag(1.0 / np.asarray(half_extent)) @ p[:3, :3].T  # mm -> normalised, through the inverse rotation
    theta = np.concatenate([back @ d, (-back @ p[:3, 3])[:, None]], 1)
    grid = F.affine_grid(torch.tensor(theta[None], dtype=torch.float32), (1, 1) + tuple(x.shape), align_corners=False)
    return F.grid_sample(x[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def plane_weights(shape: tuple[int, ...], pe_axis: int, starts: list[float]) -> dict[int, torch.Tensor]:
    """Per pose index, the weight of its spectrum in every k-space plane along the phase-encode axis (FFT layout):
    1/2 for the plane's own time, 1/2 for the mirrored plane's (the Hermitian spectrum of a magnitude image)."""
    axis = 2 - pe_axis
    n = shape[axis]
    state = line_poses(n, starts)
    mirrored = state[(-np.arange(n)) % n]
    out = {}
    for s in np.unique(np.concatenate([state, mirrored])):
        w = 0.5 * ((state == s).astype(np.float32) + (mirrored == s).astype(np.float32))
        view = [1, 1, 1]
        view[axis] = n
        out[int(s)] = torch.from_numpy(w.reshape(view))
    return out


def invert(corrupted: np.ndarray, poses: list[np.ndarray], weights: dict[int, torch.Tensor],
           half_extent: np.ndarray, iterations: int) -> np.ndarray:
    """Least-squares object under the acquisition model, by conjugate gradients on the normal equations, from the
    corrupted volume."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        return sum(w * torch.fft.fftn(warp(x, poses[s], half_extent)) for s, w in weights.items())

    def adjoint(k: torch.Tensor) -> torch.Tensor:
        return sum(warp(torch.fft.ifftn(w * k).real, poses[s], half_extent, inverse=True) for s, w in weights.items())

    y = torch.from_numpy(corrupted.astype(np.float32))
    x = y.clone()
    r = adjoint(torch.fft.fftn(y) - forward(x))  # the adjoint is linear: one pass for the residual
    p, rs = r.clone(), float((r * r).sum())
    for _ in range(iterations):
        ap = adjoint(forward(p))
        alpha = rs / float((p * ap).sum())
        x, r = x + alpha * p, r - alpha * ap
        rs_new = float((r * r).sum())
        p, rs = r + (rs_new / rs) * p, rs_new
    return x.numpy()


def perturbed(poses: list[np.ndarray], starts: list[float], n_lines: int, delta: float, lines: int,
              rng: np.random.Generator) -> tuple[list[np.ndarray], list[float]]:
    """What an estimator that is off by up to ``delta`` would hand the inversion: every moving pose composed with
    an error pose whose three angles (degrees) and three translations (mm) are uniform in +-delta, the reference
    pose (identity) kept, and every movement time after the first line moved by ``lines`` phase-encode lines
    (n_lines in the scan) earlier or later at random."""
    out = []
    for pose in poses:
        if np.allclose(pose, np.eye(4)):
            out.append(pose)
            continue
        error = rng.uniform(-delta, delta, 6)
        out.append(_pose({"rotation_deg": error[:3].tolist(), "translation_mm": error[3:].tolist()}) @ pose)
    shifted = [t if t == 0.0 else float(np.clip(t + rng.choice([-1, 1]) * lines / n_lines, 0.0, 1.0)) for t in starts]
    return out, shifted


def motion_case(name: str) -> Case:
    """The bench case ``name``, refused unless it is a motion case."""
    case = parse_case(name)
    if case.task != "motion":
        raise SystemExit(f"{name} is not a motion case")
    return case


def corrupt_like_bench(full: Volume, case: Case, volume_id: str
                       ) -> tuple[Volume, int, list[dict[str, Any]], list[np.ndarray], list[float], np.ndarray]:
    """``full`` corrupted exactly as `medsr bench` does for ``case`` (same generator, same events): the corrupted
    volume, its phase-encode axis, the events, the poses relative to the centre line with their start times, and
    the half extent (mm, (i, j, k)) the warps use."""
    p = case.params
    moved, record = random_rigid_motion(full, seed_for(0, case.name, volume_id), p["n_events"],
                                        p["max_rotation_deg"], p["max_translation_mm"], tuple(p["pe_axes"]))
    pe_axis, events = record["params"]["pe_axis"], record["params"]["events"]
    poses, starts = poses_relative_to_centre(events, full.array.shape[2 - pe_axis])
    half_extent = np.asarray(full.spacing) * np.asarray(full.array.shape[::-1]) / 2.0
    return moved, pe_axis, events, poses, starts, half_extent


def volume_parser(description: str) -> argparse.ArgumentParser:
    """The command line both motion scripts start from: the volumes, the bench motion case, the crop."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("inputs", nargs="+", help="MANIFEST.json files or volume folders")
    parser.add_argument("--ids", required=True, help="comma-separated volume ids")
    parser.add_argument("--case", default="mr-motion-4", help="a bench motion case, mr-motion-<degrees and mm>")
    parser.add_argument("--crop", type=int, default=112)
    return parser


def main() -> int:
    parser = volume_parser(__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", default="",
                        help="comma-separated pose errors (degrees and mm per parameter): also invert with the true "
                             "poses perturbed by up to each, --draws times, and with the times off by --lines")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--lines", default="1,3", help="comma-separated movement-time errors in phase-encode lines")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = motion_case(args.case)
    print(f"{args.case}, crop {args.crop}, {args.iterations} CG iterations with the true poses\n")
    print("| volume | PE axis (i,j,k) | event times | input fg PSNR | known-pose inversion fg PSNR | gain (dB) | s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for bv in find_volumes(args.inputs, args.ids.split(",")):
        full, _ = prepare_ground_truth(read_volume(bv.path), "mr")
        start, size = crop_box(full, case, args.crop, foreground_mask(full.array, "mr", smooth_sigma=2.0))
        moved, pe_axis, events, poses, starts, half_extent = corrupt_like_bench(full, case, bv.id)
        weights = plane_weights(full.array.shape, pe_axis, starts)
        t0 = time.perf_counter()
        fixed = full.with_array(invert(moved.array, poses, weights, half_extent, args.iterations))
        seconds = time.perf_counter() - t0
        gt = crop_volume(full, start, size).array
        mask = foreground_mask(gt, "mr")

        def fg(a: np.ndarray) -> float:  # foreground PSNR of a whole-volume array on the bench's crop
            return score(crop_volume(full.with_array(a), start, size).array, gt, "mr", mask)["psnr_fg"]

        before, after = fg(moved.array), fg(fixed.array)
        times = ", ".join(f"{e['time']:.2f}" for e in events)
        print(f"| {bv.id} | {pe_axis} | {times} | {before:.2f} | {after:.2f} | {after - before:+.2f} | {seconds:.0f} |",
              flush=True)
        if args.tolerance:
            rows.append((bv.id, before, after,
                         tolerance_row(full, moved, pe_axis, poses, starts, weights, half_extent, args, fg)))
    if rows:
        deltas, lines = _floats(args.tolerance), [int(v) for v in _floats(args.lines)]
        print("\nfg PSNR gain over the input when the poses are off by up to +-d (degrees and mm per parameter; "
              f"min..max of {args.draws} draws) or the movement times by L lines\n")
        print("| volume | true poses | " + " | ".join(f"d = {d:g}" for d in deltas) + " | "
              + " | ".join(f"L = {n}" for n in lines) + " |")
        print("|---|---|" + "---|" * (len(deltas) + len(lines)))
        for vid, before, after, cells in rows:
            print(f"| {vid} | {after - before:+.2f} | " + " | ".join(
                f"{min(c) - before:+.2f}..{max(c) - before:+.2f}" if len(c) > 1 else f"{c[0] - before:+.2f}"
                for c in cells) + " |", flush=True)
    return 0


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def tolerance_row(full: Volume, moved: Volume, pe_axis: int, poses: list[np.ndarray], starts: list[float],
                  weights: dict[int, torch.Tensor], half_extent: np.ndarray, args: argparse.Namespace,
                  fg: Any) -> list[list[float]]:
    """fg PSNR after inverting with perturbed poses and the true times' ``weights`` (per pose error, ``args.draws``
    draws), then with the true poses and shifted times (one draw per time error)."""
    rng = np.random.default_rng(0)
    n = full.array.shape[2 - pe_axis]
    cells = []
    for delta in _floats(args.tolerance):
        cells.append([])
        for _ in range(args.draws):
            p, _ = perturbed(poses, starts, n, delta, 0, rng)
            cells[-1].append(fg(invert(moved.array, p, weights, half_extent, args.iterations)))
    for lines in _floats(args.lines):
        _, t = perturbed(poses, starts, n, 0.0, int(lines), rng)
        cells.append([fg(invert(moved.array, poses, plane_weights(full.array.shape, pe_axis, t), half_extent,
                                args.iterations))])
    return cells


if __name__ == "__main__":
    raise SystemExit(main())
