"""`medsr bench`: the evaluation harness of GUIDE section 3.

For every (case, volume): crop the ground truth, degrade it with a physical model (``degrade``; seeded, parameters
recorded), run the learned models and EVERY classical baseline of the task through ``enhance`` (denoisers tuned on
the ground truth by a grid search: the strongest honest version of each), resample each output onto the ground-
truth grid by physical coordinates, and score it (``metrics``). Writes results.md, results.json and one PNG per
(case, volume). Per-volume numbers only: a mean hides the volume a model breaks on.

Cases are named, and the number in the name is the parameter, so extra scales and levels need no code:
  mr-sr-x{S}             MR isotropic SR: k-space truncation by S on every axis, enhanced at scale S
  mr-throughplane-x{S}   MR through-plane SR: Gaussian slice profile FWHM = S slices along k, every S-th slice
  mr-denoise-{P}         MR denoising: Rician noise, sigma = P % of the foreground's 99th percentile
  ct-lowdose[-{N}]       CT denoising: projection-domain low dose, N photons per ray (default --photons);
                         the reference is the noise-free reconstruction of the same pipeline
  ct-sr-x{S}             CT in-plane SR: Gaussian PSF (FWHM = LR spacing) then sampling by S on i and j

Usage: ``python -m MedSREnhanceLib.bench ../shared/data/MANIFEST.json --ids mr_gd,lung_ct_pat_1 --out DIR``
(``medsr bench`` takes the same arguments).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import re
import shlex
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import degrade, metrics
from .models import registry
from .resample import resample_to
from .volume import Scale, Volume

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DEFAULT_CASES = ("mr-sr-x2", "mr-throughplane-x4", "mr-denoise-5", "ct-lowdose")
DEFAULT_PHOTONS = 2.5e4
DEFAULT_ELECTRONIC_NOISE = 5.0  # counts (std); small next to 2.5e4 photons except behind dense bone
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

# Tuning grids per classical denoiser (SR interpolators have no free parameter). Ranges are wide enough that the
# optimum sits inside for 2-10 % Rician and 1e4-1e5 photons; a best value on the edge is flagged in the output.
TUNING_GRIDS: dict[str, list[dict[str, Any]]] = {
    "gaussian": [{"sigma": s} for s in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5)],
    # Diffusion time = iterations x time_step; one half step covers "less than one iteration".
    "anisotropic-diffusion": [{"iterations": i, "conductance": c, "time_step": t}
                              for i, t in ((1, 0.03125), (1, 0.0625), (2, 0.0625), (3, 0.0625), (5, 0.0625),
                                           (8, 0.0625), (13, 0.0625), (21, 0.0625))
                              for c in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)],
    # h is relative to the estimated noise sigma, which skimage also subtracts (2 sigma^2) from patch distances,
    # so good values sit well below 1. A small search window is often better on fine anatomy (and 5x faster).
    "nlmeans": [{"h_factor": h, "patch_size": 3, "patch_distance": d}
                for d in (2, 4) for h in (0.25, 0.35, 0.45, 0.6, 0.8, 1.0, 1.3, 1.7)],
}
# Expensive methods are tuned on a central block of the foreground, then run once on the whole (cropped) volume.
TUNE_ON_BLOCK = ("nlmeans", "anisotropic-diffusion")


# ------------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    name: str
    modality: str  # "mr" | "ct"
    task: str  # "sr" | "denoise"
    degradation: str  # a function name in degrade
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
    m = re.fullmatch(r"ct-sr-x([0-9.]+)", name)
    if m:
        s = float(m.group(1))
        return Case(name, "ct", "sr", "gaussian_psf_downsample", {"scale": [s, s, 1.0]}, (s, s, 1.0))
    raise ValueError(f"unknown case {name!r}; use mr-sr-x<S>, mr-throughplane-x<S>, mr-denoise-<percent>, "
                     "ct-lowdose[-<photons>] or ct-sr-x<S>")


def degrade_case(case: Case, gt: Volume, rng: np.random.Generator) -> tuple[Volume, Volume]:
    """(input, reference): the degraded volume and the ground truth it is scored against."""
    p = dict(case.params)
    if case.degradation == "kspace_truncation":
        return degrade.kspace_truncation(gt, tuple(p["scale"])), gt
    if case.degradation == "gaussian_psf_downsample":
        return degrade.gaussian_psf_downsample(gt, tuple(p["scale"])), gt
    if case.degradation == "slice_profile":
        return degrade.slice_profile(gt, **p), gt
    if case.degradation == "rician_noise":
        return degrade.rician_noise(gt, p["level"], rng), gt
    if case.degradation == "lowdose_ct":
        noisy, reference = degrade.lowdose_ct(gt, p["photons_per_ray"], p["electronic_noise_std"], rng,
                                              n_angles=p["n_angles"])
        return noisy, reference
    raise ValueError(f"unknown degradation {case.degradation!r}")


# ---------------------------------------------------------------------------------------------- volumes


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
        from .io import read_volume

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


def _fit_size(n: int, limit: int, factor: float) -> int:
    """Largest size <= min(n, limit) that the factor divides exactly (so LR and HR grids nest)."""
    for m in range(min(n, limit), 0, -1):
        q = m / factor
        if abs(q - round(q)) < 1e-6 and round(q) >= 1:
            return m
    raise ValueError(f"no crop of {n} voxels is divisible by {factor}")


def _grid_step(factor: float) -> int:
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
    sizes = tuple(_fit_size(n, limit, f) for n, f in zip(vol.array.shape, factors))
    idx = np.argwhere(mask)
    if idx.size:
        centre = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
    else:
        centre = np.asarray(vol.array.shape) / 2.0
    starts = []
    for c, sz, n, f in zip(centre, sizes, vol.array.shape, factors):
        step = _grid_step(f)
        start = int(round((c - sz / 2.0) / step)) * step
        starts.append(int(min(max(0, start), (n - sz) // step * step)))
    return tuple(starts), sizes


def crop_volume(vol: Volume, start: Sequence[int], size: Sequence[int]) -> Volume:
    """Sub-volume (array order start/size) with the origin of its first voxel, so physical positions are kept."""
    sl = tuple(slice(s, s + n) for s, n in zip(start, size))
    origin = vol.index_to_physical(np.asarray(start[::-1], np.float64))
    return Volume(vol.array[sl].copy(), vol.spacing, tuple(origin), vol.direction.copy(), dict(vol.metadata))


def _central_block(mask: np.ndarray, block: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    sizes = tuple(min(block, n) for n in mask.shape)
    idx = np.argwhere(mask)
    centre = (idx.min(axis=0) + idx.max(axis=0)) / 2.0 if idx.size else np.asarray(mask.shape) / 2.0
    starts = tuple(int(min(max(0, round(c - s / 2.0)), n - s)) for c, s, n in zip(centre, sizes, mask.shape))
    return starts, sizes


# -------------------------------------------------------------------------------------------- scoring


def objectives(modality: str) -> tuple[str, ...]:
    """Metrics each baseline is tuned for and models are judged on (foreground PSNR; per window for CT)."""
    return ("psnr_fg",) if modality == "mr" else tuple(f"psnr_fg_{w.name}" for w in metrics.CT_WINDOWS)


def ssim_keys(modality: str) -> tuple[str, ...]:
    if modality == "mr":
        return ("ssim", "ssim_fg")
    return tuple(k for w in metrics.CT_WINDOWS for k in (f"ssim_{w.name}", f"ssim_fg_{w.name}"))


@dataclass
class Scorer:
    """Scores outputs against one ground truth: resampled onto its grid by physical coordinates first."""

    reference: Volume
    modality: str
    mask: np.ndarray
    mr_scale: float = 1.0

    @classmethod
    def for_reference(cls, reference: Volume, modality: str) -> "Scorer":
        mask = metrics.foreground_mask(reference.array, modality)
        return cls(reference, modality, mask, metrics.mr_scale(reference.array) if modality == "mr" else 1.0)

    def on_grid(self, output: Volume) -> tuple[Volume, dict[str, Any]]:
        ref = self.reference
        same = (output.array.shape == ref.array.shape
                and np.allclose(output.spacing, ref.spacing, atol=1e-5)
                and np.allclose(output.origin, ref.origin, atol=1e-4)
                and np.allclose(output.direction, ref.direction, atol=1e-6))
        offset = float(np.linalg.norm(np.asarray(output.origin) - np.asarray(ref.origin)))
        # Linear, not B-spline: no ringing is added to a misplaced output, and on a matching grid it is exact.
        aligned = output if same else resample_to(output, ref, "linear")
        return aligned, {"grid_matches_reference": bool(same), "origin_offset_mm": offset,
                         "output_size": list(output.size), "output_spacing": list(output.spacing)}

    def score(self, output: Volume) -> tuple[dict[str, float], dict[str, Any]]:
        aligned, grid = self.on_grid(output)
        return metrics.score(aligned.array, self.reference.array, self.modality, self.mask, self.mr_scale), grid


# ------------------------------------------------------------------------------------------ running


RunFn = Callable[..., Any]


def _enhance(inp: Volume, case: Case, model: str, params: Optional[dict[str, Any]], device: str) -> tuple[Volume, float, list[str]]:
    from .enhance import enhance

    t0 = time.perf_counter()
    result = enhance(inp, task=case.task, model=model, modality=case.modality,
                     scale=case.scale if case.task == "sr" else 1, device=device, params=params)
    return result.enhanced, time.perf_counter() - t0, list(result.messages)


def tune(case: Case, model: str, inp: Volume, scorer: Scorer, grid: Sequence[dict[str, Any]], device: str = "cpu",
         ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], float]:
    """Grid search of a classical model's parameters against the ground truth.

    Returns (best params per objective, every trial with its scores, seconds spent).
    """
    t0 = time.perf_counter()
    trials: list[dict[str, Any]] = []
    for params in grid:
        out, seconds, _ = _enhance(inp, case, model, params, device)
        scores, _ = scorer.score(out)
        trials.append({"params": dict(params), "scores": scores, "seconds": seconds})
    best = {obj: max(trials, key=lambda t: t["scores"][obj])["params"] for obj in objectives(scorer.modality)}
    return best, trials, time.perf_counter() - t0


def _at_edge(grid: Sequence[dict[str, Any]], params: dict[str, Any]) -> bool:
    """Whether a tuned value lies on the boundary of its grid axis (the optimum may lie outside).

    Diffusion is judged by its diffusion time (iterations x time_step), the quantity the two parameters share.
    """
    def axes(p: dict[str, Any]) -> dict[str, Any]:
        q = dict(p)
        if "iterations" in q and "time_step" in q:
            q["diffusion_time"] = q.pop("iterations") * q.pop("time_step")
        return q

    grid_axes = [axes(g) for g in grid]
    for key, value in axes(params).items():
        values = sorted({g[key] for g in grid_axes})
        if len(values) > 2 and value in (values[0], values[-1]):
            return True
    return False


def learned_models_for(case: Case, requested: Sequence[str] | str) -> list[str]:
    """Learned models to run on a case.

    "auto": the one ``enhance(model="auto")`` picks for the case (what a user gets), if it is learned; "all": every
    learned model that serves the case; "none"; or the requested names, those that serve the case.
    """
    from .enhance import select_model, serves

    scale = case.scale if case.task == "sr" else (1.0, 1.0, 1.0)
    if requested == "none":
        return []
    if requested == "auto":
        spec = select_model(case.task, case.modality, scale)
        return [spec.name] if spec.kind == "learned" else []
    specs = list(registry.LEARNED) if requested == "all" else [registry.get(n) for n in requested]
    return [s.name for s in specs if s.kind == "learned" and case.modality in s.modalities and serves(s, case.task, scale)]


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


def _fourier_matrix(m: int, factor: float) -> np.ndarray:
    """(n, m) band-limited periodic interpolation from m LR samples to the n = m * factor HR voxel centres.

    LR voxel k sits at HR continuous index factor * k + (factor - 1) / 2 (extent-keeping grids), so HR voxel n is
    at LR coordinate (n - (factor - 1) / 2) / factor; the Nyquist pair gets half weight (as in degrade).
    """
    n = int(round(m * factor))
    u = (np.arange(n) - (factor - 1.0) / 2.0) / factor
    freqs = np.arange(0, m // 2 + 1)
    weights = np.where(freqs == 0, 1.0, 2.0)
    if m % 2 == 0:
        weights[-1] = 1.0
    d = u[:, None] - np.arange(m)[None, :]  # (n, m)
    return (np.cos(2.0 * np.pi * d[..., None] * freqs[None, None, :] / m) @ weights) / m


def fourier_zerofill(volume: Volume, scale: Scale) -> Volume:
    """Zero-filled k-space interpolation (sinc interpolation of the periodic band-limited signal) onto the
    extent-keeping grid of ``scale`` (integer or not; per axis)."""
    from .volume import resized_geometry

    size, spacing, origin = resized_geometry(volume, scale)
    arr = volume.array.astype(np.float64)
    for axis, f in enumerate(scale):  # index axis i, j, k -> array axis 2, 1, 0
        if abs(f - 1.0) < 1e-9:
            continue
        dim = 2 - axis
        mat = _fourier_matrix(arr.shape[dim], f)[: size[axis]]
        arr = np.moveaxis(np.moveaxis(arr, dim, -1) @ mat.T, -1, dim)
    return Volume(arr.astype(np.float32), spacing, origin, volume.direction.copy(), dict(volume.metadata))


def _seed_for(seed: int, case: str, vol_id: str) -> np.random.Generator:
    # Stable per (case, volume): a subset run reproduces the same noise as the full run.
    return np.random.default_rng([seed, zlib.crc32(f"{case}/{vol_id}".encode())])


def _source_hash(*modules: Any) -> str:
    h = hashlib.sha256()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()[:16]


def _array_hash(*vols: Volume) -> str:
    h = hashlib.sha256()
    for v in vols:
        h.update(np.ascontiguousarray(v.array).tobytes())
        h.update(json.dumps([v.spacing, v.origin, v.direction.ravel().tolist()]).encode())
    return h.hexdigest()[:16]


def _save_volumes(path: Path, vols: dict[str, Volume]) -> None:
    names = list(vols)
    arrays = {f"a{i}": vols[n].array for i, n in enumerate(names)}
    geoms = {f"g{i}": np.asarray([*vols[n].spacing, *vols[n].origin, *vols[n].direction.ravel()])
             for i, n in enumerate(names)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, names=np.asarray(names), **arrays, **geoms)
    tmp.replace(path)


def _load_volumes(path: Path) -> dict[str, Volume]:
    with np.load(path) as data:
        out = {}
        for i, name in enumerate(data["names"].tolist()):
            g = data[f"g{i}"]
            out[str(name)] = Volume(data[f"a{i}"], tuple(g[:3]), tuple(g[3:6]), g[6:].reshape(3, 3))
        return out


def degraded_pair(case: Case, bv: BenchVolume, settings: BenchSettings,
                  ) -> tuple[Volume, Volume, list[str], tuple[int, ...], tuple[int, ...]]:
    """(input, ground truth, notes, crop start, crop size) of one (case, volume), from the cache when valid."""
    from .io import read_volume

    raw = read_volume(bv.path)
    full, notes = prepare_ground_truth(raw, case.modality)
    factors = case_factors_zyx(case)
    # Whole acquisitions are degraded (an MR acquisition sees the whole field of view; k-space truncation of a
    # crop would wrap its cut edges around), so trim the volume to whole LR voxels first, then crop both.
    trim = tuple(_fit_size(n, n, f) for n, f in zip(full.array.shape, factors))
    full = crop_volume(full, (0, 0, 0), trim)
    rough_mask = metrics.foreground_mask(full.array, case.modality, smooth_sigma=2.0)
    start, size = crop_box(full, case, settings.crop, rough_mask)
    cache_file = None
    if settings.cache:
        key = hashlib.sha256(json.dumps([_array_hash(full), case.name, case.params, settings.seed, start, size,
                                         _source_hash(degrade)]).encode()).hexdigest()[:16]
        cache_file = Path(settings.cache) / f"degraded__{case.name}__{bv.id}__{key}.npz"
        if cache_file.exists():
            vols = _load_volumes(cache_file)
            logger.info("%s / %s: degraded input from the cache (%s)", case.name, bv.id, cache_file.name)
            return vols["input"], vols["gt"], notes, start, size
    rng = _seed_for(settings.seed, case.name, bv.id)
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
        _save_volumes(cache_file, {"input": inp, "gt": gt})
    return inp, gt, notes, start, size


def classical_rows(case: Case, inp: Volume, gt: Volume, scorer: Scorer, settings: BenchSettings,
                   ) -> tuple[list[dict[str, Any]], dict[str, Volume]]:
    """Every classical baseline of the task (denoisers tuned per objective on the ground truth), scored.

    With ``settings.cache`` the rows and outputs of an earlier run are reused when the degraded input, the ground
    truth, the tuning grids and the baseline code are identical (hash-checked); such rows carry ``"cached": true``.
    """
    from . import baselines

    cache_json = cache_npz = None
    if settings.cache:
        task_grids = {s.name: TUNING_GRIDS.get(s.name) for s in registry.CLASSICAL if s.task == case.task}
        key = hashlib.sha256(json.dumps([_array_hash(inp, gt), case.name, task_grids, list(TUNE_ON_BLOCK),
                                         settings.tune_block, _source_hash(baselines, metrics),
                                         [(s.name, s.method, s.params) for s in registry.CLASSICAL]],
                                        default=str).encode()).hexdigest()[:16]
        stem = Path(settings.cache) / f"classical__{case.name}__{key}"
        cache_json, cache_npz = stem.with_suffix(".json"), stem.with_suffix(".npz")
        if cache_json.exists() and cache_npz.exists():
            rows = json.loads(cache_json.read_text())
            for r in rows:
                r["cached"] = True
            logger.info("%s: classical baselines from the cache (%s)", case.name, cache_json.name)
            return rows, _load_volumes(cache_npz)

    rows: list[dict[str, Any]] = []
    outputs: dict[str, Volume] = {}
    for spec in registry.CLASSICAL:
        if spec.task != case.task or case.modality not in spec.modalities:
            continue
        grid_params = TUNING_GRIDS.get(spec.name)
        if not grid_params:
            out, seconds, messages = _enhance(inp, case, spec.name, None, settings.device)
            scores, grid = scorer.score(out)
            rows.append({"model": spec.name, "kind": "classical", "params": {}, "tuned_for": None,
                         "tuning": "no free parameter", "metrics": scores, "seconds": seconds, "grid": grid,
                         "_output": spec.name})
            outputs[spec.name] = out
            continue
        tune_note = "tuned on the whole (cropped) volume"
        t_inp, t_scorer = inp, scorer
        if spec.name in TUNE_ON_BLOCK and max(inp.array.shape) > settings.tune_block:
            b_start, b_size = _central_block(scorer.mask, settings.tune_block)
            t_inp = crop_volume(inp, b_start, b_size)
            t_scorer = Scorer.for_reference(crop_volume(gt, b_start, b_size), case.modality)
            t_scorer.mr_scale = scorer.mr_scale  # same intensity normalisation as the full volume
            tune_note = f"tuned on a central {b_size[2]}x{b_size[1]}x{b_size[0]} block, then run on the whole volume"
        logger.info("%s: tuning %s (%d settings)", case.name, spec.name, len(grid_params))
        best, trials, tune_seconds = tune(case, spec.name, t_inp, t_scorer, grid_params, settings.device)
        done: dict[str, dict[str, Any]] = {}
        for obj, params in best.items():
            key = json.dumps(params, sort_keys=True)
            if key not in done:
                out, seconds, _ = _enhance(inp, case, spec.name, params, settings.device)
                scores, grid = scorer.score(out)
                done[key] = {"model": spec.name, "kind": "classical", "params": params, "tuned_for": [obj],
                             "tuning": tune_note, "tuning_seconds": tune_seconds, "tuning_trials": trials,
                             "at_grid_edge": _at_edge(grid_params, params), "metrics": scores, "seconds": seconds,
                             "grid": grid, "_output": f"{spec.name}:{key}"}
                outputs[f"{spec.name}:{key}"] = out
            else:
                done[key]["tuned_for"].append(obj)
        rows.extend(done.values())
    if cache_json is not None and cache_npz is not None:
        cache_json.parent.mkdir(parents=True, exist_ok=True)
        _save_volumes(cache_npz, outputs)
        cache_json.write_text(json.dumps(_jsonable(rows)))
    return rows, outputs


def provenance(model: str, volume_id: str) -> dict[str, Any]:
    """Which weights ran, and whether the model card says this volume was seen in training or validation."""
    spec = registry.get(model)
    card = spec.card_data()
    training = card.get("training", {}) if isinstance(card.get("training"), dict) else {}
    seen_train = volume_id in (training.get("volumes") or card.get("training_volumes") or [])
    seen_val = volume_id in (training.get("validation_volumes") or [])
    return {"weights_sha256": spec.sha256, "held_out": not (seen_train or seen_val),
            "seen_in": "training" if seen_train else "validation" if seen_val else None}


def bench_one(case: Case, bv: BenchVolume, settings: BenchSettings, out_dir: Path) -> dict[str, Any]:
    """Run one (case, volume): degrade, tune and run baselines, run learned models, score, plot."""
    t_start = time.perf_counter()
    inp, gt, notes, start, size = degraded_pair(case, bv, settings)
    logger.info("%s / %s: ground truth %s voxels, input %s voxels", case.name, bv.id, gt.size, inp.size)
    scorer = Scorer.for_reference(gt, case.modality)
    rows: list[dict[str, Any]] = []

    if case.task == "denoise":  # the noisy input itself: what every method must improve on
        scores, grid = scorer.score(inp)
        rows.append({"model": "input (degraded)", "kind": "input", "params": {}, "tuned_for": None,
                     "metrics": scores, "seconds": 0.0, "grid": grid})
    base_rows, outputs = classical_rows(case, inp, gt, scorer, settings)
    rows.extend(base_rows)
    if case.degradation == "kspace_truncation":
        # Not a product baseline (GUIDE lists linear, B-spline, sinc) but what scanners do: zero-filled k-space
        # interpolation, the exact inverse of the truncation's band limit. Shown so gains are read against it too.
        t0 = time.perf_counter()
        out = fourier_zerofill(inp, case.scale)
        seconds = time.perf_counter() - t0
        scores, grid = scorer.score(out)
        rows.append({"model": "fourier-zerofill (reference)", "kind": "reference", "params": {}, "tuned_for": None,
                     "metrics": scores, "seconds": seconds, "grid": grid})

    for name in learned_models_for(case, settings.models):
        out, seconds, messages = _enhance(inp, case, name, None, settings.device)
        scores, grid = scorer.score(out)
        rows.append({"model": name, "kind": "learned", "params": {}, "tuned_for": None, "metrics": scores,
                     "seconds": seconds, "grid": grid, "messages": messages, **provenance(name, bv.id)})
        outputs[name] = out

    verdicts = judge(rows, case.modality)
    png = None
    if settings.png:
        png = _plot(case, bv, gt, inp, rows, outputs, verdicts, scorer, out_dir)
    for r in rows:
        r.pop("_output", None)
    return {"case": case.name, "volume": bv.id, "file": str(bv.path), "modality": case.modality,
            "notes": notes, "crop": {"start_zyx": list(start), "size_zyx": list(size),
                                     "ground_truth_size_ijk": list(gt.size), "input_size_ijk": list(inp.size),
                                     "input_spacing": list(inp.spacing)},
            "foreground_voxels": int(scorer.mask.sum()), "mr_normaliser": scorer.mr_scale if case.modality == "mr" else None,
            "rows": rows, "verdicts": verdicts, "png": png, "seconds": time.perf_counter() - t_start}


BAR_DB = 0.5
SSIM_TOLERANCE = 5e-5  # rounding: "no worse" at four decimals


def judge(rows: list[dict[str, Any]], modality: str) -> dict[str, Any]:
    """Best baseline per objective, and each learned model's gains against it (the bar of issue 3)."""
    classical = [r for r in rows if r["kind"] == "classical"]
    out: dict[str, Any] = {"best_baseline": {}, "models": {}}
    if not classical:
        return out
    for obj in objectives(modality):
        best = max(classical, key=lambda r: r["metrics"][obj])
        out["best_baseline"][obj] = {"model": best["model"], "params": best["params"], "value": best["metrics"][obj]}
    best_ssim = {k: max(r["metrics"][k] for r in classical) for k in ssim_keys(modality)}
    for r in rows:
        if r["kind"] != "learned":
            continue
        gains = {obj: r["metrics"][obj] - out["best_baseline"][obj]["value"] for obj in objectives(modality)}
        dssim = {k: r["metrics"][k] - best_ssim[k] for k in ssim_keys(modality)}
        passed = all(g >= BAR_DB for g in gains.values()) and all(d >= -SSIM_TOLERANCE for d in dssim.values())
        out["models"][r["model"]] = {"gain_db": gains, "ssim_delta_vs_best_baseline": dssim, "passes_bar": passed}
        for ref in (x for x in rows if x["kind"] == "reference"):  # informational, not part of the bar
            out["models"][r["model"]].setdefault("gain_vs_reference_db", {})[ref["model"]] = {
                obj: r["metrics"][obj] - ref["metrics"][obj] for obj in objectives(modality)}
    return out


# ---------------------------------------------------------------------------------------------- output


def _fmt(v: Optional[float], digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
                     if k not in ("patch_size", "patch_distance", "time_step")) or "-"


def _metric_columns(modality: str) -> list[tuple[str, str, int]]:
    if modality == "mr":
        return [("psnr", "PSNR", 2), ("psnr_fg", "PSNR fg", 2), ("ssim", "SSIM", 4), ("ssim_fg", "SSIM fg", 4)]
    cols: list[tuple[str, str, int]] = []
    for w in metrics.CT_WINDOWS:
        cols += [(f"psnr_{w.name}", f"PSNR {w.name}", 2), (f"psnr_fg_{w.name}", f"PSNR fg {w.name}", 2),
                 (f"ssim_{w.name}", f"SSIM {w.name}", 4)]
    return cols


def _learned_precision(device: str) -> str:
    """What --precision auto runs the learned models in on ``device`` (bf16 on AMX CPUs, fp32 on other CPUs)."""
    try:
        from .inference import autocast_dtype, choose_device, precision_name
    except ImportError:  # no torch: only classical models can run
        return "n/a"
    return precision_name(autocast_dtype(choose_device(device), "auto"))


def markdown(report: dict[str, Any]) -> str:
    lines = ["# MedSREnhance benchmark", ""]
    if report.get("command"):
        lines += ["Command:", "", "```", report["command"], "```", ""]
    s = report["settings"]
    precision = f" (learned models in {s['learned_precision']})" if s.get("learned_precision") else ""
    lines += [f"Run {report['started']} UTC, git {report.get('git', '?')}, {report['seconds']:.0f} s on {s['device']}"
              f"{precision}. "
              f"Crop: central {s['crop'] or 'none'} voxel block per ground truth (centred on the foreground, sizes "
              f"divisible by the scale). Denoisers tuned on the ground truth by grid search; NLM and anisotropic "
              f"diffusion on a central {s['tune_block']}^3 block, then run on the whole cropped volume. Outputs "
              "resampled onto the ground-truth grid by physical coordinates (linear) before scoring.", "",
              "Metrics: MR divided by the ground truth's 99.5th percentile (non-zero voxels), data range 1; CT HU "
              "windows full [-1000, 1000] and soft tissue C40/W400, data range 1. PSNR over the whole volume and "
              "inside a foreground mask (fg); 3D SSIM, Gaussian sigma 1.5, K1 0.01, K2 0.03. Bar: a learned model "
              f"gains >= {BAR_DB} dB fg PSNR over the best tuned baseline (per CT window) and its SSIM (whole and fg) "
              "is no worse than the best baseline SSIM. 'held out' comes from the model card: a volume the model was "
              "trained or validated on (early stopping) is not a held-out test.", ""]
    if any(r.get("cached") for res in report["results"] for r in res["rows"]):
        lines += ["Rows marked (cached) come from an earlier run of this harness on identical inputs (degraded volume, "
                  "ground truth, tuning grids and baseline code hash-checked, `--cache`); their seconds are that "
                  "run's.", ""]
    lines += ["## Summary: learned models against the best tuned baseline", ""]
    summary = [r for r in report["results"] if r["verdicts"].get("models")]
    if summary:
        lines += ["| case | volume | model | held out | best baseline | fg PSNR gain (dB) | SSIM delta (min) | bar |",
                  "|---|---|---|---|---|---|---|---|"]
        for res in summary:
            for name, v in res["verdicts"]["models"].items():
                row = next(r for r in res["rows"] if r["model"] == name)
                held = "yes" if row.get("held_out", True) else f"no ({row.get('seen_in')})"
                base = "; ".join(f"{b['model']}" for b in res["verdicts"]["best_baseline"].values())
                gains = " / ".join(f"{g:+.2f}" for g in v["gain_db"].values())
                dmin = min(v["ssim_delta_vs_best_baseline"].values())
                lines.append(f"| {res['case']} | {res['volume']} | {name} | {held} | {base} | {gains} | {dmin:+.4f} | "
                             f"{'PASS' if v['passes_bar'] else '**MISS**'} |")
        if any(res.get("modality") == "ct" for res in summary):
            lines += ["", "CT gains are given per window (full / soft)."]
    else:
        lines.append("No learned model ran.")
    lines.append("")
    for case in report["cases"]:
        lines += [f"## {case['name']}", "", f"Degradation: `{case['degradation']}` {json.dumps(case['params'])}; "
                  f"enhancement scale (i, j, k) = {tuple(case['scale'])}; noise seeded per volume from "
                  f"seed {report['settings']['seed']}.", ""]
        for res in [r for r in report["results"] if r["case"] == case["name"]]:
            c = res["crop"]
            lines += [f"### {res['volume']}", "",
                      f"Ground truth {'x'.join(map(str, c['ground_truth_size_ijk']))} voxels (crop start z,y,x "
                      f"{tuple(c['start_zyx'])}), input {'x'.join(map(str, c['input_size_ijk']))} voxels; "
                      f"foreground {res['foreground_voxels']} voxels." + (" " + " ".join(res["notes"]) if res["notes"] else ""),
                      ""]
            cols = _metric_columns(res["modality"])
            lines.append("| model | params | " + " | ".join(c[1] for c in cols) + " | s |")
            lines.append("|---|---|" + "---|" * len(cols) + "---|")
            best_models = {(b["model"], json.dumps(b["params"], sort_keys=True))
                           for b in res["verdicts"].get("best_baseline", {}).values()}
            for row in res["rows"]:
                name = row["model"]
                if (name, json.dumps(row["params"], sort_keys=True)) in best_models:
                    name += " **(best baseline)**"
                if row.get("tuned_for") and len(objectives(res["modality"])) > 1:
                    name += f" [tuned for {', '.join(row['tuned_for'])}]"
                if row.get("at_grid_edge"):
                    name += " (edge of grid)"
                if row.get("cached"):
                    name += " (cached)"
                if row.get("seen_in"):
                    name += f" (**{row['seen_in']} volume of this model**)"
                if not row["grid"]["grid_matches_reference"]:
                    name += f" (off-grid, {row['grid']['origin_offset_mm']:.2f} mm origin offset)"
                vals = " | ".join(_fmt(row["metrics"][k], d) for k, _, d in cols)
                lines.append(f"| {name} | {_params_text(row['params'])} | {vals} | {row['seconds']:.1f} |")
            for name, v in res["verdicts"].get("models", {}).items():
                gains = ", ".join(f"{k} {g:+.2f} dB" for k, g in v["gain_db"].items())
                lines.append("")
                lines.append(f"{name}: {gains} over the best tuned baseline; SSIM deltas "
                             + ", ".join(f"{k} {d:+.4f}" for k, d in v["ssim_delta_vs_best_baseline"].items())
                             + f": {'passes' if v['passes_bar'] else 'MISSES'} the bar.")
                for ref_name, g in v.get("gain_vs_reference_db", {}).items():
                    lines.append(f"Against {ref_name} (not a bar baseline): "
                                 + ", ".join(f"{k} {d:+.2f} dB" for k, d in g.items()) + ".")
            if res.get("png"):
                lines += ["", f"![{res['case']} {res['volume']}]({res['png']})"]
            lines.append("")
    return "\n".join(lines) + "\n"


def _plot(case: Case, bv: BenchVolume, gt: Volume, inp: Volume, rows: list[dict[str, Any]],
          outputs: dict[str, Volume], verdicts: dict[str, Any], scorer: Scorer, out_dir: Path) -> Optional[str]:
    """Ground truth, degraded, best baseline, ours and their error maps: an axial and a coronal slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = objectives(case.modality)[0]
    best = verdicts.get("best_baseline", {}).get(obj)
    base_row = next((r for r in rows if best and r["model"] == best["model"] and r["params"] == best["params"]), None)
    learned = [r for r in rows if r["kind"] == "learned"]
    ours_row = max(learned, key=lambda r: r["metrics"][obj]) if learned else None

    def key_of(row: Optional[dict[str, Any]]) -> Optional[str]:
        if row is None:
            return None
        return row.get("_output") or row["model"]

    def grid(v: Optional[Volume]) -> Optional[np.ndarray]:
        if v is None:
            return None
        # nearest for the degraded input, so its voxels are shown as acquired
        return resample_to(v, gt, "nearest").array if v is inp else scorer.on_grid(v)[0].array

    panels = [("ground truth", gt.array), ("degraded", grid(inp)),
              (f"best baseline: {best['model']}" if best else "best baseline", grid(outputs.get(key_of(base_row) or ""))),
              (f"ours: {ours_row['model']}" if ours_row else "ours: none", grid(outputs.get(key_of(ours_row) or "")))]
    if case.modality == "mr":
        lo, hi = 0.0, scorer.mr_scale
    else:
        lo, hi = -1000.0, 1000.0
    ref = gt.array
    errs = [np.abs(p - ref) if p is not None else None for _, p in panels[2:]]
    emax = max((float(np.percentile(e[scorer.mask], 99)) for e in errs if e is not None), default=1.0) or 1.0
    zc, yc = ref.shape[0] // 2, ref.shape[1] // 2
    sx, sy, sz = gt.spacing
    fig, axes = plt.subplots(2, 6, figsize=(15, 5.6))
    titles = [t for t, _ in panels] + ["|error| best baseline", "|error| ours"]
    images = [p for _, p in panels] + errs
    for col, (title, img) in enumerate(zip(titles, images)):
        for row, (sl, aspect) in enumerate(((lambda a: a[zc], sy / sx), (lambda a: a[:, yc][::-1], sz / sx))):
            ax = axes[row, col]
            ax.axis("off")
            if img is None:
                continue
            if col < 4:
                ax.imshow(sl(img), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            else:
                ax.imshow(sl(img), cmap="magma", vmin=0, vmax=emax, aspect=aspect, interpolation="nearest")
        axes[0, col].set_title(title, fontsize=8)
    label = {r_key: r for r_key, r in (("base", base_row), ("ours", ours_row))}
    sub = [f"{case.name} / {bv.id}"]
    for tag, r in label.items():
        if r is not None:
            sub.append(f"{tag} {r['model']}: {obj} {r['metrics'][obj]:.2f} dB")
    fig.suptitle("   ".join(sub), fontsize=9)
    fig.tight_layout()
    png_dir = out_dir / "png"
    png_dir.mkdir(parents=True, exist_ok=True)
    path = png_dir / f"{case.name}__{bv.id}.png"
    buf = io.BytesIO()
    fig.savefig(buf, dpi=65)
    plt.close(fig)
    from PIL import Image  # matplotlib's own dependency

    # Grey images plus one colour map fit a 256-colour palette: a third of the bytes, for a committed figure.
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)
    return str(path.relative_to(out_dir))


def _git_revision() -> str:
    """Short commit of the library's checkout, "+modified" when the library's files differ from it."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True,
                               timeout=10, cwd=here).stdout.strip()
        return (rev + ("+modified" if dirty else "")) if rev else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_bench(volumes: Sequence[BenchVolume], out_dir: str | Path, settings: Optional[BenchSettings] = None,
              on_result: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Run every case on every volume of its modality; writes results.md, results.json and png/ in ``out_dir``.

    Returns the report (the content of results.json).
    """
    settings = settings or BenchSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = [parse_case(c, settings.photons, settings.electronic_noise, settings.n_angles) for c in settings.cases]
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "command": settings.command, "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "git": _git_revision(),
        "settings": {"cases": list(settings.cases), "models": settings.models if isinstance(settings.models, str)
                     else list(settings.models), "crop": settings.crop, "tune_block": settings.tune_block,
                     "seed": settings.seed, "device": settings.device,
                     "learned_precision": _learned_precision(settings.device), **settings.extra},
        "tuning_grids": TUNING_GRIDS,
        "cases": [{"name": c.name, "modality": c.modality, "task": c.task, "degradation": c.degradation,
                   "params": c.params, "scale": list(c.scale)} for c in cases],
        "volumes": [{"id": v.id, "file": str(v.path), "modality": v.modality} for v in volumes],
        "results": [],
    }
    for case in cases:
        for bv in volumes:
            if bv.modality != case.modality:
                continue
            logger.info("bench %s on %s", case.name, bv.id)
            res = bench_one(case, bv, settings, out)
            report["results"].append(res)
            report["seconds"] = time.perf_counter() - t0
            # Written after every volume: a long run that is stopped still leaves its finished numbers.
            (out / "results.json").write_text(json.dumps(_jsonable(report), indent=1))
            (out / "results.md").write_text(markdown(report))
            if on_result is not None:
                on_result(res)
    report["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(_jsonable(report), indent=1))
    (out / "results.md").write_text(markdown(report))
    return report


# --------------------------------------------------------------------------------------------- CLI glue


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `medsr bench` (also `python -m MedSREnhanceLib.bench`)."""
    parser.add_argument("inputs", nargs="+", help="volume files, folders of volumes, or a MANIFEST.json")
    parser.add_argument("--ids", default=None, help="comma-separated ids (manifest ids or file stems) to keep")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated cases: mr-sr-x<S>, mr-throughplane-x<S>, mr-denoise-<percent>, "
                             "ct-lowdose[-<photons>], ct-sr-x<S> (default: %(default)s)")
    parser.add_argument("--models", default="auto",
                        help="learned models: auto (the one `medsr enhance --model auto` picks for each case), all "
                             "(every learned model that serves it), none, or comma-separated names")
    parser.add_argument("--modality", default="auto", choices=("auto", "mr", "ct"),
                        help="modality of plain files (a manifest states it)")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default: %(default)s)")
    parser.add_argument("--crop", type=int, default=128,
                        help="edge of the central block cropped from each ground truth; 0 = whole volume")
    parser.add_argument("--tune-block", type=int, default=64,
                        help="edge of the central block NLM and diffusion are tuned on (default: %(default)s)")
    parser.add_argument("--photons", type=float, default=DEFAULT_PHOTONS, help="ct-lowdose photons per ray")
    parser.add_argument("--electronic-noise", type=float, default=DEFAULT_ELECTRONIC_NOISE,
                        help="ct-lowdose electronic noise std in counts (default: %(default)s)")
    parser.add_argument("--n-angles", type=int, default=None, help="ct-lowdose projection angles (default: Nyquist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for learned models (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and SimpleITK")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG figures")
    parser.add_argument("--cache", default=None,
                        help="folder to keep degraded inputs and classical results in; a later run with identical "
                             "inputs, grids and baseline code reuses them (hash-checked) and says so")
    parser.add_argument("--quiet", action="store_true")


def _command_line() -> str:
    argv = list(sys.argv)
    prog = ["medsr"] if Path(argv[0]).name.startswith("medsr") else ["python", "-m", "MedSREnhanceLib.bench"]
    return shlex.join(prog + argv[1:])


def run_from_args(args: argparse.Namespace) -> int:
    """Run the bench from parsed arguments; prints the summary table. Returns an exit code."""
    import SimpleITK as sitk

    from .errors import InputError

    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bench: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, args.threads))
    ids = [i for i in args.ids.split(",") if i] if args.ids else None
    models: Sequence[str] | str = args.models if args.models in ("auto", "all", "none") else \
        [m for m in args.models.split(",") if m]
    try:
        cases = tuple(c for c in args.cases.split(",") if c)
        for c in cases:
            parse_case(c)
        volumes = find_volumes(args.inputs, ids, args.modality)
        if not isinstance(models, str):
            for m in models:
                registry.get(m)
    except (ValueError, FileNotFoundError, InputError) as exc:
        sys.stderr.write(f"medsr bench: error: {exc}\n")
        return 2
    if models != "none" and any(registry.LEARNED):
        try:
            import torch

            torch.set_num_threads(max(1, args.threads))
        except ImportError:
            pass
    settings = BenchSettings(cases=cases, models=models, crop=args.crop or None, tune_block=args.tune_block,
                             seed=args.seed, photons=args.photons, electronic_noise=args.electronic_noise,
                             n_angles=args.n_angles, device=args.device, png=not args.no_png, cache=args.cache,
                             command=_command_line(), extra={"threads": args.threads})
    report = run_bench(volumes, args.out, settings)
    if not args.quiet:
        text = markdown(report)
        start = text.find("## Summary")
        end = text.find("\n## ", start + 1)
        print(text[start:end if end > 0 else None].rstrip())
        print(f"wrote {Path(args.out) / 'results.md'} and results.json")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MedSREnhanceLib.bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
