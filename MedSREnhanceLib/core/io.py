"""Volume I/O through SimpleITK: NIfTI, NRRD, MetaImage and DICOM series; atomic writes.

Every failure the user can fix becomes an ``InputError`` with one line naming the problem. Reading: the format
follows the extension (any case), its header is checked first (``headers``), ITK's reader is chosen by the
extension, and what the header declares is checked against the memory budget before ITK allocates anything.
Writing: staged in a hidden folder beside the target under a lower-case extension (ITK's writers match
extensions case-sensitively) and renamed into place, so the file written is exactly the path named.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from . import headers
from .errors import InputError
from .resample import from_sitk, to_sitk
from .volume import Volume, array_hash, check_spacing

logger = logging.getLogger(__name__)

# Extensions SimpleITK writes in one file, and the two that write a header plus a data file.
SINGLE_FILE = (".nii", ".nii.gz", ".nrrd", ".mha")
HEADER_PLUS_DATA = (".nhdr", ".mhd")
WRITABLE = SINGLE_FILE + HEADER_PLUS_DATA

# The ITK reader and the header check of each input format. Forcing the reader matters: left to itself ITK asks
# its ~20 readers which one claims the bytes, and might read with one the header checks never saw.
READERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    ".nii": ("NiftiImageIO", headers.check_nifti), ".nii.gz": ("NiftiImageIO", headers.check_nifti),
    ".nrrd": ("NrrdImageIO", headers.check_nrrd), ".nhdr": ("NrrdImageIO", headers.check_nrrd),
    ".mha": ("MetaImageIO", headers.check_metaimage), ".mhd": ("MetaImageIO", headers.check_metaimage),
}

# SimpleITK pixel types as numpy type names (``Volume.metadata["dtype"]``: what ``--dtype keep`` writes back).
PIXEL_TYPES: dict[int, str] = {
    sitk.sitkUInt8: "uint8", sitk.sitkInt8: "int8", sitk.sitkUInt16: "uint16", sitk.sitkInt16: "int16",
    sitk.sitkUInt32: "uint32", sitk.sitkInt32: "int32", sitk.sitkUInt64: "uint64", sitk.sitkInt64: "int64",
    sitk.sitkFloat32: "float32", sitk.sitkFloat64: "float64",
}
SITK_TYPES: dict[str, int] = {name: pid for pid, name in PIXEL_TYPES.items()}


def _extension(path: Path) -> str:
    """The format extension, lower-case ("up.Nii.gz" -> ".nii.gz")."""
    name = path.name.lower()
    for ext in WRITABLE:
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with the source location; the last non-empty line is the human part.
    for ln in reversed(lines):
        if not ln.startswith(("itk::", "/")) and "Exception" not in ln:
            return ln
    return lines[-1] if lines else type(exc).__name__


_STDERR_LOCK = threading.Lock()


@contextmanager
def itk_messages(what: str) -> Iterator[None]:
    """Run ITK with what it prints on stderr itself (MetaIO, the NIfTI library and ITK warnings write there
    directly, several lines each) captured and logged as one INFO line: the CLI promises one line on stderr.
    The capture is at the file-descriptor level, so it is serialised across threads."""
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no stderr to capture (a GUI process)
            yield
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                lines = [ln.strip() for ln in sink.read(1 << 14).decode("utf-8", "replace").splitlines()]
                said = " | ".join(ln for ln in lines if ln)
                if said:
                    logger.info("%s: ITK: %s", what, said[:1000])


def _check_header(dim: int, size: Sequence[int], components: int, pixel_id: int, name: str) -> None:
    """What a header declares, refused before the voxels are read: not one 3D scalar volume, or too big."""
    if components != 1:
        raise InputError(f"{name} has {components} components per voxel; a scalar volume is needed")
    if dim == 2:
        raise InputError(f"{name} is 2D ({size[0]}x{size[1]}); a 3D volume is needed")
    if dim == 4:
        raise InputError(f"{name} is 4D ({size[3]} volumes); a single 3D volume is needed")
    if dim != 3:
        raise InputError(f"{name} has {dim} dimensions; a 3D volume is needed")
    if 0 in size:
        raise InputError(f"{name} is empty (size {tuple(size)})")
    if 1 in size:
        raise InputError(f"{name} is a single slice ({'x'.join(map(str, size))}), i.e. 2D; a 3D volume is needed")
    dtype = PIXEL_TYPES.get(pixel_id)
    headers.check_budget(tuple(size), np.dtype(dtype).itemsize if dtype else 8, name)


def _read_dicom_series(folder: Path, series_uid: Optional[str]) -> Volume:
    for f in sorted(folder.iterdir())[: headers.MAX_DATA_FILES]:  # before GDCM scans (and allocates for) them
        if f.is_file():
            headers.check_dicom_file(f)
    reader = sitk.ImageSeriesReader()
    with itk_messages(str(folder)):  # ITK prints "No Series were found" on stderr itself
        uids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise InputError(f"no DICOM series found in folder {folder}")
    if series_uid is not None:
        if series_uid not in uids:
            raise InputError(f"series {series_uid} not in {folder} (found: {', '.join(uids)})")
        chosen = series_uid
    else:
        counts = {uid: len(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}
        chosen = max(uids, key=lambda u: counts[u])
        if len(uids) > 1:
            logger.warning("%s holds %d DICOM series; using the largest, %s (%d files); pass a series UID to "
                           "choose another", folder, len(uids), chosen, counts[chosen])
    files = reader.GetGDCMSeriesFileNames(str(folder), chosen)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    name = f"DICOM series {chosen}"
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        with itk_messages(name):  # non-uniform sampling is checked below, not printed by ITK
            first.ReadImageInformation()  # the series is allocated from the first file's size times the files
            size = list(first.GetSize()[:2]) + [len(files)]
            _check_header(3, size, first.GetNumberOfComponents(), first.GetPixelID(), name)
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read {name} in {folder}: {_first_line(exc)}") from None
    _check_header(image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(),
                  image.GetPixelID(), name)
    check_spacing(image.GetSpacing(), name)
    _check_slice_positions(reader, len(files), image, chosen)
    meta: dict = {"source": str(folder), "series_uid": chosen, "series_count": len(uids),
                  "dtype": PIXEL_TYPES.get(image.GetPixelID(), "float64")}
    if reader.HasMetaDataKey(0, "0008|0060"):
        meta["modality"] = reader.GetMetaData(0, "0008|0060").strip().upper()
    return from_sitk(sitk.Cast(image, sitk.sitkFloat32), meta)


def _check_slice_positions(reader: sitk.ImageSeriesReader, nfiles: int, image: sitk.Image, uid: str) -> None:
    """ITK stacks every file of a series: a 4D series (several volumes at the same slice positions) or one with
    missing slices would become a 3D volume with a wrong slice spacing. Refuse both."""
    positions = []
    for i in range(nfiles):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return  # no ImagePositionPatient: nothing to check against
        try:
            positions.append([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")])
        except ValueError:
            return
    if nfiles < 2 or any(len(p) != 3 for p in positions):
        return
    normal = np.asarray(image.GetDirection(), np.float64).reshape(3, 3)[:, 2]
    along = np.sort(np.asarray(positions) @ normal)
    gaps = np.diff(along)
    distinct = 1 + int(np.count_nonzero(gaps > 1e-3))
    if distinct < nfiles:
        raise InputError(f"DICOM series {uid} is 4D or repeats slices ({nfiles} images at {distinct} slice "
                         "positions); a single 3D volume is needed")
    median = float(np.median(gaps))
    if np.abs(gaps - median).max() > 0.05 * median + 1e-3:
        raise InputError(f"DICOM series {uid} has uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm): "
                         "missing slices?")


def read_volume(path: str | os.PathLike, series_uid: Optional[str] = None) -> Volume:
    """Read a 3D scalar volume from a file or a DICOM series folder, keeping spacing, origin and direction.
    ``metadata["dtype"]`` is the file's voxel type (the array is always float32)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        return _read_dicom_series(p, series_uid)
    ext = _extension(p)
    if ext not in READERS:
        raise InputError(f"cannot read {p}: unsupported format (use one of {', '.join(READERS)} or a DICOM "
                         "series folder)")
    imageio, check = READERS[ext]
    check(p)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(imageio)
    alias = None
    if ext.startswith(".nii") and p.name[-len(ext):] not in (ext, ext.upper()):
        # The NIfTI library refuses mixed-case extensions (".Nii.gz"): read through a lower-case link.
        alias = Path(tempfile.mkdtemp(prefix=".medsr-read."))
        os.symlink(os.path.abspath(p), alias / f"volume{ext}")
    reader.SetFileName(str(alias / f"volume{ext}" if alias else p))
    try:
        with itk_messages(str(p)):
            reader.ReadImageInformation()
            _check_header(reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(),
                          reader.GetPixelID(), str(p))
            check_spacing(reader.GetSpacing(), str(p))
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read {p}: {_first_line(exc)}") from None
    finally:
        if alias is not None:
            shutil.rmtree(alias, ignore_errors=True)
    meta: dict = {"source": str(p), "dtype": PIXEL_TYPES.get(image.GetPixelID(), "float64")}
    if image.HasMetaDataKey("0008|0060"):
        meta["modality"] = image.GetMetaData("0008|0060").strip().upper()
    return from_sitk(sitk.Cast(image, sitk.sitkFloat32), meta)


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while files are renamed into place or staging is removed, then deliver them: a
    signal between two renames would leave a header without its data file, or one output of a pair."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread runs Python signal handlers
        return
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in caught[:1]:
            signal.raise_signal(sig)


def output_files(path: str | os.PathLike, compress: bool = True) -> list[Path]:
    """Every file writing ``path`` creates: the path itself, and for .nhdr/.mhd the data file ITK names after
    it (stem + .raw.gz / .raw for NRRD, .zraw / .raw for MetaImage)."""
    p = Path(path)
    ext = _extension(p)
    stem = p.name[: len(p.name) - len(ext)]
    data = {".nhdr": ".raw.gz" if compress else ".raw", ".mhd": ".zraw" if compress else ".raw"}.get(ext)
    return [p] + ([p.parent / (stem + data)] if data else [])


def check_writable(path: str | os.PathLike, compress: bool = True) -> Path:
    """Refuse an output path before any work is done: unknown format, missing or unwritable folder, or a data
    file (of .nhdr/.mhd) that would replace an existing file no header of that name owns."""
    p = Path(path)
    if _extension(p) not in WRITABLE:
        raise InputError(f"cannot write {p}: unsupported format (use one of {', '.join(WRITABLE)})")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {p}: folder {parent} does not exist")
    if p.is_dir():
        raise InputError(f"cannot write {p}: it is a folder")
    for data in output_files(p, compress)[1:]:
        if data.is_dir() or (os.path.lexists(data) and not p.exists()):
            raise InputError(f"cannot write {p}: its data file {data.name} would replace an existing "
                             f"{'folder' if data.is_dir() else 'file'} that belongs to no {p.name}")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {p}: folder {parent} is not writable")
    # os.access says yes to root and ignores read-only mounts and ACLs: really create (and remove) a probe file.
    try:
        with _uninterrupted():
            fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write {p}: folder {parent} is not writable ({exc.strerror})") from None
    return p


Item = Union[tuple[Volume, Union[str, os.PathLike]], tuple[Volume, Union[str, os.PathLike], str]]


def write_volumes(items: Sequence[Item], compress: bool = True) -> list[Path]:
    """Write several volumes all or nothing: ``(volume, path)`` or ``(volume, path, dtype)`` (a numpy type name;
    float32 when left out; ``volume.array`` must already be in its range). Every one is first written
    completely into a hidden folder beside its target, and only when all succeeded are they renamed into place,
    with SIGINT/SIGTERM held meanwhile (so a failure or a signal leaves no new file and never replaces one).

    The staged name has a lower-case extension (ITK writes ``up.MHA`` as ``up.mhd`` + ``up.zraw`` and refuses
    ``.NII``); header-plus-data formats keep their stem, so the header's reference to its data file stays valid;
    the data file is moved first and the header last.
    """
    targets = [check_writable(item[1], compress) for item in items]
    planned = [f for p in targets for f in output_files(p, compress)]
    real = [os.path.normcase(os.path.realpath(f)) for f in planned]
    for f, r in zip(planned, real):
        if real.count(r) > 1:
            raise InputError(f"cannot write {f}: two outputs would both write it")
    staged: list[tuple[Path, Path]] = []  # (temporary folder, target)
    try:
        for item, p in zip(items, targets):
            volume, dtype = item[0], (item[2] if len(item) > 2 else "float32")  # type: ignore[misc]
            if dtype not in SITK_TYPES:
                raise InputError(f"cannot write {p}: unknown voxel type {dtype!r}")
            try:
                tmpdir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
            except OSError as exc:
                raise InputError(f"cannot write {p}: {exc.strerror}") from None
            staged.append((tmpdir, p))
            ext = _extension(p)
            image = sitk.Cast(to_sitk(volume), SITK_TYPES[dtype])
            try:
                with itk_messages(str(p)):
                    sitk.WriteImage(image, str(tmpdir / (p.name[: len(p.name) - len(ext)] + ext)), compress)
            except RuntimeError as exc:
                raise InputError(f"cannot write {p}: {_first_line(exc).replace(str(tmpdir), str(p.parent))}") from None
            expected = {f.name.lower() for f in output_files(tmpdir / p.name.lower(), compress)}
            written = {f.name.lower() for f in tmpdir.iterdir()}
            if written != expected:  # a SimpleITK whose writers name files differently: refuse, never guess
                raise InputError(f"cannot write {p}: the writer produced {sorted(written)}, not {sorted(expected)}")
        with _uninterrupted():
            for tmpdir, p in staged:
                header, *data = output_files(p, compress)
                names = {f.name.lower(): f for f in tmpdir.iterdir()}
                try:
                    for final in data + [header]:  # the header last
                        os.replace(names[final.name.lower()], final)
                except OSError as exc:
                    raise InputError(f"cannot write {p}: {exc.strerror}") from None
    finally:
        with _uninterrupted():
            for tmpdir, _ in staged:
                shutil.rmtree(tmpdir, ignore_errors=True)
    return targets


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True, dtype: str = "float32") -> Path:
    """Write one volume atomically (see ``write_volumes``); ``dtype`` is the stored voxel type."""
    return write_volumes([(volume, path, dtype)], compress)[0]


@functools.lru_cache(maxsize=64)
def content_hash(path: str) -> str:
    """The hash of the volume at ``path`` as read (voxels and geometry): model cards record it for their training
    volumes (``training.volume_hashes``), so the bench recognises a training volume under any file name."""
    return array_hash(read_volume(path))
