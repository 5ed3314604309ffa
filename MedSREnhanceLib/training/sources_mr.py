"""MR training pairs: isotropic SR (k-space truncation), through-plane SR (slice profile), Rician denoising."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from .. import simulate
from ..core.normalise import forward as normalise_forward
from ..core.normalise import noise_sigma, robust_max
from ..core.resample import resample_scale
from ..core.volume import Volume
from .config import Config, normalisation_of
from .randomise import randomise
from .pairs import (
    PairSource,
    augment,
    pad_to,
    sample_corner,
    structure_weights,
    zscore_brain,
)


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


def isotropic_target(vol: Volume) -> Volume:
    """A thick-slice volume as an isotropic target: its fine axes k-space truncated to the coarsest spacing (axes
    within 10% of it are kept). A 0.6x0.6x2.5 mm body MR becomes a 2.5 mm isotropic one, a target an isotropic
    SR pair can use (the voxel size does not matter to the net; the anatomy and contrast do)."""
    sp = np.asarray(vol.spacing, float)
    factors = tuple(float(sp.max() / s) if sp.max() / s > 1.1 else 1.0 for s in sp)
    return simulate.kspace_truncation(vol, factors) if max(factors) > 1.0 else vol


def truncated(vol: Volume, factors: tuple[float, ...]) -> Volume:
    """``vol`` k-space-truncated by ``factors`` (index order), a magnitude volume kept >= 0: the truncation rings
    below 0 at skull-stripped edges, and a magnitude image never is (Rician noise on a negative voxel would treat the
    volume as signed and skip the background's Rayleigh floor). A signed volume (a z-scored copy, HU) stays signed."""
    out = simulate.kspace_truncation(vol, factors)
    return out.with_array(np.maximum(out.array, 0.0)) if float(vol.array.min()) >= 0.0 else out


def coarser(vol: Volume, rng: np.random.Generator, bounds: Sequence[float],
            axis_ok: Callable[[int, float], bool]) -> Volume:
    """Resolution jitter: ``vol`` k-space-truncated by a factor f drawn from ``bounds`` ([degrade]
    downsample_range) along each index axis a where ``axis_ok(a, f)``; ``vol`` itself where no axis is truncated.
    No draw when the range is a single value (nor any work at [1, 1]: earlier configs' pairs are unchanged)."""
    lo, hi = bounds
    if hi <= 1.0:
        return vol
    f = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    factors = tuple(f if axis_ok(a, f) else 1.0 for a in range(3))
    return truncated(vol, factors) if max(factors) > 1.0 else vol

class SRSource(PairSource):
    """Isotropic SR: k-space truncation by an integer factor; LR and HR patches aligned exactly. With [randomise],
    every refresh redraws each volume's appearance (randomise.py) before the truncation."""

    MIN_LR_AXIS = 24  # LR voxels an axis keeps after the resolution jitter (the LR patch is 20 at x2)

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        super().__init__(cfg, ids, rng)
        self.bases = self.vols
        self.items: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
        self.records: list[dict[str, Any]] = []
        self._build()

    def prepare(self, vol: Volume) -> Volume:
        return isotropic_target(vol) if self.cfg.data.isotropise else vol

    def refresh(self) -> None:
        if self.cfg.randomise.enabled() or max(self.cfg.degrade.downsample_range) > 1.0:
            self._build()

    def _coarser(self, vol: Volume) -> Volume:
        """``vol`` on a coarser grid ([degrade] downsample_range, every axis); an axis keeps its grid where it would
        fall under ``MIN_LR_AXIS`` LR voxels."""
        s = self.cfg.degrade.scale
        return coarser(vol, self.rng, self.cfg.degrade.downsample_range,
                       lambda a, f: vol.size[a] / f / s >= self.MIN_LR_AXIS)

    def _build(self) -> None:
        s = self.cfg.degrade.scale
        self.items, self.records = [], []
        for base in self.bases:
            base = self._coarser(base)
            if self.cfg.randomise.enabled():
                arr, record = randomise(base.array / robust_max(base.array), self.rng, self.cfg.randomise)
                base = base.with_array(arr)
                self.records.append(record)
            for vol in _mr_variants([base], self.cfg.data.zscore_variants):
                # crop to a multiple of s so the LR grid is exactly every s-th block of HR voxels
                z, y, x = (d - d % s for d in vol.array.shape)
                hr = Volume(vol.array[:z, :y, :x], vol.spacing, vol.origin, vol.direction)
                lr = simulate.kspace_truncation(hr, (s, s, s))
                lr_n, params = normalise_forward(lr.array, "mr")
                hr_n = (hr.array / params["scale"]).astype(np.float32)
                w = structure_weights(lr_n, 2)
                self.items.append((lr_n, hr_n, w, bool(hr.array.min() >= 0)))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        s, p = self.cfg.degrade.scale, self.cfg.data.patch // self.cfg.degrade.scale
        lr, hr, w, nonneg = self.items[int(self.rng.integers(len(self.items)))]
        c = sample_corner(w, 2, lr.shape, (p, p, p), self.rng)
        x = pad_to(lr[c[0]:c[0] + p, c[1]:c[1] + p, c[2]:c[2] + p], (p, p, p))
        y = pad_to(hr[s * c[0]:s * (c[0] + p), s * c[1]:s * (c[1] + p), s * c[2]:s * (c[2] + p)],
                    (s * p,) * 3)
        x, y = augment([x, y], self.rng, (0, 1, 2), (0, 1, 2))
        gain = float(self.rng.uniform(0.75, 1.25))
        x, y = x * gain, y * gain
        d = self.cfg.degrade
        if nonneg and self.rng.random() < d.noise_prob:
            x = _add_rician(x, float(self.rng.uniform(*d.noise_range)), self.rng)
        return x.astype(np.float32), y.astype(np.float32)


class ThroughPlaneSource(PairSource):
    """Thick slices along one axis (random factor and profile) -> B-spline onto the HR grid; 2D (D, L) patches.

    MR ("mr" normalisation) or CT in HU ("ct": clipped to CT_HU_RANGE, no z-scored copies). Only fine axes are
    thickened, so a thick-slice training volume gives its in-plane planes (SMORE's trick: the in-plane resolution
    stands in for the through-plane one it lacks)."""

    CT_HU_RANGE = (-1024.0, 3071.0)  # padding outside a CT's field of view (-2048, -3024) reads as air
    MIN_AXIS = 16  # voxels an axis needs to give a patch side

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        super().__init__(cfg, ids, rng)
        self.kind = normalisation_of(cfg)
        if self.kind == "ct":
            self.bases = [v.with_array(np.clip(v.array, *self.CT_HU_RANGE)) for v in self.vols]
        else:
            self.bases = _mr_variants(self.vols, cfg.data.zscore_variants)
        self.weights = [structure_weights(normalise_forward(v.array, self.kind)[0], 4) for v in self.bases]
        self.items: list[tuple[np.ndarray, np.ndarray, int, list[int], np.ndarray]] = []
        self.records: list[dict[str, Any]] = []
        self.refresh()

    @staticmethod
    def fine_axes(vol: Volume) -> list[int]:
        """Index axes whose spacing is within 10% of the finest (the ones that hold real detail)."""
        sp = np.asarray(vol.spacing)
        return [a for a in range(3) if sp[a] <= 1.1 * sp.min() and vol.size[a] >= ThroughPlaneSource.MIN_AXIS]

    def refresh(self) -> None:
        d = self.cfg.degrade
        self.items, self.records = [], []
        coarser = max(d.downsample_range) > 1.0
        for i, (vol, w) in enumerate(zip(self.bases, self.weights)):
            if self.cfg.randomise.enabled() or coarser:  # a new grid and appearance (randomise: MR only)
                vol = self._varied(i)
                if coarser:  # the sampling weights of the new grid
                    w = structure_weights(normalise_forward(vol.array, self.kind)[0], 4)
            axes = self.fine_axes(vol)
            axis = int(axes[int(self.rng.integers(len(axes)))])
            lr, record = simulate.random_slice_profile(vol, axis, tuple(d.factor_range), self.rng,
                                                      profiles=tuple(d.profiles))
            f = record["params"]["thickness_factor"]
            factors = [1.0, 1.0, 1.0]
            factors[axis] = f
            up = resample_scale(lr, tuple(factors), "bspline")  # type: ignore[arg-type]
            _, params = normalise_forward(lr.array, self.kind)  # from the thick volume, as at inference
            shape = tuple(min(a, b) for a, b in zip(up.array.shape, vol.array.shape))
            crop = tuple(slice(0, n) for n in shape)
            up_n = ((up.array[crop] - params["offset"]) / params["scale"]).astype(np.float32)
            hr_n = ((vol.array[crop] - params["offset"]) / params["scale"]).astype(np.float32)
            # the patch's second axis: another fine axis, else (one axis finer than the rest by >10%, e.g. a
            # 1.15x1.15x1.0 mm MPRAGE) any other axis long enough for a patch
            others = [a for a in axes if a != axis] or [a for a in range(3)
                                                        if a != axis and vol.size[a] >= self.MIN_AXIS]
            self.items.append((up_n, hr_n, axis, others, w))
            self.records.append(record)

    def _varied(self, i: int) -> Volume:
        """Base ``i`` on a coarser grid ([degrade] downsample_range) and with a freshly randomised appearance
        ([randomise]), then z-scored if base i is a z-scored copy (the bases are the volumes, then their z-scored
        copies: _mr_variants)."""
        randomised = self.cfg.randomise.enabled()
        vol = self._coarser(self.vols[i % len(self.vols)] if randomised else self.bases[i])
        if not randomised:
            return vol
        arr, _ = randomise(vol.array / robust_max(vol.array), self.rng, self.cfg.randomise)
        return vol.with_array(zscore_brain(arr) if i >= len(self.vols) else arr)

    def _coarser(self, vol: Volume) -> Volume:
        """``vol`` k-space-truncated along its fine axes by a factor drawn from [degrade] downsample_range: the
        same anatomy on a coarser grid, more structure per voxel (a 2 mm T1 next to the 1 mm training volumes).
        An axis keeps its grid where it would fall under MIN_AXIS voxels."""
        fine = self.fine_axes(vol)
        return coarser(vol, self.rng, self.cfg.degrade.downsample_range,
                       lambda a, f: a in fine and vol.size[a] / f >= self.MIN_AXIS)

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
        x, y = pad_to(x, (p, p)), pad_to(y, (p, p))
        x, y = augment([x, y], self.rng, (), (0, 1))
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
    """Whole-volume Rician noise at a random level per refresh, normalised on the noisy volume as at inference.
    With [randomise], every refresh first redraws each volume's appearance (randomise.py) and re-reads its own
    noise on the result (contrast curves, blur and the randomiser's own noise all change it)."""

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        super().__init__(cfg, ids, rng)
        self.items: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
        if not cfg.randomise.enabled():
            self._set_bases(self.vols)
        self.refresh()

    def _set_bases(self, vols: list[Volume]) -> None:
        """The bases (``vols``, then their z-scored copies), their sampling weights and their own noise."""
        d = self.cfg.degrade
        self.bases = _mr_variants(vols, self.cfg.data.zscore_variants)
        # the targets' own noise, read only where an option uses it; as a level z-scored copies share their volume's
        own = [noise_sigma(v.array) if d.target_noise_max > 0 or d.own_noise_correction else 0.0 for v in vols]
        levels = [s / robust_max(v.array) for s, v in zip(own, vols)]
        self.levels = levels * (len(self.bases) // len(vols))
        self.weights = [structure_weights(v.array / robust_max(v.array), 2) for v in self.bases]
        self.own_sigma = _own_noise(vols, self.bases, own) if d.own_noise_correction else [0.0] * len(self.bases)

    def refresh(self) -> None:
        if self.cfg.randomise.enabled():
            self._set_bases([v.with_array(randomise(v.array / robust_max(v.array), self.rng, self.cfg.randomise)[0])
                             for v in self.vols])
        self.items = []
        d = self.cfg.degrade
        lo, hi = d.downsample_range
        for vol, w, level, s0 in zip(self.bases, self.weights, self.levels, self.own_sigma):
            factors = target_factors(vol.array.shape, level, d.target_noise_max,
                                     float(self.rng.uniform(lo, hi)) if hi > lo else lo)
            if max(factors) > 1.0:
                vol = truncated(vol, factors)  # magnitude kept >= 0 (the net had kept a ringing background)
                w = structure_weights(vol.array / robust_max(vol.array), 2)
                s0 /= math.sqrt(math.prod(factors))  # truncation lowers white noise by sqrt(prod f) (tested law)
            noisy, record = simulate.random_rician_noise(vol, tuple(d.noise_range), self.rng)
            sigma_added = simulate.rician_sigma(vol.array, record["params"]["level"])[0]
            retention = s0**2 / (s0**2 + sigma_added**2) if s0 > 0 else 0.0
            x, params = normalise_forward(noisy.array, normalisation_of(self.cfg))
            self.items.append((x, (vol.array / params["scale"]).astype(np.float32), w, retention))

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        p = self.cfg.data.patch
        x, y, w, retention = self.items[int(self.rng.integers(len(self.items)))]
        c = sample_corner(w, 2, x.shape, (p, p, p), self.rng)
        sl = tuple(slice(ci, ci + p) for ci in c)
        a, b = pad_to(x[sl], (p, p, p)), pad_to(y[sl], (p, p, p))
        a, b = augment([a, b], self.rng, (0, 1, 2), (0, 1, 2))
        r = np.where(b != 0.0, np.float32(retention), np.float32(0.0)) if self.cfg.degrade.own_noise_correction \
            else None
        if normalisation_of(self.cfg) == "mr-noise":  # the noise std is fixed there: a gain would change it
            return a.astype(np.float32), b.astype(np.float32), r
        gain = float(self.rng.uniform(0.75, 1.25))
        return (a * gain).astype(np.float32), (b * gain).astype(np.float32), r

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        x, y, _ = self.draw()
        return x, y
