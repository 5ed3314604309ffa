"""Resampling between physical grids through SimpleITK (the interpolation baselines live on this too)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .volume import Scale, Volume, resized_geometry

INTERPOLATORS: dict[str, int] = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,  # cubic B-spline
    "sinc": sitk.sitkHammingWindowedSinc,
}


def to_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array, isVector=False)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(volume.direction.ravel()))
    return image


def from_sitk(image: sitk.Image, metadata: dict | None = None) -> Volume:
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return Volume(
        array,
        image.GetSpacing(),
        image.GetOrigin(),
        np.asarray(image.GetDirection()).reshape(3, 3),
        dict(metadata or {}),
    )


def resample_to(volume: Volume, reference: Volume, interpolator: str = "bspline", default: float = 0.0) -> Volume:
    """``volume`` sampled on ``reference``'s grid by physical coordinates (voxels outside take the edge value)."""
    image = to_sitk(volume)
    ref = to_sitk(reference)
    # The last argument extrapolates by the nearest voxel: the half-voxel rims that an extent-keeping upsampled
    # grid has outside the input's outer voxel centres take edge values instead of fading to ``default``.
    out = sitk.Resample(image, ref, sitk.Transform(), INTERPOLATORS[interpolator], default, sitk.sitkFloat32, True)
    return from_sitk(out, volume.metadata)


def resample_scale(volume: Volume, scale: Scale, interpolator: str = "bspline") -> Volume:
    """``volume`` on the grid of ``resized_geometry(volume, scale)`` (extent kept, spacing / scale)."""
    size, spacing, origin = resized_geometry(volume, scale)
    ref = Volume(np.zeros(size[::-1], np.float32), spacing, origin, volume.direction, {})
    return resample_to(volume, ref, interpolator)
