"""Value guards around the engine: label maps refused, far outliers clipped for the network, outputs rounded
into the input's integer type on request. Pure numpy; each says in a message what it did."""
from __future__ import annotations

import numpy as np

from ..core import normalise
from ..core.errors import InputError
from ..core.resample import resample_to
from ..core.volume import Volume

# Nothing in a patient attenuates less than air (-1000 HU); scanners write -1024 for it at the bottom of their
# 12-bit range and fill the corners outside the reconstruction circle with far lower values (-2048, -3024,
# -3072). Those are not tissue: the CT nets never saw them, and their edge against air reaches the output up to a
# receptive field inside the body (a -3024 HU surround moved ct-denoise's output by 3 HU on average and up to
# 240 HU within 24 voxels of the circle on a lung CT). Voxels below CT_PADDING_HU (far below air's noise) are
# padding: the nets get air (CT_AIR_HU, the bottom of the scanners' range) there, and the output keeps their values.
CT_PADDING_HU = -1500.0
CT_AIR_HU = -1024.0


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


def ct_padding_as_air(array: np.ndarray, normalisation: str, messages: list[str]) -> np.ndarray:
    """The network's copy of a CT volume with its padding (voxels below ``CT_PADDING_HU``) set to air; other
    normalisations pass through. ``restore_ct_padding`` puts the padding's values back in the output."""
    if not normalisation.startswith("ct"):
        return array
    padding = array < CT_PADDING_HU
    count = int(np.count_nonzero(padding))
    if not count:
        return array
    messages.append(f"{count} voxel(s) below {CT_PADDING_HU:g} HU (scanner padding outside the reconstruction "
                    f"circle) went to the network as air ({CT_AIR_HU:g} HU) and keep their input values in the output")
    return np.where(padding, np.float32(CT_AIR_HU), array)


def restore_ct_padding(volume: Volume, enhanced: Volume, normalisation: str) -> Volume:
    """``enhanced`` with the input's padding (voxels below ``CT_PADDING_HU``) back where it was: the input's value
    wherever the nearest input voxel is padding, on the output grid."""
    if not normalisation.startswith("ct") or not bool((volume.array < CT_PADDING_HU).any()):
        return enhanced
    same = volume.array.shape == enhanced.array.shape and np.allclose(volume.spacing, enhanced.spacing) \
        and np.allclose(volume.origin, enhanced.origin) and np.allclose(volume.direction, enhanced.direction)
    source = volume if same else resample_to(volume, enhanced, "nearest", default=0.0)
    padding = source.array < CT_PADDING_HU
    return enhanced.with_array(np.where(padding, source.array, enhanced.array).astype(np.float32))


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
