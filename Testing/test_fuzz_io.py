"""Fuzzing the reader through the CLI (issue 17): random header mutations and truncations of small NIfTI, NRRD,
MetaImage and DICOM files (the DICOM made with pydicom here) must never crash `medsr` with a traceback, never leave
a file behind, never modify the input and never take more than a few seconds or a few hundred MB each.

Seeded and bounded: ~130 cases in-process through ``cli.main`` (a crash would surface as the exception itself) and
a few as real subprocesses (what a user's shell sees). Every case ends in exit 0 with a readable output, or one
line on stderr and exit 2.
"""
from __future__ import annotations

import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import listing, make_volume, sha256, to_sitk_image
from MedSREnhanceLib import cli, read_volume

SEED = 17
CASES_PER_FORMAT = 14
MAX_SECONDS = 5.0
MAX_GROWTH_KB = 400 * 1024  # peak RSS may grow by at most 400 MB over the whole run

# Values a hostile header would put in a numeric field.
NASTY_NUMBERS = ["0", "-1", "-7", "65535", "2147483647", "99999999999999999999", "1e308", "nan", "inf", "-0",
                 "3.5", "", "x", "1200 1200 1200", "4294967296"]


def _volume() -> sitk.Image:
    return to_sitk_image(make_volume(shape_zyx=(5, 6, 7), seed=1))


def _sources(root: Path) -> dict[str, Path]:
    """One small valid input per format: files (and their data files) in their own folders, a DICOM folder."""
    out = {}
    for name, ext, compress in [("nii", ".nii", False), ("niigz", ".nii.gz", True), ("nrrd", ".nrrd", False),
                                ("nrrdgz", ".nrrd", True), ("nhdr", ".nhdr", False), ("mha", ".mha", False),
                                ("mhaz", ".mha", True), ("mhd", ".mhd", False)]:
        folder = root / name
        folder.mkdir(parents=True)
        sitk.WriteImage(_volume(), str(folder / f"v{ext}"), compress)
        out[name] = folder / f"v{ext}"
    out["dicom"] = _pydicom_series(root / "dicom")
    return out


def _pydicom_series(folder: Path) -> Path:
    """A 5-slice int16 MR series written with pydicom (explicit VR little endian)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    arr = np.rint(make_volume(shape_zyx=(5, 6, 7), seed=2).array).astype(np.int16)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Fuzz^Test", "fuzz"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.1, 0.9], 2.5
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = arr[k].tobytes()
        pydicom.dcmwrite(folder / f"s{k}.dcm", ds, enforce_file_format=True)
    return folder


def _text_header_end(data: bytes) -> int:
    """Bytes of an NRRD/MetaImage text header (to the blank line or ElementDataFile line)."""
    for marker in (b"\n\n", b"ElementDataFile = LOCAL\n"):
        at = data.find(marker)
        if at >= 0:
            return at + len(marker)
    return min(len(data), 400)


def _mutate_text(data: bytes, rng: random.Random) -> bytes:
    """Replace one numeric field of a text header with a hostile value, or a field's value with a path."""
    end = _text_header_end(data)
    head, body = data[:end].decode("latin-1"), data[end:]
    lines = head.split("\n")
    i = rng.randrange(len(lines))
    key, sep, _ = lines[i].partition(":" if ":" in lines[i] else "=")
    if not sep:
        return data
    roll = rng.random()
    if roll < 0.15:
        value = rng.choice(["../../../etc/passwd", "/etc/passwd", "LIST", "v%d.raw 1 3 1", "LOCAL"])
    elif roll < 0.3:
        value = rng.choice(["MET_NOPE", "gzip", "bzip2", "hex", "ascii", "block", "big", "7"])
    else:
        value = " ".join(rng.choice(NASTY_NUMBERS) for _ in range(rng.choice([1, 3])))
    lines[i] = f"{key}{sep} {value}"
    return "\n".join(lines).encode("latin-1") + body


def _mutate_binary(data: bytes, rng: random.Random, region: int) -> bytes:
    """Overwrite a few bytes of the first ``region`` bytes (a NIfTI header, a DICOM dataset's start)."""
    raw = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(min(region, len(raw)))
        width = rng.choice([1, 2, 4, 8])
        raw[at:at + width] = rng.choice([b"\xff" * width, b"\x00" * width, b"\x7f" * width,
                                         bytes(rng.getrandbits(8) for _ in range(width))])
    return bytes(raw)


def _mutation(kind: str, rng: random.Random) -> Callable[[Path], None]:
    """A function that mutates a copied case folder in place: truncate, or corrupt the header."""

    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(len(data))])

    def corrupt(path: Path) -> None:
        data = path.read_bytes()
        if kind in ("nii", "niigz"):
            raw = sitk_gunzip(data) if kind == "niigz" else data
            raw = _mutate_binary(raw, rng, 348)
            path.write_bytes(__import__("gzip").compress(raw, mtime=0) if kind == "niigz" else raw)
        elif kind == "dicom":
            path.write_bytes(_mutate_binary(data, rng, min(len(data), 900)))
        else:
            path.write_bytes(_mutate_text(data, rng))

    return truncate if rng.random() < 0.35 else corrupt


def sitk_gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


def _target(case: Path, kind: str, rng: random.Random) -> Path:
    """The file a mutation hits: the header, or (for detached and DICOM data) a data file or slice."""
    files = sorted(f for f in case.iterdir() if f.is_file())
    if kind == "dicom":
        return rng.choice(files)
    headers = [f for f in files if f.suffix in (".nii", ".gz", ".nrrd", ".nhdr", ".mha", ".mhd")]
    data = [f for f in files if f not in headers]
    return rng.choice(data) if data and rng.random() < 0.3 else headers[0]


def _plan(sources: dict[str, Path], root: Path) -> list[tuple[str, Path, Path]]:
    """(case id, case folder, input path) for every seeded mutation, each in its own folder."""
    rng = random.Random(SEED)
    cases = []
    for kind, src in sources.items():
        folder = src if src.is_dir() else src.parent
        for n in range(CASES_PER_FORMAT):
            case = root / f"{kind}-{n}"
            shutil.copytree(folder, case / "in")
            target = _target(case / "in", kind, rng)
            _mutation(kind, rng)(target)
            cases.append((f"{kind}-{n}", case, case / "in" if kind == "dicom" else case / "in" / src.name))
    return cases


def _snapshot(case: Path) -> dict[str, str]:
    return {str(p.relative_to(case)): sha256(p) for p in sorted(case.rglob("*")) if p.is_file()}


def _check(case: Path, before: dict[str, str], code: int, err: str, out: Path) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    after = _snapshot(case)
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("medsr: error: "), lines
        assert after == before, "a refusal left or changed files"
    else:
        assert read_volume(out).array.shape == (10, 12, 14)
        assert {k: v for k, v in after.items() if k != out.name} == before, "the input changed"
    assert not [n for n in listing(case) if n.startswith(".")], listing(case)


def test_fuzz_in_process(tmp_path: Path, capsys) -> None:
    cases = _plan(_sources(tmp_path / "src"), tmp_path / "cases")
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {0: 0, 2: 0}
    for name, case, src in cases:
        before = _snapshot(case)
        out = case / "out.nrrd"
        t0 = time.perf_counter()
        code = cli.main(["enhance", str(src), str(out), "--scale", "2", "--model", "linear", "--quiet"])
        seconds = time.perf_counter() - t0
        err = capsys.readouterr().err
        _check(case, before, code, err, out)
        assert seconds < MAX_SECONDS, (name, seconds, err)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0
        assert grown < MAX_GROWTH_KB, (name, grown, err)
        outcomes[code] += 1
    assert outcomes[2] > len(cases) // 3  # the mutations do bite: most end in a refusal


def test_fuzz_subprocess(tmp_path: Path) -> None:
    """A few mutated inputs through a real `medsr` process: exit status, stderr and leftovers as a user sees them."""
    cases = _plan(_sources(tmp_path / "src"), tmp_path / "cases")
    picked = random.Random(SEED + 1).sample(cases, 4)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name, case, src in picked:
        before = _snapshot(case)
        out = case / "out.nrrd"
        proc = subprocess.run([sys.executable, "-m", "MedSREnhanceLib.cli", "enhance", str(src), str(out),
                               "--scale", "2", "--model", "linear", "--quiet"], capture_output=True, text=True,
                              timeout=60, env=env)
        _check(case, before, proc.returncode, proc.stderr, out)
        assert proc.stdout == ""


def test_fuzz_plan_is_reproducible(tmp_path: Path) -> None:
    a = _plan(_sources(tmp_path / "a"), tmp_path / "ca")
    b = _plan(_sources(tmp_path / "b"), tmp_path / "cb")
    for (na, ca, _), (nb, cb, _) in zip(a, b):
        assert na == nb
        if not na.startswith(("dicom", "niigz", "nrrdgz", "mhaz")):  # new UIDs, gzip time stamps on each run
            assert list(_snapshot(ca).values()) == list(_snapshot(cb).values()), na
    assert re.match(r"nii-0", a[0][0])
