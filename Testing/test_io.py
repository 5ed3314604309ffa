"""I/O round trips for every format, atomic writes, DICOM series selection and refusal of broken files."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DIRECTIONS, LEFT_HANDED, OBLIQUE, listing, make_volume, sha256, to_sitk_image, write_dicom_series
from MedSREnhanceLib.core import io as mio
from MedSREnhanceLib.core.errors import InputError
from MedSREnhanceLib.core.io import WRITABLE, read_volume, write_volume
from MedSREnhanceLib.core.volume import Volume, validate

FORMATS = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]
FLOAT32_GEOMETRY = (".nii", ".nii.gz")  # NIfTI stores pixdim, quaternion and sform as float32


def assert_same(a: Volume, b: Volume, ext: str = ".nrrd") -> None:
    np.testing.assert_array_equal(a.array, b.array)
    assert a.array.dtype == b.array.dtype == np.float32
    if ext in FLOAT32_GEOMETRY:
        np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
        np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
        np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)
    else:
        np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-13)
        np.testing.assert_allclose(a.origin, b.origin, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(a.direction, b.direction, atol=1e-13)


def geometry_volume(dname: str, seed: int = 0) -> Volume:
    return make_volume(shape_zyx=(9, 10, 11), spacing=(0.7, 1.3, 2.9), origin=(-101.3, 47.1, 12.25),
                       direction=DIRECTIONS[dname], kind="random", seed=seed)


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("dname", list(DIRECTIONS))
def test_read_every_format(tmp_path: Path, ext: str, dname: str) -> None:
    """Files written by SimpleITK itself are read with exact voxels and geometry."""
    vol = geometry_volume(dname)
    path = tmp_path / f"in{ext}"
    sitk.WriteImage(to_sitk_image(vol), str(path))
    before = sha256(path)
    back = read_volume(path)
    assert_same(back, vol, ext)
    assert sha256(path) == before
    assert back.metadata["source"] == str(path)


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("dname", list(DIRECTIONS))
@pytest.mark.parametrize("compress", [True, False])
def test_write_every_format_round_trip(tmp_path: Path, ext: str, dname: str, compress: bool) -> None:
    vol = geometry_volume(dname, seed=1)
    path = tmp_path / f"out{ext}"
    assert write_volume(vol, path, compress=compress) == path
    # Read back independently of the library, then through it.
    img = sitk.ReadImage(str(path))
    assert img.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), vol.array)
    assert_same(read_volume(path), vol, ext)
    # Atomic write: nothing but the file (and the data file of a header-plus-data format), no temp leftovers.
    names = listing(tmp_path)
    assert not any(n.startswith(".") for n in names), names
    if ext in (".nhdr", ".mhd"):
        assert len(names) == 2 and path.name in names, names
    else:
        assert names == {path.name}


def test_writable_list_is_every_format() -> None:
    assert set(WRITABLE) == set(FORMATS)


def test_write_overwrites_atomically_and_keeps_old_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out.nrrd"
    write_volume(geometry_volume("identity", seed=1), path)
    old = sha256(path)

    def broken_write(image, name, *args):  # writes a partial file, then fails like a full disk would
        Path(name).write_bytes(b"NRRD0004\npartial")
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: \nNo space left on device")

    monkeypatch.setattr(mio.sitk, "WriteImage", broken_write)
    with pytest.raises(InputError, match="No space left"):
        write_volume(geometry_volume("identity", seed=2), path)
    assert sha256(path) == old
    assert listing(tmp_path) == {"out.nrrd"}
    with pytest.raises(InputError):
        write_volume(geometry_volume("identity"), tmp_path / "new.nii.gz")
    assert listing(tmp_path) == {"out.nrrd"}
    monkeypatch.undo()
    new = geometry_volume("oblique", seed=3)
    write_volume(new, path)
    assert_same(read_volume(path), new)
    assert listing(tmp_path) == {"out.nrrd"}


@pytest.mark.parametrize("name,match", [("out.png", "unsupported format"), ("out.txt", "unsupported format"),
                                        ("missing/out.nrrd", "does not exist")])
def test_write_refuses_bad_targets(tmp_path: Path, name: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        write_volume(geometry_volume("identity"), tmp_path / name)
    assert listing(tmp_path) == set()


def test_write_refuses_a_folder(tmp_path: Path) -> None:
    (tmp_path / "x.nrrd").mkdir()
    with pytest.raises(InputError, match="folder"):
        write_volume(geometry_volume("identity"), tmp_path / "x.nrrd")


# ------------------------------------------------------------------------------------------------ DICOM


@pytest.mark.parametrize("dname", ["identity", "oblique"])
def test_dicom_series_folder(tmp_path: Path, dname: str) -> None:
    vol = make_volume(shape_zyx=(8, 10, 11), spacing=(0.7, 0.8, 2.5), direction=DIRECTIONS[dname], kind="int")
    uid = write_dicom_series(vol, tmp_path / "s", modality="CT")
    before = sha256(tmp_path / "s")
    back = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-6)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-8)
    assert back.metadata["series_uid"] == uid and back.metadata["modality"] == "CT"
    assert sha256(tmp_path / "s") == before


def test_dicom_folder_with_two_series_picks_largest_and_uid_selects(tmp_path: Path, caplog) -> None:
    big = make_volume(shape_zyx=(9, 10, 11), kind="int", seed=1)
    small = make_volume(shape_zyx=(5, 10, 11), kind="int", seed=2, origin=(0.0, 0.0, 500.0))
    folder = tmp_path / "two"
    # The small series is written first (and its files sort first) so "first found" would pick it.
    uid_small = write_dicom_series(small, folder, prefix="a", modality="MR")
    uid_big = write_dicom_series(big, folder, prefix="b", modality="CT")
    assert uid_small != uid_big
    with caplog.at_level(logging.WARNING, logger="MedSREnhanceLib"):
        chosen = read_volume(folder)
    assert chosen.metadata["series_uid"] == uid_big and chosen.metadata["series_count"] == 2
    np.testing.assert_array_equal(chosen.array, big.array)
    assert any("2 DICOM series" in r.getMessage() and uid_big in r.getMessage() for r in caplog.records)
    other = read_volume(folder, series_uid=uid_small)
    np.testing.assert_array_equal(other.array, small.array)
    assert other.metadata["modality"] == "MR"
    np.testing.assert_allclose(other.origin, small.origin, atol=1e-6)
    with pytest.raises(InputError, match="not in"):
        read_volume(folder, series_uid="1.2.3.4")


def test_dicom_4d_series_refused(tmp_path: Path) -> None:
    """Two time points in one series (same positions): ITK would stack them into a 3D volume with a wrong
    slice spacing; the reader must refuse instead."""
    vol = make_volume(shape_zyx=(6, 8, 9), kind="int")
    uid = write_dicom_series(vol, tmp_path / "d4", prefix="t0")
    write_dicom_series(vol.with_array(vol.array + 1), tmp_path / "d4", prefix="t1", series_uid=uid)
    with pytest.raises(InputError, match="4D"):
        read_volume(tmp_path / "d4")


def test_dicom_missing_slice_refused(tmp_path: Path) -> None:
    vol = make_volume(shape_zyx=(7, 8, 9), kind="int", direction=OBLIQUE)
    write_dicom_series(vol, tmp_path / "gap")
    (tmp_path / "gap" / "slice_0003.dcm").unlink()
    with pytest.raises(InputError, match="uneven slice spacing"):
        read_volume(tmp_path / "gap")


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path)


# ------------------------------------------------------------------------------------------- broken inputs


def write_sitk(path: Path, image: sitk.Image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.99])
def test_truncated_nifti_refused(tmp_path: Path, ext: str, fraction: float) -> None:
    """ITK's NIfTI reader fills a cut-off file with zeros; the library must refuse it instead."""
    full = write_sitk(tmp_path / f"full{ext}", to_sitk_image(geometry_volume("oblique")))
    data = full.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputError, match="truncated|cannot read"):
        read_volume(cut)
    read_volume(full)  # the complete file still reads


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("compress", [True, False])
def test_truncated_or_missing_data_refused_in_every_format(tmp_path: Path, ext: str, compress: bool) -> None:
    full = tmp_path / f"v{ext}"
    sitk.WriteImage(to_sitk_image(geometry_volume("oblique")), str(full), compress)
    data_files = [f for f in tmp_path.iterdir() if f != full]
    target = data_files[0] if data_files else full  # header-plus-data formats: cut the data file
    target.write_bytes(target.read_bytes()[: int(target.stat().st_size * 0.7)])
    with pytest.raises(InputError, match="truncated|cannot read"):
        read_volume(full)
    if data_files:
        target.unlink()
        with pytest.raises(InputError, match="cannot read"):
            read_volume(full)


def test_nifti_check_handles_big_endian_and_extra_bytes(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    arr = np.arange(6 * 7 * 8, dtype=np.float32).reshape(8, 7, 6)
    img = nib.Nifti1Image(arr, np.diag([2.0, 3.0, 4.0, 1.0]), header=nib.Nifti1Header(endianness=">"))
    big = tmp_path / "big.nii"
    nib.save(img, big)
    assert big.read_bytes()[:4] == b"\x00\x00\x01\x5c"  # sizeof_hdr 348, big-endian
    np.testing.assert_array_equal(read_volume(big).array, sitk.GetArrayFromImage(sitk.ReadImage(str(big))))
    padded = tmp_path / "padded.nii.gz"
    with gzip.open(padded, "wb") as fh:
        fh.write(big.read_bytes() + b"\x00" * 16)
    assert read_volume(padded).array.size == arr.size
    short = tmp_path / "short.nii"
    short.write_bytes(big.read_bytes()[:-4])
    with pytest.raises(InputError, match="truncated"):
        read_volume(short)


@pytest.mark.parametrize("content", [b"NRRD0004\nthis is: garbage\nsizes: x y\n\n\x00\x01",
                                     b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4\nencoding: raw\n\n",
                                     b"hello, I am not an image"])
def test_garbage_nrrd_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.nrrd"
    path.write_bytes(content)
    with pytest.raises(InputError, match="cannot read"):
        read_volume(path)


def test_2d_4d_vector_and_empty_refused(tmp_path: Path) -> None:
    two_d = write_sitk(tmp_path / "2d.nrrd", sitk.GetImageFromArray(np.zeros((5, 6), np.float32)))
    with pytest.raises(InputError, match="2D"):
        read_volume(two_d)
    one_slice = write_sitk(tmp_path / "slice.nii.gz", sitk.GetImageFromArray(np.zeros((1, 5, 6), np.float32)))
    with pytest.raises(InputError, match="single slice"):
        read_volume(one_slice)
    four_d = write_sitk(tmp_path / "4d.nii.gz", sitk.Image([4, 5, 6, 3], sitk.sitkFloat32))
    with pytest.raises(InputError, match="4D"):
        read_volume(four_d)
    vector = write_sitk(tmp_path / "rgb.nrrd", sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3))
    with pytest.raises(InputError, match="components"):
        read_volume(vector)
    empty = tmp_path / "empty.mha"
    empty.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 0\nElementType = MET_FLOAT\n"
                     "ElementDataFile = LOCAL\n")
    with pytest.raises(InputError, match="empty"):
        read_volume(empty)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_voxels_refused(tmp_path: Path, bad: float, ext: str, dtype) -> None:
    """Refused at read (NIfTI: ITK's reader would silently turn them into zeros) or by ``validate``."""
    arr = make_volume(shape_zyx=(5, 6, 7)).array.astype(dtype)
    arr[2, 3, 4] = bad
    arr[0, 0, 0] = bad
    path = write_sitk(tmp_path / f"nf{ext}", sitk.GetImageFromArray(arr))
    with pytest.raises(InputError, match="2 NaN or infinite"):
        validate(read_volume(path))


def test_validate_refuses_bad_geometry() -> None:
    vol = make_volume(shape_zyx=(5, 6, 7))
    with pytest.raises(InputError, match="spacing"):
        validate(Volume(vol.array, (1.0, 0.0, 1.0)))
    with pytest.raises(InputError, match="orthonormal"):
        validate(Volume(vol.array, direction=np.diag([1.0, 1.0, 0.5])))
    with pytest.raises(InputError, match="orthonormal"):  # a shear has det 1 but is no rotation
        validate(Volume(vol.array, direction=np.array([[1.0, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])))
    with pytest.raises(InputError, match="empty"):
        validate(Volume(np.zeros((0, 4, 4), np.float32)))
    with pytest.raises(InputError, match="dimensions"):
        validate(Volume(np.zeros((4, 4), np.float32)))
    validate(make_volume(direction=LEFT_HANDED))
    validate(make_volume(direction=OBLIQUE))


def test_write_volumes_is_all_or_nothing(tmp_path, monkeypatch):
    """A failure on the second volume leaves no new file and does not touch an existing first target."""
    import SimpleITK as sitk

    from MedSREnhanceLib.core import io as mio
    from MedSREnhanceLib.core.errors import InputError
    from MedSREnhanceLib.core.volume import Volume

    first = tmp_path / "enhanced.nii.gz"
    first.write_bytes(b"previous result")
    vol = Volume(np.ones((3, 4, 5), np.float32))
    real_write = sitk.WriteImage
    calls = []

    def failing_second(image, path, *args):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_write(image, path, *args)

    monkeypatch.setattr(mio.sitk, "WriteImage", failing_second)
    with pytest.raises(InputError, match="difference.nii.gz"):
        mio.write_volumes([(vol, first), (vol, tmp_path / "difference.nii.gz")])
    assert len(calls) == 2
    assert first.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enhanced.nii.gz"]
