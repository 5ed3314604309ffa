"""CT denoising pairs: projection-domain low dose simulated once per volume and dose, cached."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from .. import simulate
from ..core import normalise
from ..core.normalise import forward as normalise_forward
from ..core.volume import Volume
from .config import Config, normalisation_of
from .pairs import PairSource, augment, pad_to, sample_corner, structure_weights

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


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
        noisy, reference = simulate.lowdose_ct(sub, photons, d.electronic_noise_std, rng, n_angles=d.n_angles)
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
        y = pad_to(ref[sl], (pz, p, p))
        lo_s, hi_s = d.shared_noise_hu
        if hi_s > 0:  # the texture: a noise field patch from elsewhere (independent of the added noise), rescaled
            _, other, _, other_std = fields[int(self.rng.integers(len(fields)))]
            c2 = [int(self.rng.integers(0, n - k + 1)) for n, k in zip(other.shape, (pz, p, p))]
            tex = pad_to(other[c2[0]:c2[0] + pz, c2[1]:c2[1] + p, c2[2]:c2[2] + p], (pz, p, p))
            shared_hu = float(self.rng.uniform(lo_s, hi_s))
            y = y + tex * (shared_hu / 1000.0 / other_std)
        x = y + pad_to(noise[sl], (pz, p, p)) * math.sqrt(photons_sim / photons)
        # CT noise is independent between slices but correlated in-plane: never swap z with x/y
        x, y = augment([x, y], self.rng, (1, 2), (0, 1, 2))
        gain = 1.0  # plain "ct"
        if sigma_table is not None:  # "ct-noise": the gain inference would apply to this volume at this dose
            sigma_hu = float(np.exp(np.interp(log_dose, self.log_doses, np.log(sigma_table))))
            if hi_s > 0:  # inference measures the reference's own noise too
                sigma_hu = math.hypot(sigma_hu, shared_hu)
            gain = normalise.CT_NOISE_REF_HU / sigma_hu
        return (x * gain).astype(np.float32), (y * gain).astype(np.float32)
