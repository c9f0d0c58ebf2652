"""Every file of the STIR reference folder reads to the array and geometry its README states.

The expected values come from the README's machine-readable JSON (section 4), written by the
real STIR 6.5 / SIRF 3.10 when the files were made; nothing here is a number we computed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from sirf_diffusion.io import read_header, read_image, read_sinogram, write_image, write_sinogram
from sirf_diffusion.physics.geometry import SinogramGeometry, get_scanner

IMAGES = ["disk_image", "mu_disk", "recon_osem", "recon_osem_subiter1", "brain3d"]
SINOGRAMS = [
    "disk_image_fwd_arccorr",
    "disk_image_fwd_arccorr_nlor5",
    "disk_image_fwd_nonarccorr",
    "mu_disk_af",
    "disk_noisy",
    "brain3d_fwd_span1",
    "brain3d_fwd_span3_mash2",
]


IMAGES_2D = [n for n in IMAGES if not n.startswith("brain3d")]
SINOGRAMS_2D = [n for n in SINOGRAMS if not n.startswith("brain3d")]


def test_every_reference_file_in_the_repository_is_covered(stir_reference, stir_reference_json):
    """``tests/data/third_party/stir-reference`` holds exactly the 2D files, each described in its README."""
    assert sorted(stir_reference_json("disk_image.hv")["files"]) == sorted(IMAGES_2D + SINOGRAMS_2D)
    on_disk = sorted(p.stem for p in stir_reference.glob("*.h[vs]"))
    assert on_disk == sorted(IMAGES_2D + SINOGRAMS_2D)


def test_every_3d_reference_file_is_covered(stir_reference_path, stir_reference_json):
    folder = stir_reference_path("brain3d.hv").parent
    names_3d = sorted(set(IMAGES + SINOGRAMS) - set(IMAGES_2D + SINOGRAMS_2D))
    assert set(names_3d) <= set(stir_reference_json("brain3d.hv")["files"])
    assert all((folder / f"{n}.{'hv' if n in IMAGES else 'hs'}").is_file() for n in names_3d)


@pytest.mark.parametrize("name", IMAGES)
def test_reference_image(stir_reference_path, stir_reference_json, name):
    info = stir_reference_json(f"{name}.hv")["files"][name]
    folder = stir_reference_path(info["header"]).parent
    arr, geom = read_image(folder / info["header"])
    assert arr.dtype == np.float32
    assert arr.shape == tuple(info["as_array_shape"]) == geom.shape
    # voxel sizes: STIR stores float32; the header text has 6 significant digits
    np.testing.assert_allclose(geom.voxel_size_mm, info["voxel_size_mm_zyx"], rtol=1e-6)
    assert math.isclose(float(arr.sum(dtype=np.float64)), info["sum"], rel_tol=1e-9)
    assert float(arr.max()) == pytest.approx(info["max"], rel=1e-7)
    assert float(arr.min()) == pytest.approx(info["min"], abs=1e-12)
    assert tuple(np.unravel_index(np.argmax(arr), arr.shape)) == tuple(
        info["argmax_as_array_index"]
    )
    assert int((arr != 0).sum()) == info["nonzero_voxels"]
    for v in info.get("sample_voxels", []):
        assert arr[tuple(v["as_array_index"])] == pytest.approx(v["value"])
        # physical position of the sample voxel from the geometry (x, y relative to the centre)
        iz, iy, ix = v["as_array_index"]
        assert geom.x_mm()[ix] == pytest.approx(v["x_mm"], abs=1e-3)
        assert geom.y_mm()[iy] == pytest.approx(v["y_mm"], abs=1e-3)
    # first pixel offsets and STIR origin kept in the header info
    h = read_header(folder / info["header"])
    np.testing.assert_allclose(
        h.first_pixel_offset_mm(), info["physical_coord_first_voxel_mm_zyx"], atol=1e-3
    )
    np.testing.assert_allclose(h.origin_mm(), info["verification"]["readback_origin"], atol=2e-5)
    # raw decoding agrees (independent check of layout): float32 LE, [z][y][x]
    raw = np.fromfile(folder / info["data"], dtype="<f4").reshape(arr.shape)
    np.testing.assert_array_equal(raw, arr)


def _check_geometry(geom: SinogramGeometry, g: dict) -> None:
    sc = g["scanner"]
    assert geom.scanner.name == sc["name"]
    assert geom.scanner.num_rings == sc["num_rings"]
    assert geom.scanner.num_detectors_per_ring == sc["num_detectors_per_ring"]
    assert geom.scanner.effective_ring_radius_mm == pytest.approx(sc["effective_ring_radius_mm"])
    assert geom.scanner.ring_spacing_mm == pytest.approx(sc["ring_spacing_mm"])
    assert geom.arc_corrected == g["arc_corrected"]
    assert geom.num_views == g["num_views"]
    assert geom.num_tangential == g["num_tangential_poss"]
    assert geom.view_mashing_factor == g["view_mashing_factor"]
    phi = geom.phi()
    assert phi[0] == pytest.approx(g["phi_view0_rad"], abs=1e-7)
    assert phi[1] == pytest.approx(g["phi_view1_rad"], abs=1e-7)
    assert phi[-1] == pytest.approx(g["phi_last_view_rad"], abs=1e-6)
    s = geom.s()
    off = geom.num_tangential // 2
    for t, s_ref in g["s_mm_for_tangential_pos"].items():
        assert s[int(t) + off] == pytest.approx(s_ref, abs=2e-4), f"s(t={t})"
    segs = {seg["segment"]: seg for seg in g["segments"]}
    assert sorted(segs) == sorted(s.number for s in geom.segments)
    assert [s.number for s in geom.segments] == g["as_array_segment_order"]
    assert geom.segment_numbers_file_order == g["file_segment_order"]
    for seg in geom.segments:
        e = segs[seg.number]
        assert (seg.min_ring_difference, seg.max_ring_difference) == (
            e["min_ring_difference"],
            e["max_ring_difference"],
        )
        assert seg.num_axial_positions == e["num_axial_poss"]
        assert geom.sinogram_offset(seg.number) == e["as_array_sinogram_offset"]
        assert seg.m_mm()[0] == pytest.approx(e["m_mm_axial_pos_first"], abs=1e-5)
        assert seg.m_mm()[-1] == pytest.approx(e["m_mm_axial_pos_last"], abs=1e-5)
        assert seg.tan_theta == pytest.approx(e["tantheta"], abs=1e-7)


@pytest.mark.parametrize("name", SINOGRAMS)
def test_reference_sinogram(stir_reference_path, stir_reference_json, name):
    ref = stir_reference_json(f"{name}.hs")
    info = ref["files"][name]
    folder = stir_reference_path(info["header"]).parent
    arr, geom = read_sinogram(folder / info["header"])
    assert arr.dtype == np.float32
    assert (1, *arr.shape) == tuple(info["as_array_shape"])
    _check_geometry(geom, ref["geometries"][info["geometry"]])
    assert math.isclose(float(arr.sum(dtype=np.float64)), info["sum"], rel_tol=1e-9)
    assert float(arr.max()) == pytest.approx(info["max"], rel=1e-7)
    assert float(arr.min()) == pytest.approx(info["min"], rel=1e-6)
    assert (0, *np.unravel_index(np.argmax(arr), arr.shape)) == tuple(
        info["argmax"]["as_array_index"]
    )
    for seg, total in info["sum_per_segment"].items():
        off = geom.sinogram_offset(int(seg))
        n = geom.segment(int(seg)).num_axial_positions
        assert math.isclose(float(arr[off : off + n].sum(dtype=np.float64)), total, rel_tol=1e-9)
    phi, s, m = geom.phi(), geom.s(), geom.m()
    for b in info["special_bins"]:
        _, sino, view, tang = b["as_array_index"]
        assert sino == geom.sinogram_offset(b["segment"]) + b["axial_pos"]
        assert tang == b["tangential_pos"] + geom.num_tangential // 2
        assert arr[sino, view, tang] == pytest.approx(b["value"], rel=1e-7)
        assert phi[view] == pytest.approx(b["phi_rad"], abs=1e-6)
        assert s[tang] == pytest.approx(b["s_mm"], abs=2e-4)
        assert m[sino] == pytest.approx(b["m_mm"], abs=1e-5)
    if info.get("all_integer"):
        assert np.array_equal(arr, np.round(arr))
    assert (folder / info["data"]).stat().st_size == info["data_file_bytes"]


def test_reference_raw_file_order_is_reordered(stir_reference_path):
    """Independent decode of the span-3 file: [segment -1, 0, 1][view][axial][tangential]."""
    arr, geom = read_sinogram(stir_reference_path("brain3d_fwd_span3_mash2.hs"))
    raw = np.fromfile(stir_reference_path("brain3d_fwd_span3_mash2.s"), dtype="<f4")
    V, T = 126, 344
    pos = 0
    for seg, n in ((-1, 11), (0, 15), (1, 11)):
        block = raw[pos : pos + V * n * T].reshape(V, n, T)
        pos += V * n * T
        off = geom.sinogram_offset(seg)
        np.testing.assert_array_equal(arr[off : off + n], block.transpose(1, 0, 2))
    assert pos == raw.size


def test_reference_geometry_equals_package_construction(stir_reference):
    _, g2d = read_sinogram(stir_reference / "disk_image_fwd_arccorr.hs")
    assert g2d == SinogramGeometry.two_d("mMR", arc_corrected=True)
    _, g2n = read_sinogram(stir_reference / "disk_image_fwd_nonarccorr.hs")
    assert g2n == SinogramGeometry.two_d("mMR", arc_corrected=False)


def test_3d_reference_geometry_equals_package_construction(stir_reference_path):
    _, g3 = read_sinogram(stir_reference_path("brain3d_fwd_span3_mash2.hs"))
    assert g3 == SinogramGeometry(
        get_scanner("mMR").with_rings(8), 126, arc_corrected=True, span=3, max_ring_difference=4
    )


def _keys(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        if ":=" in line:
            out.append(re.sub(r"\s+", " ", line.split(":=")[0]).strip())
    return out


@pytest.mark.parametrize("name", ["disk_image", "brain3d"])
def test_written_image_header_has_stirs_keys(stir_reference_path, tmp_path, name):
    header = stir_reference_path(f"{name}.hv")
    arr, geom = read_image(header)
    out = write_image(tmp_path / f"{name}.hv", arr, geom)
    assert _keys(out) == _keys(header)
    arr2, geom2 = read_image(out)
    np.testing.assert_array_equal(arr2, arr)
    assert geom2 == geom
    # same bytes as STIR's data file
    assert (tmp_path / f"{name}.v").read_bytes() == header.with_suffix(".v").read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        "disk_image_fwd_arccorr",
        "disk_image_fwd_nonarccorr",
        "brain3d_fwd_span1",
        "brain3d_fwd_span3_mash2",
    ],
)
def test_written_sinogram_header_has_stirs_keys(stir_reference_path, tmp_path, name):
    header = stir_reference_path(f"{name}.hs")
    arr, geom = read_sinogram(header)
    out = write_sinogram(tmp_path / f"{name}.hs", arr, geom)
    assert _keys(out) == _keys(header)
    # every value STIR wrote is reproduced (the numbers here have short decimal forms)
    ours = read_header(out)
    theirs = read_header(header)
    assert [(k, i, v.replace(" ", "")) for k, i, v in ours.entries] == [
        (k, i, v.replace(" ", "")) for k, i, v in theirs.entries
    ]
    arr2, geom2 = read_sinogram(out)
    np.testing.assert_array_equal(arr2, arr)
    assert geom2 == geom
    assert (tmp_path / f"{name}.s").read_bytes() == header.with_suffix(".s").read_bytes()
