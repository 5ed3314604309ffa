"""Value guards around the engine: label maps refused, far outliers clipped for the network, outputs rounded
into the input's integer type on request. Pure numpy; each says in a message what it did."""
from __future__ import annotations

import numpy as np

from ..core import normalise
from ..core.errors import InputError
from ..core.volume import Volume


def clip_outliers(array: np.ndarray, messages: list[str]) -> np.ndarray:
    """The network's copy of the voxels with the few far outside the robust range clipped to it (a couple of
    1e30 voxels would otherwise set the normalisation and shift the whole output); the input stays as it is."""
    lo, hi = normalise.robust_range(array)
    low, high = int(np.count_nonzero(array < lo)), int(np.count_nonzero(array > hi))
    if not low and not high:
        return array
    messages.append(f"clipped {low + high} outlier voxel(s) (from {float(array.min()):.4g} to "
                    f"{float(array.max()):.4g}) to the robust range [{lo:.4g}, {hi:.4g}] for the network; the "
                    "output does not reproduce their values")
    return np.clip(array, lo, hi)


# An integer file with this few distinct values is a label map (segmentation, mask): interpolation and
# denoising would turn its labels into meaningless in-between values.
LABEL_MAP_MAX_VALUES = 32


def refuse_label_map(volume: Volume) -> None:
    """Refuse a volume read from an integer file (``metadata["dtype"]``) with few distinct values."""
    if not str(volume.metadata.get("dtype", "float")).startswith(("int", "uint")):
        return
    flat = volume.array.ravel()
    if len(np.unique(flat[:: max(1, flat.size // 100_000)])) > LABEL_MAP_MAX_VALUES:
        return  # a sample already has many values: an image (the full count below costs a sort)
    distinct = len(np.unique(flat))
    if distinct <= LABEL_MAP_MAX_VALUES:
        raise InputError(f"the input looks like a label map ({distinct} distinct integer values): enhancing "
                         "would blur its labels into meaningless values; pass --force (force=True) to enhance "
                         "it anyway")


def keep_dtype(enhanced: Volume, dtype: str, messages: list[str]) -> Volume:
    """Round and clip ``enhanced`` into the input's integer type (``dtype="keep"``), saying how many voxels
    were clipped."""
    if dtype.startswith("float"):
        return enhanced
    info = np.iinfo(np.dtype(dtype))
    rounded = np.rint(enhanced.array)
    clipped = int(np.count_nonzero((rounded < info.min) | (rounded > info.max)))
    if clipped:
        messages.append(f"--dtype keep: {clipped} voxel(s) outside the {dtype} range [{info.min}, {info.max}] "
                        "were clipped to it")
    return enhanced.with_array(np.clip(rounded, info.min, info.max).astype(np.float32))
