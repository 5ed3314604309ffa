"""Training configs: four typed TOML tables ([model], [data], [degrade], [train]), optional [randomise] and
[adversarial], checked on load; ``extends = "BASE.toml"`` merges a base config in first (experiments)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .randomise import RandomiseConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ModelConfig:
    name: str  # bundled model name, e.g. "mr-sr-x2"; also the weights/card file stem
    arch: str  # module in MedSREnhanceLib.models
    builder: str  # class in that module
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the typed constructor (typos fail there)
    init_from: str = ""  # optional state_dict to start from (fine-tuning), relative to the repo root
    init_strict: bool = True  # False: copy only tensors whose names and shapes match (body transfer)
    # parameters (name prefixes) set to zero after loading: the last conv of residual blocks added to a trained
    # net, so the deeper net starts as the trained one (its new branches add nothing) and training only adds
    init_zero: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    task: str  # "sr" | "throughplane" | "denoise-mr" | "denoise-ct"
    train_ids: list[str]
    val_ids: list[str] = field(default_factory=list)
    data_root: str = "../shared/data"  # relative paths here and below: to the repository root
    # every volume named here must be recorded in this file (source, licence, group; data_sources.py); "": none
    sources: str = "configs/data_sources.toml"
    patch: int = 32  # target (HR) patch edge in voxels (2D patches for throughplane)
    zscore_variants: bool = True  # add brain-z-scored copies (background 0, negative tissue values)
    cache_dir: str = "../cache"  # precomputed CT pairs (never inside the repo)
    ct_max_slices: int = 32  # central axial slices per CT volume used for the low-dose pairs
    max_extent: int = 0  # crop every axis to at most this many central voxels (0: whole volumes)
    normalisation: str = ""  # a normalise.forward kind; "" = by task ("ct" for denoise-ct, else "mr")
    # 2: square 2D patches across a random axis, for nets trained on slices (their ``net2d``; task motion-mr)
    patch_dims: int = 3
    # task sr: bring thick-slice volumes to isotropic targets (sources_mr.isotropic_target) instead of leaving them out
    isotropise: bool = False


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
    # drawn from downsample_range at every refresh (also packs more structure into each voxel). Task
    # throughplane reads downsample_range alone: its fine axes truncated by a factor drawn from it at every refresh
    # (a coarser scanner grid, resolution jitter), before the appearance is randomised; task sr likewise on every
    # axis, before the randomisation and the truncation by the SR scale.
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
    # MR motion (task motion-mr): per refresh, each volume moves motion_events [lo, hi] times during its scan, each
    # movement up to a maximum drawn from motion_rotation_deg / motion_translation_mm; phase encoding along one of
    # motion_pe_axes; with probability motion_clean_prob the pair is left clean (the net must keep clean volumes).
    motion_events: list[int] = field(default_factory=lambda: [1, 3])
    motion_rotation_deg: list[float] = field(default_factory=lambda: [0.0, 0.0])
    motion_translation_mm: list[float] = field(default_factory=lambda: [0.0, 0.0])
    motion_pe_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    motion_clean_prob: float = 0.0
    # every movement at least this far (scan time, 0-0.4) from the k-space centre: the reference pose then holds the
    # central 2 * margin of the lines (0: movements anywhere in 0.1-0.9, some at the centre, where no pose is "the" one)
    motion_centre_margin: float = 0.0
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
class AdversarialConfig:
    """[adversarial] (optional): fine-tune with a patch discriminator and a feature-space loss (adversarial.py).
    Generator loss = L1 + ssim_weight (1 - SSIM) + feature_weight * feature loss + adversarial_weight * RaGAN loss."""

    discriminator_channels: int = 16
    feature_channels: int = 16
    feature_steps: int = 400  # pretext steps of the feature net (denoising/deblurring autoencoder) before the GAN
    feature_lr: float = 1e-3
    feature_weight: float = 0.1  # on the feature L1, each layer divided by the target features' mean |value|
    adversarial_weight: float = 1e-3
    discriminator_lr: float = 1e-4
    discriminator_warmup: int = 0  # discriminator-only steps before the generator sees the adversarial term


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    degrade: DegradeConfig
    train: TrainConfig
    adversarial: AdversarialConfig | None = None
    randomise: RandomiseConfig = field(default_factory=RandomiseConfig)


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


def _read_tables(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The config's tables, ``extends = "BASE.toml"`` (relative to the config's folder) merged in first: the
    config's keys replace the base's key by key within each table (a list replaces the whole list), so an
    experiment config holds only what it changes and a card records the merged result."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"config {path.name} extends itself (through {' -> '.join(p.name for p in seen)})")
    raw = tomllib.loads(path.read_text())
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ValueError(f"extends in {path.name} must be a file name, not {base!r}")
    if not (path.parent / base).is_file():
        raise ValueError(f"config {path.name} extends {base}, which is not a file beside it")
    merged = _read_tables(path.parent / base, seen + (path,))
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ValueError(f"top-level key {name!r} in {path.name}: only extends and tables may be there")
        merged[name] = {**merged.get(name, {}), **table}
    return merged


def load_config(path: str | Path, data_root: str = "") -> Config:
    """Parse a TOML config (and the configs it extends); relative directories resolve against the repository
    root, so a config means the same thing from any working directory. ``data_root`` overrides the config's."""
    raw = _read_tables(Path(path))
    unknown = set(raw) - {"model", "data", "degrade", "train", "adversarial", "randomise"}
    if unknown:
        raise ValueError(f"unknown table(s) in {path}: {', '.join(sorted(unknown))}")
    cfg = Config(
        model=_build(ModelConfig, raw["model"], "model"),
        data=_build(DataConfig, raw["data"], "data"),
        degrade=_build(DegradeConfig, raw.get("degrade", {}), "degrade"),
        train=_build(TrainConfig, raw.get("train", {}), "train"),
        adversarial=_build(AdversarialConfig, raw["adversarial"], "adversarial") if "adversarial" in raw else None,
        randomise=_build(RandomiseConfig, raw.get("randomise", {}), "randomise"),
    )
    cfg.randomise.check()
    if cfg.randomise.enabled() and (cfg.data.task not in ("sr", "throughplane", "motion-mr", "denoise-mr")
                                    or normalisation_of(cfg) not in ("mr", "mr-noise")):
        raise ValueError("[randomise] is implemented for MR tasks sr, throughplane, motion-mr and denoise-mr (its "
                         "contrast curves assume magnitude images)")
    if cfg.adversarial is not None and cfg.data.task != "sr":
        raise ValueError("[adversarial] is implemented for task sr only")
    if cfg.train.precision not in ("fp32", "bf16"):  # before any data is loaded or simulated
        raise ValueError(f"[train] precision must be fp32 or bf16, not {cfg.train.precision!r}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ValueError(f"[train] ema_decay must be in [0, 1), not {cfg.train.ema_decay}")
    allowed = {"denoise-mr": ("mr", "mr-noise"), "denoise-ct": ("ct", "ct-noise"),
               "throughplane": ("mr", "ct")}.get(cfg.data.task, ())
    if cfg.data.normalisation and cfg.data.normalisation not in allowed:  # only these sources read it
        raise ValueError(f"[data] normalisation {cfg.data.normalisation!r} is not one task {cfg.data.task} "
                         f"can use ({', '.join(allowed) or 'none: it uses its own'})")
    if cfg.data.isotropise and cfg.data.task != "sr":
        raise ValueError("[data] isotropise is for task sr (through-plane sources use thick volumes' fine axes)")
    if cfg.data.patch_dims not in (2, 3) or (cfg.data.patch_dims == 2 and cfg.data.task != "motion-mr"):
        raise ValueError("[data] patch_dims is 3, or 2 for task motion-mr (a net trained on slices)")
    if cfg.degrade.target_noise_max < 0.0:
        raise ValueError(f"[degrade] target_noise_max must be >= 0, not {cfg.degrade.target_noise_max}")
    down_hi = _check_range(cfg.degrade.downsample_range, "downsample_range", 1.0)
    if down_hi > 1.0 and cfg.data.task not in ("denoise-mr", "throughplane", "sr"):
        raise ValueError("[degrade] downsample_range is for tasks denoise-mr, throughplane and sr")
    if (cfg.degrade.target_noise_max != 0.0 or cfg.degrade.own_noise_correction) and cfg.data.task != "denoise-mr":
        raise ValueError("[degrade] target_noise_max and own_noise_correction are for task denoise-mr")
    if _check_range(cfg.degrade.shared_noise_hu, "shared_noise_hu", 0.0) > 0.0 and cfg.data.task != "denoise-ct":
        raise ValueError("[degrade] shared_noise_hu is for task denoise-ct")
    motion = max(_check_range(cfg.degrade.motion_rotation_deg, "motion_rotation_deg", 0.0),
                 _check_range(cfg.degrade.motion_translation_mm, "motion_translation_mm", 0.0)) > 0.0
    if motion != (cfg.data.task == "motion-mr"):
        raise ValueError("task motion-mr needs [degrade] motion_rotation_deg or motion_translation_mm, and only "
                         "it reads them")
    if not 0.0 <= cfg.degrade.motion_centre_margin < 0.4:
        raise ValueError(f"[degrade] motion_centre_margin must be in [0, 0.4), got {cfg.degrade.motion_centre_margin}")
    if data_root:
        cfg.data.data_root = str(Path(data_root).resolve())
    cfg.data.data_root, cfg.data.cache_dir = _from_repo(cfg.data.data_root), _from_repo(cfg.data.cache_dir)
    cfg.train.run_dir, cfg.train.out_dir = _from_repo(cfg.train.run_dir), _from_repo(cfg.train.out_dir)
    return cfg


def normalisation_of(cfg: Config) -> str:
    return cfg.data.normalisation or ("ct" if cfg.data.task == "denoise-ct" else "mr")
