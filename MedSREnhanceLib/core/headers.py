"""Header pre-checks run before ITK reads a file: the data a header declares against the bytes really there,
detached data files confined to the header's folder, NaN voxels and zero pixel spacing that ITK would hide.

ITK trusts headers: it allocates whatever a header declares before reading a byte of data, follows a detached
data file wherever the header points (``../../etc/passwd``, an absolute path), fills missing voxels with zeros
and turns a NIfTI pixdim of 0 into 1 mm. Each check raises an ``InputError`` with one line; what it cannot parse
is left to ITK, whose allocation ``io.read_volume`` bounds first by the memory budget.
"""
from __future__ import annotations

import bz2
import gzip
import os
import re
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import numpy as np

from .errors import InputError

MAX_HEADER_BYTES = 1 << 16  # NRRD and MetaImage headers are a few hundred bytes; a longer one is not a header
MAX_DATA_FILES = 10_000  # slices of a multi-file NRRD/MetaImage; a hostile pattern may name millions


def available_ram() -> float:
    """Bytes of RAM available now (Linux /proc/meminfo; 8 GB where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8e9


def memory_budget() -> float:
    """Bytes one input may take while it is read and converted to float32: a quarter of the available RAM (the
    engine then needs several float32 copies and the larger output grid)."""
    return available_ram() * 0.25


def check_budget(size: tuple[int, ...], itemsize: int, name: str) -> None:
    """Refuse a header that declares more voxels than the memory budget, before anything is allocated."""
    voxels = int(np.prod([max(int(n), 0) for n in size], dtype=object))
    need = voxels * (itemsize + 4)  # the file's type as ITK reads it, then the float32 copy
    budget = memory_budget()
    if need > budget:
        dims = "x".join(str(n) for n in size)
        raise InputError(f"{name} declares {dims} voxels ({need / 1e9:.3g} GB to read), more than the memory "
                         f"budget ({budget / 1e9:.3g} GB, a quarter of the available RAM)")


def contained(header: Path, name: str) -> Path:
    """The data file ``name`` a header refers to, refused unless it lies inside the header's folder."""
    if os.path.isabs(name) or re.match(r"^([A-Za-z]:|[\\/])", name):
        raise InputError(f"cannot read {header}: its data file {name!r} is an absolute path; data files must "
                         "lie in the header's folder")
    if ".." in re.split(r"[\\/]", name):
        raise InputError(f"cannot read {header}: its data file {name!r} leaves the header's folder ('..')")
    folder = os.path.realpath(header.parent)
    target = header.parent / name
    if os.path.commonpath([folder, os.path.realpath(target)]) != folder:
        raise InputError(f"cannot read {header}: its data file {name!r} is a link out of the header's folder")
    return target


def _data_files(header: Path, spec: str, following: list[str]) -> list[Path]:
    """Every data file a detached header names: one file, a ``LIST`` (names on the following lines) or a
    printf pattern with ``min max step`` (NRRD and MetaImage use the same three forms)."""
    if spec.split()[:1] == ["LIST"]:
        names = [ln.strip() for ln in following if ln.strip()]
    elif "%" in spec and len(spec.split()) >= 4:
        fmt, *numbers = spec.split()
        try:
            first, last, step = (int(v) for v in numbers[:3])
            if step == 0:
                raise ValueError
            indices = range(first, last + (1 if step > 0 else -1), step)
            if len(indices) > MAX_DATA_FILES:
                raise InputError(f"cannot read {header}: it names {len(indices)} data files")
            names = [fmt % i for i in indices]
        except (ValueError, TypeError, OverflowError):
            raise InputError(f"cannot read {header}: bad data file pattern {spec!r}") from None
    else:
        names = [spec]
    if len(names) > MAX_DATA_FILES:
        raise InputError(f"cannot read {header}: it names {len(names)} data files")
    return [contained(header, n) for n in names]


def _inflated(fh: BinaryIO, kind: str, limit: int, feed: Optional[Callable[[bytes], None]] = None) -> int:
    """Bytes a compressed stream (from ``fh``'s position) decodes to, up to ``limit``, 4 MB at a time so memory
    stays flat whatever the header claims; ``feed`` sees each decoded chunk. A cut or corrupt stream counts
    what it held."""
    seen = 0

    def take(out: bytes) -> None:
        nonlocal seen
        seen += len(out)
        if feed is not None:
            feed(out)

    try:
        if kind == "zlib":  # MetaImage: one raw zlib stream
            decoder, tail = zlib.decompressobj(), b""
            while seen < limit and not decoder.eof:
                tail = tail or fh.read(1 << 20)
                if not tail:
                    break
                take(decoder.decompress(tail, min(1 << 22, limit - seen)))
                tail = decoder.unconsumed_tail
        else:  # gzip (several members allowed) or bzip2: the file objects bound each read
            stream = gzip.GzipFile(fileobj=fh) if kind == "gzip" else bz2.BZ2File(fh)
            while seen < limit:
                out = stream.read(min(1 << 22, limit - seen))
                if not out:
                    break
                take(out)
    except (zlib.error, OSError, EOFError, ValueError):
        pass  # corrupt or cut short: what decoded so far is all there is
    return seen


def _refuse_short(p: Path, have: int, need: int) -> None:
    if have < need:
        raise InputError(f"cannot read {p}: truncated file ({have} of {need} data bytes)")


# ------------------------------------------------------------------------------------------------- NIfTI


def _nifti_layout(header: bytes) -> Optional[tuple[int, int, str, tuple[float, ...], int]]:
    """(vox_offset, voxel data bytes, numpy float dtype or "", pixdim 1-3, voxels) of a NIfTI-1/-2 header; None
    if the bytes are not one."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            pixdim = struct.unpack(endian + "8f", header[76:108])
            offset = max(int(struct.unpack(endian + "f", header[108:112])[0]), 348)
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype = struct.unpack(endian + "h", header[12:14])[0]
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            pixdim = struct.unpack(endian + "8d", header[104:168])
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
    return (offset, voxels * bitpix // 8, (endian + floats) if floats else "", tuple(pixdim[1:min(ndim, 3) + 1]),
            voxels)


def check_nifti(p: Path) -> None:
    """Refuse what ITK's NIfTI reader would silently alter: a truncated file (ITK fills the missing voxels with
    zeros), NaN or infinite voxels (ITK makes them zeros) and a zero or non-finite pixdim (ITK makes it 1 mm)."""
    seen, bad, carry = 0, 0, b""
    try:
        with open(p, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(p, "rb") if gzipped else open(p, "rb")) as fh:
            layout = _nifti_layout(fh.read(540))
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read {p}: truncated or corrupt file ({exc})") from None
    if layout is None:
        return  # not a NIfTI header: ITK says what is wrong
    offset, nbytes, dtype, pixdim, voxels = layout
    check_budget((voxels,), nbytes // max(voxels, 1), str(p))  # before a gzip stream is decoded
    if any(not np.isfinite(d) or d == 0 for d in pixdim):
        raise InputError(f"{p} has a zero or non-finite voxel spacing (pixdim {', '.join(f'{d:g}' for d in pixdim)})")
    item = int(dtype[-1]) if dtype else 1

    def feed(buf: bytes) -> None:
        nonlocal bad, carry
        buf = carry + buf
        n = len(buf) - len(buf) % item
        bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf[:n], dtype))))
        carry = buf[n:]

    with open(p, "rb") as fh:
        if not gzipped:
            seen = max(0, p.stat().st_size - offset)
            if dtype and seen >= nbytes:
                fh.seek(offset)
                left = nbytes
                while left > 0 and (chunk := fh.read(min(1 << 22, left))):
                    feed(chunk)
                    left -= len(chunk)
        else:
            skipped = 0

            def after_offset(buf: bytes) -> None:  # the decoded stream starts with the header
                nonlocal skipped
                cut = min(max(0, offset - skipped), len(buf))
                skipped += cut
                if dtype and len(buf) > cut:
                    feed(buf[cut:])

            seen = _inflated(fh, "gzip", offset + nbytes, after_offset) - offset
    _refuse_short(p, max(seen, 0), nbytes)
    if bad:
        raise InputError(f"{p} has {bad} NaN or infinite voxels")


# --------------------------------------------------------------------------------------------------- NRRD


def _nrrd_itemsize(kind: str) -> Optional[int]:
    k = kind.strip().lower()
    for pattern, size in (("float", 4), ("double", 8), ("long", 8), ("64", 8), ("short", 2), ("16", 2),
                          ("char", 1), ("8", 1), ("int", 4), ("32", 4)):
        if pattern in k:
            return size
    return None


def _read_header_lines(p: Path, stop_at_blank: bool) -> tuple[list[str], int]:
    """Header lines (latin-1, without line ends) and the header's byte length, reading at most
    MAX_HEADER_BYTES."""
    with open(p, "rb") as fh:
        head = fh.read(MAX_HEADER_BYTES)
    lines, pos = [], 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            if len(head) == MAX_HEADER_BYTES:
                raise InputError(f"cannot read {p}: its header is longer than {MAX_HEADER_BYTES} bytes")
            end = len(head)
        line = head[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if stop_at_blank and not line:
            break
        lines.append(line)
    return lines, pos


def check_nrrd(p: Path) -> None:
    """Refuse an NRRD whose data file lies outside the header's folder or whose data is shorter than the header
    declares (ITK allocates the declared size first: a 73-byte header can claim 7 GB)."""
    lines, header_len = _read_header_lines(p, stop_at_blank=True)
    if not lines or not lines[0].startswith("NRRD"):
        return
    fields: dict[str, str] = {}
    rest: list[str] = []
    for i, line in enumerate(lines[1:], 1):
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() in ("data file", "datafile"):
            rest = lines[i + 1:]  # a LIST's file names follow the field
            break
    spec = fields.get("data file", fields.get("datafile"))
    try:
        voxels = int(np.prod([int(v) for v in fields["sizes"].split()], dtype=object))
        itemsize = _nrrd_itemsize(fields["type"])
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
    except (KeyError, ValueError):
        voxels, itemsize, skip = 0, None, 0
    if spec is not None:
        with open(p, "rb") as fh:
            tail = fh.read(MAX_HEADER_BYTES)[header_len:].decode("latin-1").splitlines()
        files = _data_files(p, spec, rest or tail if spec.split()[:1] == ["LIST"] else [])
        offset = 0
    else:
        files, offset = [p], header_len
    if not voxels or itemsize is None or not all(f.is_file() for f in files):
        return  # a missing data file or a header ITK cannot parse: ITK's own error says which
    need = voxels * itemsize
    check_budget((voxels,), itemsize, str(p))  # before a compressed stream is decoded
    encoding = fields.get("encoding", "raw").lower()
    kind = {"gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}.get(encoding)
    if encoding == "raw":
        have = sum(f.stat().st_size for f in files) - len(files) * offset - (0 if skip < 0 else skip)
    elif kind is not None:
        have = 0
        for f in files:
            with open(f, "rb") as fh:
                fh.seek(offset)
                have += _inflated(fh, kind, need + max(skip, 0) - have)
        have -= max(skip, 0)
    elif encoding in ("ascii", "text", "txt"):
        have, need = sum(f.stat().st_size for f in files) - offset, voxels  # at least one character a value
    elif encoding == "hex":
        have, need = sum(f.stat().st_size for f in files) - offset, 2 * need
    else:
        return
    _refuse_short(p, max(have, 0), need)


# ---------------------------------------------------------------------------------------------- MetaImage

_MET_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
              "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG": 8,
              "MET_ULONG": 8}


# MetaIO reads these as NDims numbers (or NDims^2) without checking: a bad NDims or a short list crashes it.
_MET_VECTORS = ("DimSize", "ElementSpacing", "ElementSize", "Offset", "Position", "Origin", "CenterOfRotation")
_MET_MATRICES = ("TransformMatrix", "Rotation", "Orientation")


def _check_metaimage_fields(p: Path, fields: dict[str, str]) -> None:
    """Refuse a MetaImage header whose dimension-shaped fields do not fit its NDims (MetaIO would crash)."""
    def bad(key: str) -> InputError:
        return InputError(f"cannot read {p}: bad MetaImage header field {key} = {fields[key][:40]!r}")

    try:
        ndims = int(fields.get("NDims", ""))
    except ValueError:
        raise bad("NDims") if "NDims" in fields else InputError(f"cannot read {p}: no NDims in its header")
    if not 1 <= ndims <= 10:
        raise bad("NDims")
    for key, count in [(k, ndims) for k in _MET_VECTORS] + [(k, ndims * ndims) for k in _MET_MATRICES]:
        if key not in fields:
            continue
        try:
            values = [float(v) for v in fields[key].split()]
        except ValueError:
            raise bad(key) from None
        if len(values) != count or not all(np.isfinite(values)):
            raise bad(key)
    if any(v <= 0 or v != int(v) or v > 2**31 for v in (float(x) for x in fields.get("DimSize", "1").split())):
        raise bad("DimSize")
    for key in ("ElementNumberOfChannels", "HeaderSize", "CompressedDataSize"):
        if key in fields and not re.fullmatch(r"-?\d{1,12}", fields[key]):
            raise bad(key)
    if fields.get("ElementNumberOfChannels", "1").startswith("-") or fields.get("ElementNumberOfChannels") == "0":
        raise bad("ElementNumberOfChannels")


def check_metaimage(p: Path) -> None:
    """Refuse a MetaImage (.mha/.mhd) whose data file lies outside the header's folder or is missing, or whose
    data is shorter than declared (MetaIO prints its own lines on stderr, then ITK blames a missing file)."""
    lines, _ = _read_header_lines(p, stop_at_blank=False)
    fields: dict[str, str] = {}
    header_len, rest = 0, []
    for i, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if not sep:
            return  # not a MetaImage header: ITK says what is wrong
        fields[key.strip()] = value.strip()
        header_len += len(line.encode("latin-1")) + 1
        if key.strip() == "ElementDataFile":
            rest = lines[i + 1:]
            break
    spec = fields.get("ElementDataFile", "")
    if not spec:
        return
    _check_metaimage_fields(p, fields)
    if spec == "LOCAL":
        files, offset = [p], header_len
    else:
        files, offset = _data_files(p, spec, rest), 0
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise InputError(f"cannot read {p}: its data file {missing[0].name} is missing")
    try:
        header_size = int(fields.get("HeaderSize", "0") or 0)
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return
    item = _MET_BYTES.get(fields.get("ElementType", ""))
    if item is None or not dims or min(dims) <= 0:
        return
    need = item * channels * int(np.prod(dims, dtype=object))
    check_budget((need // item,), item, str(p))  # before a compressed stream is decoded
    if header_size > 0:
        offset = header_size
    total = sum(f.stat().st_size for f in files)
    if fields.get("CompressedData", "False").lower() == "true":
        have = 0
        for f in files:
            with open(f, "rb") as fh:
                fh.seek(offset if f == p else 0)
                have += _inflated(fh, "zlib", need - have)
    elif header_size == -1:  # data at the end of the file, whatever precedes it
        have = total
    else:
        have = total - (offset if spec == "LOCAL" or header_size > 0 else 0)
    _refuse_short(p, max(have, 0), need)


# ------------------------------------------------------------------------------------------------- DICOM

# Explicit-VR value representations with a 4-byte length (after 2 reserved bytes); the others have 2 bytes.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
              b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}


def check_dicom_file(p: Path) -> None:
    """Refuse a DICOM file (one with the "DICM" marker) that has an invalid value representation or an element
    longer than the rest of the file: GDCM allocates a declared length before noticing the file is shorter
    (one flipped byte in a 1 kB file cost 1.9 GB). Walks the top-level elements only, up to the first one of
    undefined length (sequences, encapsulated pixel data); big-endian files are left to GDCM."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        fh.seek(128)
        if fh.read(4) != b"DICM":
            return  # no DICOM marker: GDCM decides whether it is one
        implicit, in_meta, syntax = False, True, ""
        while True:
            start = fh.tell()
            head = fh.read(8)
            if len(head) < 8:
                return
            group, element = struct.unpack("<HH", head[:4])
            if in_meta and group != 2:
                in_meta = False
                if syntax == "1.2.840.10008.1.2.2":
                    return  # explicit VR big endian (retired): not walked
                implicit = syntax == "1.2.840.10008.1.2"
            vr = head[4:6]
            if implicit and not in_meta:
                length = struct.unpack("<I", head[4:8])[0]
            elif vr in _LONG_VRS:
                extra = fh.read(4)
                if len(extra) < 4:
                    return
                length = struct.unpack("<I", extra)[0]
            elif vr in _SHORT_VRS:
                length = struct.unpack("<H", head[6:8])[0]
            else:
                raise InputError(f"cannot read {p}: corrupt DICOM file (element ({group:04X},{element:04X}) has "
                                 f"no valid value representation)")
            if length == 0xFFFFFFFF:
                return  # undefined length: nested items follow; GDCM's own parser takes over here
            if fh.tell() + length > size:
                raise InputError(f"cannot read {p}: truncated or corrupt DICOM file (element ({group:04X},"
                                 f"{element:04X}) claims {length} bytes, {size - fh.tell()} remain)")
            if (group, element) == (2, 0x10):
                syntax = fh.read(length).decode("ascii", "replace").strip("\0 ")
            else:
                fh.seek(length, 1)
            if fh.tell() <= start:
                return
