"""Intensity normalisation shared by training and inference (each model card names the one it used)."""
from __future__ import annotations

import numpy as np

# CT: HU -> (HU + 1000) / 1000, so air is 0 and water 1; no clipping, so bone and metal survive the round trip.
CT_OFFSET = 1000.0
CT_SCALE = 1000.0


def robust_max(array: np.ndarray, percentile: float = 99.5) -> float:
    """The given percentile of |voxel| over the non-zero voxels (MR scale); 1.0 for an all-zero volume."""
    nz = np.abs(array[array != 0])
    if nz.size == 0:
        return 1.0
    value = float(np.percentile(nz, percentile))
    return value if value > 0 else 1.0


def forward(array: np.ndarray, kind: str) -> tuple[np.ndarray, dict[str, float]]:
    """Normalise ``array`` for a model; returns the array and the parameters ``inverse`` needs."""
    if kind == "mr":
        scale = robust_max(array)
        return (array / scale).astype(np.float32), {"offset": 0.0, "scale": scale}
    if kind == "ct":
        return ((array + CT_OFFSET) / CT_SCALE).astype(np.float32), {"offset": -CT_OFFSET, "scale": CT_SCALE}
    raise ValueError(f"unknown normalisation {kind!r}")


def inverse(array: np.ndarray, params: dict[str, float]) -> np.ndarray:
    return (array * params["scale"] + params["offset"]).astype(np.float32)
