"""Random twins of the degradations: parameters drawn from a caller's generator, recorded, and replayable."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..core.volume import Volume
from .lowdose import lowdose_ct
from .motion import random_motion_events, rigid_motion
from .noise import rician_noise
from .resolution import gaussian_psf_downsample, kspace_truncation, slice_profile


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def random_kspace_truncation(vol: Volume, scales: tuple[float, float], rng: np.random.Generator,
                             isotropic: bool = True) -> tuple[Volume, dict[str, Any]]:
    """Reduction factor(s) drawn uniformly in ``scales`` (same on all axes when ``isotropic``)."""
    if isotropic:
        f = float(rng.uniform(*scales))
        scale = (f, f, f)
    else:
        scale = tuple(float(v) for v in rng.uniform(scales[0], scales[1], 3))
    record = {"name": "kspace_truncation", "params": {"scale": list(scale)}}
    return replay(vol, record), record  # type: ignore[return-value]


def random_slice_profile(vol: Volume, axis: int, factor_range: tuple[float, float], rng: np.random.Generator,
                         profiles: tuple[str, ...] = ("gaussian", "rect"),
                         gap_range: tuple[float, float] = (0.0, 0.0)) -> tuple[Volume, dict[str, Any]]:
    record = {"name": "slice_profile", "params": {
        "axis": int(axis),
        "thickness_factor": float(rng.uniform(*factor_range)),
        "profile": str(profiles[int(rng.integers(len(profiles)))]),
        "gap": float(rng.uniform(*gap_range)) if gap_range[1] > gap_range[0] else float(gap_range[0]),
    }}
    return replay(vol, record), record  # type: ignore[return-value]


def random_rician_noise(vol: Volume, level_range: tuple[float, float],
                        rng: np.random.Generator) -> tuple[Volume, dict[str, Any]]:
    record = {"name": "rician_noise", "params": {"level": float(rng.uniform(*level_range))}, "seed": _seed(rng)}
    return replay(vol, record), record  # type: ignore[return-value]


def random_lowdose_ct(vol_hu: Volume, photons_range: tuple[float, float], electronic_range: tuple[float, float],
                      rng: np.random.Generator, n_angles: int | None = None,
                      ) -> tuple[tuple[Volume, Volume], dict[str, Any]]:
    """Photons drawn log-uniformly in ``photons_range``, electronic noise std uniformly."""
    lo, hi = np.log(photons_range[0]), np.log(photons_range[1])
    record = {"name": "lowdose_ct", "params": {
        "photons_per_ray": float(np.exp(rng.uniform(lo, hi))),
        "electronic_noise_std": float(rng.uniform(*electronic_range)),
        "n_angles": n_angles,
    }, "seed": _seed(rng)}
    return replay(vol_hu, record), record  # type: ignore[return-value]


def random_rigid_motion(vol: Volume, rng: np.random.Generator, n_events: int = 2, max_rotation_deg: float = 4.0,
                        max_translation_mm: float = 4.0, pe_axes: tuple[int, ...] = (0, 1, 2),
                        centre_margin: float = 0.0) -> tuple[Volume, dict[str, Any]]:
    """Phase-encode axis drawn from ``pe_axes``, then ``n_events`` movements (see motion.random_motion_events)."""
    pe_axis = int(pe_axes[int(rng.integers(len(pe_axes)))])
    events = random_motion_events(rng, n_events, max_rotation_deg, max_translation_mm, centre_margin=centre_margin)
    record = {"name": "rigid_motion", "params": {"pe_axis": pe_axis, "events": events}}
    return replay(vol, record), record  # type: ignore[return-value]


_DETERMINISTIC: dict[str, Callable[..., Any]] = {
    "rigid_motion": rigid_motion,
    "kspace_truncation": kspace_truncation,
    "slice_profile": slice_profile,
    "gaussian_psf_downsample": gaussian_psf_downsample,
}
_NOISY: dict[str, Callable[..., Any]] = {
    "rician_noise": rician_noise,
    "lowdose_ct": lowdose_ct,
}


def replay(vol: Volume, record: dict[str, Any]) -> Volume | tuple[Volume, Volume]:
    """Re-run the degradation a ``random_*`` call recorded (same params, same noise seed)."""
    name = record["name"]
    params = dict(record["params"])
    if "scale" in params:
        params["scale"] = tuple(params["scale"])
    if name in _DETERMINISTIC:
        return _DETERMINISTIC[name](vol, **params)
    if name in _NOISY:
        return _NOISY[name](vol, rng=np.random.default_rng(int(record["seed"])), **params)
    raise ValueError(f"unknown degradation {name!r}")
