"""Interfile, NIfTI and PETRIC-folder I/O: round trips, header parsing, number formats, errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from sirf_diffusion.io import (
    Case,
    InterfileError,
    InterfileHeader,
    additive_to_background,
    background_to_additive,
    nifti_affine,
    read_case,
    read_header,
    read_image,
    read_nifti,
    read_sinogram,
    standardise_key,
    write_case,
    write_image,
    write_nifti,
    write_sinogram,
)
from sirf_diffusion.physics.geometry import ImageGeometry, Scanner, SinogramGeometry, get_scanner

SMALL = Scanner(
    "Test ring",
    num_rings=4,
    num_detectors_per_ring=32,
    inner_ring_radius_mm=60.0,
    average_depth_of_interaction_mm=1.5,
    ring_spacing_mm=3.3,
    default_bin_size_mm=3.0,
    max_num_non_arccorrected_bins=21,
    default_num_arccorrected_bins=23,
    intrinsic_azimuthal_tilt_rad=-0.0933,
)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32) * 10


GEOMETRIES = {
    "2d_arc": SinogramGeometry(SMALL.with_rings(1), 16, arc_corrected=True),
    "2d_nonarc": SinogramGeometry(SMALL.with_rings(1), 16, arc_corrected=False),
    "3d_span1": SinogramGeometry(SMALL, 16, arc_corrected=True, span=1, max_ring_difference=2),
    "3d_span3_mash2": SinogramGeometry(
        SMALL, 8, arc_corrected=False, span=3, max_ring_difference=3
    ),
    "3d_span3_custom_bin": SinogramGeometry(
        SMALL, 4, arc_corrected=True, span=3, max_ring_difference=2, tangential_sampling_mm=2.75
    ),
    "mMR_span3": SinogramGeometry(
        get_scanner("mMR").with_rings(8),
        63,
        num_tangential=30,
        arc_corrected=True,
        span=3,
        max_ring_difference=4,
    ),
}


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_sinogram_round_trip(tmp_path, name):
    geom = GEOMETRIES[name]
    y = _rand(geom.shape)
    out = write_sinogram(tmp_path / "y.hs", y, geom)
    assert out == tmp_path / "y.hs" and (tmp_path / "y.s").stat().st_size == y.size * 4
    y2, geom2 = read_sinogram(out)
    np.testing.assert_array_equal(y2, y)
    assert geom2 == geom
    assert geom2.scanner == geom.scanner  # incl. name and tilt (written in degrees)
    assert [s.number for s in geom2.segments] == [s.number for s in geom.segments]
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_sinogram_file_order_is_stirs(tmp_path):
    """The .s file holds [segment increasing][view][axial][tangential] (manual layout)."""
    geom = GEOMETRIES["3d_span1"]
    V, T = geom.num_views, geom.num_tangential
    y = np.empty(geom.shape, np.float32)
    for seg in geom.segments:  # value encodes (segment, axial, view, tangential)
        off = geom.sinogram_offset(seg.number)
        a = np.arange(seg.num_axial_positions)[:, None, None]
        y[off : off + seg.num_axial_positions] = (
            seg.number * 1000
            + a * 100
            + np.arange(V)[None, :, None]
            + np.arange(T)[None, None, :] / 100
        )
    write_sinogram(tmp_path / "y.hs", y, geom)
    raw = np.fromfile(tmp_path / "y.s", "<f4")
    expected = []
    for num in (-2, -1, 0, 1, 2):
        n = geom.segment(num).num_axial_positions
        a = np.arange(n)[None, :, None]
        expected.append(
            (num * 1000 + a * 100 + np.arange(V)[:, None, None] + np.arange(T)[None, None, :] / 100)
            .astype(np.float32)
            .ravel()
        )
    np.testing.assert_array_equal(raw, np.concatenate(expected))


def test_image_round_trip(tmp_path):
    geom = ImageGeometry((5, 7, 6), (2.5, 1.75, 1.25))
    x = _rand(geom.shape)
    write_image(tmp_path / "x.hv", x, geom, origin_mm=(1.0, 0.0, 0.0))
    x2, geom2 = read_image(tmp_path / "x.hv")
    np.testing.assert_array_equal(x2, x)
    assert geom2 == geom
    h = read_header(tmp_path / "x.hv")
    # STIR: first index (0, -(ny//2), -(nx//2)); first pixel offset = voxel * first index + origin
    assert h.first_pixel_offset_mm() == pytest.approx((1.0, -3 * 1.75, -3 * 1.25))
    assert h.origin_mm() == pytest.approx((1.0, 0.0, 0.0))


def test_image_round_trip_torch_float64_bigendian(tmp_path):
    torch = pytest.importorskip("torch")
    geom = ImageGeometry((2, 3, 4), (1.0, 2.0, 3.0))
    x = torch.rand(geom.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    write_image(tmp_path / "x", x, geom, number_format="float64", byte_order="big")
    h = read_header(tmp_path / "x.hv")
    assert h.number_dtype() == np.dtype(">f8")
    x2, _ = read_image(tmp_path / "x.hv")
    assert x2.dtype == np.float64
    np.testing.assert_array_equal(x2, x.numpy())


def test_write_is_atomic(tmp_path, monkeypatch):
    geom = ImageGeometry((1, 2, 2), (1.0, 1.0, 1.0))
    write_image(tmp_path / "x.hv", np.ones(geom.shape), geom)
    before = (tmp_path / "x.v").read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "x.hv", np.zeros(geom.shape), geom)
    monkeypatch.undo()
    assert (tmp_path / "x.v").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["x.hv", "x.v"]


# --------------------------------------------------------------------------- header parsing
def test_standardise_key_matches_stir():
    assert standardise_key("!Number of  bytes_per_pixel ") == "number of bytes per pixel"
    assert standardise_key("!INTERFILE  ") == "interfile"


def _image_header(
    data: str, nx=3, ny=2, nz=1, fmt="float", nbytes=4, order="LITTLEENDIAN", extra=""
):
    return (
        f"!INTERFILE :=\n; a comment\n!name of data file := {data}\n"
        f"IMAGEDATA BYTE ORDER := {order}\n!Number_Format := {fmt}\n"
        f"!number of bytes per pixel := {nbytes}\nnumber of dimensions := 3\n"
        f"!matrix size[1] := {nx}\n!MATRIX SIZE [2]:= {ny}\n!matrix size [3] := {nz}\n"
        f"scaling factor (mm/pixel) [1] := 2\nscaling factor (mm/pixel) [2] := 2\n"
        f"scaling factor (mm/pixel) [3] := 3\n{extra}!END OF INTERFILE :=\nignored := 1\n"
    )


@pytest.mark.parametrize(
    "fmt,nbytes,dtype",
    [
        ("signed integer", 2, "i2"),
        ("unsigned integer", 1, "u1"),
        ("unsigned integer", 2, "u2"),
        ("signed integer", 4, "i4"),
        ("float", 8, "f8"),
        ("float", 4, "f4"),
    ],
)
@pytest.mark.parametrize("order", ["LITTLEENDIAN", "BIGENDIAN"])
def test_read_number_formats_offset_and_scale(tmp_path, fmt, nbytes, dtype, order):
    values = np.arange(6).reshape(1, 2, 3) * 3 + 1
    endian = "<" if order == "LITTLEENDIAN" else ">"
    with open(tmp_path / "d.v", "wb") as f:
        f.write(b"\x07" * 10)  # 10-byte offset
        values.astype(endian + dtype).tofile(f)
    extra = "data offset in bytes[1] := 10\nimage scaling factor[1] := 0.5\n"
    (tmp_path / "d.hv").write_text(
        _image_header("d.v", fmt=fmt, nbytes=nbytes, order=order, extra=extra)
    )
    arr, geom = read_image(tmp_path / "d.hv")
    np.testing.assert_allclose(arr, values * 0.5)
    assert arr.dtype == (np.float64 if dtype == "f8" else np.float32)
    assert geom == ImageGeometry((1, 2, 3), (3.0, 2.0, 2.0))


def test_header_lookup_helpers():
    h = InterfileHeader.parse(
        "!INTERFILE:=\nkey_a := 1\n!Key A := 2\nlist := { 3, 4,5}\nvec [2] := x\n"
    )
    assert h.get("KEY A") == "2"  # later wins
    assert h.get_int_list("list") == [3, 4, 5]
    assert h.get("vec", 2) == "x" and not h.has("vec")
    with pytest.raises(InterfileError, match="lacks the key 'missing'"):
        h.get("missing")
    with pytest.raises(InterfileError, match="expected an integer"):
        InterfileHeader.parse("!INTERFILE:=\nn := 2.5\n").get_int("n")


# --------------------------------------------------------------------------- errors
def test_missing_header_and_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="header not found"):
        read_image(tmp_path / "nope.hv")
    (tmp_path / "d.hv").write_text(_image_header("absent.v"))
    with pytest.raises(FileNotFoundError, match="absent.v"):
        read_image(tmp_path / "d.hv")


def test_truncated_and_too_long_data(tmp_path):
    geom = GEOMETRIES["3d_span1"]
    write_sinogram(tmp_path / "y.hs", _rand(geom.shape), geom)
    data = (tmp_path / "y.s").read_bytes()
    (tmp_path / "y.s").write_bytes(data[:-4])
    with pytest.raises(InterfileError, match="truncated"):
        read_sinogram(tmp_path / "y.hs")
    (tmp_path / "y.s").write_bytes(data + b"\0\0\0\0")
    with pytest.raises(InterfileError, match="too long"):
        read_sinogram(tmp_path / "y.hs")


def test_corrupt_headers(tmp_path):
    (tmp_path / "a.hv").write_text("hello := world\n")
    with pytest.raises(InterfileError, match="not an Interfile header"):
        read_image(tmp_path / "a.hv")
    (tmp_path / "b.hv").write_text("!INTERFILE :=\nthis line has no assignment\n")
    with pytest.raises(InterfileError, match="expected 'key := value'"):
        read_image(tmp_path / "b.hv")
    (tmp_path / "c.v").write_bytes(b"\0" * 6)
    (tmp_path / "c.hv").write_text(_image_header("c.v", fmt="ascii", nbytes=1))
    with pytest.raises(InterfileError, match="unsupported number format"):
        read_image(tmp_path / "c.hv")
    (tmp_path / "d.hv").write_text(
        _image_header("c.v", fmt="float", nbytes=4, order="MIDDLEENDIAN")
    )
    with pytest.raises(InterfileError, match="byte order"):
        read_image(tmp_path / "d.hv")
    (tmp_path / "e.hv").write_text(_image_header("c.v", extra="number of time frames := 2\n"))
    with pytest.raises(InterfileError, match="time frames"):
        read_image(tmp_path / "e.hv")


def _edit_header(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_sinogram_header_errors(tmp_path):
    geom = GEOMETRIES["3d_span3_mash2"]
    write_sinogram(tmp_path / "y.hs", _rand(geom.shape), geom)
    hs = tmp_path / "y.hs"
    original = hs.read_text()
    _edit_header(hs, "number of dimensions := 4", "number of dimensions := 5")
    with pytest.raises(InterfileError, match="TOF"):
        read_sinogram(hs)
    hs.write_text(original)
    _edit_header(
        hs,
        "maximum ring difference per segment := { -2,1,3}",
        "maximum ring difference per segment := { -2,1,2}",
    )
    with pytest.raises(InterfileError, match="segment 1"):
        read_sinogram(hs)
    hs.write_text(original)
    _edit_header(
        hs,
        "minimum ring difference per segment := { -3,-1,2}",
        "minimum ring difference per segment := { -3,-1}",
    )
    with pytest.raises(InterfileError, match="per-segment tables"):
        read_sinogram(hs)
    hs.write_text(original)
    _edit_header(hs, "applied corrections := {None}", "applied corrections := {normalisation}")
    with pytest.raises(InterfileError, match="applied corrections"):
        read_sinogram(hs)
    hs.write_text(original)
    _edit_header(hs, "Number of rings                          := 4", "Number of rings := 0")
    with pytest.raises(InterfileError, match="scanner"):
        read_sinogram(hs)


def test_write_rejects_bad_input(tmp_path):
    geom = GEOMETRIES["2d_arc"]
    with pytest.raises(ValueError, match="shape"):
        write_sinogram(tmp_path / "y.hs", np.zeros((1, 3, 4)), geom)
    bad = np.zeros(geom.shape)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InterfileError, match="NaN"):
        write_sinogram(tmp_path / "y.hs", bad, geom)
    with pytest.raises(InterfileError, match="must end in .hs"):
        write_sinogram(tmp_path / "y.nii", np.zeros(geom.shape), geom)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_sinogram(tmp_path / "no" / "y.hs", np.zeros(geom.shape), geom)
    img = ImageGeometry((1, 2, 2), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "x.hv", np.zeros((1, 2, 3)), img)


def test_reading_sinogram_as_image_is_refused(tmp_path):
    geom = GEOMETRIES["2d_arc"]
    write_sinogram(tmp_path / "y.hs", np.zeros(geom.shape), geom)
    with pytest.raises(InterfileError, match="PET data type"):
        read_image(tmp_path / "y.hs")


# --------------------------------------------------------------------------- NIfTI
def test_nifti_round_trip_and_orientation(tmp_path):
    nib = pytest.importorskip("nibabel")
    geom = ImageGeometry((4, 6, 5), (2.0, 1.5, 1.25))
    x = _rand(geom.shape)
    write_nifti(tmp_path / "x.nii.gz", x, geom)
    x2, geom2 = read_nifti(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_allclose(geom2.voxel_size_mm, geom.voxel_size_mm, rtol=1e-6)
    img = nib.load(str(tmp_path / "x.nii.gz"))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "I")
    # voxel (iz, iy, ix) -> RAS = (-x, -y, -z) with STIR's centred coordinates
    iz, iy, ix = 3, 1, 4
    ras = img.affine @ np.array([ix, iy, iz, 1.0])
    np.testing.assert_allclose(
        ras[:3], [-geom.x_mm()[ix], -geom.y_mm()[iy], -geom.z_mm()[iz]], atol=1e-5
    )
    np.testing.assert_allclose(nifti_affine(geom), img.affine, atol=1e-6)


def test_nifti_reads_ras_file_reoriented(tmp_path):
    """A RAS-stored file is flipped into the package's LPI layout."""
    nib = pytest.importorskip("nibabel")
    data_ras = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # (i=R, j=A, k=S)
    nib.save(nib.Nifti1Image(data_ras, np.diag([1.0, 2.0, 3.0, 1.0])), str(tmp_path / "r.nii"))
    arr, geom = read_nifti(tmp_path / "r.nii")
    assert arr.shape == (4, 3, 2) and geom.voxel_size_mm == pytest.approx((3.0, 2.0, 1.0))
    # package [z, y, x] with x -> L, y -> P, z -> I: all three RAS axes flipped, then transposed
    np.testing.assert_array_equal(arr, data_ras[::-1, ::-1, ::-1].transpose(2, 1, 0))


def test_nifti_errors(tmp_path):
    nib = pytest.importorskip("nibabel")
    with pytest.raises(FileNotFoundError):
        read_nifti(tmp_path / "absent.nii")
    (tmp_path / "bad.nii").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="cannot read NIfTI"):
        read_nifti(tmp_path / "bad.nii")
    c, s = math.cos(0.3), math.sin(0.3)
    oblique = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), oblique), str(tmp_path / "o.nii"))
    with pytest.raises(ValueError, match="oblique"):
        read_nifti(tmp_path / "o.nii")


def test_nifti_mni_template_offline():
    """nilearn ships the MNI152 template: it reads as an LPI [z, y, x] image, values preserved."""
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    nib = pytest.importorskip("nibabel")
    path = (
        Path(nilearn_datasets.__file__).parent
        / "data"
        / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    if not path.is_file():
        pytest.skip("nilearn's MNI152 template file not found")
    img = nib.load(str(path))
    arr, geom = read_nifti(path)
    assert arr.shape == img.shape[::-1]
    np.testing.assert_allclose(geom.voxel_size_mm, np.abs(np.diag(img.affine)[:3])[::-1], rtol=1e-6)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    # RAS storage -> package LPI: every axis flipped, then [z, y, x]
    data = np.asarray(img.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(arr[:, :, 0], data[-1, ::-1, ::-1].T)


# --------------------------------------------------------------------------- PETRIC
def _case(seed: int = 0) -> Case:
    geom = GEOMETRIES["3d_span3_mash2"]
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.5, 2.0, geom.shape).astype(np.float32)
    m[0, 0, :3] = 0  # detector gap
    b = rng.uniform(0.1, 1.0, geom.shape).astype(np.float32)
    b[m == 0] = 0
    ig = ImageGeometry((7, 8, 8), (1.65, 2.0, 2.0))
    return Case(
        prompts=rng.poisson(3.0, geom.shape).astype(np.float32),
        multiplicative=m,
        additive=b,
        sinogram_geometry=geom,
        image_geometry=ig,
        reference=_rand(ig.shape, 1),
        osem=_rand(ig.shape, 2),
        masks={
            "whole_object": np.ones(ig.shape, np.float32),
            "background": np.zeros(ig.shape, np.float32),
            "sphere_1": np.eye(8, dtype=np.float32)[None].repeat(7, 0),
        },
        extra={"kappa": _rand(ig.shape, 3), "mu_map": _rand(ig.shape, 4)},
        penalisation_factor=1 / 700,
    )


def test_petric_case_round_trip(tmp_path):
    case = _case()
    write_case(tmp_path / "case", case)
    names = sorted(
        str(p.relative_to(tmp_path / "case")) for p in (tmp_path / "case").rglob("*.h[sv]")
    )
    assert names == [
        "OSEM_image.hv",
        "PETRIC/VOI_background.hv",
        "PETRIC/VOI_sphere_1.hv",
        "PETRIC/VOI_whole_object.hv",
        "PETRIC/reference_image.hv",
        "additive_term.hs",
        "kappa.hv",
        "mu_map.hv",
        "mult_factors.hs",
        "prompts.hs",
    ]
    # PETRIC's additive term is before multiplication: a = b / m, and 0 where m == 0
    a, _ = read_sinogram(tmp_path / "case" / "additive_term.hs")
    m = case.multiplicative
    np.testing.assert_allclose(a[m > 0], (case.additive / np.where(m > 0, m, 1))[m > 0], rtol=1e-6)
    assert (a[m == 0] == 0).all()
    back = read_case(tmp_path / "case")
    np.testing.assert_array_equal(back.prompts, case.prompts)
    np.testing.assert_array_equal(back.multiplicative, case.multiplicative)
    np.testing.assert_allclose(back.additive, case.additive, rtol=1e-6)
    assert (
        back.sinogram_geometry == case.sinogram_geometry
        and back.image_geometry == case.image_geometry
    )
    np.testing.assert_array_equal(back.reference, case.reference)
    np.testing.assert_array_equal(back.osem, case.osem)
    assert sorted(back.masks) == sorted(case.masks) and sorted(back.extra) == sorted(case.extra)
    for k in case.masks:
        np.testing.assert_array_equal(back.masks[k], case.masks[k])
    assert back.penalisation_factor == pytest.approx(1 / 700)


def test_petric_additive_conversion_and_guard():
    m = np.array([2.0, 0.0, 0.5])
    a = np.array([1.0, 3.0, 4.0])
    b = additive_to_background(a, m)
    np.testing.assert_array_equal(b, [2.0, 0.0, 2.0])
    np.testing.assert_array_equal(background_to_additive(b, m), [1.0, 0.0, 4.0])
    with pytest.raises(ValueError, match="multiplicative factor 0"):
        background_to_additive(np.array([1.0, 1.0, 1.0]), m)
    np.testing.assert_array_equal(
        background_to_additive(np.array([1.0, 1.0, 1.0]), m, on_unrepresentable="drop"),
        [0.5, 0.0, 2.0],
    )


def test_petric_missing_and_mismatched_files(tmp_path):
    case = _case()
    write_case(tmp_path / "c", case)
    (tmp_path / "c" / "mult_factors.hs").unlink()
    with pytest.raises(FileNotFoundError, match="mult_factors.hs"):
        read_case(tmp_path / "c")
    write_case(tmp_path / "d", case)
    other = ImageGeometry((7, 8, 8), (1.65, 2.0, 2.5))
    write_image(tmp_path / "d" / "t1.hv", np.zeros(other.shape), other)
    with pytest.raises(InterfileError, match="t1.hv"):
        read_case(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_case(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="negative"):
        Case(
            prompts=-case.prompts - 1,
            multiplicative=case.multiplicative,
            additive=case.additive,
            sinogram_geometry=case.sinogram_geometry,
            image_geometry=case.image_geometry,
        )
