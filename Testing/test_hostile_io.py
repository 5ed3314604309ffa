"""Hostile and careless files (issue 17): detached data files outside the header's folder, headers declaring
more than the file holds or the memory budget allows, zero spacing, upper-case extensions, companion data files
of header-plus-data outputs, and ITK's own stderr prints."""
from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import listing, make_volume, sha256, to_sitk_image
from MedSREnhanceLib.core import headers
from MedSREnhanceLib.core import io as mio
from MedSREnhanceLib.core.errors import InputError
from MedSREnhanceLib.core.io import read_volume, write_volume, write_volumes

SECRET = b"root:x:0:0:secret bytes outside the folder\n" * 40  # 1760 bytes = 440 floats


def secret_file(root: Path) -> Path:
    path = root / "outside" / "secret.raw"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SECRET)
    return path


def nhdr(folder: Path, data_file: str, sizes: str = "8 11 5", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "v.nhdr"
    path.write_text(f"NRRD0004\ntype: float\ndimension: 3\nsizes: {sizes}\nendian: little\nencoding: raw\n"
                    f"{extra}data file: {data_file}\n")
    return path


def mhd(folder: Path, data_file: str, dims: str = "8 11 5") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "v.mhd"
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_FLOAT\n"
                    f"ElementDataFile = {data_file}\n")
    return path


@pytest.mark.parametrize("make", [nhdr, mhd], ids=["nrrd", "metaimage"])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "list", "pattern"])
def test_detached_data_outside_the_folder_refused(tmp_path: Path, make, how: str) -> None:
    secret = secret_file(tmp_path)
    folder = tmp_path / "upload" / "case"
    if how == "dotdot":
        header = make(folder, "../../outside/secret.raw")
    elif how == "absolute":
        header = make(folder, str(secret))
    elif how == "symlink":
        folder.mkdir(parents=True)
        (folder / "data.raw").symlink_to(secret)
        header = make(folder, "data.raw")
    elif how == "list":
        header = make(folder, "LIST 2", sizes="8 11 5") if make is nhdr else make(folder, "LIST 2")
        with open(header, "a") as fh:
            fh.write("ok.raw\n../../outside/secret.raw\n")
        (folder / "ok.raw").write_bytes(SECRET)
    else:
        header = make(folder, "../../outside/secret%d.raw 1 1 1")
    with pytest.raises(InputError, match="outside|leaves the header's folder|absolute|link out"):
        read_volume(header)


@pytest.mark.parametrize("make", [nhdr, mhd], ids=["nrrd", "metaimage"])
def test_detached_data_in_the_folder_still_reads(tmp_path: Path, make) -> None:
    folder = tmp_path / "case"
    (folder / "sub").mkdir(parents=True)
    arr = np.arange(8 * 11 * 5, dtype="<f4")
    (folder / "sub" / "v.raw").write_bytes(arr.tobytes())
    vol = read_volume(make(folder, "sub/v.raw"))
    np.testing.assert_array_equal(vol.array.ravel(), arr)
    assert vol.metadata["dtype"] == "float32"


def test_hostile_nrrd_header_refused_fast_and_small(tmp_path: Path) -> None:
    """The issue's 73-byte header claiming 1200^3 float: refused before ITK allocates 6.9 GB."""
    path = tmp_path / "big.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1200 1200 1200\nencoding: raw\n\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="truncated|budget"):
        read_volume(path)
    assert time.perf_counter() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no 6.9 GB buffer


@pytest.mark.parametrize("encoding", ["raw", "gzip", "bzip2", "ascii", "hex"])
def test_nrrd_short_data_refused_in_every_encoding(tmp_path: Path, encoding: str) -> None:
    import bz2
    import gzip

    data = np.ones(4 * 5 * 6, "<f4").tobytes()
    body = {"raw": data[:-8], "gzip": gzip.compress(data)[:-20], "bzip2": bz2.compress(data)[:-20],
            "ascii": b"1 " * 50, "hex": data.hex().encode()[:-16]}[encoding]
    path = tmp_path / "v.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 5 6\nendian: little\nencoding: "
                     + encoding.encode() + b"\n\n" + body)
    with pytest.raises(InputError, match="truncated|cannot read"):
        read_volume(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_memory_budget_checked_before_reading(tmp_path: Path, ext: str, monkeypatch) -> None:
    path = tmp_path / f"v{ext}"
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(20, 20, 20))), str(path))
    monkeypatch.setattr(headers, "memory_budget", lambda: 20 ** 3 * 8 - 1)
    with pytest.raises(InputError, match="memory budget"):
        read_volume(path)
    monkeypatch.setattr(headers, "memory_budget", lambda: 20 ** 3 * 8)
    assert read_volume(path).array.shape == (20, 20, 20)


def nifti_with_pixdim(path: Path, value: float) -> Path:
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(5, 6, 7))), str(path))
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(value).tobytes()  # pixdim[1]
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("value", [0.0, np.nan, np.inf])
def test_zero_or_non_finite_spacing_refused(tmp_path: Path, value: float) -> None:
    """NIfTI pixdim 0 would silently become 1 mm in ITK; other formats report what the header says."""
    with pytest.raises(InputError, match="spacing"):
        read_volume(nifti_with_pixdim(tmp_path / "v.nii", value))
    mha = tmp_path / "v.mha"
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(5, 6, 7))), str(mha), False)
    mha.write_bytes(re.sub(rb"ElementSpacing = \S+", b"ElementSpacing = " + str(value).encode(), mha.read_bytes()))
    with pytest.raises(InputError, match="spacing|cannot read"):
        read_volume(mha)


@pytest.mark.parametrize("name", ["up.MHA", "up.MHD", "up.NII", "up.NII.GZ", "up.Nii.gz", "up.NRRD", "up.NHDR"])
def test_upper_case_output_is_exactly_the_named_file(tmp_path: Path, name: str) -> None:
    vol = make_volume(shape_zyx=(5, 6, 7))
    path = tmp_path / name
    assert write_volume(vol, path) == path
    names = listing(tmp_path)
    if name.lower().endswith((".mhd", ".nhdr")):
        assert len(names) == 2 and name in names, names
    else:
        assert names == {name}, names
    back = read_volume(path)  # and it reads back, in any case
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize("name,data", [("up.mhd", "up.zraw"), ("up.nhdr", "up.raw.gz")])
def test_header_plus_data_never_replaces_an_unrelated_file(tmp_path: Path, name: str, data: str) -> None:
    (tmp_path / data).write_bytes(b"someone else's file")
    with pytest.raises(InputError, match="belongs to no"):
        mio.check_writable(tmp_path / name)
    assert (tmp_path / data).read_bytes() == b"someone else's file"
    # A previous result (header and data file together) is replaced as a pair.
    (tmp_path / data).unlink()
    vol = make_volume(shape_zyx=(5, 6, 7))
    write_volume(vol, tmp_path / name)
    write_volume(vol.with_array(vol.array + 1), tmp_path / name)
    np.testing.assert_array_equal(read_volume(tmp_path / name).array, vol.array + 1)


def test_two_outputs_sharing_a_data_file_refused(tmp_path: Path) -> None:
    vol = make_volume(shape_zyx=(5, 6, 7))
    if os.path.normcase("A") == "A" and not (tmp_path / "X").exists():
        with pytest.raises(InputError, match="both write"):
            write_volumes([(vol, tmp_path / "a.mhd"), (vol, tmp_path / "a.MHD")])
    assert listing(tmp_path) == set()


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float64"])
def test_write_keeps_a_requested_voxel_type(tmp_path: Path, dtype: str) -> None:
    vol = make_volume(shape_zyx=(5, 6, 7), kind="int").with_array(np.full((5, 6, 7), 200, np.float32))
    path = write_volume(vol, tmp_path / "v.nrrd", dtype=dtype)
    assert read_volume(path).metadata["dtype"] == dtype


def test_unsupported_input_format_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.vtk"
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(5, 6, 7))), str(path))
    with pytest.raises(InputError, match="unsupported format"):
        read_volume(path)


def test_itk_prints_are_logged_not_shown(tmp_path: Path, capfd, caplog) -> None:
    """MetaIO and the NIfTI library print on stderr themselves; the library folds that into one log line."""
    path = tmp_path / "bad.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_NOPE\n"
                     b"ElementDataFile = LOCAL\n" + b"\0" * 64)
    before = sha256(path)
    caplog.set_level("INFO", logger="MedSREnhanceLib.core.io")
    with pytest.raises(InputError):
        read_volume(path)
    assert capfd.readouterr().err == ""
    assert sha256(path) == before


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_budget_checked_before_decompressing(tmp_path: Path, ext: str, monkeypatch) -> None:
    """A gzip bomb (a few MB of zeros declaring 1200^3 float) is refused by the budget, never decoded."""
    path = tmp_path / f"v{ext}"
    sitk.WriteImage(to_sitk_image(make_volume(shape_zyx=(20, 20, 20))), str(path), True)
    monkeypatch.setattr(headers, "memory_budget", lambda: 1000)

    def never(*args, **kwargs):
        raise AssertionError("decoded before the budget check")

    monkeypatch.setattr(headers, "_inflated", never)
    with pytest.raises(InputError, match="memory budget"):
        read_volume(path)
