"""Domain randomisation of a training volume before it is degraded: contrast remapping, bias field, blur and
resolution jitter, ringing, noise.

The models learned from a handful of subjects and scanners, and lost most of their gain on volumes of other
scanners and contrasts (issue 14). Randomising the appearance of the high-resolution volume *before* the
acquisition is simulated keeps every pair exact (the input is still the acquisition of its target) while the net
sees contrasts, shading, sharpness and noise its few sources do not have (SynthSR's approach, without labels).

Every function takes and returns a float32 magnitude array normalised so that its robust maximum is about 1; they
are pure apart from the generator they draw from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class RandomiseConfig:
    """[randomise]: each transform is applied with its probability, with parameters drawn from its range."""

    contrast_prob: float = 0.0
    contrast_points: int = 4  # interior control points of the random intensity curve
    contrast_monotone_prob: float = 0.5  # otherwise the curve may invert contrast (T1-like <-> T2-like)
    gamma_log_range: list[float] = field(default_factory=lambda: [-0.4, 0.4])
    bias_prob: float = 0.0
    bias_std: list[float] = field(default_factory=lambda: [0.0, 0.3])  # of the log field
    bias_grid: int = 4  # control points per axis of the smooth field
    blur_prob: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.0, 0.6])  # voxels, drawn per axis
    ringing_prob: float = 0.0
    ringing_factor: list[float] = field(default_factory=lambda: [1.0, 1.3])  # k-space truncation of the target
    noise_prob: float = 0.0
    noise_range: list[float] = field(default_factory=lambda: [0.0, 0.03])  # Rician sigma of the target

    def enabled(self) -> bool:
        return max(self.contrast_prob, self.bias_prob, self.blur_prob, self.ringing_prob, self.noise_prob) > 0.0

    def check(self) -> None:
        for name in ("contrast_prob", "contrast_monotone_prob", "bias_prob", "blur_prob", "ringing_prob",
                     "noise_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"[randomise] {name} must be in [0, 1], not {getattr(self, name)}")
        for name, minimum in (("bias_std", 0.0), ("blur_sigma", 0.0), ("ringing_factor", 1.0),
                              ("noise_range", 0.0), ("gamma_log_range", -5.0)):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not minimum <= lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"[randomise] {name} must be [lo, hi] with {minimum:g} <= lo <= hi, not {lo_hi}")
        if self.contrast_points < 1 or self.bias_grid < 2:
            raise ValueError("[randomise] contrast_points must be >= 1 and bias_grid >= 2")


def contrast_curve(x: np.ndarray, rng: np.random.Generator, points: int, monotone: bool,
                   log_gamma: float) -> np.ndarray:
    """A random intensity curve through (0, 0): ``points`` interior knots on [0, 1] (sorted if ``monotone``),
    linear beyond 1, then a gamma. Zero stays zero, so a masked background stays background."""
    knots_x = np.concatenate([[0.0], np.sort(rng.uniform(0.05, 0.95, points)), [1.0]])
    values = rng.uniform(0.05, 1.0, points + 1)
    knots_y = np.concatenate([[0.0], np.sort(values) if monotone else values])
    knots_y /= knots_y.max()
    slope = (knots_y[-1] - knots_y[-2]) / (knots_x[-1] - knots_x[-2])
    y = np.interp(x, knots_x, knots_y)
    y = np.where(x > 1.0, knots_y[-1] + slope * (x - 1.0), y)
    return (np.maximum(y, 0.0) ** np.exp(log_gamma)).astype(np.float32)


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, std: float, grid: int) -> np.ndarray:
    """A smooth multiplicative field exp(g): g a ``grid``^3 Gaussian lattice (std ``std``) upsampled cubically."""
    coarse = rng.normal(0.0, std, (grid,) * len(shape))
    log_field = ndimage.zoom(coarse, [n / grid for n in shape], order=3, mode="nearest", grid_mode=True)
    return np.exp(log_field[tuple(slice(0, n) for n in shape)]).astype(np.float32)


def kspace_lowpass(x: np.ndarray, factors: tuple[float, ...]) -> np.ndarray:
    """Keep the central 1/f of k-space per axis on the same grid: the ringing of a coarser acquisition."""
    spec = np.fft.fftn(x)
    for axis, f in enumerate(factors):
        if f <= 1.0:
            continue
        n = x.shape[axis]
        freq = np.abs(np.fft.fftfreq(n))
        keep = (freq <= 0.5 / f).astype(np.float64)
        spec *= keep.reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.real(np.fft.ifftn(spec)).astype(np.float32)


def rician(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of std ``sigma`` (MR magnitude images)."""
    n1 = rng.normal(0.0, sigma, x.shape)
    n2 = rng.normal(0.0, sigma, x.shape)
    return np.sqrt((x + n1) ** 2 + n2**2).astype(np.float32)


def randomise(x: np.ndarray, rng: np.random.Generator, cfg: RandomiseConfig) -> tuple[np.ndarray, dict]:
    """The randomised volume and a record of what was drawn. Order follows the physics: the object's contrast,
    the coil's shading, the scanner's resolution and ringing, then the noise."""
    record: dict = {}
    out = np.clip(x, 0.0, None).astype(np.float32)
    if rng.random() < cfg.contrast_prob:
        monotone = bool(rng.random() < cfg.contrast_monotone_prob)
        log_gamma = float(rng.uniform(*cfg.gamma_log_range))
        out = contrast_curve(out, rng, cfg.contrast_points, monotone, log_gamma)
        record["contrast"] = {"monotone": monotone, "log_gamma": log_gamma}
    if rng.random() < cfg.bias_prob:
        std = float(rng.uniform(*cfg.bias_std))
        out = out * bias_field(out.shape, rng, std, cfg.bias_grid)
        record["bias_std"] = std
    if rng.random() < cfg.blur_prob:
        sigmas = [float(s) for s in rng.uniform(*cfg.blur_sigma, out.ndim)]
        out = ndimage.gaussian_filter(out, sigmas, mode="nearest").astype(np.float32)
        record["blur_sigma"] = sigmas
    if rng.random() < cfg.ringing_prob:
        factors = tuple(float(f) for f in rng.uniform(*cfg.ringing_factor, out.ndim))
        out = np.clip(kspace_lowpass(out, factors), 0.0, None)
        record["ringing_factor"] = factors
    if rng.random() < cfg.noise_prob:
        sigma = float(rng.uniform(*cfg.noise_range))
        out = rician(out, sigma, rng)
        record["noise_sigma"] = sigma
    peak = float(np.percentile(out[out > 0], 99.5)) if (out > 0).any() else 1.0
    return (out / (peak or 1.0)).astype(np.float32), record
