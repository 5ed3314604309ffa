"""Static model registry: name -> how to build it, its weights file and sha256, and its model card.

Classical methods are models too (kind="classical"), so every path works end to end and users compare like
with like. Learned entries point at a builder in one file per architecture and at weights in ../weights.
Adding a model = adding one ModelSpec here; nothing is discovered at run time and no config is eval'ed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import InputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "sr" | "denoise"
    kind: str  # "classical" | "learned"
    modalities: tuple[str, ...]  # subset of ("mr", "ct")
    summary: str
    # Learned models only:
    arch: str = ""  # module in MedSREnhanceLib.models holding the architecture, e.g. "srnet"
    builder: str = ""  # class or function in that module
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str = ""  # file name in weights/
    sha256: str = ""
    card: str = ""  # model card JSON in weights/
    normalisation: str = "mr"  # see normalise.forward
    # Which scales the model serves. "none": denoising (grid kept); "isotropic": integer factors in `scales`
    # on every axis; "axis": one axis upsampled by any factor in [scale_min, scale_max], others 1.
    scale_mode: str = "none"
    scales: tuple[float, ...] = ()
    scale_min: float = 1.0
    scale_max: float = 1.0
    # SR models: the acquisition they invert ("kspace" | "gaussian", engine.consistency.OPERATORS); the output is
    # projected so that this acquisition of it reproduces the input.
    acquisition: str = ""
    # whether enhance() projects by default: only where the bench scores do not drop (README, Trust)
    consistency_default: bool = True
    # Flip-ensemble members a plain run uses (None: all of kwargs["ensemble"]); chosen per model on the bench (each
    # member is a full pass). An uncertainty map always runs the full ensemble it was calibrated with.
    default_ensemble: int | None = None
    # Adam's rate for self-supervised adaptation (engine/adapt.py; None: its default), chosen per model on the
    # adapt bench
    adapt_lr: float | None = None
    # Whether enhance(model="auto") may pick it. False for variants a user must ask for by name (the GAN variant:
    # sharper texture at a PSNR cost, with a hallucination risk the default must not carry).
    auto: bool = True
    # Classical models only: the method and its default parameters.
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def card_data(self) -> dict[str, Any]:
        if not self.card:
            return {}
        path = WEIGHTS_DIR / self.card
        return json.loads(path.read_text()) if path.exists() else {}


CLASSICAL: tuple[ModelSpec, ...] = (
    ModelSpec("linear", "sr", "classical", ("mr", "ct"), "Trilinear interpolation", method="linear",
              scale_mode="any"),
    ModelSpec("bspline", "sr", "classical", ("mr", "ct"), "Cubic B-spline interpolation", method="bspline",
              scale_mode="any"),
    ModelSpec("sinc", "sr", "classical", ("mr", "ct"), "Hamming-windowed sinc interpolation", method="sinc",
              scale_mode="any"),
    ModelSpec("gaussian", "denoise", "classical", ("mr", "ct"), "Gaussian smoothing (sigma in voxels)",
              method="gaussian", params={"sigma": 0.8}),
    ModelSpec("anisotropic-diffusion", "denoise", "classical", ("mr", "ct"),
              "Curvature anisotropic diffusion (SimpleITK)", method="curvature_diffusion",
              params={"iterations": 5, "conductance": 1.0, "time_step": 0.0625}),
    ModelSpec("nlmeans", "denoise", "classical", ("mr", "ct"), "Non-local means (scikit-image, 3D)",
              method="nlmeans", params={"h_factor": 0.8, "patch_size": 3, "patch_distance": 4}),
)

def _mr_sr(scale: int, sha256: str, default_ensemble: int | None = None, gan: bool = False,
           blocks: int = 3) -> ModelSpec:
    """The isotropic MR SR models differ only in their factor (one net per scale, same architecture); a GAN
    variant has the same net, other weights, and is used only when asked for by name."""
    name = f"mr-sr-x{scale}" + ("-gan" if gan else "")
    summary = f"MR isotropic super-resolution x{scale} (3D EDSR-style net on the LR grid, pixel shuffle)" + (
        ", GAN fine-tune: sharper texture that may be invented (see its card); never picked by auto" if gan else "")
    return ModelSpec(name, "sr", "learned", ("mr",), summary, arch="srnet", builder="SRNet",
                     kwargs={"scale": scale, "channels": 32, "blocks": blocks, "spatial_dims": 3, "ensemble": 8},
                     weights=f"{name}.pt", sha256=sha256, card=f"{name}.json", normalisation="mr", auto=not gan,
                     scale_mode="isotropic", scales=(float(scale),), acquisition="kspace",
                     # On whole held-out volumes the projection gained +0.21..+0.35 (x2), +0.14..+0.27 (x3) and
                     # +0.15..+0.31 dB (x4) fg PSNR (benchmarks/results/consistency); on the bench's 112-voxel crops
                     # the periodic k-space model cost up to 0.23 dB (a crop is not the truncation of itself), the
                     # per-volume choice of a mirrored one (engine.consistency.best_fit) gains there too.
                     default_ensemble=default_ensemble)


def _throughplane(modality: str, summary: str, sha256: str, refine: int = 0,
                  adapt_lr: float | None = None) -> ModelSpec:
    """The through-plane models share one architecture (``refine``: correcting stacks after the first); MR is
    normalised by its robust maximum, CT in HU."""
    return ModelSpec(f"{modality}-throughplane", "sr", "learned", (modality,), summary,
                     arch="throughplane", builder="ThroughPlaneNet",
                     kwargs={"channels": 32, "dilations": (1, 1, 1, 1, 1, 1, 1), "spatial_dims": 3,
                             **({"refine": refine} if refine else {})},
                     weights=f"{modality}-throughplane.pt", sha256=sha256, card=f"{modality}-throughplane.json",
                     normalisation=modality, scale_mode="axis", scale_min=2.0, scale_max=6.0, acquisition="gaussian",
                     adapt_lr=adapt_lr)


def _denoiser(modality: str, summary: str, sha256: str, normalisation: str) -> ModelSpec:
    """The MR and CT denoisers share one architecture and size; weights and normalisation differ."""
    return ModelSpec(f"{modality}-denoise", "denoise", "learned", (modality,), summary,
                     arch="denoiser", builder="Denoiser",
                     kwargs={"channels": 16, "spatial_dims": 3, "negative_slope": 0.1, "ensemble": 8},
                     weights=f"{modality}-denoise.pt", sha256=sha256, card=f"{modality}-denoise.json",
                     # 2 of 8 flips: ~0.04 dB (MR) and 0.05-0.09 dB (CT, 2.5e4 photons) below 8 on the held-out
                     # bench, every volume passing (benchmarks/results/ensemble/denoise-*, the model cards)
                     normalisation=normalisation, default_ensemble=2)


# Learned models: filled in as they are trained (see weights/*.json for each card).
LEARNED: tuple[ModelSpec, ...] = (
    # 2 of 8 flips: 4x fewer passes for 0.04-0.07 dB (held-out SR x2 bench: +1.24..+1.85 dB over tuned sinc with 2,
    # +1.28..+1.91 with 8; benchmarks/results/ensemble). The denoisers use 2 too (below); x3 and x4 keep 8 (their
    # 8 passes cost fewer MACs per output voxel than x2's 2: benchmarks/README_models.md).
    # 6 residual blocks since stage 4 (configs/mr-sr-x2-deep.toml, the 3-block stage-3 net grown): +0.08..+0.34 dB
    # over stage 3 on every bench volume for 1.8x the MACs, 1.5-1.7x the time (benchmarks/results/sr-x2-deep)
    _mr_sr(2, "4045d9ba11cfd6915874c82f8d50b2a9a62690401e35d1d6a24188c2ac326b79", default_ensemble=2, blocks=6),
    # GAN fine-tune of the x2 net (configs/mr-sr-x2-gan.toml): its HF ratio is closer to the truth's than mr-sr-x2's
    # on all nine bench volumes for -0.26..+0.05 dB fg PSNR (benchmarks/results/sr-x2-gan); all 8 flips, as measured
    _mr_sr(2, "96e475bc1a2d263226c71d99b6668af4858cc6937e668977b3cee4d0b3d628a0", gan=True),
    _mr_sr(3, "7cd5521d4b2e2cca736a8137348b06df1821a758d0a5296462f8c54d29cbf8dc"),
    # x4 projects too since the k-space model is chosen per volume: +0.02..+0.21 dB on every crop (chris_t1 +0.57
    # over sinc; the periodic model alone had taken it to +0.32; benchmarks/results/sr-x4-consistency)
    _mr_sr(4, "0b45aea33fdb206a08ddabc7ca79390486d6cd0fd7c6f25b51e00f7a751c1fbd"),
    # stage 3: a second stack corrects the first (configs/mr-throughplane-deep.toml): +0.03..+0.16 dB on every
    # held-out x4 volume over stage 2, spm_single_subj_t1 over the 0.5 dB bar (benchmarks/results/throughplane-deep);
    # stage 4 fine-tunes it on coarser grids of its volumes (configs/mr-throughplane-coarse.toml): +0.04..+0.13 dB
    # on every x4 bench volume over stage 3 (benchmarks/results/throughplane-coarse).
    # Adapts at 3e-4, chosen with the stage-3 weights: 180 s gained +0.11..+0.44 dB (mean +0.25) on the 8 x4 bench
    # volumes against +0.16 at 1e-4 and +0.20 at 2e-4; training the second stack alone gained less (+0.14 mean, one
    # volume -0.07) (benchmarks/results/adapt-throughplane/stage3-lr3e-4). Stage 4 at 3e-4: mean +0.22 (stage4/).
    _throughplane("mr", "MR through-plane super-resolution, slice ratio 2-6 (2D net on both slice orientations)",
                  "fd45803e4c285c2d1acc197da7a8eee37654a724455634303b7c87dceeed9d19", refine=1, adapt_lr=3e-4),
    # trained on the in-plane planes of the HU volumes with weights_ok (configs/ct-throughplane.toml)
    _throughplane("ct", "CT through-plane super-resolution in HU, slice ratio 2-6 (2D net on both slice "
                        "orientations)", "53e68e7b6ed67c054a4019ee18954af5467e58c604466073654fac39c715c04d"),
    # stage 4 (configs/mr-denoise-varied.toml, domain-randomised fine-tune): the Trio MPRAGE +0.17 -> +0.47 dB over
    # tuned diffusion at 5 % Rician, no held-out volume down more than 0.08 (benchmarks/results/denoise-varied)
    _denoiser("mr", "MR denoising, Rician noise 2-10% (3D residual U-Net on noise-level-normalised input)",
              "1409d8277b7886cf0e5e44864c100f557e0b913837a9bb4c6ecb95d84e9046b6", normalisation="mr-noise"),
    _denoiser("ct", "Low-dose CT denoising, 1e4-1e5 photons per ray (3D residual U-Net on noise-level-normalised "
                    "input)",
              "75c0dd4a9e016673ef2c50121002f68540c68562368885856b36a63ca890a2b1", normalisation="ct-noise"),
)

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in CLASSICAL + LEARNED}


# Models named by the path of their card (`medsr bench --models runs/x/x.json`): a user's own trained model, or
# a leave-one-source-out run. Known by name too once loaded, for the rest of the process.
_FROM_CARDS: dict[str, ModelSpec] = {}


def from_card(path: Path) -> ModelSpec:
    """A spec for weights written by `medsr train` (the card beside them says how to build and serve them). Its
    sha256 is read from the file now: the user vouches for a file they name; results record the hash."""
    try:
        card = json.loads(path.read_text())
        weights = (path.parent / card["weights"]).resolve()  # absolute: a relative card path is from the cwd
        isotropic = card["scale_mode"] == "isotropic"
        spec = ModelSpec(card["name"], card["task"], "learned", (card["modality"],), f"trained model card {path}",
                         arch=card["arch"], builder=card["builder"], kwargs=card["kwargs"], weights=str(weights),
                         sha256=sha256_of(weights), card=str(path.resolve()), normalisation=card["normalisation"],
                         scale_mode=card["scale_mode"], scales=tuple(card.get("scales", ())),
                         scale_min=card.get("scale_min", 1.0), scale_max=card.get("scale_max", 1.0),
                         acquisition="kspace" if isotropic else "gaussian" if card["scale_mode"] == "axis" else "",
                         auto=False)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"cannot use model card {path}: {exc}") from None
    if spec.name in REGISTRY:
        raise InputError(f"model card {path} names {spec.name!r}, a bundled model: rename the trained model")
    _FROM_CARDS[spec.name] = spec
    return spec


def get(name: str) -> ModelSpec:
    """A bundled model by name, or a trained one by the path of its card (``*.json``)."""
    if name in REGISTRY or name in _FROM_CARDS:
        return REGISTRY.get(name) or _FROM_CARDS[name]
    if name.endswith(".json"):
        return from_card(Path(name))
    raise InputError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))} (or the path of a trained "
                     f"model's card, *.json)")


def measured(card: dict[str, Any]) -> str:
    """The headline of a card's measured metrics, one short phrase per bench case: the foreground-PSNR gain in
    dB over the best tuned classical baseline, lowest to highest over the held-out volumes (over every volume
    where a card records no held-out figures, and it says so); "-" if none."""
    parts = []
    for case, m in (card.get("metrics") or {}).items():
        if not isinstance(m, dict):
            continue
        lo, hi, which = m.get("held_out_gain_db_min"), m.get("held_out_gain_db_max"), ""
        if lo is None or hi is None:  # cards without held-out figures: every benchmarked volume
            gains = [g for v in m.get("per_volume") or [] if isinstance(v, dict)
                     for g in list(((v.get("verdict") or {}).get("gain_db") or {}).values())[:1]]
            lo, hi, which = (min(gains), max(gains), " (every volume)") if gains else (None, None, "")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            parts.append(f"{case} {lo:+.2f}..{hi:+.2f} dB{which}")
    return "; ".join(parts) or "-"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_weights_path(spec: ModelSpec) -> Path:
    """The weights file of ``spec`` after checking its sha256 (never load unverified weights)."""
    path = WEIGHTS_DIR / spec.weights
    if not path.exists():
        raise InputError(f"weights of model {spec.name!r} are missing: {path}")
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise InputError(f"weights of model {spec.name!r} fail their sha256 check ({actual[:12]}... != "
                         f"{spec.sha256[:12]}...): reinstall the package")
    return path
