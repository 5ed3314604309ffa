"""Training volumes (manifest, weights_ok check), structure-weighted patch sampling, augmentation and the PairSource base."""
from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .. import simulate
from ..core.resample import from_sitk
from ..core.volume import Volume
from .config import Config
from .data_sources import DataSources, load_sources, volume_file

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def sources_of(cfg: Config) -> DataSources | None:
    """The config's data sources file (None when it names none: volumes come from data_root's manifest alone)."""
    return load_sources(cfg.data.sources, cfg.data.data_root) if cfg.data.sources else None


def load_volume(cfg: Config, volume_id: str, sources: DataSources | None = None) -> Volume:
    path, _ = volume_file(sources, cfg.data.data_root, volume_id)
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    vol = from_sitk(image, {"id": volume_id})
    logger.info("loaded %s %s spacing %s", volume_id, vol.array.shape, vol.spacing)
    return vol


def crop_centre(vol: Volume, max_extent: int) -> Volume:
    """The central at most ``max_extent`` voxels of every axis (keeps big volumes cheap to re-degrade)."""
    if max_extent <= 0 or max(vol.array.shape) <= max_extent:
        return vol
    start = [max(0, (n - max_extent) // 2) for n in vol.array.shape]
    sl = tuple(slice(a, a + max_extent) for a in start)
    origin = vol.index_to_physical(np.array(start[::-1], float))  # (i, j, k) of the new voxel 0
    return Volume(vol.array[sl], vol.spacing, tuple(origin), vol.direction, dict(vol.metadata))


def zscore_brain(array: np.ndarray) -> np.ndarray:
    """BraTS-style intensities: z-scored inside the foreground, background exactly 0."""
    mask = simulate.foreground_mask(array)
    if not mask.any():
        return array.copy()
    mean, std = float(array[mask].mean()), float(array[mask].std()) or 1.0
    return np.where(mask, (array - mean) / std, 0.0).astype(np.float32)


def structure_weights(array: np.ndarray, stride: int) -> np.ndarray:
    """Sampling weights on a coarse grid: smoothed gradient magnitude plus a floor so flat areas still appear."""
    g = ndimage.gaussian_gradient_magnitude(array.astype(np.float32), 1.0)
    coarse = g[tuple(slice(None, None, stride) for _ in range(array.ndim))]
    return coarse + 0.2 * float(coarse.mean()) + 1e-8


def sample_corner(weights: np.ndarray, stride: int, shape: tuple[int, ...], patch: tuple[int, ...],
                  rng: np.random.Generator) -> tuple[int, ...]:
    """Corner of a patch centred near a coarse-grid voxel drawn with probability proportional to ``weights``."""
    flat = weights.ravel()
    idx = int(rng.choice(flat.size, p=flat / flat.sum()))
    centre = np.array(np.unravel_index(idx, weights.shape)) * stride + rng.integers(0, stride, weights.ndim)
    corner = []
    for c, n, p in zip(centre, shape, patch):
        corner.append(int(np.clip(c - p // 2, 0, max(0, n - p))))
    return tuple(corner)


def pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    pads = [(0, max(0, s - n)) for n, s in zip(array.shape, shape)]
    return np.pad(array, pads, mode="reflect") if any(p[1] for p in pads) else array


def augment(arrays: list[np.ndarray], rng: np.random.Generator, permute_axes: tuple[int, ...],
             flip_axes: tuple[int, ...]) -> list[np.ndarray]:
    """Same random flips and permutation of ``permute_axes`` for every array of a pair."""
    flips = [a for a in flip_axes if rng.random() < 0.5]
    perm = list(range(arrays[0].ndim))
    if len(permute_axes) > 1:
        shuffled = list(rng.permutation(permute_axes))
        for src, dst in zip(permute_axes, shuffled):
            perm[src] = int(dst)
    out = []
    for a in arrays:
        if flips:
            a = np.flip(a, axis=flips)
        out.append(np.ascontiguousarray(np.transpose(a, perm)))
    return out


class PairSource:
    """Yields (input, target, retention) batches; ``refresh`` redraws the random degradations of whole volumes.
    retention (see DegradeConfig.own_noise_correction) is None for sources that do not model target noise."""

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        sources = sources_of(cfg)
        self.vols = [crop_centre(self.prepare(load_volume(cfg, vid, sources)), cfg.data.max_extent) for vid in ids]

    def prepare(self, vol: Volume) -> Volume:
        """A loaded volume as the source uses it, before the central crop (identity unless a source says)."""
        return vol

    def refresh(self) -> None:  # pragma: no cover - overridden where degradations are random
        pass

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        drawn = [self.draw() for _ in range(n)]
        x = torch.from_numpy(np.stack([d[0] for d in drawn])[:, None])
        y = torch.from_numpy(np.stack([d[1] for d in drawn])[:, None])
        if drawn[0][2] is None:  # a source either always or never models its targets' noise
            return x, y, None
        return x, y, torch.from_numpy(np.stack([d[2] for d in drawn])[:, None])

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One (input, target, retention map or None) sample."""
        return (*self.sample(), None)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError
