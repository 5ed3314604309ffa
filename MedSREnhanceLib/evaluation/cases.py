"""Bench cases (named degradations), the volumes they run on, ground-truth preparation, crops and the degraded pairs."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .. import simulate
from ..core.volume import Scale, Volume, array_hash
from . import metrics
from .cache import load_volumes, save_volumes, seed_for, source_hash

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


DEFAULT_CASES = ("mr-sr-x2", "mr-throughplane-x4", "mr-denoise-5", "ct-lowdose")


DEFAULT_PHOTONS = 2.5e4


DEFAULT_ELECTRONIC_NOISE = 5.0  # counts (std); small next to 2.5e4 photons except behind dense bone


VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Case:
    name: str
    modality: str  # "mr" | "ct"
    task: str  # "sr" | "denoise" | "motion"
    degradation: str  # a function name in simulate
    params: dict[str, Any]
    scale: Scale = (1.0, 1.0, 1.0)  # enhancement scale (i, j, k); 1 for denoising

    def describe(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.degradation}({p})"


def parse_case(name: str, photons: float = DEFAULT_PHOTONS,
               electronic_noise: float = DEFAULT_ELECTRONIC_NOISE, n_angles: Optional[int] = None) -> Case:
    """A case from its name (see the module docstring); raises ValueError naming the accepted forms."""
    m = re.fullmatch(r"mr-sr-x([0-9.]+)", name)
    if m:
        s = float(m.group(1))
        return Case(name, "mr", "sr", "kspace_truncation", {"scale": [s, s, s]}, (s, s, s))
    m = re.fullmatch(r"mr-throughplane-x([0-9.]+)", name)
    if m:
        s = float(m.group(1))
        return Case(name, "mr", "sr", "slice_profile",
                    {"axis": 2, "thickness_factor": s, "profile": "gaussian", "gap": 0.0}, (1.0, 1.0, s))
    m = re.fullmatch(r"mr-denoise-([0-9.]+)", name)
    if m:
        return Case(name, "mr", "denoise", "rician_noise", {"level": float(m.group(1)) / 100.0})
    m = re.fullmatch(r"ct-lowdose(?:-([0-9.eE+]+))?", name)
    if m:
        n = float(m.group(1)) if m.group(1) else float(photons)
        return Case(name, "ct", "denoise", "lowdose_ct",
                    {"photons_per_ray": n, "electronic_noise_std": float(electronic_noise), "n_angles": n_angles})
    m = re.fullmatch(r"mr-motion-([0-9.]+)", name)
    if m:
        amount = float(m.group(1))
        return Case(name, "mr", "motion", "rigid_motion",
                    {"n_events": 2, "max_rotation_deg": amount, "max_translation_mm": amount, "pe_axes": [0, 1, 2]})
    m = re.fullmatch(r"mr-motion-torchio-([0-9.]+)", name)
    if m:  # an independent simulator (evaluation.torchio_motion): models never train on it
        amount = float(m.group(1))
        return Case(name, "mr", "motion", "torchio_motion",
                    {"num_transforms": 2, "degrees": amount, "translation_mm": amount})
    m = re.fullmatch(r"ct-throughplane-x([0-9.]+)(?:-([ijk]))?", name)
    if m:  # default j: the CT volumes here have thick (3 mm) slices along k and ~1 mm pixels in-plane
        s, axis = float(m.group(1)), "ijk".index(m.group(2) or "j")
        scale = [1.0, 1.0, 1.0]
        scale[axis] = s
        return Case(name, "ct", "sr", "slice_profile",
                    {"axis": axis, "thickness_factor": s, "profile": "gaussian", "gap": 0.0}, tuple(scale))
    m = re.fullmatch(r"ct-sr-x([0-9.]+)", name)
    if m:
        s = float(m.group(1))
        return Case(name, "ct", "sr", "gaussian_psf_downsample", {"scale": [s, s, 1.0]}, (s, s, 1.0))
    raise ValueError(f"unknown case {name!r}; use mr-sr-x<S>, mr-throughplane-x<S>, mr-denoise-<percent>, "
                     "mr-motion-<degrees and mm>, mr-motion-torchio-<degrees and mm>, ct-lowdose[-<photons>], ct-throughplane-x<S>[-i|-j|-k] or ct-sr-x<S>")


def degrade_case(case: Case, gt: Volume, rng: np.random.Generator) -> tuple[Volume, Volume]:
    """(input, reference): the degraded volume and the ground truth it is scored against."""
    p = dict(case.params)
    if case.degradation == "kspace_truncation":
        return simulate.kspace_truncation(gt, tuple(p["scale"])), gt
    if case.degradation == "gaussian_psf_downsample":
        return simulate.gaussian_psf_downsample(gt, tuple(p["scale"])), gt
    if case.degradation == "slice_profile":
        return simulate.slice_profile(gt, **p), gt
    if case.degradation == "rician_noise":
        return simulate.rician_noise(gt, p["level"], rng), gt
    if case.degradation == "rigid_motion":  # movements drawn from the per-volume generator (seeded)
        moved, _ = simulate.random_rigid_motion(gt, rng, p["n_events"], p["max_rotation_deg"],
                                                p["max_translation_mm"], tuple(p["pe_axes"]))
        return moved, gt
    if case.degradation == "torchio_motion":
        from . import torchio_motion

        moved, _ = torchio_motion.for_case(gt, p, rng)
        return moved, gt
    if case.degradation == "lowdose_ct":
        noisy, reference = simulate.lowdose_ct(gt, p["photons_per_ray"], p["electronic_noise_std"], rng,
                                              n_angles=p["n_angles"])
        return noisy, reference
    raise ValueError(f"unknown degradation {case.degradation!r}")


@dataclass(frozen=True)
class BenchVolume:
    id: str
    path: Path
    modality: str  # "mr" | "ct"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_volumes(inputs: Sequence[str | Path], ids: Optional[Sequence[str]] = None,
                 modality: str = "auto") -> list[BenchVolume]:
    """Volumes from files, folders (their volume files) or a MANIFEST.json (``file`` + ``modality`` per entry).

    ``ids`` keeps only those ids (file stems for plain files), in the order given.
    """
    found: list[BenchVolume] = []

    def guess(path: Path) -> str:
        if modality != "auto":
            return modality
        from ..core.io import read_volume

        low = float(np.percentile(read_volume(path).array, 1))
        return "ct" if low < -500 else "mr"

    for item in inputs:
        p = Path(item)
        if p.is_file() and p.suffix == ".json":
            entries = json.loads(p.read_text())
            for e in entries:
                f = p.parent / e["file"]
                if not f.name.endswith(VOLUME_SUFFIXES):
                    continue
                shape = e.get("shape") or []
                if ids is None and (len(shape) != 3 or min(shape) < 16):
                    continue  # single slices and 4D files are for I/O tests, not for benchmarks
                mod = "ct" if str(e.get("modality", "")).upper().startswith("CT") else "mr"
                found.append(BenchVolume(str(e["id"]), f, modality if modality != "auto" else mod))
        elif p.is_dir():
            for f in sorted(p.iterdir()):
                if f.is_file() and f.name.endswith(VOLUME_SUFFIXES):
                    found.append(BenchVolume(_stem(f), f, guess(f) if ids is None or _stem(f) in ids else "mr"))
        elif p.is_file():
            found.append(BenchVolume(_stem(p), p, guess(p)))
        else:
            raise FileNotFoundError(f"bench input not found: {p}")
    if ids is not None:
        by_id = {v.id: v for v in found}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"ids not found in the inputs: {', '.join(missing)}")
        found = [by_id[i] for i in ids]
    return found


def prepare_ground_truth(vol: Volume, modality: str) -> tuple[Volume, list[str]]:
    """Make a magnitude-like MR ground truth: z-scored volumes (BraTS) are shifted so their minimum is 0.

    Rician noise and k-space truncation model magnitude images with a zero background; BraTS stores z-scores with
    the background at the (negative) minimum, so subtracting the minimum puts the background at 0 and keeps all
    contrast (metrics are scale-free after the 99.5th-percentile normalisation).
    """
    notes: list[str] = []
    if modality == "mr":
        low = float(vol.array.min())
        if low < 0:
            vol = vol.with_array(vol.array - low)
            notes.append(f"z-scored MR: shifted by {-low:+.4g} so the background (the minimum) is 0")
    return vol, notes


def fit_size(n: int, limit: int, factor: float) -> int:
    """Largest size <= min(n, limit) that the factor divides exactly (so LR and HR grids nest)."""
    for m in range(min(n, limit), 0, -1):
        q = m / factor
        if abs(q - round(q)) < 1e-6 and round(q) >= 1:
            return m
    raise ValueError(f"no crop of {n} voxels is divisible by {factor}")


def grid_step(factor: float) -> int:
    """Smallest whole number of HR voxels that is a whole number of LR voxels (2 -> 2, 2.5 -> 5)."""
    for m in range(1, 1000):
        if abs(m / factor - round(m / factor)) < 1e-6:
            return m
    raise ValueError(f"scale {factor} has no small common multiple with the voxel grid")


def case_factors_zyx(case: Case) -> tuple[float, float, float]:
    f = case.scale if case.task == "sr" else (1.0, 1.0, 1.0)
    return (f[2], f[1], f[0])


def crop_box(vol: Volume, case: Case, crop: Optional[int], mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, size) in array order (z, y, x): centred on the foreground; sizes AND starts divisible by the case's
    scale, so the crop of the LR volume is exactly the LR version of the crop (the grids nest)."""
    limit = crop if crop else max(vol.array.shape)
    factors = case_factors_zyx(case)
    sizes = tuple(fit_size(n, limit, f) for n, f in zip(vol.array.shape, factors))
    idx = np.argwhere(mask)
    if idx.size:
        centre = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
    else:
        centre = np.asarray(vol.array.shape) / 2.0
    starts = []
    for c, sz, n, f in zip(centre, sizes, vol.array.shape, factors):
        step = grid_step(f)
        start = int(round((c - sz / 2.0) / step)) * step
        starts.append(int(min(max(0, start), (n - sz) // step * step)))
    return tuple(starts), sizes


def crop_volume(vol: Volume, start: Sequence[int], size: Sequence[int]) -> Volume:
    """Sub-volume (array order start/size) with the origin of its first voxel, so physical positions are kept."""
    sl = tuple(slice(s, s + n) for s, n in zip(start, size))
    origin = vol.index_to_physical(np.asarray(start[::-1], np.float64))
    return Volume(vol.array[sl].copy(), vol.spacing, tuple(origin), vol.direction.copy(), dict(vol.metadata))


def central_block(mask: np.ndarray, block: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    sizes = tuple(min(block, n) for n in mask.shape)
    idx = np.argwhere(mask)
    centre = (idx.min(axis=0) + idx.max(axis=0)) / 2.0 if idx.size else np.asarray(mask.shape) / 2.0
    starts = tuple(int(min(max(0, round(c - s / 2.0)), n - s)) for c, s, n in zip(centre, sizes, mask.shape))
    return starts, sizes


@dataclass
class BenchSettings:
    cases: tuple[str, ...] = DEFAULT_CASES
    models: Sequence[str] | str = "auto"  # "auto" | "all" | "none" | names of learned models
    crop: Optional[int] = 128  # edge of the central block of each ground truth; None = whole volume
    tune_block: int = 64  # edge of the block NLM and diffusion are tuned on
    seed: int = 0
    photons: float = DEFAULT_PHOTONS
    electronic_noise: float = DEFAULT_ELECTRONIC_NOISE
    n_angles: Optional[int] = None
    device: str = "cpu"
    png: bool = True
    cache: Optional[str] = None  # folder for degraded inputs and classical results (hash-checked reuse)
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def degraded_pair(case: Case, bv: BenchVolume, settings: BenchSettings,
                  ) -> tuple[Volume, Volume, list[str], tuple[int, ...], tuple[int, ...]]:
    """(input, ground truth, notes, crop start, crop size) of one (case, volume), from the cache when valid."""
    from ..core.io import read_volume

    raw = read_volume(bv.path)
    full, notes = prepare_ground_truth(raw, case.modality)
    factors = case_factors_zyx(case)
    # Whole acquisitions are degraded (an MR acquisition sees the whole field of view; k-space truncation of a
    # crop would wrap its cut edges around), so trim the volume to whole LR voxels first, then crop both.
    trim = tuple(fit_size(n, n, f) for n, f in zip(full.array.shape, factors))
    full = crop_volume(full, (0, 0, 0), trim)
    rough_mask = metrics.foreground_mask(full.array, case.modality, smooth_sigma=2.0)
    start, size = crop_box(full, case, settings.crop, rough_mask)
    cache_file = None
    if settings.cache:
        code = [simulate.resolution, simulate.noise, simulate.lowdose]
        if case.task == "motion":  # (not for the others: their cached inputs stay valid)
            from . import torchio_motion

            code += [simulate.motion, torchio_motion]
        key = hashlib.sha256(json.dumps([array_hash(full), case.name, case.params, settings.seed, start, size,
                                         source_hash(*code)]).encode()).hexdigest()[:16]
        cache_file = Path(settings.cache) / f"degraded__{case.name}__{bv.id}__{key}.npz"
        if cache_file.exists():
            vols = load_volumes(cache_file)
            logger.info("%s / %s: degraded input from the cache (%s)", case.name, bv.id, cache_file.name)
            return vols["input"], vols["gt"], notes, start, size
    rng = seed_for(settings.seed, case.name, bv.id)
    if case.degradation == "lowdose_ct":
        # Slice by slice: only the cropped slices need projecting, but whole axial slices (cropping in-plane first
        # would remove attenuating tissue from every ray).
        slab = crop_volume(full, (start[0], 0, 0), (size[0],) + full.array.shape[1:])
        noisy, ref = degrade_case(case, slab, rng)
        inp = crop_volume(noisy, (0,) + start[1:], (size[0],) + size[1:])
        gt = crop_volume(ref, (0,) + start[1:], (size[0],) + size[1:])
    else:
        inp_full, gt_full = degrade_case(case, full, rng)
        gt = crop_volume(gt_full, start, size)
        lr_start = tuple(int(round(st / f)) for st, f in zip(start, factors))
        lr_size = tuple(int(round(sz / f)) for sz, f in zip(size, factors))
        inp = crop_volume(inp_full, lr_start, lr_size)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_volumes(cache_file, {"input": inp, "gt": gt})
    return inp, gt, notes, start, size
