"""Shared fixtures: tiny synthetic volumes of odd sizes, oblique and left-handed direction matrices, a DICOM
series writer, and a one-thread torch so the suite behaves the same on a loaded 2-core machine.

No pytest.ini is needed: the `slow` marker is declared in pyproject.toml and again here (so the suite also runs
from a copy of Testing/ alone).
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import SimpleITK as sitk

# Subprocesses (the CLI tests) inherit these; set before torch is imported anywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

try:  # torch is optional for the classical paths; limit its threads when present
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a dependency, but keep the suite importable
    torch = None  # type: ignore[assignment]

from MedSREnhanceLib.core.volume import Volume  # noqa: E402

SITK_THREADS = 1
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(SITK_THREADS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running tests (deselect with -m 'not slow')")


# ---------------------------------------------------------------------------------------------- directions


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix (det +1)."""
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


IDENTITY = np.eye(3)
OBLIQUE = rotation((0.3, -0.5, 0.8), 27.0)  # right-handed, no axis aligned with L, P or S
LEFT_HANDED = OBLIQUE @ np.diag([1.0, 1.0, -1.0])  # oblique and det -1 (k axis flipped)
LPS_FLIP = np.diag([-1.0, 1.0, 1.0])  # axis-aligned, left-handed (a "radiological" flip of i)

DIRECTIONS = {"identity": IDENTITY, "oblique": OBLIQUE, "left_handed": LEFT_HANDED, "flip_i": LPS_FLIP}


@pytest.fixture(params=list(DIRECTIONS), ids=list(DIRECTIONS))
def direction(request: pytest.FixtureRequest) -> np.ndarray:
    return DIRECTIONS[request.param]


# ---------------------------------------------------------------------------------------------- volumes


def make_volume(
    shape_zyx: tuple[int, int, int] = (35, 34, 33),
    spacing: tuple[float, float, float] = (0.9, 1.1, 2.5),
    origin: tuple[float, float, float] = (-12.5, 30.25, 7.0),
    direction: np.ndarray = IDENTITY,
    seed: int = 0,
    kind: str = "phantom",
    metadata: Optional[dict] = None,
) -> Volume:
    """A small volume (array indexed (k, j, i)): "phantom" = smooth blobs + a little noise, "random" = uniform,
    "ct" = a phantom in HU (air -1000), "int" = integers in [0, 1000) (exact in any pixel type)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    if kind == "random":
        arr = rng.random(shape_zyx)
    elif kind == "int":
        arr = rng.integers(0, 1000, shape_zyx).astype(np.float64)
    else:
        arr = 100.0 * np.exp(-((x - 0.2) ** 2 + y**2 + (z + 0.1) ** 2) / 0.2)
        arr += 60.0 * ((x + 0.4) ** 2 + (y - 0.3) ** 2 + z**2 < 0.1)
        arr += rng.normal(0, 2.0, shape_zyx)
        if kind == "ct":
            arr = arr * 10.0 - 1000.0
    return Volume(arr.astype(np.float32), spacing, origin, np.asarray(direction, np.float64), dict(metadata or {}))


@pytest.fixture
def small_volume() -> Volume:
    """33 x 34 x 35 voxels (i, j, k), anisotropic spacing, oblique direction."""
    return make_volume(direction=OBLIQUE)


@pytest.fixture
def volume_factory() -> Callable[..., Volume]:
    return make_volume


def to_sitk_image(volume: Volume) -> sitk.Image:
    """Reference conversion written independently of the library's own ``to_sitk``."""
    img = sitk.GetImageFromArray(np.asarray(volume.array))
    img.SetSpacing([float(s) for s in volume.spacing])
    img.SetOrigin([float(o) for o in volume.origin])
    img.SetDirection([float(v) for v in np.asarray(volume.direction).ravel()])
    return img


def sha256(path: Path) -> str:
    """Hash of a file, or of every file under a folder (names and bytes), to prove inputs stay untouched."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def listing(folder: Path) -> set[str]:
    """Every entry under ``folder`` (relative names, hidden ones included), to catch leftover temp files."""
    return {str(f.relative_to(folder)) for f in Path(folder).rglob("*")}


# ---------------------------------------------------------------------------------------------- DICOM


def write_dicom_series(
    volume: Volume,
    folder: Path,
    *,
    series_uid: Optional[str] = None,
    study_uid: Optional[str] = None,
    modality: str = "MR",
    description: str = "synthetic",
    prefix: str = "slice",
) -> str:
    """Write ``volume`` as a DICOM series of int16 slices (one file per k), the way the SimpleITK
    "DicomSeriesFromArray" example does; returns the SeriesInstanceUID.

    The direction must be right-handed: DICOM derives the slice normal as row x column, so a left-handed volume
    cannot be stored without reordering its slices. Voxels are rounded to integers (stored with slope 1).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(volume.direction, np.float64)
    if np.linalg.det(d) < 0:
        raise ValueError("DICOM series need a right-handed direction matrix")
    uid_root = "1.2.826.0.1.3680043.2.1125."
    rng = np.random.default_rng(abs(hash((prefix, series_uid, modality))) % (2**32))
    series_uid = series_uid or uid_root + "1." + str(rng.integers(1, 2**62))
    study_uid = study_uid or uid_root + "2." + str(rng.integers(1, 2**62))
    frame_uid = uid_root + "3." + str(rng.integers(1, 2**62))
    arr = np.rint(volume.array).astype(np.int16)
    sx, sy, sz = volume.spacing
    orientation = "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = [
        ("0008|0060", modality),
        ("0008|0008", "ORIGINAL\\PRIMARY\\AXIAL"),
        ("0008|0016", "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"),
        ("0010|0010", "Synthetic^Phantom"),
        ("0010|0020", "MEDSR-TEST"),
        ("0020|000d", study_uid),
        ("0020|000e", series_uid),
        ("0020|0052", frame_uid),
        ("0020|0011", "1"),
        ("0008|103e", description),
        ("0020|0037", orientation),
        ("0018|0050", f"{sz:.10f}"),
        ("0028|0030", f"{sy:.10f}\\{sx:.10f}"),  # row spacing (between rows, j) \ column spacing (i)
        ("0028|1052", "0"),
        ("0028|1053", "1"),
    ]
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[k])
        sl.SetSpacing((sx, sy))
        position = np.asarray(volume.origin) + d[:, 2] * (k * sz)
        for tag, value in common:
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{abs(hash(prefix)) % 10**6}.{k + 1}")
        writer.SetFileName(str(folder / f"{prefix}_{k:04d}.dcm"))
        writer.Execute(sl)
    return series_uid


@pytest.fixture
def dicom_writer() -> Callable[..., str]:
    return write_dicom_series


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def run_medsr() -> Callable[..., "subprocess.CompletedProcess[str]"]:
    """Run the installed CLI as a user would (``python -m MedSREnhanceLib.cli`` of this interpreter)."""
    import subprocess

    def run(*args: str, timeout: float = 120) -> "subprocess.CompletedProcess[str]":
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        return subprocess.run([sys.executable, "-m", "MedSREnhanceLib.cli", *map(str, args)], capture_output=True,
                              text=True, encoding="utf-8", errors="replace", timeout=timeout, env=env)

    return run
