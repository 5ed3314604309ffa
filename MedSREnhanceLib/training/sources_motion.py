"""MR motion-artifact pairs: each training volume moved during a simulated scan (k-space), against its still self."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import simulate
from ..core.normalise import forward as normalise_forward
from ..core.normalise import robust_max
from .config import Config, normalisation_of
from .pairs import PairSource, augment, pad_to, sample_corner, structure_weights
from .randomise import randomise


class MotionSource(PairSource):
    """Whole volumes re-corrupted at every refresh; input normalised on the corrupted volume as at inference.

    Only magnitude volumes (no z-scored copies): the simulation returns |image|, which a signed volume is not.
    With [randomise], each refresh redraws the volume's appearance before the motion (randomise.py). Slice patches
    (``patch_dims = 2``) always contain the phase-encode axis: across it a slice shows no ghost pattern to learn
    from, only an intensity error the slice cannot explain (this alone did not make the net learn: see
    configs/mr-motion.toml).
    """

    def __init__(self, cfg: Config, ids: list[str], rng: np.random.Generator) -> None:
        super().__init__(cfg, ids, rng)
        self.vols = [v.with_array(np.maximum(v.array, 0.0)) for v in self.vols]
        self.items: list[tuple[np.ndarray, np.ndarray, np.ndarray, Optional[int]]] = []
        self.records: list[dict] = []
        self.refresh()

    def refresh(self) -> None:
        d = self.cfg.degrade
        self.items, self.records = [], []
        for vol in self.vols:
            if self.cfg.randomise.enabled():
                vol = vol.with_array(randomise(vol.array / robust_max(vol.array), self.rng, self.cfg.randomise)[0])
            moved, record = vol, {"name": "none"}
            if self.rng.uniform() >= d.motion_clean_prob:
                moved, record = simulate.random_rigid_motion(
                    vol, self.rng, n_events=int(self.rng.integers(d.motion_events[0], d.motion_events[1] + 1)),
                    max_rotation_deg=float(self.rng.uniform(*d.motion_rotation_deg)),
                    max_translation_mm=float(self.rng.uniform(*d.motion_translation_mm)),
                    pe_axes=tuple(d.motion_pe_axes), centre_margin=d.motion_centre_margin)
            x, params = normalise_forward(moved.array, normalisation_of(self.cfg))
            y = (vol.array / params["scale"]).astype(np.float32)
            # patches where the artifact is, as well as where the structure is
            w = structure_weights(np.abs(x - y) + y, 2)
            pe = record["params"]["pe_axis"] if record["name"] == "rigid_motion" else None
            self.items.append((x, y, w, None if pe is None else 2 - int(pe)))  # array axis (z, y, x)
            self.records.append(record)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.cfg.data.patch
        x, y, w, pe = self.items[int(self.rng.integers(len(self.items)))]
        if self.cfg.data.patch_dims == 2:  # one slice, p x p, across an axis other than the phase-encode axis
            across = int(self.rng.choice([a for a in range(3) if a != pe]))
            shape = tuple(1 if a == across else p for a in range(3))
        else:
            shape = (p, p, p)
        c = sample_corner(w, 2, x.shape, shape, self.rng)
        sl = tuple(slice(ci, ci + pi) for ci, pi in zip(c, shape))
        a, b = pad_to(x[sl], shape), pad_to(y[sl], shape)
        if self.cfg.data.patch_dims == 2:
            a, b = a.reshape(p, p), b.reshape(p, p)
        axes = tuple(range(a.ndim))
        a, b = augment([a, b], self.rng, axes, axes)
        gain = float(self.rng.uniform(0.75, 1.25))
        return (a * gain).astype(np.float32), (b * gain).astype(np.float32)
