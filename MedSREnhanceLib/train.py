"""Training of the bundled models: ``medsr train CONFIG.toml`` (or ``python -m MedSREnhanceLib.train CONFIG``).

A TOML config holds four typed tables ([model], [data], [degrade], [train]; see the dataclasses below and
configs/*.toml). Pairs come from the physical degradations in ``degrade.py`` exactly as the engine and the
benchmark see them, normalised with ``normalise.forward`` computed on the degraded input (as at inference).
Patches are drawn with probability growing with the target's gradient magnitude; augmentation = flips, axis
permutations (where the degradation is isotropic), intensity scaling, random degradation parameters.
Loss = L1 + ``ssim_weight`` * (1 - SSIM). Checkpoints (model, optimiser, step, RNG states) every
``checkpoint_minutes`` to ``run_dir``; ``resume=True`` continues from the last one. The result is
``weights/<name>.pt`` (fp32 state_dict) plus ``weights/<name>.json`` (model card with the resolved config).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import logging
import math
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from . import degrade, normalise
from .normalise import forward as normalise_forward, noise_sigma, robust_max
from .resample import from_sitk, resample_scale
from .volume import Volume

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


# ------------------------------------------------------------------------------------------------ config


@dataclass
class ModelConfig:
    name: str  # bundled model name, e.g. "mr-sr-x2"; also the weights/card file stem
    arch: str  # module in MedSREnhanceLib.models
    builder: str  # class in that module
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the typed constructor (typos fail there)
    init_from: str = ""  # optional state_dict to start from (fine-tuning), relative to the repo root
    init_strict: bool = True  # False: copy only tensors whose names and shapes match (body transfer)


@dataclass
class DataConfig:
    task: str  # "sr" | "throughplane" | "denoise-mr" | "denoise-ct"
    train_ids: list[str]
    val_ids: list[str] = field(default_factory=list)
    data_root: str = "../shared/data"  # relative paths here and below: to the repository root
    patch: int = 32  # target (HR) patch edge in voxels (2D patches for throughplane)
    zscore_variants: bool = True  # add brain-z-scored copies (background 0, negative tissue values)
    cache_dir: str = "../cache"  # precomputed CT pairs (never inside the repo)
    ct_max_slices: int = 32  # central axial slices per CT volume used for the low-dose pairs
    max_extent: int = 0  # crop every axis to at most this many central voxels (0: whole volumes)
    normalisation: str = ""  # a normalise.forward kind; "" = by task ("ct" for denoise-ct, else "mr")


@dataclass
class DegradeConfig:
    scale: int = 2  # isotropic SR factor
    factor_range: list[float] = field(default_factory=lambda: [2.0, 6.0])  # through-plane slice ratios
    profiles: list[str] = field(default_factory=lambda: ["gaussian", "rect"])
    noise_range: list[float] = field(default_factory=lambda: [0.0, 0.0])  # Rician level range
    noise_prob: float = 0.0  # probability of adding Rician noise to an input (SR robustness)
    # MR denoising targets carry their own noise (~3 % of the robust maximum on the stroke volumes, by
    # normalise.noise_sigma); noise present in both input and target teaches the net to keep part of it (it keeps
    # s1^2 / (s1^2 + s2^2) of noise it cannot tell apart), which showed as residual noise in flat white matter.
    # target_noise_max > 0: k-space-downsample each training volume (axes of >= 64 voxels) by the factor that
    # brings its own noise to this level (n axes truncated by f lower white noise by f^(n/2)), times a factor
    # drawn from downsample_range at every refresh (also packs more structure into each voxel).
    target_noise_max: float = 0.0
    downsample_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # own_noise_correction: the loss compares pred + r (x - pred) with the noisy target, r = s0^2 / (s0^2 + sa^2)
    # (s0 the target's own noise, sa the added), so that pred estimates the clean signal: for Gaussian noise,
    # E[target | x] = clean + r (x - clean) (Noisier2Noise, Moran et al. 2020, with unequal variances). Voxels
    # where the target is exactly 0 (masked background) carry no own noise and get r = 0.
    own_noise_correction: bool = False
    photons_sim: list[float] = field(default_factory=lambda: [1e4])  # simulated photon counts (CT cache)
    photons_range: list[float] = field(default_factory=lambda: [1e4, 1e5])  # dose range drawn in training
    electronic_noise_std: float = 5.0
    # CT: std range (HU) of a reconstruction-noise texture added to input and target alike: a real scan's own noise,
    # which the reference of a simulated low dose keeps. Without it the net learned to remove all noise and
    # over-smoothed 1e5-photon lung CT, whose reference carries ~7 HU (a 0.8 blend with the input scored better).
    shared_noise_hu: list[float] = field(default_factory=lambda: [0.0, 0.0])
    n_angles: int = 360
    refresh_every: int = 50  # steps between fresh random degradations of the whole training volumes


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 4
    lr: float = 1e-3
    lr_final_fraction: float = 0.05  # cosine decay to this fraction of lr
    warmup_steps: int = 0  # linear lr warm-up: small first Adam steps while the output is still near the identity
    ssim_weight: float = 0.2
    seed: int = 0
    threads: int = 1
    checkpoint_minutes: float = 3.0
    max_minutes: float = 35.0  # hard wall-clock stop (a truncated run says so in its card)
    val_every: int = 200
    run_dir: str = "../runs"  # checkpoints (outside the repo)
    out_dir: str = ""  # default: MedSREnhanceLib/weights
    # "bf16": CPU autocast for the forward pass (fp32 master weights and loss). On an AMX CPU a denoiser step took
    # 0.34 s in bf16 vs 0.85 s in fp32 (batch 4, 1 thread); without AMX bf16 was ~20x slower (README).
    precision: str = "fp32"
    grad_clip: float = 0.0  # > 0: clip the gradient norm (a bf16 MR denoiser run at lr 1e-3 spiked to 25x its loss)
    # > 0: ship an exponential moving average of the weights (decay per step) instead of the last step's. The MR
    # denoiser's held-out scores swung by up to 1 dB between checkpoints 3 minutes apart.
    ema_decay: float = 0.0


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    degrade: DegradeConfig
    train: TrainConfig


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ValueError(f"unknown key(s) in [{where}]: {', '.join(sorted(unknown))}")
    return cls(**table)


def _from_repo(path: str) -> str:
    return str(path if not path or Path(path).is_absolute() else (REPO_ROOT / path).resolve())


def _check_range(values: list[float], name: str, minimum: float) -> float:
    """A [degrade] [lo, hi] pair with minimum <= lo <= hi; returns hi."""
    if len(values) != 2 or not minimum <= values[0] <= values[1]:
        raise ValueError(f"[degrade] {name} must be [lo, hi] with {minimum:g} <= lo <= hi, not {values}")
    return float(values[1])


def load_config(path: str | Path, data_root: str = "") -> Config:
    """Parse a TOML config; relative directories resolve against the repository root, so a config means the
    same thing from any working directory. ``data_root`` overrides the config's."""
    raw = tomllib.loads(Path(path).read_text())
    unknown = set(raw) - {"model", "data", "degrade", "train"}
    if unknown:
        raise ValueError(f"unknown table(s) in {path}: {', '.join(sorted(unknown))}")
    cfg = Config(
        model=_build(ModelConfig, raw["model"], "model"),
        data=_build(DataConfig, raw["data"], "data"),
        degrade=_build(DegradeConfig, raw.get("degrade", {}), "degrade"),
        train=_build(TrainConfig, raw.get("train", {}), "train"),
    )
    if cfg.train.precision not in ("fp32", "bf16"):  # before any data is loaded or simulated
        raise ValueError(f"[train] precision must be fp32 or bf16, not {cfg.train.precision!r}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ValueError(f"[train] ema_decay must be in [0, 1), not {cfg.train.ema_decay}")
    allowed = {"denoise-mr": ("mr", "mr-noise"), "denoise-ct": ("ct", "ct-noise")}.get(cfg.data.task, ())
    if cfg.data.normalisation and cfg.data.normalisation not in allowed:  # only the denoising sources read it
        raise ValueError(f"[data] normalisation {cfg.data.normalisation!r} is not one task {cfg.data.task} "
                         f"can use ({', '.join(allowed) or 'none: it uses its own'})")
    if cfg.degrade.target_noise_max < 0.0:
        raise ValueError(f"[degrade] target_noise_max must be >= 0, not {cfg.degrade.target_noise_max}")
    down_hi = _check_range(cfg.degrade.downsample_range, "downsample_range", 1.0)
    if (down_hi > 1.0 or cfg.degrade.target_noise_max != 0.0 or cfg.degrade.own_noise_correction) \
            and cfg.data.task != "denoise-mr":
        raise ValueError("[degrade] downsample_range, target_noise_max and own_noise_correction are for task "
                         "denoise-mr")
    if _check_range(cfg.degrade.shared_noise_hu, "shared_noise_hu", 0.0) > 0.0 and cfg.data.task != "denoise-ct":
        raise ValueError("[degrade] shared_noise_hu is for task denoise-ct")
    if data_root:
        cfg.data.data_root = str(Path(data_root).resolve())
    cfg.data.data_root, cfg.data.cache_dir = _from_repo(cfg.data.data_root), _from_repo(cfg.data.cache_dir)
    cfg.train.run_dir, cfg.train.out_dir = _from_repo(cfg.train.run_dir), _from_repo(cfg.train.out_dir)
    return cfg


# -------------------------------------------------------------------------------------------------- data


def read_manifest(data_root: str) -> dict[str, dict[str, Any]]:
    entries = json.loads((Path(data_root) / "MANIFEST.json").read_text())
    return {e["id"]: e for e in entries}


def load_volume(data_root: str, volume_id: str) -> Volume:
    entry = read_manifest(data_root)[volume_id]
    image = sitk.ReadImage(str(Path(data_root) / entry["file"]), sitk.sitkFloat32)
    vol = from_sitk(image, {"id": volume_id})
    logger.info("loaded %s %s spacing %s", volume_id, vol.array.shape, vol.spacing)
    return vol


def check_weights_ok(data_root: str, ids: list[str]) -> None:
    manifest = read_manifest(data_root)
    for vid in ids:
        if not str(manifest[vid].get("weights_ok", "")).startswith("yes"):
            raise ValueError(f"volume {vid!r} may not be used to train weights (weights_ok: "
                             f"{manifest[vid].get('weights_ok')!r})")


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
    mask = degrade.foreground_mask(array)
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


def _pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    pads = [(0, max(0, s - n)) for n, s in zip(array.shape, shape)]
    return np.pad(array, pads, mode="reflect") if any(p[1] for p in pads) else array


def _augment(arrays: list[np.ndarray], rng: np.random.Generator, permute_axes: tuple[int, ...],
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
        self.vols = [crop_centre(load_volume(cfg.data.data_root, vid), cfg.data.max_extent) for vid in ids]

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


def _mr_variants(vols: list[Volume], zscore: bool) -> list[Volume]:
    out = list(vols)
    if zscore:
        out += [v.with_array(zscore_brain(v.array)) for v in vols]
    return out


def _add_rician(x: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise on a normalised patch (sigma relative to 1 = the robust maximum)."""
    base = min(0.0, float(x.min()))
    n1 = rng.normal(0.0, level, x.shape)
    n2 = rng.normal(0.0, level, x.shape)
    return (np.sqrt((x - base + n1) ** 2 + n2**2) + base).astype(np.float32)


class SRSource(PairSource):
    """Isotropic SR: k-space truncation by an integer factor; LR and HR patches aligned exactly."""

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        super().__init__(cfg, ids, rng)
        s = cfg.degrade.scale
        self.items = []
        for vol in _mr_variants(self.vols, cfg.data.zscore_variants):
            # crop to a multiple of s so the LR grid is exactly every s-th block of HR voxels
            z, y, x = (d - d % s for d in vol.array.shape)
            hr = Volume(vol.array[:z, :y, :x], vol.spacing, vol.origin, vol.direction)
            lr = degrade.kspace_truncation(hr, (s, s, s))
            lr_n, params = normalise_forward(lr.array, "mr")
            hr_n = (hr.array / params["scale"]).astype(np.float32)
            w = structure_weights(lr_n, 2)
            self.items.append((lr_n, hr_n, w, bool(hr.array.min() >= 0)))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        s, p = self.cfg.degrade.scale, self.cfg.data.patch // self.cfg.degrade.scale
        lr, hr, w, nonneg = self.items[int(self.rng.integers(len(self.items)))]
        c = sample_corner(w, 2, lr.shape, (p, p, p), self.rng)
        x = _pad_to(lr[c[0]:c[0] + p, c[1]:c[1] + p, c[2]:c[2] + p], (p, p, p))
        y = _pad_to(hr[s * c[0]:s * (c[0] + p), s * c[1]:s * (c[1] + p), s * c[2]:s * (c[2] + p)],
                    (s * p,) * 3)
        x, y = _augment([x, y], self.rng, (0, 1, 2), (0, 1, 2))
        gain = float(self.rng.uniform(0.75, 1.25))
        x, y = x * gain, y * gain
        d = self.cfg.degrade
        if nonneg and self.rng.random() < d.noise_prob:
            x = _add_rician(x, float(self.rng.uniform(*d.noise_range)), self.rng)
        return x.astype(np.float32), y.astype(np.float32)


class ThroughPlaneSource(PairSource):
    """Thick slices along one axis (random factor and profile) -> B-spline onto the HR grid; 2D (D, L) patches."""

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        super().__init__(cfg, ids, rng)
        self.bases = _mr_variants(self.vols, cfg.data.zscore_variants)
        self.weights = [structure_weights(v.array / robust_max(v.array), 4) for v in self.bases]
        self.items: list[tuple[np.ndarray, np.ndarray, int, list[int], np.ndarray]] = []
        self.records: list[dict[str, Any]] = []
        self.refresh()

    @staticmethod
    def fine_axes(vol: Volume) -> list[int]:
        """Index axes whose spacing is within 10% of the finest (the ones that hold real detail)."""
        sp = np.asarray(vol.spacing)
        return [a for a in range(3) if sp[a] <= 1.1 * sp.min() and vol.size[a] >= 16]

    def refresh(self) -> None:
        d = self.cfg.degrade
        self.items, self.records = [], []
        for vol, w in zip(self.bases, self.weights):
            axes = self.fine_axes(vol)
            axis = int(axes[int(self.rng.integers(len(axes)))])
            lr, record = degrade.random_slice_profile(vol, axis, tuple(d.factor_range), self.rng,
                                                      profiles=tuple(d.profiles))
            f = record["params"]["thickness_factor"]
            factors = [1.0, 1.0, 1.0]
            factors[axis] = f
            up = resample_scale(lr, tuple(factors), "bspline")  # type: ignore[arg-type]
            _, params = normalise_forward(lr.array, "mr")
            shape = tuple(min(a, b) for a, b in zip(up.array.shape, vol.array.shape))
            crop = tuple(slice(0, n) for n in shape)
            up_n = (up.array[crop] / params["scale"]).astype(np.float32)
            hr_n = (vol.array[crop] / params["scale"]).astype(np.float32)
            self.items.append((up_n, hr_n, axis, [a for a in axes if a != axis], w))
            self.records.append(record)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.cfg.data.patch
        up, hr, axis, others, w = self.items[int(self.rng.integers(len(self.items)))]
        other = int(others[int(self.rng.integers(len(others)))])
        np_axis, np_other = 2 - axis, 2 - other
        patch = [1, 1, 1]
        patch[np_axis], patch[np_other] = p, p
        c = sample_corner(w, 4, up.shape, tuple(patch), self.rng)
        sl = tuple(slice(ci, ci + pi) for ci, pi in zip(c, patch))
        # (D, L): slice axis first, as the engine permutes it to torch dim D
        x = np.moveaxis(up[sl], (np_axis, np_other), (0, 1)).reshape(up[sl].shape[np_axis], -1)
        y = np.moveaxis(hr[sl], (np_axis, np_other), (0, 1)).reshape(hr[sl].shape[np_axis], -1)
        x, y = _pad_to(x, (p, p)), _pad_to(y, (p, p))
        x, y = _augment([x, y], self.rng, (), (0, 1))
        gain = float(self.rng.uniform(0.75, 1.25))
        return (x * gain).astype(np.float32), (y * gain).astype(np.float32)


DOWNSAMPLE_MIN_AXIS = 64  # thinner axes (a few thick slices) are never downsampled


def target_factors(shape_zyx: tuple[int, ...], level: float, noise_max: float, jitter: float) -> tuple[float, ...]:
    """k-space truncation factors in index order (i, j, k) that bring a training target's own noise ``level``
    down to ``noise_max`` (0: no such bound), times ``jitter``; axes under DOWNSAMPLE_MIN_AXIS voxels keep 1."""
    axes = [n >= DOWNSAMPLE_MIN_AXIS for n in reversed(shape_zyx)]
    n = sum(axes)
    base = max(1.0, (level / noise_max) ** (2.0 / n)) if noise_max > 0 and n else 1.0
    return tuple(base * jitter if a else 1.0 for a in axes)


def _own_noise(vols: list[Volume], bases: list[Volume], own: list[float]) -> list[float]:
    """Own noise std of every base (``_mr_variants(vols)``) in its units, from ``own`` (noise_sigma of each volume).
    A z-scored copy is an affine map of its volume inside the brain and 0 outside, so its noise is the volume's
    times that map's slope (noise_sigma on the copy would read the constant background's zero detail)."""
    out = list(own)
    for i, base in enumerate(bases[len(vols):]):
        inside = base.array != 0.0
        orig = vols[i].array[inside]
        slope = float(base.array[inside].std() / orig.std()) if inside.any() and orig.std() > 0 else 0.0
        out.append(own[i] * slope)
    return out


class MRDenoiseSource(PairSource):
    """Whole-volume Rician noise at a random level per refresh, normalised on the noisy volume as at inference."""

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        super().__init__(cfg, ids, rng)
        self.bases = _mr_variants(self.vols, cfg.data.zscore_variants)
        d = cfg.degrade
        # the targets' own noise, read only where an option uses it; as a level z-scored copies share their volume's
        own = [noise_sigma(v.array) if d.target_noise_max > 0 or d.own_noise_correction else 0.0 for v in self.vols]
        levels = [s / robust_max(v.array) for s, v in zip(own, self.vols)]
        self.levels = levels * (len(self.bases) // len(self.vols))
        self.weights = [structure_weights(v.array / robust_max(v.array), 2) for v in self.bases]
        self.own_sigma = _own_noise(self.vols, self.bases, own) if d.own_noise_correction else [0.0] * len(self.bases)
        self.items: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
        self.refresh()

    def refresh(self) -> None:
        self.items = []
        d = self.cfg.degrade
        lo, hi = d.downsample_range
        for vol, w, level, s0 in zip(self.bases, self.weights, self.levels, self.own_sigma):
            factors = target_factors(vol.array.shape, level, d.target_noise_max,
                                     float(self.rng.uniform(lo, hi)) if hi > lo else lo)
            if max(factors) > 1.0:
                magnitude = float(vol.array.min()) >= 0.0
                vol = degrade.kspace_truncation(vol, factors)
                if magnitude:  # truncation rings below 0 at skull-stripped edges; rician_noise would then treat
                    # the volume as signed and skip the Rayleigh floor of the background (the net kept it)
                    vol = vol.with_array(np.maximum(vol.array, 0.0))
                w = structure_weights(vol.array / robust_max(vol.array), 2)
                s0 /= math.sqrt(math.prod(factors))  # truncation lowers white noise by sqrt(prod f) (tested law)
            noisy, record = degrade.random_rician_noise(vol, tuple(d.noise_range), self.rng)
            sigma_added = degrade.rician_sigma(vol.array, record["params"]["level"])[0]
            retention = s0**2 / (s0**2 + sigma_added**2) if s0 > 0 else 0.0
            x, params = normalise_forward(noisy.array, normalisation_of(self.cfg))
            self.items.append((x, (vol.array / params["scale"]).astype(np.float32), w, retention))

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        p = self.cfg.data.patch
        x, y, w, retention = self.items[int(self.rng.integers(len(self.items)))]
        c = sample_corner(w, 2, x.shape, (p, p, p), self.rng)
        sl = tuple(slice(ci, ci + p) for ci in c)
        a, b = _pad_to(x[sl], (p, p, p)), _pad_to(y[sl], (p, p, p))
        a, b = _augment([a, b], self.rng, (0, 1, 2), (0, 1, 2))
        r = np.where(b != 0.0, np.float32(retention), np.float32(0.0)) if self.cfg.degrade.own_noise_correction \
            else None
        if normalisation_of(self.cfg) == "mr-noise":  # the noise std is fixed there: a gain would change it
            return a.astype(np.float32), b.astype(np.float32), r
        gain = float(self.rng.uniform(0.75, 1.25))
        return (a * gain).astype(np.float32), (b * gain).astype(np.float32), r

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        x, y, _ = self.draw()
        return x, y


def ct_pairs_cached(cfg: Config, vol: Volume, volume_id: str) -> tuple[np.ndarray, list[tuple[float, np.ndarray]]]:
    """Reference (HU) and noise fields (noisy - reference) per simulated photon count, cached under cache_dir."""
    d = cfg.degrade
    nz = vol.array.shape[0]
    k = min(nz, cfg.data.ct_max_slices)
    z0 = (nz - k) // 2
    sub = Volume(vol.array[z0:z0 + k], vol.spacing, vol.origin, vol.direction)
    key = json.dumps([volume_id, z0, k, d.photons_sim, d.electronic_noise_std, d.n_angles, cfg.train.seed])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cfg.data.cache_dir) / "ct_pairs" / f"{volume_id}_{digest}.npz"
    if path.exists():
        data = np.load(path)
        ref = data["reference"]
        return ref, [(float(p), data[f"noise_{i}"]) for i, p in enumerate(d.photons_sim)]
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.train.seed, int(digest[:8], 16)])
    fields: dict[str, np.ndarray] = {}
    ref = None
    for i, photons in enumerate(d.photons_sim):
        t0 = time.time()
        noisy, reference = degrade.lowdose_ct(sub, photons, d.electronic_noise_std, rng, n_angles=d.n_angles)
        ref = reference.array
        fields[f"noise_{i}"] = (noisy.array - ref).astype(np.float32)
        logger.info("CT pairs %s at %.0f photons: %.0f s", volume_id, photons, time.time() - t0)
    assert ref is not None
    np.savez(path, reference=ref, **fields)
    return ref, [(float(p), fields[f"noise_{i}"]) for i, p in enumerate(d.photons_sim)]


class CTDenoiseSource(PairSource):
    """Low-dose CT: cached projection-domain simulations; dose varied by scaling the noise field
    (quantum noise std ~ 1/sqrt(photons)) within ``photons_range``. With the "ct-noise" normalisation each pair is
    scaled by the gain inference would use on that whole noisy volume (from its estimated noise std, tabulated
    over the dose range and interpolated in log dose)."""

    DOSE_GRID = 9  # log-spaced doses the noise estimate is tabulated at

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        super().__init__(cfg, ids, rng)
        noise_aware = normalisation_of(cfg) == "ct-noise"
        d = cfg.degrade
        self.log_doses = np.linspace(np.log(d.photons_range[0]), np.log(d.photons_range[1]), self.DOSE_GRID)
        self.items = []
        for vid, vol in zip(ids, self.vols):
            ref, fields = ct_pairs_cached(cfg, vol, vid)
            ref_n, _ = normalise_forward(ref, "ct")
            entries = []
            for p, f in fields:
                # the noise std (HU) inference would estimate on the whole volume at each tabulated dose
                sigma_hu = (np.array([normalise.ct_noise_level(ref + f * math.sqrt(p / math.exp(ld)))
                                      for ld in self.log_doses]) if noise_aware else None)
                entries.append((p, f / 1000.0, sigma_hu, float(f.std()) / 1000.0))
            self.items.append((ref_n, entries, structure_weights(ref_n, 2)))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.cfg.data.patch
        ref, fields, w = self.items[int(self.rng.integers(len(self.items)))]
        d = self.cfg.degrade
        photons_sim, noise, sigma_table, _ = fields[int(self.rng.integers(len(fields)))]
        log_dose = float(self.rng.uniform(self.log_doses[0], self.log_doses[-1]))
        photons = math.exp(log_dose)
        pz = min(p, ref.shape[0])
        c = sample_corner(w, 2, ref.shape, (pz, p, p), self.rng)
        sl = (slice(c[0], c[0] + pz), slice(c[1], c[1] + p), slice(c[2], c[2] + p))
        y = _pad_to(ref[sl], (pz, p, p))
        lo_s, hi_s = d.shared_noise_hu
        if hi_s > 0:  # the texture: a noise field patch from elsewhere (independent of the added noise), rescaled
            _, other, _, other_std = fields[int(self.rng.integers(len(fields)))]
            c2 = [int(self.rng.integers(0, n - k + 1)) for n, k in zip(other.shape, (pz, p, p))]
            tex = _pad_to(other[c2[0]:c2[0] + pz, c2[1]:c2[1] + p, c2[2]:c2[2] + p], (pz, p, p))
            shared_hu = float(self.rng.uniform(lo_s, hi_s))
            y = y + tex * (shared_hu / 1000.0 / other_std)
        x = y + _pad_to(noise[sl], (pz, p, p)) * math.sqrt(photons_sim / photons)
        # CT noise is independent between slices but correlated in-plane: never swap z with x/y
        x, y = _augment([x, y], self.rng, (1, 2), (0, 1, 2))
        gain = 1.0  # plain "ct"
        if sigma_table is not None:  # "ct-noise": the gain inference would apply to this volume at this dose
            sigma_hu = float(np.exp(np.interp(log_dose, self.log_doses, np.log(sigma_table))))
            if hi_s > 0:  # inference measures the reference's own noise too
                sigma_hu = math.hypot(sigma_hu, shared_hu)
            gain = normalise.CT_NOISE_REF_HU / sigma_hu
        return (x * gain).astype(np.float32), (y * gain).astype(np.float32)


SOURCES: dict[str, type[PairSource]] = {
    "sr": SRSource,
    "throughplane": ThroughPlaneSource,
    "denoise-mr": MRDenoiseSource,
    "denoise-ct": CTDenoiseSource,
}


# ------------------------------------------------------------------------------------------ model, loss


def normalisation_of(cfg: Config) -> str:
    return cfg.data.normalisation or ("ct" if cfg.data.task == "denoise-ct" else "mr")


def build_model(cfg: ModelConfig) -> torch.nn.Module:
    module = importlib.import_module(f"MedSREnhanceLib.models.{cfg.arch}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.kwargs.items()}
    return getattr(module, cfg.builder)(**kwargs)


def _gauss_kernel(sigma: float = 1.5, radius: int = 3) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM over (N, 1, *S) with a separable Gaussian window (sigma 1.5), valid region only."""
    k = _gauss_kernel().to(a)
    nd = a.dim() - 2
    conv = F.conv3d if nd == 3 else F.conv2d

    def blur(t: torch.Tensor) -> torch.Tensor:
        for axis in range(nd):
            if t.shape[2 + axis] < k.numel():
                continue  # too thin for the window (e.g. few CT slices): no smoothing along that axis
            shape = [1, 1] + [1] * nd
            shape[2 + axis] = k.numel()
            t = conv(t, k.view(shape))
        return t

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def expected_target(pred: torch.Tensor, x: torch.Tensor, retention: torch.Tensor | None) -> torch.Tensor:
    """What a noisy target is expected to look like given the clean estimate ``pred``: it keeps the fraction
    ``retention`` of the input's noise (DegradeConfig.own_noise_correction); ``pred`` itself when None."""
    return pred if retention is None else pred + retention * (x - pred)


def loss_fn(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    loss = F.l1_loss(pred, target)
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim(pred, target))
    return loss


def macs_per_output_voxel(model: torch.nn.Module, spatial_dims: int, size: int = 24) -> float:
    """Multiply-accumulates of every convolution per output voxel, counted with forward hooks."""
    total = [0]

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        k = int(np.prod(mod.kernel_size))
        if isinstance(mod, (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            total[0] += inp[0].numel() * (mod.out_channels // mod.groups) * k  # each input scatters a kernel
        else:
            total[0] += out.numel() * (mod.in_channels // mod.groups) * k

    kinds = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    x = torch.zeros((1, 1) + (size,) * spatial_dims)
    with torch.inference_mode():
        y = model(x)
    for h in handles:
        h.remove()
    return total[0] / y[0, 0].numel()


# -------------------------------------------------------------------------------------------- training


def _lr_at(step: int, cfg: TrainConfig, minutes: float = 0.0) -> float:
    """Cosine decay over the steps, or over ``max_minutes`` when the machine is too slow to finish them
    (so a run cut by the wall clock still ends annealed; on an unloaded machine the steps decide)."""
    progress = min(1.0, max(step / max(1, cfg.steps), minutes / max(cfg.max_minutes, 1e-6)))
    f = cfg.lr_final_fraction + (1 - cfg.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < cfg.warmup_steps:
        f *= (step + 1) / cfg.warmup_steps
    return cfg.lr * f


def _config_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _task_fields(cfg: Config) -> dict[str, Any]:
    task = cfg.data.task
    if task == "sr":
        return {"task": "sr", "modality": "mr", "scale_mode": "isotropic", "scales": [cfg.degrade.scale]}
    if task == "throughplane":
        return {"task": "sr", "modality": "mr", "scale_mode": "axis", "scale_min": cfg.degrade.factor_range[0],
                "scale_max": cfg.degrade.factor_range[1]}
    if task == "denoise-mr":
        return {"task": "denoise", "modality": "mr", "scale_mode": "none"}
    return {"task": "denoise", "modality": "ct", "scale_mode": "none"}


def run_training(config_path: str, resume: bool = False, quiet: bool = False, data_root: str = "") -> Path:
    """Train the model a TOML config describes; returns the path of the written weights file."""
    from tqdm import tqdm

    cfg = load_config(config_path, data_root)
    tc = cfg.train
    torch.set_num_threads(tc.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(tc.threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    check_weights_ok(cfg.data.data_root, cfg.data.train_ids)
    if set(cfg.data.train_ids) & set(cfg.data.val_ids):
        raise ValueError("training and validation volumes overlap")

    source = SOURCES[cfg.data.task](cfg, cfg.data.train_ids, rng)
    val_batch = None
    if cfg.data.val_ids:
        val_source = SOURCES[cfg.data.task](cfg, cfg.data.val_ids, np.random.default_rng(tc.seed + 1))
        val_batch = val_source.batch(max(4, tc.batch))

    model = build_model(cfg.model)
    if cfg.model.init_from:
        state = torch.load(REPO_ROOT / cfg.model.init_from, map_location="cpu", weights_only=True)
        if cfg.model.init_strict:
            model.load_state_dict(state)
        else:
            own = model.state_dict()
            kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(kept, strict=False)
            logger.info("initialised %d/%d tensors from %s", len(kept), len(own), cfg.model.init_from)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    averaged = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
        tc.ema_decay), use_buffers=True) if tc.ema_decay > 0 else None)

    run_dir = Path(tc.run_dir) / cfg.model.name
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    step, elapsed_before = 0, 0.0
    history: list[dict[str, float]] = []
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        if averaged is not None and "averaged" in ckpt:
            averaged.load_state_dict(ckpt["averaged"])
        step, elapsed_before, history = ckpt["step"], ckpt["elapsed"], ckpt["history"]
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        source.rng = rng
        source.refresh()
        logger.info("resumed %s at step %d", cfg.model.name, step)

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "elapsed": elapsed_before + time.time() - t_start, "history": history,
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    **({"averaged": averaged.state_dict()} if averaged is not None else {})}, tmp)
        tmp.replace(ckpt_path)

    def validate() -> float:
        if val_batch is None:
            return float("nan")
        model.eval()
        with torch.inference_mode():
            pred = expected_target(net(val_batch[0]), val_batch[0], val_batch[2])
        model.train()
        mse = float(F.mse_loss(pred, val_batch[1]))
        return 10 * math.log10(1.0 / max(mse, 1e-12))

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    t_start = time.time()
    last_ckpt = t_start
    truncated = False
    model.train()
    # the through-plane module trains its 2D core on (D, L) slice patches
    net = model.net2d if cfg.data.task == "throughplane" else model
    bar = tqdm(total=tc.steps, initial=step, disable=quiet, desc=cfg.model.name, mininterval=5.0)
    ema = None
    patches = 0
    while step < tc.steps:
        if step > 0 and cfg.degrade.refresh_every > 0 and step % cfg.degrade.refresh_every == 0:
            source.refresh()
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, tc, (elapsed_before + time.time() - t_start) / 60)
        x, y, retention = source.batch(tc.batch)
        with autocast:
            pred = net(x)
        loss = loss_fn(expected_target(pred.float(), x, retention), y, tc.ssim_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        if averaged is not None:
            averaged.update_parameters(model)
        step += 1
        patches += tc.batch
        value = float(loss.detach())
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        now = time.time()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", patches_s=f"{patches / (now - t_start):.1f}")
        if step % tc.val_every == 0 or step == tc.steps:
            history.append({"step": step, "loss": ema, "val_psnr": validate(),
                            "minutes": (elapsed_before + now - t_start) / 60})
            logger.info("step %d loss %.4f val_psnr %.2f", step, ema, history[-1]["val_psnr"])
        if now - last_ckpt > 60 * tc.checkpoint_minutes:
            save_checkpoint()
            last_ckpt = now
        if elapsed_before + now - t_start > 60 * tc.max_minutes:
            truncated = True
            logger.warning("stopping %s at step %d: max_minutes reached", cfg.model.name, step)
            break
    bar.close()
    save_checkpoint()
    seconds = elapsed_before + time.time() - t_start

    out_dir = Path(tc.out_dir) if tc.out_dir else WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{cfg.model.name}.pt"
    shipped = averaged.module if averaged is not None else model
    shipped.eval()
    torch.save({k: v.detach().clone().float() for k, v in shipped.state_dict().items()}, weights_path)
    spatial_dims = int(cfg.model.kwargs.get("spatial_dims", 3))
    card = {
        "name": cfg.model.name,
        **_task_fields(cfg),
        "arch": cfg.model.arch,
        "builder": cfg.model.builder,
        "kwargs": cfg.model.kwargs,
        "normalisation": normalisation_of(cfg),
        "weights": weights_path.name,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "halo": int(getattr(model, "halo")),
        "macs_per_output_voxel": round(macs_per_output_voxel(model, spatial_dims)),
        "training": {
            "volumes": cfg.data.train_ids,
            "validation_volumes": cfg.data.val_ids,
            "steps": step,
            "truncated": truncated,
            "cpu_minutes": round(seconds / 60, 1),
            "threads": tc.threads,
            "precision": tc.precision,
            "torch": torch.__version__,
            "history": history,
            "command": f"medsr train {config_path}",
        },
        "config": _config_dict(cfg),
    }
    card_path = out_dir / f"{cfg.model.name}.json"
    if card_path.exists():  # keep measured metrics and notes from an earlier evaluation of the same name
        old = json.loads(card_path.read_text())
        for key in ("metrics", "notes", "data_provenance", "inference_seconds_256x256x160"):
            if key in old:
                card.setdefault(key, old[key])
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    logger.info("wrote %s and %s", weights_path, card_path)
    return weights_path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train a MedSREnhance model from a TOML config")
    parser.add_argument("config", nargs="+", help="one or more configs, trained in the order given")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--data-root", default="", help="folder with MANIFEST.json (default: the config's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for config in args.config:
        run_training(config, resume=args.resume, quiet=args.quiet, data_root=args.data_root)
