"""Volume I/O through SimpleITK: NIfTI, NRRD, MetaImage and DICOM series; atomic writes.

Every failure the user can fix becomes an ``InputError`` with one line naming the problem.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .resample import from_sitk, to_sitk
from .volume import Volume

logger = logging.getLogger(__name__)

# Extensions SimpleITK writes in one file, and the two that write a header plus a data file.
SINGLE_FILE = (".nii", ".nii.gz", ".nrrd", ".mha")
HEADER_PLUS_DATA = (".nhdr", ".mhd")
WRITABLE = SINGLE_FILE + HEADER_PLUS_DATA


def _extension(path: Path) -> str:
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


def _check_image(image: sitk.Image, name: str) -> None:
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a scalar volume is needed")
    if dim == 2:
        raise InputError(f"{name} is 2D ({image.GetSize()[0]}x{image.GetSize()[1]}); a 3D volume is needed")
    if dim == 4:
        raise InputError(f"{name} is 4D ({image.GetSize()[3]} volumes); a single 3D volume is needed")
    if dim != 3:
        raise InputError(f"{name} has {dim} dimensions; a 3D volume is needed")
    size = image.GetSize()
    if 0 in size:
        raise InputError(f"{name} is empty (size {size})")
    if 1 in size:
        raise InputError(f"{name} is a single slice ({'x'.join(map(str, size))}), i.e. 2D; a 3D volume is needed")


def _read_dicom_series(folder: Path, series_uid: Optional[str]) -> Volume:
    reader = sitk.ImageSeriesReader()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "No Series were found" on stderr itself
    try:
        uids = list(reader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
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
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # non-uniform sampling is checked below, not printed by ITK
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series {chosen} in {folder}: {_first_line(exc)}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    _check_image(image, f"DICOM series {chosen}")
    _check_slice_positions(reader, len(files), image, chosen)
    meta: dict = {"source": str(folder), "series_uid": chosen, "series_count": len(uids)}
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


_MET_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
              "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8}


def _check_metaimage(p: Path) -> None:
    """Refuse a truncated MetaImage (.mha/.mhd and its data file) before ITK reads it: MetaIO prints its own
    lines on stderr and ITK then reports a misleading "No such file or directory"."""
    if not p.name.lower().endswith((".mha", ".mhd")):
        return
    fields: dict[str, str] = {}
    expected: Optional[int] = None
    missing, actual = False, 0
    try:
        with open(p, "rb") as fh:
            header_len = 0
            for _ in range(200):  # a MetaImage header is a few dozen "Key = Value" lines ending at ElementDataFile
                line = fh.readline(4096)
                if not line:
                    return
                header_len += len(line)
                key, sep, value = line.decode("latin-1").partition("=")
                if not sep:
                    return
                fields[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    break
            else:
                return
        data_name = fields.get("ElementDataFile", "")
        if data_name == "LOCAL":
            data, offset = p, header_len
        elif data_name and " " not in data_name and "%" not in data_name and data_name != "LIST":
            data, offset = p.parent / data_name, 0
        else:
            return
        if int(fields.get("HeaderSize", "0") or 0) != 0:
            return  # explicit or "at the end" header sizes: leave to ITK
        if not data.is_file():
            missing = True
        else:
            actual = data.stat().st_size - offset
            if fields.get("CompressedData", "False").lower() == "true":
                expected = int(fields["CompressedDataSize"]) if "CompressedDataSize" in fields else None
            elif fields.get("ElementType", "") in _MET_BYTES and fields.get("DimSize"):
                dims = [int(v) for v in fields["DimSize"].split()]
                channels = int(fields.get("ElementNumberOfChannels", "1"))
                expected = _MET_BYTES[fields["ElementType"]] * channels * int(np.prod(dims, dtype=np.int64))
    except (OSError, ValueError):
        return  # unparseable: ITK's own error message follows
    # Raised out here: InputError is a ValueError, which the except above would swallow.
    if missing:
        raise InputError(f"cannot read {p}: its data file {data_name} is missing")
    if expected is not None and actual < expected:
        raise InputError(f"cannot read {p}: truncated file ({actual} of {expected} data bytes)")


def _nifti_layout(header: bytes) -> Optional[tuple[int, int, str]]:
    """(vox_offset, voxel data bytes, numpy float dtype or "") from a NIfTI-1/-2 header; None if not NIfTI."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = max(int(struct.unpack(endian + "f", header[108:112])[0]), 348)
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype = struct.unpack(endian + "h", header[12:14])[0]
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = max(int(struct.unpack(endian + "q", header[168:176])[0]), 540)
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    voxels = 1
    for n in dims[1:ndim + 1]:
        voxels *= max(int(n), 0)
    floats = {16: "f4", 64: "f8"}.get(datatype, "")  # NIFTI_TYPE_FLOAT32 / FLOAT64
    return offset, voxels * bitpix // 8, (endian + floats) if floats else ""


def _check_nifti(p: Path) -> None:
    """Refuse what ITK's NIfTI reader would silently alter: a truncated file (plain or gzipped; ITK fills the
    missing voxels with zeros) and NaN or infinite voxels (ITK turns them into zeros). Reads the file once."""
    name = p.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    seen, bad, carry = 0, 0, b""
    try:
        with open(p, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(p, "rb") if gzipped else open(p, "rb")) as fh:
            header = fh.read(540)
            layout = _nifti_layout(header)
            if layout is None:
                return  # not a NIfTI header: ITK says what is wrong
            offset, nbytes, dtype = layout
            if not dtype and not gzipped:  # integer voxels: only the length matters
                seen = max(0, p.stat().st_size - offset)
            else:
                item = int(dtype[-1]) if dtype else 1

                def feed(buf: bytes) -> None:
                    nonlocal seen, bad, carry
                    take = buf[: max(0, nbytes - seen)]
                    seen += len(take)
                    if dtype:
                        buf = carry + take
                        n = len(buf) - len(buf) % item
                        bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf[:n], dtype))))
                        carry = buf[n:]

                if len(header) > offset:
                    feed(header[offset:])
                else:
                    fh.read(offset - len(header))  # header extensions
                while seen < nbytes:
                    chunk = fh.read(1 << 22)  # raises EOFError if a gzip stream is cut short
                    if not chunk:
                        break
                    feed(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read {p}: truncated or corrupt file ({exc})") from None
    if seen < nbytes:
        raise InputError(f"cannot read {p}: truncated file ({offset + seen} of {offset + nbytes} bytes)")
    if bad:
        raise InputError(f"{p} has {bad} NaN or infinite voxels")


def read_volume(path: str | os.PathLike, series_uid: Optional[str] = None) -> Volume:
    """Read a 3D scalar volume from a file or a DICOM series folder, keeping spacing, origin and direction."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        return _read_dicom_series(p, series_uid)
    _check_nifti(p)
    _check_metaimage(p)
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(f"cannot read {p}: {_first_line(exc)}") from None
    _check_image(image, str(p))
    meta: dict = {"source": str(p)}
    if image.HasMetaDataKey("0008|0060"):
        meta["modality"] = image.GetMetaData("0008|0060").strip().upper()
    return from_sitk(sitk.Cast(image, sitk.sitkFloat32), meta)


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse an output path before any work is done: unknown format, missing or unwritable folder."""
    p = Path(path)
    if _extension(p) not in WRITABLE:
        raise InputError(f"cannot write {p}: unsupported format (use one of {', '.join(WRITABLE)})")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {p}: folder {parent} does not exist")
    if p.is_dir():
        raise InputError(f"cannot write {p}: it is a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {p}: folder {parent} is not writable")
    # os.access says yes to root and ignores read-only mounts and ACLs: really create (and remove) a probe file.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write {p}: folder {parent} is not writable ({exc.strerror})") from None
    return p


def write_volumes(items: Sequence[tuple[Volume, str | os.PathLike]], compress: bool = True) -> list[Path]:
    """Write several volumes all or nothing: every one is first written completely into a temporary folder
    beside its target, and only when all succeeded are they renamed into place (so a failure leaves no new file
    and never replaces an existing one).

    Header-plus-data formats (.nhdr, .mhd) are written under their final names in the temporary folder, so the
    header's reference to its data file stays valid; the data file is moved first and the header last.
    """
    targets = [check_writable(path) for _, path in items]
    staged: list[tuple[Path, Path]] = []  # (temporary folder, target)
    try:
        for (volume, _), p in zip(items, targets):
            try:
                tmpdir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
            except OSError as exc:
                raise InputError(f"cannot write {p}: {exc.strerror}") from None
            staged.append((tmpdir, p))
            try:
                sitk.WriteImage(to_sitk(volume), str(tmpdir / p.name), compress)
            except RuntimeError as exc:
                raise InputError(f"cannot write {p}: {_first_line(exc)}") from None
        for tmpdir, p in staged:
            written = sorted(tmpdir.iterdir(), key=lambda f: f.name == p.name)  # header (the target name) last
            try:
                for f in written:
                    os.replace(f, p.parent / f.name)
            except OSError as exc:
                raise InputError(f"cannot write {p}: {exc.strerror}") from None
    finally:
        for tmpdir, _ in staged:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return targets


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write one volume atomically (see ``write_volumes``)."""
    return write_volumes([(volume, path)], compress)[0]
