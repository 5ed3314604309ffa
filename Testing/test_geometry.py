"""Output geometry in physical space, checked against SimpleITK's own index -> physical transforms.

The rule (GUIDE section 2): spacing / scale on each index axis, direction unchanged, physical extent unchanged.
New size = round(n * s), halves rounded up, at least 1. The outer edge of voxel 0 (continuous index -0.5) is
always kept, so when n * s is an integer both outer edges are kept exactly; otherwise the far edge moves by
(round(n * s) - n * s) new voxels, i.e. by less than half a new voxel (never more).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DIRECTIONS, LEFT_HANDED, OBLIQUE, make_volume, to_sitk_image, write_dicom_series
from MedSREnhanceLib import cli, enhance, read_volume, write_volume
from MedSREnhanceLib.core.errors import InputError
from MedSREnhanceLib.core.volume import Volume, parse_scale, resized_geometry

SCALES = {"2": (2, 2, 2), "3": (3, 3, 3), "4": (4, 4, 4), "1.5": (1.5, 1.5, 1.5), "1,1,4": (1, 1, 4),
          "1,1,4.33": (1, 1, 4.33), "2.5,1,1.25": (2.5, 1, 1.25)}


def grid_image(size, spacing, origin, direction) -> sitk.Image:
    img = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    return img


def corner(img: sitk.Image, far: tuple[bool, bool, bool]) -> np.ndarray:
    """Physical point of an outer voxel corner: continuous index -0.5 (near) or n - 0.5 (far) per axis."""
    idx = [n - 0.5 if f else -0.5 for n, f in zip(img.GetSize(), far)]
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint(idx))


ALL_CORNERS = [(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)]


def expected_size(n: int, s: float) -> int:
    return max(1, int(math.floor(n * s + 0.5)))


def check_grid(old: sitk.Image, new: sitk.Image, scale, single: bool = False) -> None:
    """The whole rule, in physical space, for two SimpleITK grids. ``single``: ``new`` went through a format
    that stores geometry in float32 (NIfTI pixdim, quaternion and sform), so compare to float32 precision."""
    s = np.asarray(scale, np.float64)
    rtol, dtol = (1e-6, 1e-6) if single else (1e-12, 1e-12)
    assert new.GetSize() == tuple(expected_size(n, f) for n, f in zip(old.GetSize(), s))
    np.testing.assert_allclose(new.GetSpacing(), np.asarray(old.GetSpacing()) / s, rtol=rtol)
    np.testing.assert_allclose(new.GetDirection(), old.GetDirection(), atol=dtol)
    tol = (1e-4 if single else 1e-9) * max(1.0, float(np.abs(old.GetOrigin()).max()))
    # The near outer corner is the same physical point on every axis.
    np.testing.assert_allclose(corner(new, (False,) * 3), corner(old, (False,) * 3), atol=tol)
    # Far corners: the same point when n * s is an integer, else shifted along each axis by the rounding only.
    d = np.asarray(old.GetDirection()).reshape(3, 3)
    for far in ALL_CORNERS:
        shift_index = np.array([(expected_size(n, f) - n * f) if fa else 0.0
                                for n, f, fa in zip(old.GetSize(), s, far)])
        shift = d @ (shift_index * np.asarray(new.GetSpacing()))
        np.testing.assert_allclose(corner(new, far), corner(old, far) + shift, atol=tol)
        assert np.all(np.abs(shift_index) <= 0.5 + 1e-12)
    # Voxel 0's centre moved by (new - old spacing) / 2 along each index axis.
    c_old = np.asarray(old.TransformIndexToPhysicalPoint((0, 0, 0)))
    c_new = np.asarray(new.TransformIndexToPhysicalPoint((0, 0, 0)))
    delta = (np.asarray(new.GetSpacing()) - np.asarray(old.GetSpacing())) / 2
    np.testing.assert_allclose(c_new, c_old + d @ delta, atol=tol)


@pytest.mark.parametrize("scale", list(SCALES.values()), ids=list(SCALES))
@pytest.mark.parametrize("dname", list(DIRECTIONS))
def test_resized_geometry_physical_extent(scale, dname: str) -> None:
    vol = make_volume(direction=DIRECTIONS[dname])
    size, spacing, origin = resized_geometry(vol, scale)
    old = to_sitk_image(vol)
    new = grid_image(size, spacing, origin, vol.direction)
    check_grid(old, new, scale)


@pytest.mark.parametrize("scale", [2, 3, 4, (1, 1, 4), (2, 1, 3)])
def test_integer_scales_keep_both_edges_and_centre(scale) -> None:
    vol = make_volume(direction=LEFT_HANDED)
    s = parse_scale(scale)
    size, spacing, origin = resized_geometry(vol, s)
    old, new = to_sitk_image(vol), grid_image(size, spacing, origin, vol.direction)
    for far in ALL_CORNERS:
        np.testing.assert_allclose(corner(new, far), corner(old, far), atol=1e-9)
    centre_old = old.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in old.GetSize()])
    centre_new = new.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in new.GetSize()])
    np.testing.assert_allclose(centre_new, centre_old, atol=1e-9)


def test_rounding_rule_documented_cases() -> None:
    """n * s = 33 * 1.5 = 49.5 rounds up to 50; 35 * 4.33 = 151.55 -> 152; 34 * 1.5 = 51 exactly."""
    vol = make_volume(shape_zyx=(35, 34, 33))
    assert resized_geometry(vol, (1.5, 1.5, 1.5))[0] == (50, 51, 53)
    assert resized_geometry(vol, (1, 1, 4.33))[0] == (33, 34, 152)
    tiny = make_volume(shape_zyx=(3, 3, 3))
    assert resized_geometry(tiny, (1.1, 1.1, 1.1))[0] == (3, 3, 3)


def test_scale_is_in_index_order() -> None:
    """--scale 1,1,4 upsamples index axis k, which is the FIRST numpy axis of the (k, j, i) array."""
    assert parse_scale("1,1,4") == (1.0, 1.0, 4.0)
    assert parse_scale(2) == (2.0, 2.0, 2.0)
    assert parse_scale(" 1.5, 2 ,3") == (1.5, 2.0, 3.0)
    vol = make_volume(shape_zyx=(7, 8, 9))
    res = enhance(vol, task="sr", model="linear", scale="1,1,4")
    assert res.enhanced.array.shape == (28, 8, 9)
    assert res.enhanced.size == (9, 8, 28)


@pytest.mark.parametrize("bad", [0, -2, "0,1,1", "1,1,-4", "nan", "inf", "1,2", "a,b,c", ""])
def test_bad_scales_refused(bad) -> None:
    with pytest.raises(InputError):
        parse_scale(bad)


def linear_field(vol: Volume, coeffs=(0.7, -1.3, 0.4), const=5.0) -> Volume:
    """A volume whose voxel values are an affine function of the physical position of their centres."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in vol.array.shape], indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(np.float64)
    pts = vol.index_to_physical(idx)
    return vol.with_array((pts @ np.asarray(coeffs) + const).astype(np.float32))


def physical_centres(img: sitk.Image) -> np.ndarray:
    """Physical centre of every voxel of ``img`` (k, j, i, 3), computed from SimpleITK's own transform."""
    size = img.GetSize()
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    sp, org = np.asarray(img.GetSpacing()), np.asarray(img.GetOrigin())
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(np.float64)
    pts = org + (idx * sp) @ d.T
    # Spot-check the vectorised formula against SimpleITK itself.
    for probe in [(0, 0, 0), (size[0] - 1, 1, size[2] - 1), (1, size[1] - 1, 2)]:
        np.testing.assert_allclose(pts[probe[2], probe[1], probe[0]], img.TransformIndexToPhysicalPoint(probe),
                                   atol=1e-9)
    return pts


@pytest.mark.parametrize("scale", [(2, 2, 2), (1.5, 1.5, 1.5), (1, 1, 4), (1, 1, 4.33), (3, 3, 3)],
                         ids=["2", "1.5", "1,1,4", "1,1,4.33", "3"])
@pytest.mark.parametrize("dname", ["oblique", "left_handed"])
def test_enhance_linear_reproduces_affine_field(scale, dname: str) -> None:
    """Trilinear SR of an affine intensity field is exact inside the hull of the input voxel centres, so any
    half-voxel or axis-order slip in the output grid shows up as a value error, not only as a header mismatch."""
    vol = linear_field(make_volume(shape_zyx=(13, 12, 11), direction=DIRECTIONS[dname]))
    res = enhance(vol, task="sr", model="linear", scale=scale)
    out = to_sitk_image(res.enhanced)
    check_grid(to_sitk_image(vol), out, scale)
    pts = physical_centres(out)
    d = vol.direction
    cont = ((pts - np.asarray(vol.origin)) @ d) / np.asarray(vol.spacing)  # continuous index in the input
    inside = np.all((cont >= -1e-6) & (cont <= np.asarray(vol.size) - 1 + 1e-6), axis=-1)
    assert inside.mean() > 0.5
    expected = pts @ np.asarray((0.7, -1.3, 0.4)) + 5.0
    np.testing.assert_allclose(res.enhanced.array[inside], expected[inside], atol=2e-3)
    # The difference map is on the output grid.
    assert res.difference.array.shape == res.enhanced.array.shape
    assert res.difference.spacing == res.enhanced.spacing and res.difference.origin == res.enhanced.origin


@pytest.mark.parametrize("model", ["linear", "bspline", "sinc"])
@pytest.mark.parametrize("scale", [2, (1, 1, 4), 1.5, (1, 1, 4.33)], ids=["2", "1,1,4", "1.5", "1,1,4.33"])
def test_enhance_classical_sr_grids(model: str, scale) -> None:
    vol = make_volume(shape_zyx=(11, 12, 13), direction=OBLIQUE)
    res = enhance(vol, task="sr", model=model, scale=scale)
    check_grid(to_sitk_image(vol), to_sitk_image(res.enhanced), parse_scale(scale))
    assert res.enhanced.array.dtype == np.float32 and np.all(np.isfinite(res.enhanced.array))
    assert res.scale == parse_scale(scale)


@pytest.mark.parametrize("model", ["gaussian", "anisotropic-diffusion", "nlmeans"])
def test_denoise_keeps_the_grid_exactly(model: str) -> None:
    vol = make_volume(shape_zyx=(11, 12, 13), direction=LEFT_HANDED)
    res = enhance(vol, task="denoise", model=model)
    assert res.enhanced.array.shape == vol.array.shape
    assert res.enhanced.spacing == vol.spacing and res.enhanced.origin == vol.origin
    np.testing.assert_array_equal(res.enhanced.direction, vol.direction)


# ------------------------------------------------------------------------------------- through `medsr enhance`


def sitk_grid_of_file(path: Path) -> sitk.Image:
    """Geometry read straight with SimpleITK (not through the library)."""
    p = Path(path)
    if p.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(p)))
        return reader.Execute()
    return sitk.ReadImage(str(p))


def make_input(tmp_path: Path, fmt: str, dname: str) -> Path:
    vol = make_volume(shape_zyx=(9, 10, 11), spacing=(0.8, 0.9, 3.0), direction=DIRECTIONS[dname], kind="int")
    if fmt == "dicom":
        folder = tmp_path / "series"
        write_dicom_series(vol, folder)
        return folder
    path = tmp_path / f"input.{fmt}"
    sitk.WriteImage(to_sitk_image(vol), str(path))
    return path


CLI_CASES = [(fmt, dname) for fmt in ("nii.gz", "nrrd") for dname in ("identity", "oblique", "left_handed")] + [
    ("dicom", "identity"), ("dicom", "oblique")]  # DICOM cannot hold a left-handed grid


@pytest.mark.parametrize("scale", ["2", "1,1,4", "1.5", "1,1,4.33"])
@pytest.mark.parametrize("fmt,dname", CLI_CASES)
def test_cli_main_output_grid(tmp_path: Path, fmt: str, dname: str, scale: str) -> None:
    src = make_input(tmp_path, fmt, dname)
    out = tmp_path / "out.nrrd"
    rc = cli.main(["enhance", str(src), str(out), "--scale", scale, "--model", "linear", "--quiet"])
    assert rc == 0
    check_grid(sitk_grid_of_file(src), sitk.ReadImage(str(out)), parse_scale(scale))


@pytest.mark.parametrize("fmt,dname,scale", [("nii.gz", "oblique", "1,1,4"), ("nrrd", "left_handed", "1.5"),
                                             ("dicom", "oblique", "2")])
def test_medsr_subprocess_output_grid(tmp_path: Path, run_medsr, fmt: str, dname: str, scale: str) -> None:
    src = make_input(tmp_path, fmt, dname)
    out = tmp_path / "out.nii.gz"
    proc = run_medsr("enhance", src, out, "--scale", scale, "--model", "bspline", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_grid(sitk_grid_of_file(src), sitk.ReadImage(str(out)), parse_scale(scale), single=True)


def test_write_then_read_keeps_resized_grid(tmp_path: Path) -> None:
    """An enhanced volume written and read back keeps its exact grid (no origin copied from the input)."""
    vol = make_volume(direction=OBLIQUE)
    res = enhance(vol, task="sr", model="linear", scale=(1, 1, 2))
    path = write_volume(res.enhanced, tmp_path / "x.nrrd")
    back = read_volume(path)
    np.testing.assert_allclose(back.origin, res.enhanced.origin, atol=1e-9)
    assert not np.allclose(back.origin, vol.origin)
    np.testing.assert_allclose(back.spacing, res.enhanced.spacing, rtol=1e-12)
