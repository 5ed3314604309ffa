"""Hash-checked reuse of degraded inputs and classical results between bench runs, and JSON-safe values."""
from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..core.volume import Volume


def seed_for(seed: int, case: str, vol_id: str) -> np.random.Generator:
    # Stable per (case, volume): a subset run reproduces the same noise as the full run.
    return np.random.default_rng([seed, zlib.crc32(f"{case}/{vol_id}".encode())])


def source_hash(*modules: Any) -> str:
    h = hashlib.sha256()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()[:16]


def save_volumes(path: Path, vols: dict[str, Volume]) -> None:
    names = list(vols)
    arrays = {f"a{i}": vols[n].array for i, n in enumerate(names)}
    geoms = {f"g{i}": np.asarray([*vols[n].spacing, *vols[n].origin, *vols[n].direction.ravel()])
             for i, n in enumerate(names)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, names=np.asarray(names), **arrays, **geoms)
    tmp.replace(path)


def load_volumes(path: Path) -> dict[str, Volume]:
    with np.load(path) as data:
        out = {}
        for i, name in enumerate(data["names"].tolist()):
            g = data[f"g{i}"]
            out[str(name)] = Volume(data[f"a{i}"], tuple(g[:3]), tuple(g[3:6]), g[6:].reshape(3, 3))
        return out


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
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
