"""Estimating rigid motion from the corrupted magnitude volume alone: a pose search and how far it gets (issue 15).

    python benchmarks/motion_search.py ../shared/data/MANIFEST.json --ids mr_gd --case mr-motion-4 [--true-times]

`motion_known_pose.py` shows the ceiling (+4.5..+9 dB with the simulator's own poses); this measures an estimator.
Criterion, cheap enough to search with: the ghost the acquisition model predicts in the empty field of view,

    R(axis, segments, poses) = || |ifft( sum_s M_s fft(T_s x_S) )| - y ||^2 over ~S  /  || y ||^2 over ~S

with x_S = the corrupted volume y inside a dilated head support S (no solve), M_s the phase-encode planes of
segment s and T_s its pose (the segment holding the k-space centre is the reference, identity). With no motion
modelled R = 1; the ghost outside the head is what the poses must explain, so the empty field of view stands in
for the redundancy coils give SENSE. A whole volume with air around the object is required (a crop has none).
The magnitude makes R blind to which side of k-space a segment lies on (a segment and its mirror give the same
|ghost|); the correction's Hermitian model is blind to it too, so that costs nothing.

Search: (1) at half resolution (2x2x2 means), the phase-encode axis whose best single movement explains most
of the ghost; then on that axis every pair of movement distances from the k-space centre (0.02..0.23 of the
scan, on opposite sides or one side), poses fitted briefly by Adam from no motion, the three best fitted longer;
(2) the poses refined at full resolution by L-BFGS with the segments found; (3) the acquisition inverted with
those poses (5 conjugate-gradient iterations, `motion_known_pose.invert`).
Scored on the bench's crop (fg PSNR, MR data range). Prints Markdown; writes nothing.

Measured 2026-12-03 (Xeon with AMX, one thread beside other jobs: the seconds are not a speed figure), defaults:

| volume | axis true / found (R per axis) | segments true | segments found | R at truth / found | input fg PSNR | corrected | with true poses | s |
|---|---|---|---|---|---|---|---|---|
| mr_gd | 2 / 2 (0.89 / 0.76 / 0.28) | 0.000-0.340, 0.340-0.706, 0.706-1.000 | 0.000-0.390, 0.390-0.450 | 0.2502 / 0.3354 | 28.66 | 23.52 | 33.20 | 588 |
| chris_t1 | 0 / 0 (0.33 / 0.81 / 0.93) | 0.000-0.675, 0.675-0.818, 0.818-1.000 | 0.000-0.330, 0.670-1.000 | 0.0990 / 0.2829 | 29.04 | 23.64 | 37.99 | 985 |

The axis is found, and at full resolution the criterion prefers the truth to what the search reached (R lower at
the true segments and poses). The half-resolution stage is what fails: 2x2x2 means of a magnitude image are not
the acquisition at half resolution, and there the criterion prefers the wrong segments (mr_gd: R 0.235 for the
segments found after 80 Adam steps, 0.345 for the true segments fitted as long, 0.361 at the true poses). Brief
fits mis-rank even at full resolution (15 Adam steps from no motion: 0.398 for those segments, 0.425 for the grid
segments nearest the truth; 0.250 at the true poses): every candidate needs a fit to convergence at
full resolution (~30 L-BFGS evaluations of ~1.5-2.4 s each on 2 threads for mr_gd here), about an hour per volume
for this grid on a CPU. chris_t1's outer movement (0.32 of the scan from the centre) is beyond half resolution. Inverting with
the wrong poses loses ~5 dB, and R does not guard against it.

Given the exact movement times (`--true-times`: the simulator's axis and times, poses fitted from no motion by
the same L-BFGS), same day and machine:

| volume | axis true / found (R per axis) | segments true | segments found | R at truth / found | input fg PSNR | corrected | with true poses | s |
|---|---|---|---|---|---|---|---|---|
| mr_gd | 2 / 2 (nan / nan / nan) | 0.000-0.340, 0.340-0.706, 0.706-1.000 | 0.000-0.340, 0.706-1.000 | 0.2502 / 0.2655 | 28.66 | 28.77 | 33.20 | 108 |
| chris_t1 | 0 / 0 (nan / nan / nan) | 0.000-0.675, 0.675-0.818, 0.818-1.000 | 0.675-0.818, 0.818-1.000 | 0.0990 / 0.2761 | 29.04 | 23.71 | 37.99 | 216 |

On mr_gd the larger movement's pose is found to ~0.06 degrees / 0.03 mm but not the other's, and the gain is
small; on chris_t1 (two movements on one side) the fit stops in a local minimum far above the truth's R. With
the grid's nearest times on mr_gd (0.33 / 0.70 for 0.340 / 0.706; scratch run) R stays at 0.429 and the inversion
loses 3.9 dB. So the criterion wants the times to about a line, and the pose fit itself better starts (an outer
pose from the inner one helped in a scratch run) or a global search, before the inversion pays. Not a corrector.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from motion_known_pose import corrupt_like_bench, invert, motion_case, plane_weights, volume_parser

from MedSREnhanceLib import read_volume
from MedSREnhanceLib.evaluation.cases import (
    crop_box,
    crop_volume,
    find_volumes,
    prepare_ground_truth,
)
from MedSREnhanceLib.evaluation.metrics import foreground_mask, score
from MedSREnhanceLib.simulate.motion import _pose

Segment = tuple[float, float, int]  # scan-time start, end, row of the pose parameters


def rotation(angles_deg: torch.Tensor) -> torch.Tensor:
    """The simulator's rotation (about i, then j, then k; simulate.motion._rotation), differentiable."""
    a = torch.deg2rad(angles_deg)
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones(()), torch.zeros(())
    rx = torch.stack([torch.stack([one, zero, zero]), torch.stack([zero, c[0], -s[0]]), torch.stack([zero, s[0], c[0]])])
    ry = torch.stack([torch.stack([c[1], zero, s[1]]), torch.stack([zero, one, zero]), torch.stack([-s[1], zero, c[1]])])
    rz = torch.stack([torch.stack([c[2], -s[2], zero]), torch.stack([s[2], c[2], zero]), torch.stack([zero, zero, one])])
    return rz @ ry @ rx


def moved(x: torch.Tensor, params: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """x (z, y, x) after the pose (rotation degrees, translation mm; (i, j, k) about the centre), as
    motion_known_pose.warp, differentiable in ``params``."""
    back = torch.diag(1.0 / half) @ rotation(params[:3]).T
    theta = torch.cat([back @ torch.diag(half), (-back @ params[3:])[:, None]], 1)
    grid = F.affine_grid(theta[None], (1, 1) + tuple(x.shape), align_corners=False)
    return F.grid_sample(x[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def as_params(pose: np.ndarray) -> np.ndarray:
    """4x4 pose -> (rotation degrees about i, j, k as the simulator composes them, translation mm)."""
    return np.r_[Rotation.from_matrix(pose[:3, :3]).as_euler("xyz", degrees=True), pose[:3, 3]]


class GhostCriterion:
    """R for one phase-encode axis on one grid; ``n_scan`` is the number of phase-encode lines of the scan (the
    grid may be coarser: its lines are the central ones, timed as in the scan)."""

    def __init__(self, y: np.ndarray, spacing: np.ndarray, pe_axis: int, n_scan: int) -> None:
        support = ndimage.binary_dilation(foreground_mask(y, "mr", smooth_sigma=2.0), iterations=2)
        self.outside = torch.from_numpy(~support)
        self.y = torch.from_numpy(y.astype(np.float32))
        self.x = torch.where(self.outside, 0.0, self.y)
        self.spectrum = torch.fft.fftn(self.x)
        self.axis = 2 - pe_axis
        n = y.shape[self.axis]
        self.times = (np.fft.fftfreq(n) * n + n_scan // 2 + 0.5) / n_scan
        self.half = torch.tensor(spacing * np.asarray(y.shape[::-1]) / 2.0, dtype=torch.float32)
        self.energy = float((self.y[self.outside] ** 2).sum())

    def _planes(self, selected: np.ndarray) -> torch.Tensor:
        view = [1, 1, 1]
        view[self.axis] = selected.size
        return torch.from_numpy(selected.astype(np.float32).reshape(view))

    def __call__(self, segments: list[Segment], params: torch.Tensor) -> torch.Tensor:
        still = np.ones(self.times.size, bool)
        k = 0.0
        for t0, t1, row in segments:
            selected = (self.times >= t0) & (self.times < t1)
            still &= ~selected
            if selected.any():
                k = k + self._planes(selected) * torch.fft.fftn(moved(self.x, params[row], self.half))
        k = k + self._planes(still) * self.spectrum
        return ((torch.fft.ifftn(k).abs() - self.y)[self.outside] ** 2).sum() / self.energy

    def fit_adam(self, segments: list[Segment], start: torch.Tensor, steps: int) -> tuple[float, torch.Tensor]:
        params = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([params], lr=0.5)
        best = (float("inf"), start)
        for _ in range(steps):
            r = self(segments, params)
            if float(r.detach()) < best[0]:
                best = (float(r.detach()), params.detach().clone())
            opt.zero_grad()
            r.backward()
            opt.step()
        return best

    def fit_lbfgs(self, segments: list[Segment], start: torch.Tensor, evaluations: int) -> tuple[float, torch.Tensor]:
        params = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([params], lr=1, max_iter=evaluations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            r = self(segments, params)
            r.backward()
            return r
        opt.step(closure)
        return float(self(segments, params.detach())), params.detach()


def search_axis(crit: GhostCriterion, distances: list[float], steps: int) -> float:
    """The lowest R of one movement at any of ``distances`` from the k-space centre (one side: the criterion
    cannot tell the sides apart): how much of the ghost this axis explains."""
    return min(crit.fit_adam([(0.0, 0.5 - d, 0)], torch.zeros(1, 6), 2 * steps)[0] for d in distances)


def search_segments(crit: GhostCriterion, distances: list[float], steps: int, keep: int = 3,
                    ) -> tuple[float, list[Segment], torch.Tensor]:
    """Two movements: every pair of distances, on opposite sides or both on one side, fitted briefly from no
    motion; the ``keep`` best fitted again for four times as long."""
    candidates: list[list[Segment]] = []
    for i, da in enumerate(distances):
        for db in distances[i:]:
            candidates.append([(0.0, 0.5 - da, 0), (0.5 + db, 1.01, 1)])  # one on each side
            if db > da:
                candidates.append([(0.0, 0.5 - db, 1), (0.5 - db, 0.5 - da, 0)])  # both on one side
    scored = sorted(((crit.fit_adam(c, torch.zeros(2, 6), steps), c) for c in candidates), key=lambda t: t[0][0])
    best = (float("inf"), [], torch.zeros(2, 6))
    for (_, p), segments in scored[:keep]:
        r, p = crit.fit_adam(segments, p, 4 * steps)
        if r < best[0]:
            best = (r, segments, p)
    return best


def schedule_segments(starts: list[float]) -> list[Segment]:
    """A simulator schedule (pose i from starts[i] to the next start) as segments, row i for pose i."""
    return [(t, starts[i + 1] if i + 1 < len(starts) else 1.01, i) for i, t in enumerate(starts)]


def half_resolution(a: np.ndarray) -> np.ndarray:
    s = [n // 2 * 2 for n in a.shape]
    a = a[:s[0], :s[1], :s[2]]
    return a.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean((1, 3, 5))


def invert_segments(y: np.ndarray, spacing: np.ndarray, pe_axis: int, segments: list[Segment],
                    params: np.ndarray) -> np.ndarray:
    """The acquisition inverted with these poses (motion_known_pose.invert and plane_weights: each plane the mean
    of its own and its mirrored plane's pose), identity outside the segments."""
    starts = sorted({0.0} | {t for seg in segments for t in seg[:2] if t < 1.0})
    poses = []
    for i, t in enumerate(starts):
        middle = (t + (starts[i + 1] if i + 1 < len(starts) else 1.0)) / 2.0
        row = next((r for t0, t1, r in segments if t0 <= middle < t1), None)
        poses.append(np.eye(4) if row is None else
                     _pose({"rotation_deg": params[row, :3].tolist(), "translation_mm": params[row, 3:].tolist()}))
    weights = plane_weights(y.shape, pe_axis, starts)
    return invert(y, poses, weights, spacing * np.asarray(y.shape[::-1]) / 2.0, 5)


def main() -> int:
    parser = volume_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="Adam steps per candidate at half resolution")
    parser.add_argument("--evaluations", type=int, default=30, help="L-BFGS evaluations at full resolution")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--true-times", action="store_true",
                        help="skip the search: the simulator's axis and movement times, poses fitted from no motion")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = motion_case(args.case)
    distances = [0.02, 0.05, 0.08, 0.11, 0.14, 0.17, 0.20, 0.23]  # from the k-space centre, in scan time
    print(f"{args.case}, crop {args.crop}\n")
    print("| volume | axis true / found (R per axis) | segments true | segments found | R at truth / found "
          "| input fg PSNR | corrected | with true poses | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bv in find_volumes(args.inputs, args.ids.split(",")):
        full, _ = prepare_ground_truth(read_volume(bv.path), "mr")
        start, size = crop_box(full, case, args.crop, foreground_mask(full.array, "mr", smooth_sigma=2.0))
        corrupted, pe_axis, _, poses, starts, _ = corrupt_like_bench(full, case, bv.id)
        y, spacing = corrupted.array, np.asarray(full.spacing, float)
        true_segments = schedule_segments(starts)
        true_params = torch.tensor(np.stack([as_params(q) for q in poses]), dtype=torch.float32)
        t0 = time.perf_counter()
        if args.true_times:
            found, axis = [float("nan")] * 3, pe_axis
            segments = [seg for seg in true_segments if not np.allclose(poses[seg[2]], np.eye(4))]
            p = torch.zeros(len(poses), 6)
        else:
            coarse = half_resolution(y)
            found = [search_axis(GhostCriterion(coarse, spacing * 2, a, y.shape[2 - a]), distances, args.steps)
                     for a in range(3)]
            axis = int(np.argmin(found))
            _, segments, p = search_segments(GhostCriterion(coarse, spacing * 2, axis, y.shape[2 - axis]),
                                             distances, args.steps)
        crit = GhostCriterion(y, spacing, axis, y.shape[2 - axis])
        r_found, params = crit.fit_lbfgs(segments, p, args.evaluations)  # from the coarse poses, or none
        seconds = time.perf_counter() - t0
        crit_true = GhostCriterion(y, spacing, pe_axis, y.shape[2 - pe_axis])
        r_true = float(crit_true(true_segments, true_params))
        gt = crop_volume(full, start, size).array
        mask = foreground_mask(gt, "mr")
        fixed = invert_segments(y, spacing, axis, segments, params.numpy())
        ideal = invert_segments(y, spacing, pe_axis, true_segments, true_params.numpy())
        fg = [score(crop_volume(full.with_array(a), start, size).array, gt, "mr", mask)["psnr_fg"]
              for a in (y, fixed, ideal)]
        per_axis = " / ".join(f"{r:.2f}" for r in found)
        seg_true = ", ".join(f"{a:.3f}-{min(b, 1):.3f}" for a, b, _ in true_segments)
        seg_found = ", ".join(f"{a:.3f}-{min(b, 1):.3f}" for a, b, _ in sorted(segments))
        print(f"| {bv.id} | {pe_axis} / {axis} ({per_axis}) | {seg_true} | {seg_found} | {r_true:.4f} / {r_found:.4f} "
              f"| {fg[0]:.2f} | {fg[1]:.2f} | {fg[2]:.2f} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
