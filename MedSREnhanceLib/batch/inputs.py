"""What a batch runs on: INPUT arguments (volume files, folders, globs, a CSV) expanded into cases, each with its
output path in DIR.

Naming: ``<name>_SRx2.nii.gz`` (``_SRx1x1x4`` for per-axis factors), ``<name>_denoised.nii.gz``; the difference map
adds ``_difference``, the uncertainty map ``_uncertainty``. A file found inside a folder INPUT keeps its sub-folder below DIR, so cohorts laid out as
``sub-01/anat/T1w.nii.gz`` do not collide. Missing or unmatched command-line INPUTs are usage errors; a bad CSV row
becomes a failed case (a CSV is data, the command line is the request).
"""
from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..core.errors import InputError
from ..core.volume import parse_scale

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# --format: single-file formats only, so an output and its sidecar are the whole result of a case.
FORMATS: dict[str, str] = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "mha": ".mha"}
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Case:
    """One input volume and where its results go (absolute paths: workers may run elsewhere on shared storage)."""

    input: str
    output: str
    task: str
    scale: str  # as requested: "2" or "1,1,4"
    difference: Optional[str] = None  # path of the difference map, when asked
    error: str = ""  # a CSV row that cannot run (recorded as failed without being submitted)
    uncertainty: Optional[str] = None  # path of the uncertainty map, when asked


@dataclass
class Source:
    """An input found on disk, the sub-folder its outputs go to, and per-row overrides from a CSV."""

    path: Path
    subdir: Path = Path()
    overrides: dict[str, str] = field(default_factory=dict)


def split_suffix(name: str) -> tuple[str, str]:
    """("sub-01_T1w", ".nii.gz") for "sub-01_T1w.nii.gz"; a folder name has no suffix."""
    lower = name.lower()
    for ext in VOLUME_SUFFIXES:
        if lower.endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    return name, ""


def is_volume_file(path: Path) -> bool:
    return path.is_file() and split_suffix(path.name)[1] != "" and not path.name.startswith(".")


def is_dicom_folder(path: Path) -> bool:
    """A folder holding DICOM files (by their "DICM" preamble; the first few regular files are enough)."""
    try:
        files = [f for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith(".")]
    except OSError:
        return False
    for f in files[:8]:
        try:
            with open(f, "rb") as fh:
                if fh.read(132)[128:132] == b"DICM":
                    return True
        except OSError:
            continue
    return False


def _search_folder(folder: Path, recursive: bool, exclude: Path) -> list[Source]:
    """Volume files and DICOM series folders in ``folder`` (its direct sub-folders too, as series), or at any
    depth with ``recursive``; hidden entries and DIR itself are skipped."""
    found: list[Source] = []
    if is_dicom_folder(folder):
        found.append(Source(folder, Path()))
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != exclude)
        for name in sorted(files):
            p = here / name
            if is_volume_file(p):
                found.append(Source(p, here.relative_to(folder)))
        for d in dirs:
            sub = here / d
            if is_dicom_folder(sub):
                found.append(Source(sub, here.relative_to(folder)))
        if not recursive:
            break
    return found


def _read_csv(path: Path) -> list[Source]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "input" not in columns:
            raise InputError(f"{path} has no 'input' column (columns: {', '.join(columns) or 'none'})")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    sources = []
    for row in rows:
        if not row.get("input"):
            continue
        p = Path(row["input"]).expanduser()
        # Relative paths in a CSV are relative to the CSV, so the list works from any working directory.
        p = p if p.is_absolute() else path.parent / p
        sources.append(Source(p, Path(), {k: row[k] for k in ("output", "task", "scale") if row.get(k)}))
    if not sources:
        raise InputError(f"{path} lists no inputs")
    return sources


def expand_inputs(inputs: Sequence[str | os.PathLike], recursive: bool = False,
                  exclude: Optional[Path] = None) -> list[Source]:
    """Every volume the INPUT arguments name, in the order given, without duplicates."""
    if not inputs:
        raise InputError("no INPUT given")
    skip = (exclude or Path("/nonexistent")).resolve()
    sources: list[Source] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_file() and p.name.lower().endswith(".csv"):
            sources.extend(_read_csv(p))
        elif p.is_dir():
            found = _search_folder(p, recursive, skip)
            if not found:
                hint = "" if recursive else " (add --recursive to search sub-folders)"
                raise InputError(f"no volumes or DICOM series found in {p}{hint}")
            sources.extend(found)
        elif p.is_file():
            sources.append(Source(p))
        elif _GLOB_CHARS & set(str(item)):
            matches = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
            matches = [m for m in matches if is_volume_file(m) or (m.is_dir() and is_dicom_folder(m))]
            if not matches:
                raise InputError(f"no volumes match {item}")
            sources.extend(Source(m) for m in matches)
        else:
            raise InputError(f"input not found: {item}")
    seen: set[tuple[Path, tuple[tuple[str, str], ...]]] = set()
    unique = []
    for s in sources:  # the same input twice is one case, unless a CSV asks for different things of it
        key = (s.path.resolve(), tuple(sorted(s.overrides.items())))
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def normalise_scale(scale: float | str | tuple[float, ...]) -> str:
    """"2" -> "2,2,2", so the same request is spelled the same in every sidecar."""
    return ",".join(f"{f:g}" for f in parse_scale(scale))


def output_suffix(task: str, scale: str) -> str:
    """"_denoised" or "_SRx2" / "_SRx1x1x4" (factors as given, "1.5" stays "1.5")."""
    if task == "denoise":
        return "_denoised"
    factors = [f.strip() for f in str(scale).split(",") if f.strip()]
    if len(set(factors)) == 1:
        factors = factors[:1]
    return "_SR" + "".join(f"x{float(f):g}" for f in factors)


def plan_cases(sources: Iterable[Source], out_dir: Path, task: str, scale: str, fmt: str,
               difference: bool, uncertainty: bool = False) -> list[Case]:
    """One Case per source; two cases writing the same output is a usage error naming both inputs."""
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    out_dir = out_dir.resolve()
    cases: list[Case] = []
    owners: dict[str, str] = {}
    for s in sources:
        c_task = s.overrides.get("task", task)
        # A row that asks for denoising without a scale keeps its grid, whatever the command line's --scale.
        c_scale = s.overrides.get("scale", "1" if s.overrides.get("task") == "denoise" else scale)
        error = ""
        try:
            c_scale = normalise_scale(c_scale)
            suffix = output_suffix(c_task, c_scale)
        except InputError as exc:
            suffix, error = "_SR", str(exc)
        stem = split_suffix(s.path.name)[0]
        if "output" in s.overrides:
            out = Path(s.overrides["output"]).expanduser()
            out = out if out.is_absolute() else out_dir / out
            base, ext = split_suffix(out.name)
            if ext not in FORMATS.values():
                error = error or f"output {out.name}: unsupported format (use one of {', '.join(FORMATS.values())})"
            base_path = out.parent / base
        else:
            ext = FORMATS[fmt]
            out = out_dir / s.subdir / f"{stem}{suffix}{ext}"
            base_path = out_dir / s.subdir / f"{stem}{suffix}"
        diff = f"{base_path}_difference{ext}" if difference else None
        unc = f"{base_path}_uncertainty{ext}" if uncertainty else None
        for target in [str(out)] + [m for m in (diff, unc) if m]:
            if target in owners:
                raise InputError(f"{owners[target]} and {s.path} would both write {target}; give them an "
                                 "'output' column in a CSV or keep them in separate folder INPUTs")
            owners[target] = str(s.path)
        # Absolute but not resolved: the summary names inputs as the user knows them (links included).
        cases.append(Case(os.path.abspath(s.path), str(out), c_task, c_scale, diff, error, unc))
    return cases
