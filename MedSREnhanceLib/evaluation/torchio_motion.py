"""An independent motion simulator for the bench: TorchIO's ``RandomMotion`` (Shaw et al. 2019), not ours.

Our models train on ``simulate.motion``; scoring them only on the simulator they trained on would flatter them. TorchIO
(Apache-2.0, the field's augmentation library) simulates motion differently: ``num_transforms`` absolute poses
(each angle uniform in +-degrees, each translation uniform in +-mm, about the volume centre), switched near equal
fractions of a scan whose k-space is filled along the volume's third index axis, the original pose at the k-space
centre, SimpleITK linear resampling, and the REAL part of the inverse transform (ours takes the magnitude).

TorchIO is an optional dependency (the ``bench`` extra): the case ``mr-motion-torchio-<M>`` needs it; nothing else does.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.volume import Volume

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def require_torchio(case_name: str) -> None:
    """Raise ValueError (a one-line CLI error) naming the install command when TorchIO is missing."""
    try:
        import torchio  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"case {case_name} needs TorchIO, an optional dependency: pip install -e '.[bench]' "
                         f"({exc})") from exc


def ras_affine(vol: Volume) -> np.ndarray:
    """4x4 voxel (i, j, k) -> RAS mm affine of ``vol`` (its geometry is ITK's LPS), as nibabel and TorchIO use."""
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ np.asarray(vol.direction, float).reshape(3, 3) @ np.diag(vol.spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(vol.origin, float)
    return affine


def torchio_motion(vol: Volume, degrees: float, translation_mm: float, num_transforms: int,
                   seed: int) -> tuple[Volume, dict[str, Any]]:
    """``vol`` corrupted by ``torchio.RandomMotion(degrees, translation_mm, num_transforms)``, drawn from ``seed``
    (TorchIO draws from torch's global generator; it is forked, so the caller's random state is untouched).
    Returns the volume on the input grid and the drawn parameters (times, degrees, translations)."""
    import torch
    import torchio as tio

    subject = tio.Subject(image=tio.ScalarImage(
        tensor=torch.from_numpy(np.ascontiguousarray(vol.array.T[None], np.float32)), affine=ras_affine(vol)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        moved = tio.RandomMotion(degrees=degrees, translation=translation_mm, num_transforms=num_transforms)(subject)
    array = moved["image"].data[0].numpy().T.astype(np.float32)
    record: dict[str, Any] = {"name": "torchio_motion", "seed": seed, "torchio": tio.__version__}
    for applied in moved.get_applied_transforms():
        for key in ("times", "degrees", "translation"):
            value = getattr(applied, key, None)
            if isinstance(value, dict):
                value = value.get("image")
            if value is not None:
                record[key] = np.asarray(value, float).round(4).tolist()
    return vol.with_array(np.ascontiguousarray(array)), record


def for_case(vol: Volume, params: dict[str, Any], rng: np.random.Generator) -> tuple[Volume, dict[str, Any]]:
    """The bench's corruption for a case's ``params`` (degrees, translation_mm, num_transforms), TorchIO's seed drawn
    from the case's per-volume generator: what ``cases.degrade_case`` and benchmarks that need the record call."""
    return torchio_motion(vol, params["degrees"], params["translation_mm"], params["num_transforms"],
                          int(rng.integers(2**31 - 1)))
