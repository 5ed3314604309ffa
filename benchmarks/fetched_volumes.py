"""Rebuild the "fetched" data folder (../extra_data) from local clones of the public git repositories it comes from.

    python benchmarks/fetched_volumes.py --mirror MIRROR_DIR --out ../extra_data
    python benchmarks/fetched_volumes.py --repo datalad/example-dicom-structural=CLONE_DIR \\
        --repo FNNDSC/SAG-anon=CLONE_DIR --repo FNNDSC/data=CLONE_DIR \\
        --repo neurolabusc/VolumeRenderingData=CLONE_DIR --repo dfsp-spirit/freesurferformats=CLONE_DIR \\
        --repo aaronsossin/DepressionMRI_AI=CLONE_DIR --out ../extra_data

``--mirror`` is a folder holding one clone per repository as ``owner+name/repo`` (a bare git directory, or a
work tree with ``.git``); ``--repo owner/name=DIR`` names one clone (a git directory or a work tree) and wins over
the mirror. Nothing is downloaded: the clones must already hold the commits named.

Every volume of configs/data_sources.toml whose root is "fetched" is rebuilt from its ``source`` string
(``owner/name@commit:path [notes]``), read from the clone at that commit (``git ls-tree`` / ``git cat-file``; the
work tree is never read), and converted as the bundled model cards' content hashes were recorded:

* a folder or ``*.dcm`` glob of DICOM files: SimpleITK ``ImageSeriesReader`` in GDCM's order, the voxel type kept;
  ``(series DESCRIPTION, slices A-B of N)`` in the source picks the series by SeriesDescription and keeps files
  A..B (inclusive) of its N (FNNDSC/data adi_brain: the series skips instance 115, so only 0-113 are evenly spaced);
  several series and no description: the largest, as ``core.io.read_volume`` does;
* ``.nii.gz``: copied byte for byte;
* ``.mgz``: nibabel, voxels (type kept) and affine into a NIfTI-1 image.

Git-LFS and git-annex pointers are refused with a message (no data is invented). The output folder gets
``ID.nii.gz`` per volume and MANIFEST.json (id, modality, shape, spacing, dtype, license, file, source, weights_ok;
the shape, spacing and dtype as stored in the NIfTI file); manifest entries of other ids already there (an
evaluation-only volume added by hand) are kept. For each volume the script prints ``core.io.content_hash`` and
whether it equals ``training.volume_hashes`` in the bundled cards (MedSREnhanceLib/models/weights/*.json); it
exits 1 if any differs.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from MedSREnhanceLib.core.io import content_hash  # noqa: E402
from MedSREnhanceLib.training.data_sources import load_sources  # noqa: E402

ROOT_NAME = "fetched"
SOURCE_RE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)@(?P<commit>[0-9a-fA-F]{7,40}):(?P<path>\S+)\s*(?P<notes>.*)$")
SERIES_RE = re.compile(r"\bseries (?P<desc>[^,()]+?)\s*(?:,|\))")
SLICES_RE = re.compile(r"slices (?P<first>\d+)-(?P<last>\d+) of (?P<total>\d+)")
LFS_HEAD = b"version https://git-lfs.github.com/spec/"
ANNEX_MARK = b"annex/objects/"


@dataclass(frozen=True)
class Source:
    """One parsed ``source`` string of data_sources.toml."""
    repo: str
    commit: str
    path: str
    notes: str
    series: Optional[str] = None
    slices: Optional[tuple[int, int, int]] = None  # first, last (inclusive), total


@dataclass(frozen=True)
class Fetched:
    """One "fetched" volume of data_sources.toml."""
    id: str
    source_text: str
    source: Source
    modality: str
    licence: str
    weights_ok: str


def parse_source(text: str) -> Source:
    """``owner/name@commit:path [notes]`` -> Source; the series and slice range are read from the notes."""
    m = SOURCE_RE.match(text.strip())
    if m is None:
        raise ValueError(f"cannot parse source {text!r} (expected owner/name@commit:path ...)")
    notes = m["notes"]
    series = SERIES_RE.search(notes)
    slices = SLICES_RE.search(notes)
    return Source(m["repo"], m["commit"], m["path"], notes, series["desc"].strip() if series else None,
                  (int(slices["first"]), int(slices["last"]), int(slices["total"])) if slices else None)


def load_fetched(sources_toml: Path) -> list[Fetched]:
    """The volumes of ``sources_toml`` whose root is "fetched", in file order (read as training reads it)."""
    return [Fetched(e.id, e.source, parse_source(e.source), e.modality, e.licence, e.weights_ok)
            for e in load_sources(sources_toml).volumes.values() if e.root == ROOT_NAME]


def card_hashes(weights_dir: Path) -> dict[str, str]:
    """id -> content hash recorded in the bundled cards (``training.volume_hashes``); conflicting records fail."""
    hashes: dict[str, str] = {}
    for card in sorted(weights_dir.glob("*.json")):
        training = json.loads(card.read_text()).get("training")
        if not isinstance(training, dict):
            continue
        for vid, h in (training.get("volume_hashes") or {}).items():
            if hashes.setdefault(vid, h) != h:
                raise ValueError(f"{card.name} records {vid} as {h}, another card as {hashes[vid]}")
    return hashes


def git_dir(path: Path) -> Path:
    """The git directory of a clone: ``path/.git`` for a work tree, else ``path`` itself (bare)."""
    if (path / ".git").is_dir():
        return path / ".git"
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path
    raise ValueError(f"not a git clone: {path}")


def find_clones(repo_args: list[str], mirror: Optional[Path], needed: set[str]) -> dict[str, Path]:
    """owner/name -> git directory, from ``--repo owner/name=DIR`` and ``--mirror`` (``owner+name/repo``)."""
    clones: dict[str, Path] = {}
    for arg in repo_args:
        name, sep, path = arg.partition("=")
        if not sep or "/" not in name:
            raise ValueError(f"--repo wants owner/name=DIR, got {arg!r}")
        clones[name] = git_dir(Path(path).expanduser())
    for name in sorted(needed - set(clones)):
        if mirror is None:
            continue
        for candidate in (mirror / name.replace("/", "+") / "repo", mirror / name.replace("/", "+")):
            if candidate.is_dir():
                clones[name] = git_dir(candidate)
                break
    missing = sorted(needed - set(clones))
    if missing:
        raise ValueError(f"no clone given for {', '.join(missing)} (use --repo owner/name=DIR or --mirror)")
    return clones


def git(gdir: Path, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={gdir}", *args], check=True, capture_output=True).stdout


def tree_files(gdir: Path, commit: str, path: str) -> list[tuple[str, str, str]]:
    """(mode, blob sha, path) of the files at ``path`` of ``commit``: one file, a folder (recursively), or a glob
    (``*.dcm``, matched against the paths of the whole tree)."""
    full = git(gdir, "rev-parse", "--verify", f"{commit}^{{commit}}").decode().strip()
    glob = any(c in path for c in "*?[")
    spec = [] if glob else ["--", path.rstrip("/")]
    out = []
    for rec in git(gdir, "ls-tree", "-r", "-z", full, *spec).split(b"\0"):
        if not rec:
            continue
        meta, name = rec.decode().split("\t", 1)
        mode, kind, sha = meta.split()
        if kind == "blob" and (not glob or fnmatch.fnmatchcase(name, path)):
            out.append((mode, sha, name))
    if not out:
        raise ValueError(f"{path} not found at {full[:10]} in {gdir}")
    return out


def blob(gdir: Path, mode: str, sha: str, name: str) -> bytes:
    """The bytes of a blob; git-LFS and git-annex pointers are refused."""
    data = git(gdir, "cat-file", "blob", sha)
    if mode == "120000" or data.startswith(LFS_HEAD) or (len(data) < 1024 and ANNEX_MARK in data):
        kind = "git-LFS" if data.startswith(LFS_HEAD) else "git-annex" if ANNEX_MARK in data else "symlink"
        raise ValueError(f"{name} is a {kind} pointer in {gdir}, not the data ({data[:120]!r})")
    return data


def extract(gdir: Path, src: Source, into: Path) -> list[Path]:
    """Write the files of ``src`` under ``into`` (their repository paths kept); their paths, sorted."""
    paths = []
    for mode, sha, name in tree_files(gdir, src.commit, src.path):
        if name.lower().endswith((".md", ".txt", ".stl", ".ds_store")) or name.endswith("/.DS_Store"):
            continue  # READMEs and meshes beside the DICOM files
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob(gdir, mode, sha, name))
        paths.append(target)
    return sorted(paths)


def read_dicom(files: list[Path], src: Source) -> sitk.Image:
    """A DICOM series as SimpleITK reads it (GDCM order, voxel type kept), chosen and cut as ``src`` says."""
    folders = sorted({f.parent for f in files})
    if len(folders) != 1:
        raise ValueError(f"{src.path}: DICOM files in {len(folders)} folders, one expected")
    folder = str(folders[0])
    reader = sitk.ImageSeriesReader()
    series = {uid: list(reader.GetGDCMSeriesFileNames(folder, uid)) for uid in reader.GetGDCMSeriesIDs(folder)}
    if not series:
        raise ValueError(f"{src.path}: no DICOM series")
    if src.series is not None:
        def description(names: list[str]) -> str:
            r = sitk.ImageFileReader()
            r.SetFileName(names[0])
            r.ReadImageInformation()
            return r.GetMetaData("0008|103e").strip() if r.HasMetaDataKey("0008|103e") else ""
        chosen = [uid for uid, names in series.items() if description(names) == src.series]
        if len(chosen) != 1:
            raise ValueError(f"{src.path}: {len(chosen)} series described {src.series!r}, one expected")
        names = series[chosen[0]]
    else:
        names = max(series.values(), key=len)
    if src.slices is not None:
        first, last, total = src.slices
        if len(names) != total:
            raise ValueError(f"{src.path}: the series has {len(names)} files, the source says {total}")
        names = names[first:last + 1]
    reader.SetFileNames(names)
    return reader.Execute()


def convert(gdir: Path, src: Source, target: Path, work: Path) -> None:
    """Convert ``src`` from the clone ``gdir`` to the NIfTI file ``target`` (written under a temporary name first)."""
    files = extract(gdir, src, work)
    tmp = target.with_name(f".{target.name}.partial.nii.gz")
    low = src.path.lower()
    if low.endswith((".nii.gz", ".nii")) and len(files) == 1:
        shutil.copyfile(files[0], tmp)
    elif low.endswith(".mgz") and len(files) == 1:
        mgz = nib.load(str(files[0]))
        nib.save(nib.Nifti1Image(np.asanyarray(mgz.dataobj), mgz.affine), str(tmp))
    else:
        sitk.WriteImage(read_dicom(files, src), str(tmp))
    os.replace(tmp, target)


def manifest_entry(vol: Fetched, path: Path) -> dict:
    header = nib.load(str(path)).header
    return {"id": vol.id, "modality": vol.modality, "shape": [int(n) for n in header.get_data_shape()],
            "spacing": [round(float(z), 4) for z in header.get_zooms()], "dtype": str(header.get_data_dtype()),
            "license": vol.licence, "file": path.name, "source": vol.source_text, "weights_ok": vol.weights_ok}


def write_manifest(out: Path, entries: list[dict]) -> None:
    """Write MANIFEST.json atomically: entries already listed are replaced in place, new ones appended, and entries
    of other ids kept."""
    path = out / "MANIFEST.json"
    ours = {e["id"]: e for e in entries}
    old = json.loads(path.read_text()) if path.is_file() else []
    merged = [ours.pop(e.get("id"), e) for e in old] + list(ours.values())
    tmp = out / ".MANIFEST.json.partial"
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME=DIR",
                        help="a local clone of one repository (repeat per repository)")
    parser.add_argument("--mirror", type=Path, help="folder holding the clones as owner+name/repo")
    parser.add_argument("--sources", type=Path, default=REPO / "configs" / "data_sources.toml",
                        help="data sources file (default: the project's configs/data_sources.toml)")
    parser.add_argument("--weights-dir", type=Path, default=REPO / "MedSREnhanceLib" / "models" / "weights",
                        help="folder of the model cards whose volume hashes are checked")
    parser.add_argument("--ids", default="", help="comma-separated subset of the fetched volume ids")
    args = parser.parse_args(argv)

    volumes = load_fetched(args.sources)
    if args.ids:
        wanted = [i.strip() for i in args.ids.split(",") if i.strip()]
        unknown = sorted(set(wanted) - {v.id for v in volumes})
        if unknown:
            parser.error(f"not fetched volumes of {args.sources}: {', '.join(unknown)}")
        volumes = [v for v in volumes if v.id in wanted]
    try:
        clones = find_clones(args.repo, args.mirror, {v.source.repo for v in volumes})
    except ValueError as exc:
        parser.error(str(exc))
    expected = card_hashes(args.weights_dir)
    args.out.mkdir(parents=True, exist_ok=True)

    entries, failed = [], 0
    for vol in volumes:
        target = args.out / f"{vol.id}.nii.gz"
        with tempfile.TemporaryDirectory(prefix="fetched_") as work:
            try:
                convert(clones[vol.source.repo], vol.source, target, Path(work))
            except (ValueError, RuntimeError, subprocess.CalledProcessError) as exc:
                detail = exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else exc
                print(f"{vol.id}: FAILED: {detail}", file=sys.stderr)
                failed += 1
                continue
        entries.append(manifest_entry(vol, target))
        got = content_hash(str(target))
        want = expected.get(vol.id)
        verdict = "no hash in the cards" if want is None else "matches the cards" if got == want else \
            f"MISMATCH (cards: {want})"
        failed += want is not None and got != want
        print(f"{vol.id}: {got} {verdict}")
    if entries:
        write_manifest(args.out, entries)
    listed = f"; listed in {args.out / 'MANIFEST.json'}" if entries else ""
    print(f"{len(entries)} of {len(volumes)} volumes written to {args.out}{listed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
