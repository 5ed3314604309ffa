"""The library's one data type: a 3D scalar volume with its physical geometry.

Conventions (the same as ITK/SimpleITK, LPS physical space):
- ``array`` is float32 indexed (k, j, i), i.e. (z, y, x); SimpleITK's GetArrayFromImage order.
- ``spacing`` and ``origin`` are in index order (i, j, k) = (x, y, z), in millimetres.
- ``direction`` is the 3x3 matrix whose column c is the physical direction of index axis c.
- physical(i, j, k) = origin + direction @ (spacing * (i, j, k)).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", np.ascontiguousarray(self.array, dtype=np.float32))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))

    @property
    def size(self) -> tuple[int, int, int]:
        """Voxel counts in index order (i, j, k) = (x, y, z)."""
        z, y, x = self.array.shape
        return (x, y, z)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxels (the array must have the same shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from {self.array.shape}")
        return replace(self, array=array)

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """Continuous index (..., 3) in (i, j, k) order to LPS physical points (..., 3)."""
        idx = np.asarray(index, dtype=np.float64)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T


def check_spacing(spacing: tuple[float, ...], name: str) -> None:
    """Refuse a zero, negative or non-finite voxel spacing (read from a header, or of a volume)."""
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise InputError(f"{name} has a zero, negative or non-finite voxel spacing "
                         f"({', '.join(f'{s:g}' for s in spacing)} mm)")


def validate(volume: Volume, name: str = "input volume") -> None:
    """Refuse volumes the engine cannot enhance, with a message that names the problem."""
    arr = volume.array
    if arr.ndim != 3:
        raise InputError(f"{name} has {arr.ndim} dimensions; a 3D volume is needed")
    if arr.size == 0 or min(arr.shape) < 1:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{name} has {bad} NaN or infinite voxels")
    check_spacing(volume.spacing, name)
    d = volume.direction
    if not np.all(np.isfinite(d)) or np.abs(d.T @ d - np.eye(3)).max() > 1e-3:  # det alone lets shears through
        raise InputError(f"{name} has a direction matrix that is not orthonormal")


Scale = tuple[float, float, float]


def parse_scale(scale: float | int | str | tuple[float, ...] | list[float]) -> Scale:
    """A scale in index order (i, j, k). ``2`` -> (2, 2, 2); ``"1,1,4"`` -> (1, 1, 4)."""
    if isinstance(scale, str):
        parts = [p for p in scale.replace(" ", "").split(",") if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"scale {scale!r} is not a number or three comma-separated numbers") from None
    elif isinstance(scale, (int, float, np.integer, np.floating)):
        values = [float(scale)]
    else:
        values = [float(s) for s in scale]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(f"scale needs 1 or 3 values, got {len(values)}")
    if any(not np.isfinite(v) or v <= 0 for v in values):
        raise InputError(f"scale must be > 0 on every axis, got {tuple(values)}")
    return (values[0], values[1], values[2])


def resized_geometry(volume: Volume, scale: Scale) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """Grid of ``volume`` resampled by ``scale`` per index axis (i, j, k).

    Spacing is divided by the scale, the direction is unchanged and the physical extent is kept: the centre of
    voxel 0 moves by (new_spacing - old_spacing) / 2 along each axis, so the outer voxel edges stay put.
    The new size is round(n * s), halves rounded up, at least 1; when n * s is an integer the extent is kept
    exactly. Otherwise the near outer edge (continuous index -0.5) is kept and the far one moves outward or inward
    by (round(n * s) - n * s) new voxels, i.e. by at most half a new voxel (e.g. 33 x 1.5 = 49.5 -> 50 voxels,
    the far edge 0.5 new voxel further out). Testing/test_geometry.py checks this in physical space.
    Returns (size (i, j, k), spacing, origin).
    """
    old_sp = np.asarray(volume.spacing)
    s = np.asarray(scale, dtype=np.float64)
    new_sp = old_sp / s
    size = tuple(int(max(1, np.floor(n * f + 0.5))) for n, f in zip(volume.size, s))
    origin = np.asarray(volume.origin) + volume.direction @ ((new_sp - old_sp) / 2.0)
    return size, tuple(float(v) for v in new_sp), tuple(float(v) for v in origin)


def empty_like_resized(volume: Volume, scale: Scale) -> Volume:
    """A zero volume on the grid that ``resized_geometry`` defines."""
    size, spacing, origin = resized_geometry(volume, scale)
    return Volume(np.zeros(size[::-1], np.float32), spacing, origin, volume.direction.copy(), dict(volume.metadata))


def array_hash(*vols: Volume) -> str:
    """16 hex digits of sha256 over the voxels and geometry of ``vols`` (the bench's cache keys, the cards' volume
    hashes)."""
    h = hashlib.sha256()
    for v in vols:
        h.update(np.ascontiguousarray(v.array).tobytes())
        h.update(json.dumps([v.spacing, v.origin, v.direction.ravel().tolist()]).encode())
    return h.hexdigest()[:16]
