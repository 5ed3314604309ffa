"""The data sources file (configs/data_sources.toml): every volume a training config may read, with its source,
licence, source group and whether weights trained on it may ship. The voxels are never in the project: each
volume names a root folder holding a MANIFEST.json with its file.

A source group (a dataset, a scanner, a subject) is the unit of leave-one-source-out validation: ``leave_out``
drops a group's volumes from a config's lists so a model can be trained without it and scored on it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from .config import REPO_ROOT

DEFAULT_SOURCES = "configs/data_sources.toml"
SHARED_ROOT = "shared"  # the root `[data] data_root` and `medsr train --data-root` stand for


@dataclass(frozen=True)
class SourceEntry:
    id: str
    root: str  # a key of [roots]
    group: str
    source: str  # owner/repo@commit:path or pypi package==version
    licence: str
    weights_ok: str  # "yes..." allows shipping weights trained on it; anything else does not
    modality: str = ""

    @property
    def shippable(self) -> bool:
        return self.weights_ok.startswith("yes")


@dataclass(frozen=True)
class DataSources:
    path: Path
    roots: dict[str, Path]
    volumes: dict[str, SourceEntry]

    def entry(self, volume_id: str) -> SourceEntry:
        if volume_id not in self.volumes:
            raise ValueError(f"volume {volume_id!r} is not recorded in {self.path.name}: add its source, licence "
                             f"and group before training on it")
        return self.volumes[volume_id]

    def groups(self, ids: list[str]) -> list[str]:
        """The source groups of ``ids``, in first-seen order."""
        return list(dict.fromkeys(self.entry(v).group for v in ids))

    def citation(self, ids: list[str]) -> list[dict[str, Any]]:
        """Per volume: id, group, source, licence, weights_ok (what a model card names)."""
        return [{"id": v, "group": self.entry(v).group, "source": self.entry(v).source,
                 "licence": self.entry(v).licence, "weights_ok": self.entry(v).weights_ok} for v in ids]


def load_sources(path: str | Path, shared_root: str | Path = "") -> DataSources:
    """Parse a data sources file; roots resolve against the repository root, ``shared_root`` (a config's
    data_root) replaces the "shared" one."""
    path = Path(path) if Path(path).is_absolute() else REPO_ROOT / path
    raw = tomllib.loads(path.read_text())
    roots = {name: (Path(p) if Path(p).is_absolute() else (REPO_ROOT / p)).resolve()
             for name, p in raw.get("roots", {}).items()}
    if shared_root:
        roots[SHARED_ROOT] = Path(shared_root).resolve()
    # [groups.NAME]: fields every volume of that group shares (a dataset's licence, root, modality); a volume's own
    # keys win
    groups = raw.get("groups", {})
    for name, shared in groups.items():
        unknown = set(shared) - {"root", "licence", "weights_ok", "modality"}
        if unknown:
            raise ValueError(f"{path.name}: unknown key(s) for group {name!r}: {', '.join(sorted(unknown))}")
    volumes = {}
    for vid, own in raw.get("volumes", {}).items():
        table = {**groups.get(own.get("group"), {}), **own}
        unknown = set(table) - {"root", "group", "source", "licence", "weights_ok", "modality"}
        if unknown:
            raise ValueError(f"{path.name}: unknown key(s) for volume {vid!r}: {', '.join(sorted(unknown))}")
        missing = {"root", "group", "source", "licence", "weights_ok"} - set(table)
        if missing:
            raise ValueError(f"{path.name}: volume {vid!r} lacks {', '.join(sorted(missing))}")
        if table["root"] not in roots:
            raise ValueError(f"{path.name}: volume {vid!r} names root {table['root']!r}, not in [roots]")
        volumes[vid] = SourceEntry(id=vid, **table)
    return DataSources(path, roots, volumes)


def volume_file(sources: DataSources | None, data_root: str, volume_id: str) -> tuple[Path, dict[str, Any]]:
    """The file of ``volume_id`` and its manifest entry: through the sources file when there is one (its root's
    MANIFEST.json), else from ``data_root``'s manifest."""
    root = Path(data_root) if sources is None else sources.roots[sources.entry(volume_id).root]
    manifest = {e["id"]: e for e in json.loads((root / "MANIFEST.json").read_text())}
    if volume_id not in manifest:
        raise ValueError(f"volume {volume_id!r} is not in {root / 'MANIFEST.json'}")
    return root / manifest[volume_id]["file"], manifest[volume_id]


def check_shippable(sources: DataSources | None, data_root: str, ids: list[str]) -> None:
    """Refuse training volumes whose licence does not allow shipping weights: the sources file's word, and the
    manifest's where it says no (either one saying no is enough)."""
    for vid in ids:
        _, entry = volume_file(sources, data_root, vid)
        verdicts = [str(entry.get("weights_ok", "yes" if sources is not None else ""))]
        if sources is not None:
            verdicts.append(sources.entry(vid).weights_ok)
        for verdict in verdicts:
            if not verdict.startswith("yes"):
                raise ValueError(f"volume {vid!r} may not be used to train weights (weights_ok: {verdict!r})")


def leave_out(sources: DataSources, ids: list[str], group: str) -> list[str]:
    """``ids`` without the volumes of source group ``group``."""
    return [v for v in ids if sources.entry(v).group != group]
