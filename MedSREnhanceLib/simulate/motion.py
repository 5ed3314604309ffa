"""Rigid head motion during an MR acquisition, simulated in k-space (ghosting and blurring along phase encoding).

The object takes a new rigid pose at each motion event; k-space lines along the phase-encode axis are acquired
in order (line m of n at time (m + 0.5) / n, centre line at the middle of the scan), so every line is taken from
the Fourier transform of the object in the pose it had at that time. The poses are expressed relative to the pose
at the k-space centre line: the centre keeps the reference position, so the corrupted volume stays aligned with
its ground truth (what a correction can recover) and the zero-motion case is the identity.

Events (``rigid_motion(vol, pe_axis, events)``): a list of ``{"time": t, "rotation_deg": [rx, ry, rz],
"translation_mm": [tx, ty, tz]}`` in scan-time order; each is a movement relative to the pose before it, rotations
about the index axes (i, j, k) through the volume centre, translations in mm along them. Output: the magnitude
of the inverse transform (for magnitude images, |x| = x where there is no motion).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from ..core.volume import Volume


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation about the i, then j, then k axis (radians from degrees), acting on (i, j, k) vectors."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pose(event: dict[str, Any]) -> np.ndarray:
    """4x4 homogeneous rigid transform (physical (i, j, k) mm about the volume centre) of one movement."""
    t = np.eye(4)
    t[:3, :3] = _rotation(event.get("rotation_deg", (0.0, 0.0, 0.0)))
    t[:3, 3] = np.asarray(event.get("translation_mm", (0.0, 0.0, 0.0)), float)
    return t


def _line_times(n: int) -> np.ndarray:
    """Acquisition time in [0, 1) of each line in numpy's FFT layout (linear order from -kmax to +kmax)."""
    order = np.fft.fftfreq(n) * n + n // 2  # position of each FFT-layout line in the centred (acquisition) order
    return (order + 0.5) / n


def line_poses(n: int, starts: Sequence[float]) -> np.ndarray:
    """Index into the poses of each of ``n`` lines (numpy's FFT layout): the last pose started by the line's time."""
    return np.searchsorted(np.asarray(starts, float), _line_times(n), side="right") - 1


def poses_relative_to_centre(events: Sequence[dict[str, Any]], n: int) -> tuple[list[np.ndarray], list[float]]:
    """Absolute poses (identity first) re-expressed so the pose of the centre line is the identity; start times."""
    poses, starts = [np.eye(4)], [0.0]
    for e in events:
        poses.append(_pose(e) @ poses[-1])
        starts.append(float(e["time"]))
    centre = int(line_poses(n, starts)[0])  # FFT-layout index 0 is the k-space centre
    inv_centre = np.linalg.inv(poses[centre])
    return [p @ inv_centre for p in poses], starts


def _moved(array: np.ndarray, pose: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """The object after ``pose`` (physical, (i, j, k) order) on the same voxel grid: out(p) = in(pose^-1 p)."""
    if np.allclose(pose, np.eye(4)):
        return array
    flip = np.eye(3)[::-1]  # (i, j, k) <-> array (z, y, x)
    rot = flip @ pose[:3, :3] @ flip
    shift = flip @ pose[:3, 3]
    centre = (np.asarray(array.shape, float) - 1.0) / 2.0
    s, s_inv = np.diag(spacing_zyx), np.diag(1.0 / spacing_zyx)
    matrix = s_inv @ rot.T @ s  # voxel -> voxel of the inverse motion
    offset = centre - matrix @ centre - s_inv @ rot.T @ shift
    return ndimage.affine_transform(array, matrix, offset, order=1, mode="constant", cval=0.0)


def acquired_kspace(vol: Volume, pe_axis: int, events: Sequence[dict[str, Any]]) -> np.ndarray:
    """k-space (numpy FFT layout, complex64) of the scan with ``events``: each phase-encode line taken from the
    object in the pose it had when the line was acquired, poses relative to the centre line's."""
    if pe_axis not in (0, 1, 2):
        raise ValueError(f"pe_axis must be 0, 1 or 2 (i, j, k), got {pe_axis}")
    times = [float(e["time"]) for e in events]
    if any(not 0.0 <= t <= 1.0 for t in times) or times != sorted(times):
        raise ValueError(f"motion event times must be in [0, 1] and in scan order, got {times}")
    array = vol.array.astype(np.float32)
    axis = 2 - pe_axis
    poses, starts = poses_relative_to_centre(events, array.shape[axis])
    pose_of_line = line_poses(array.shape[axis], starts)
    spacing_zyx = np.asarray(vol.spacing[::-1], float)
    kspace = np.zeros(array.shape, np.complex64)
    for i, pose in enumerate(poses):
        lines = np.nonzero(pose_of_line == i)[0]
        if lines.size == 0:
            continue
        index: list[Any] = [slice(None)] * 3
        index[axis] = lines
        kspace[tuple(index)] = np.fft.fftn(_moved(array, pose, spacing_zyx))[tuple(index)]
    return kspace


def rigid_motion(vol: Volume, pe_axis: int, events: Sequence[dict[str, Any]]) -> Volume:
    """The volume as acquired with ``events`` happening during the scan (phase encoding along index ``pe_axis``)."""
    kspace = acquired_kspace(vol, pe_axis, events)
    return vol.with_array(np.abs(np.fft.ifftn(kspace)).astype(np.float32))


def random_motion_events(rng: np.random.Generator, n_events: int, max_rotation_deg: float,
                         max_translation_mm: float, time_range: tuple[float, float] = (0.1, 0.9),
                         centre_margin: float = 0.0) -> list[dict[str, Any]]:
    """``n_events`` movements at uniform random times: each a rotation of up to ``max_rotation_deg`` about a random
    axis and a translation of up to ``max_translation_mm`` in a random direction (magnitudes uniform).
    ``centre_margin`` > 0 keeps every movement at least that far (in scan time) from the k-space centre, so the
    reference pose acquires at least the central 2 * margin of the lines (a movement right at the centre leaves
    no pose to call the reference)."""
    lo, hi = time_range
    if centre_margin > 0.0:
        left, right = max(0.0, 0.5 - centre_margin - lo), max(0.0, hi - 0.5 - centre_margin)
        if left + right <= 0.0:
            raise ValueError(f"centre_margin {centre_margin} leaves no time in {time_range} for a movement")
        u = rng.uniform(0.0, left + right, n_events)  # one interval of length left + right, split around the centre
        times = np.where(u < left, lo + u, 0.5 + centre_margin + (u - left))
    else:
        times = rng.uniform(lo, hi, n_events)
    events = []
    for t in sorted(float(v) for v in times):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        angle = float(rng.uniform(0.0, max_rotation_deg))
        events.append({"time": t, "rotation_deg": [float(v) for v in axis * angle],
                       "translation_mm": [float(v) for v in direction * rng.uniform(0.0, max_translation_mm)]})
    return events
