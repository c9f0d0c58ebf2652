"""The matrix-free projector path against the stored-matrix path (same numbers, exact adjoint).

Oracles: the matrix path (itself checked against STIR's files in
``test_stir_reference_projections.py``) on the STIR reference geometries; adjointness in float64;
bitwise equality of view subsets with the matching rows of the full projection.  Small
``chunk_bytes`` force several view chunks and axial chunks.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from sirf_diffusion.physics import raytrace_numba
from sirf_diffusion.physics.geometry import ImageGeometry, Scanner, SinogramGeometry, get_scanner
from sirf_diffusion.physics.projector import MEMORY_ENV, MODE_ENV, RayTracingProjector

VX = 2.0862600803375244
MMR8 = get_scanner("mMR").with_rings(8)
#: the geometries of the STIR reference files (test_stir_reference_projections.py)
REFERENCE = {
    "2D_nonarccorr": (SinogramGeometry.two_d("mMR", arc_corrected=False),
                      ImageGeometry((1, 128, 128), (4.0625, VX, VX))),
    "3D_span1": (SinogramGeometry(MMR8, 252, span=1, max_ring_difference=2),
                 ImageGeometry((15, 128, 128), (2.03125, VX, VX))),
    "3D_span3_mash2": (SinogramGeometry(MMR8, 126, span=3, max_ring_difference=4),
                       ImageGeometry((15, 128, 128), (2.03125, VX, VX))),
}
TINY = Scanner(name="tiny", num_rings=4, num_detectors_per_ring=64, inner_ring_radius_mm=150.0,
               average_depth_of_interaction_mm=0.0, ring_spacing_mm=4.0, default_bin_size_mm=2.0,
               max_num_non_arccorrected_bins=40, default_num_arccorrected_bins=40)
TINY_IMG = ImageGeometry((7, 24, 24), (2.0, 2.0, 2.0))
SMALL_CHUNKS = 200_000          # bytes: a few views per chunk, a few axial positions per chunk
NUMBA = pytest.param("numba", marks=pytest.mark.skipif(not raytrace_numba.available(),
                                                        reason="numba is not installed"))
KERNELS = [NUMBA, "torch"]


def _rand(shape, seed=0, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@lru_cache(maxsize=None)
def _matrix(case: str) -> RayTracingProjector:
    return RayTracingProjector(*REFERENCE[case], mode="matrix")


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_matrix_free_equals_matrix_on_the_stir_reference_cases(case, kernels):
    matrix = _matrix(case)
    free = RayTracingProjector(*REFERENCE[case], mode="matrix-free", kernels=kernels,
                               chunk_bytes=64 * 2 ** 20)
    free._elements = matrix.elements()            # trace once for both (same numbers)
    assert (matrix.implementation, free.implementation) == ("matrix", "matrix-free")
    x = _rand(matrix.image_shape, 1, torch.float32)
    y_ref = matrix.forward(x)
    assert _rel_l2(free.forward(x), y_ref) < 1e-5
    y = _rand(matrix.data_shape, 2, torch.float32)
    assert _rel_l2(free.adjoint(y), matrix.adjoint(y)) < 1e-5
    views = torch.arange(3, matrix.data_shape[1], 7)             # an OSEM subset
    assert _rel_l2(free.forward(x, views), y_ref[:, views]) < 1e-5
    assert _rel_l2(free.adjoint(y[:, views], views), matrix.adjoint(y[:, views], views)) < 1e-5


def _tiny(kind: str, **kw) -> RayTracingProjector:
    geoms = {"span1": SinogramGeometry(TINY, 32, span=1, max_ring_difference=3),
             "span3": SinogramGeometry(TINY, 16, span=3, max_ring_difference=3),
             "nonarc": SinogramGeometry(TINY, 32, arc_corrected=False, span=1,
                                        max_ring_difference=2),
             "thick": SinogramGeometry(TINY, 32, span=1, max_ring_difference=3)}
    # "thick": planes as thick as a ring, so that an oblique segment's axial positions are
    # consecutive planes (one axial ray, n = 1); the others have half-ring planes (n = 2)
    image = ImageGeometry((4, 24, 24), (4.0, 2.0, 2.0)) if kind == "thick" else TINY_IMG
    return RayTracingProjector(geoms[kind], image, **kw)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind,num_rays", [("span1", 1), ("span3", 1), ("nonarc", 1),
                                           ("span1", 3), ("thick", 1)])
def test_matrix_free_adjointness_float64(kind, num_rays, kernels):
    P = _tiny(kind, num_rays=num_rays, mode="matrix-free", chunk_bytes=SMALL_CHUNKS,
              kernels=kernels)
    x = _rand((2, *P.image_shape), 3)
    y = _rand((2, *P.data_shape), 4)
    lhs, rhs = float((P.forward(x) * y).sum()), float((x * P.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    views = torch.tensor([5, 0, 9])                             # unsorted subset
    ys = y[..., views, :]
    lhs, rhs = float((P.forward(x, views) * ys).sum()), float((x * P.adjoint(ys, views)).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


@pytest.mark.parametrize("kind,num_rays", [("span1", 1), ("span3", 1), ("nonarc", 1),
                                           ("span1", 3), ("thick", 1)])
def test_matrix_free_float64_equals_matrix_for_every_kernel_and_chunking(kind, num_rays):
    matrix = _tiny(kind, num_rays=num_rays, mode="matrix")
    small = _tiny(kind, num_rays=num_rays, mode="matrix-free", chunk_bytes=SMALL_CHUNKS,
                  kernels="torch")
    large = _tiny(kind, num_rays=num_rays, mode="matrix-free", kernels="torch")
    free = [small, large]
    if raytrace_numba.available():
        free.append(_tiny(kind, num_rays=num_rays, mode="matrix-free", kernels="numba"))
    x = _rand((2, *matrix.image_shape), 5)
    y = _rand((2, *matrix.data_shape), 6)
    for P in free:
        torch.testing.assert_close(P.forward(x), matrix.forward(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(P.adjoint(y), matrix.adjoint(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernels", KERNELS)
def test_matrix_free_gradient_is_the_adjoint(kernels):
    P = _tiny("span3", mode="matrix-free", chunk_bytes=SMALL_CHUNKS, kernels=kernels)
    x = _rand(P.image_shape, 7).requires_grad_(True)
    w = _rand(P.data_shape, 8)
    (P.forward(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, P.adjoint(w), rtol=1e-12, atol=1e-12)


def test_auto_mode_follows_the_memory_budget(monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    P = _tiny("span1")
    need = P.estimated_matrix_bytes()
    assert need > 0
    assert _tiny("span1", cache_bytes=2 * need).implementation == "matrix"    # + subset copies
    assert _tiny("span1", cache_bytes=2 * need - 1).implementation == "matrix-free"
    monkeypatch.setenv(MEMORY_ENV, "0")
    assert _tiny("span1").implementation == "matrix-free"
    monkeypatch.setenv(MODE_ENV, "matrix")                      # explicit override wins
    assert _tiny("span1").implementation == "matrix"
    assert _tiny("span1", mode="matrix-free").implementation == "matrix-free"
    # direct planes only: both paths apply the same transaxial matrix; auto takes it
    monkeypatch.delenv(MODE_ENV)
    stacked = RayTracingProjector(SinogramGeometry(TINY, 32), TINY_IMG)
    assert stacked.implementation == "matrix"


def test_estimate_is_close_to_the_cached_matrices():
    P = _tiny("span1", mode="matrix")
    x = _rand(P.image_shape, 9, torch.float32)
    P.forward(x)
    cached = sum(v[0]._nnz() for k, v in P._cache.items() if k[0] == "ext")
    est = P.estimated_matrix_bytes(torch.float32) / 16            # 2 x (4 + 4) bytes per nnz
    assert abs(est - cached) < 0.25 * cached


def test_bad_mode_and_budget_name_the_setting(monkeypatch):
    with pytest.raises(ValueError, match="mode must be one of"):
        _tiny("span1", mode="sparse")
    with pytest.raises(ValueError, match="chunk_bytes"):
        _tiny("span1", chunk_bytes=0)
    with pytest.raises(ValueError, match="cache_bytes"):
        _tiny("span1", cache_bytes=-1)
    with pytest.raises(ValueError, match="kernels must be one of"):
        _tiny("span1", kernels="cuda")
    monkeypatch.setenv(MODE_ENV, "fast")
    with pytest.raises(ValueError, match=MODE_ENV):
        _tiny("span1")
    monkeypatch.delenv(MODE_ENV)
    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match=MEMORY_ENV):
        _tiny("span1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_matrix_free_cuda_matches_cpu():
    P = _tiny("span3", mode="matrix-free", chunk_bytes=SMALL_CHUNKS)
    x = _rand(P.image_shape, 10, torch.float32)
    y = _rand(P.data_shape, 11, torch.float32)
    torch.testing.assert_close(P.forward(x.cuda()).cpu(), P.forward(x), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(P.adjoint(y.cuda()).cpu(), P.adjoint(y), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernels", KERNELS)
def test_bins_beyond_the_scanner_radius_do_not_widen_the_axial_range(kernels):
    # 160 bins of 2 mm reach 160 mm > R = 150 mm: STIR's tan(theta) is clamped (huge) there,
    # but no ray is traced through those bins
    sg = SinogramGeometry(TINY, 16, num_tangential=160, span=1, max_ring_difference=2)
    matrix = RayTracingProjector(sg, TINY_IMG, mode="matrix")
    free = RayTracingProjector(sg, TINY_IMG, mode="matrix-free", kernels=kernels)
    assert all(free._q_range(ax)[1] < 10 for ax in free._axial if not ax.direct)
    x = _rand(TINY_IMG.shape, 12)
    torch.testing.assert_close(free.forward(x), matrix.forward(x), rtol=1e-12, atol=1e-12)


def test_without_numba_the_torch_path_runs_and_numba_is_never_imported_early(monkeypatch):
    import subprocess
    import sys

    code = ("import sys, sirf_diffusion, sirf_diffusion.physics.projector; "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    monkeypatch.setattr(raytrace_numba, "available", lambda: False)
    with pytest.raises(ValueError, match="needs numba"):
        _tiny("span3", mode="matrix-free", kernels="numba")
    P = _tiny("span3", mode="matrix-free")
    assert not P._use_numba(torch.device("cpu"))
    x = _rand(P.image_shape, 13)
    torch.testing.assert_close(P.forward(x), _tiny("span3", mode="matrix").forward(x),
                               rtol=1e-12, atol=1e-12)


#: a small, steep scanner: oblique rays through 6 mm voxels climb more than two 2 mm planes,
#: and segments have more axial positions than one SIMD block of the numba kernels
STEEP = Scanner(name="steep", num_rings=20, num_detectors_per_ring=64, inner_ring_radius_mm=40.0,
                average_depth_of_interaction_mm=0.0, ring_spacing_mm=4.0, default_bin_size_mm=2.0,
                max_num_non_arccorrected_bins=30, default_num_arccorrected_bins=30)
STEEP_IMG = ImageGeometry((39, 12, 12), (2.0, 6.0, 6.0))
needs_numba = pytest.mark.skipif(not raytrace_numba.available(), reason="numba is not installed")


@needs_numba
@pytest.mark.parametrize("span,mrd", [(1, 6), (3, 7)])
def test_numba_on_steep_segments_and_long_axial_runs_equals_matrix(span, mrd):
    from sirf_diffusion.physics._raytrace_kernels import W
    from sirf_diffusion.physics.raytrace import _axial_span

    sg = SinogramGeometry(STEEP, 16, span=span, max_ring_difference=mrd)
    matrix = RayTracingProjector(sg, STEEP_IMG, mode="matrix")
    free = RayTracingProjector(sg, STEEP_IMG, mode="matrix-free", kernels="numba")
    oblique = [ax for ax in free._axial if not ax.direct]
    assert max(ax.num_axial for ax in oblique) > W                  # several SIMD blocks
    e = free.elements()
    planes_met = 0
    for ax in oblique:                      # the kernels' fallback for > 2 planes is exercised
        tan = free._tan_t(ax)[e.rows % sg.num_tangential]
        umin, umax = _axial_span(e, tan, ax, STEEP_IMG.voxel_size_mm[0])
        planes_met = max(planes_met, int((torch.floor(umax + 0.5) - torch.floor(umin + 0.5)).max()))
    assert planes_met >= 2
    x = _rand((2, *STEEP_IMG.shape), 14)
    y = _rand((2, *sg.shape), 15)
    torch.testing.assert_close(free.forward(x), matrix.forward(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(free.adjoint(y), matrix.adjoint(y), rtol=1e-12, atol=1e-12)
    lhs, rhs = float((free.forward(x) * y).sum()), float((x * free.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@needs_numba
def test_numba_mirrored_segments_equal_their_own_weights(monkeypatch):
    import numpy as np

    P = _tiny("span1", mode="matrix-free", kernels="numba")
    args = P._numba_arguments(None)
    group, = raytrace_numba._groups(args["packed"], args["segments"], args["tan_t"],
                                    args["q_ranges"], P.image_shape[0], args["vz"])
    mirror = group.tables["mirror"]
    assert (mirror >= 0).all() and (mirror[mirror] == np.arange(len(mirror))).all()
    x = _rand((2, *P.image_shape), 16)
    y = _rand((2, *P.data_shape), 17)
    shared = P.forward(x), P.adjoint(y)
    monkeypatch.setattr(raytrace_numba, "_mirrors", lambda f0s, tans: np.full(len(f0s), -1))
    own = P.forward(x), P.adjoint(y)
    for a, b in zip(shared, own):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
