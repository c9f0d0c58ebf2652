"""Embedded projector, attenuation and acquisition model: analytic oracles (PSF: test_psf.py).

Small scanners keep every test fast; the STIR comparison is in
``test_stir_reference_projections.py``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

from sirf_diffusion.physics.attenuation import attenuation_factors, line_integrals_cm
from sirf_diffusion.physics.base import adjointness_test
from sirf_diffusion.physics.geometry import ImageGeometry, Scanner, SinogramGeometry
from sirf_diffusion.physics.model import AcquisitionModel
from sirf_diffusion.physics.projector import RayTracingProjector, fov_radius_mm, trace_rays_2d
from sirf_diffusion.physics.psf import GaussianPSF

TINY = Scanner(name="tiny", num_rings=4, num_detectors_per_ring=64, inner_ring_radius_mm=150.0,
               average_depth_of_interaction_mm=0.0, ring_spacing_mm=4.0, default_bin_size_mm=2.0,
               max_num_non_arccorrected_bins=40, default_num_arccorrected_bins=40)
IMG2D = ImageGeometry((1, 24, 24), (4.0, 2.0, 2.0))
IMG3D = ImageGeometry((7, 24, 24), (2.0, 2.0, 2.0))


def _geom(kind: str) -> tuple[SinogramGeometry, ImageGeometry]:
    if kind == "2d_arc":
        return SinogramGeometry(TINY.with_rings(1), 32), IMG2D
    if kind == "2d_nonarc":
        return SinogramGeometry(TINY.with_rings(1), 32, arc_corrected=False), IMG2D
    if kind == "stacked":
        return SinogramGeometry(TINY, 32), IMG3D
    if kind == "span1":
        return SinogramGeometry(TINY, 32, span=1, max_ring_difference=3), IMG3D
    if kind == "span3":
        return SinogramGeometry(TINY, 16, span=3, max_ring_difference=3), IMG3D
    raise KeyError(kind)


@lru_cache(maxsize=None)
def _projector(kind: str, num_rays: int = 1) -> RayTracingProjector:
    sg, ig = _geom(kind)
    return RayTracingProjector(sg, ig, num_rays=num_rays)


def _rand(shape, seed=0, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _inner(a, b):
    return float((a * b).sum())


# ---------------------------------------------------------------------------- adjointness
@pytest.mark.parametrize("kind,num_rays", [("2d_arc", 1), ("2d_arc", 5), ("2d_nonarc", 1),
                                           ("2d_nonarc", 5), ("stacked", 1), ("span1", 1),
                                           ("span3", 1), ("span1", 3)])
def test_projector_adjointness(kind, num_rays):
    P = _projector(kind, num_rays)
    x = _rand((2, *P.image_shape), 1)
    y = _rand((2, *P.data_shape), 2)
    lhs, rhs = _inner(P.forward(x), y), _inner(x, P.adjoint(y))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("kind", ["2d_arc", "span1", "span3"])
def test_subset_views_are_row_blocks(kind):
    P = _projector(kind)
    views = torch.arange(1, P.data_shape[1], 4)
    x = _rand(P.image_shape, 3)
    full = P.forward(x)
    sub = P.forward(x, views)
    torch.testing.assert_close(sub, full[:, views], rtol=1e-12, atol=1e-12)
    fresh = RayTracingProjector(*_geom(kind))       # subset matrices built without the full ones
    torch.testing.assert_close(fresh.forward(x, views), sub, rtol=1e-12, atol=1e-12)
    y = _rand((P.data_shape[0], len(views), P.data_shape[2]), 4)
    y_full = torch.zeros(P.data_shape, dtype=torch.float64)
    y_full[:, views] = y
    torch.testing.assert_close(P.adjoint(y, views), P.adjoint(y_full), rtol=1e-12, atol=1e-12)
    assert abs(_inner(sub, y) - _inner(x, P.adjoint(y, views))) <= 1e-12 * abs(_inner(sub, y))


def test_model_adjointness_with_psf_m_b_and_subsets():
    sg, ig = _geom("span1")
    m = 0.5 + _rand(sg.shape, 5)
    b = _rand(sg.shape, 6)
    model = AcquisitionModel(sg, ig, multiplicative=m, additive=b, psf_fwhm_mm=(4.0, 3.0),
                             num_subsets=4, projector=_projector("span1"))
    assert adjointness_test(model) < 1e-12
    for k in range(4):
        assert adjointness_test(model, subset=k) < 1e-12
    x = _rand(ig.shape, 7)
    expected = m * _projector("span1").forward(model.psf(x)) + b
    torch.testing.assert_close(model.forward(x), expected, rtol=1e-12, atol=1e-12)
    # sensitivity = adjoint of ones, including m; the subset sensitivities add up to the full one
    sens = sum(model.sensitivity(k, dtype=torch.float64) for k in range(4))
    torch.testing.assert_close(sens, model.sensitivity(dtype=torch.float64), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.sensitivity(dtype=torch.float64),
                               model.adjoint(torch.ones(sg.shape, dtype=torch.float64)))


# ---------------------------------------------------------------------------- 2D oracle
def _dense_oracle(sg: SinogramGeometry, ig: ImageGeometry, num_rays: int) -> torch.Tensor:
    """Independent dense matrix: line/box clipping per (ray, voxel), STIR's full-chord rule."""
    _, ny, nx = ig.shape
    _, vy, vx = ig.voxel_size_mm
    R = fov_radius_mm(ig)
    phi = torch.as_tensor(sg.phi(), dtype=torch.float64)
    s = torch.as_tensor(sg.s(), dtype=torch.float64)
    ds = s[1] - s[0]
    xc = torch.as_tensor(ig.x_mm(), dtype=torch.float64)
    yc = torch.as_tensor(ig.y_mm(), dtype=torch.float64)
    X0, Y0 = (xc - vx / 2)[None, :].expand(ny, nx), (yc - vy / 2)[:, None].expand(ny, nx)
    X0, Y0 = X0.reshape(1, 1, -1), Y0.reshape(1, 1, -1)
    A = torch.zeros(len(phi), len(s), ny * nx, dtype=torch.float64)
    for k in range(num_rays):
        sk = (s + (k - (num_rays - 1) / 2) * ds / num_rays)[None, :, None]
        c, sn = torch.cos(phi)[:, None, None], torch.sin(phi)[:, None, None]
        px, py, dx, dy = sk * c, sk * sn, -sn, c

        def slab(p, d, lo, width):
            safe = torch.where(d.abs() > 1e-12, d, torch.ones_like(d))
            t1, t2 = (lo - p) / safe, (lo + width - p) / safe
            inside = (p > lo) & (p < lo + width)
            big = torch.full_like(t1, 1e9)
            ok = d.abs() > 1e-12
            tmin = torch.where(ok, torch.minimum(t1, t2), torch.where(inside, -big, big))
            tmax = torch.where(ok, torch.maximum(t1, t2), torch.where(inside, big, -big))
            return tmin, tmax
        ax, bx = slab(px, dx, X0, vx)
        ay, by = slab(py, dy, Y0, vy)
        a, b = torch.maximum(ax, ay), torch.minimum(bx, by)
        h = torch.sqrt(torch.clamp(R * R - sk * sk, min=0))
        hit = (b > a) & (sk.abs() < R) & (b > -h) & (a < h)
        A += torch.where(hit, (b - a) / vx / num_rays, torch.zeros_like(a))
    return A.reshape(len(phi) * len(s), ny * nx)


@pytest.mark.parametrize("num_rays", [1, 3])
def test_siddon_matches_dense_line_box_oracle(num_rays):
    sg, ig = _geom("2d_arc")
    P = _projector("2d_arc", num_rays)
    A, _ = P.matrix_2d()
    diff = (A.to_dense() - _dense_oracle(sg, ig, num_rays)).abs()
    # only voxels STIR drops at the far end of a ray (chord < 1e-4 x ray length) may differ
    assert float(diff.max()) < 1e-4 * 2 * fov_radius_mm(ig) / ig.voxel_size_mm[2]
    assert int((diff > 1e-12).sum()) <= 0.001 * A._nnz()


def test_uniform_disk_matches_analytic_chords():
    scanner = Scanner(name="disk", num_rings=1, num_detectors_per_ring=128,
                      inner_ring_radius_mm=200.0, average_depth_of_interaction_mm=0.0,
                      ring_spacing_mm=1.0, default_bin_size_mm=1.0,
                      max_num_non_arccorrected_bins=160, default_num_arccorrected_bins=160)
    ig = ImageGeometry((1, 96, 96), (1.0, 1.0, 1.0))
    sg = SinogramGeometry(scanner, 64)
    r = 40.0
    sub = (torch.arange(8, dtype=torch.float64) + 0.5) / 8 - 0.5    # 8 x 8 partial volume
    yy = (torch.as_tensor(ig.y_mm())[:, None] + sub[None]).reshape(-1)
    xx = (torch.as_tensor(ig.x_mm())[:, None] + sub[None]).reshape(-1)
    inside = (yy[:, None] ** 2 + xx[None] ** 2 <= r * r).double()
    disk = inside.reshape(96, 8, 96, 8).mean(dim=(1, 3))[None]
    s = torch.as_tensor(sg.s())
    chord = 2 * torch.sqrt(torch.clamp(r * r - s * s, min=0)) / ig.voxel_size_mm[2]
    inner = s.abs() <= 0.8 * r
    for num_rays in (1, 5):
        proj = RayTracingProjector(sg, ig, num_rays=num_rays).forward(disk)[0]
        rel = (proj[:, inner] - chord[inner]).abs() / chord[inner]
        assert float(rel.max()) < 0.02, (num_rays, float(rel.max()))
        assert float(proj[:, s.abs() > r + 1].abs().max()) == 0.0


def test_point_source_projects_at_s_equal_x_cos_plus_y_sin():
    sg, ig = _geom("2d_arc")
    P = _projector("2d_arc")
    img = torch.zeros(ig.shape, dtype=torch.float64)
    iy, ix = 12 + 3, 12 + 5                       # (x, y) = (10, 6) mm
    img[0, iy, ix] = 1.0
    y = P.forward(img)[0]
    phi = torch.as_tensor(sg.phi())
    s_pred = 10.0 * torch.cos(phi) + 6.0 * torch.sin(phi)
    s_peak = torch.as_tensor(sg.s())[y.argmax(dim=1)]
    assert float((s_peak - s_pred).abs().max()) <= 1.0 + 1e-9  # within half a bin (2 mm)
    assert float(y[0].max()) == pytest.approx(1.0)             # view 0: one voxel, length vx


def test_fov_restriction():
    sg, ig = _geom("2d_arc")
    e = trace_rays_2d(sg, ig, restrict_to_cylindrical_fov=True)
    e_sq = trace_rays_2d(sg, ig, restrict_to_cylindrical_fov=False)
    touched = torch.zeros(ig.shape[1] * ig.shape[2], dtype=torch.bool)
    touched[e.cols] = True
    touched_sq = torch.zeros_like(touched)
    touched_sq[e_sq.cols] = True
    x, y = torch.meshgrid(torch.as_tensor(ig.y_mm()), torch.as_tensor(ig.x_mm()), indexing="ij")
    rad = torch.sqrt(x * x + y * y).reshape(-1)
    R = fov_radius_mm(ig)
    half_diag = math.hypot(*ig.voxel_size_mm[1:]) / 2
    assert bool(touched[rad < R - half_diag].all())
    assert not bool(touched[rad > R + half_diag].any())
    assert int(touched_sq.sum()) > int(touched.sum())


# ---------------------------------------------------------------------------- axial model
def test_stacked_direct_planes_box_weights():
    """Segment 0 with planes of half the ring spacing: weights 1/4, 1/2, 1/4 (STIR)."""
    sg, ig = _geom("stacked")
    P = _projector("stacked")
    A, _ = P.matrix_2d(dtype=torch.float64)
    plane = _rand(ig.shape[1:], 8)
    y2d = (A @ plane.reshape(-1, 1)).reshape(sg.num_views, -1)
    y = P.forward(plane.expand(ig.shape))            # uniform in z
    torch.testing.assert_close(y[0], 0.75 * y2d)     # ring 0: the plane below is missing
    torch.testing.assert_close(y[1], y2d)
    img = torch.zeros(ig.shape, dtype=torch.float64)
    img[2] = plane                                   # plane 2 lies on ring 1
    y = P.forward(img)
    torch.testing.assert_close(y[1], 0.5 * y2d)
    assert float(y[[0, 2, 3]].abs().max()) == 0.0
    img = torch.zeros(ig.shape, dtype=torch.float64)
    img[3] = plane                                   # plane 3 lies half-way between rings 1, 2
    y = P.forward(img)
    torch.testing.assert_close(y[1], 0.25 * y2d)
    torch.testing.assert_close(y[2], 0.25 * y2d)
    assert float(y[[0, 3]].abs().max()) == 0.0


@pytest.mark.parametrize("kind", ["span1", "span3"])
def test_oblique_segments_on_z_uniform_object(kind):
    """Away from the axial edges a z-uniform object projects to 2D x sqrt(1 + tan^2 theta(s))."""
    sg, ig = _geom(kind)
    P = _projector(kind)
    A, _ = P.matrix_2d(dtype=torch.float64)
    plane = _rand(ig.shape[1:], 9)
    y2d = (A @ plane.reshape(-1, 1)).reshape(sg.num_views, -1)
    y = P.forward(plane.expand(ig.shape))
    R = sg.scanner.effective_ring_radius_mm
    s = torch.as_tensor(sg.s())
    half_len = ig.shape[0] * ig.voxel_size_mm[0] / 2
    checked = 0
    for seg in sg.segments:
        tan = seg.tan_theta * R / torch.sqrt(R * R - s * s)
        reach = fov_radius_mm(ig) * float(tan[s.abs() < 30].abs().max()) + seg.axial_sampling_mm
        for a, m in enumerate(seg.m_mm()):
            if abs(m) + reach + 1e-6 < half_len:
                idx = sg.sinogram_offset(seg.number) + a
                torch.testing.assert_close(y[idx], y2d * torch.sqrt(1 + tan * tan)[None])
                checked += 1
    assert checked >= 4


def test_axial_sampling_must_be_multiple_of_plane_thickness():
    sg, _ = _geom("span1")
    with pytest.raises(ValueError, match="integer multiple"):
        RayTracingProjector(sg, ImageGeometry((5, 24, 24), (3.0, 2.0, 2.0)))


# ---------------------------------------------------------------------------- layout, dtype
def test_batch_dims_dtype_and_device_follow_input():
    P = _projector("span3")
    x = _rand((2, 3, *P.image_shape), 10)
    y = P.forward(x)
    assert y.shape == (2, 3, *P.data_shape) and y.dtype == torch.float64
    torch.testing.assert_close(y[1, 2], P.forward(x[1, 2]))
    y32 = P.forward(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y, rtol=1e-5, atol=1e-5)
    back = P.adjoint(y.float())
    assert back.shape == x.shape and back.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    P = _projector("span1")
    x = _rand(P.image_shape, 11, torch.float32)
    torch.testing.assert_close(P.forward(x.cuda()).cpu(), P.forward(x), rtol=1e-5, atol=1e-4)


def test_bad_inputs_raise():
    P = _projector("2d_arc")
    sg, ig = _geom("2d_arc")
    with pytest.raises(ValueError, match="expected"):
        P.forward(torch.zeros(1, 24, 23))
    with pytest.raises(TypeError, match="floating"):
        P.forward(torch.zeros(ig.shape, dtype=torch.long))
    with pytest.raises(ValueError, match="views"):
        P.forward(torch.zeros(ig.shape), torch.tensor([0, 40]))
    with pytest.raises(ValueError, match="sinogram geometry"):
        AcquisitionModel(sg, ig, multiplicative=torch.ones(1, 32, 39), projector=P)
    with pytest.raises(ValueError, match="negative"):
        AcquisitionModel(sg, ig, additive=-torch.ones(sg.shape), projector=P)
    with pytest.raises(ValueError, match="NaN"):
        AcquisitionModel(sg, ig, multiplicative=torch.full(sg.shape, float("nan")), projector=P)
    with pytest.raises(ValueError, match="other geometries"):
        AcquisitionModel(sg, IMG3D, projector=P)
    with pytest.raises(ValueError, match="negative"):
        attenuation_factors(-torch.ones(ig.shape), ig, sg, projector=P)
    with pytest.raises(ValueError, match="cm\\^-1"):
        attenuation_factors(torch.full(ig.shape, 96.0), ig, sg, projector=P)
    with pytest.raises(ValueError, match="FWHM"):
        GaussianPSF(ig, -1.0)


def test_with_copies_share_projector():
    sg, ig = _geom("2d_arc")
    P = _projector("2d_arc")
    base = AcquisitionModel(sg, ig, projector=P)
    b = _rand(sg.shape, 12)
    m = _rand(sg.shape, 13)
    mb = base.with_additive(b).with_multiplicative(m)
    assert mb.projector is P and base.additive_term is None
    x = _rand(ig.shape, 14)
    torch.testing.assert_close(mb.forward(x), m * P.forward(x) + b)


# ---------------------------------------------------------------------------- attenuation
def test_attenuation_of_uniform_water_disk():
    sg, ig = _geom("2d_arc")
    P = _projector("2d_arc")
    r, mu = 16.0, 0.096
    x, y = torch.meshgrid(torch.as_tensor(ig.y_mm()), torch.as_tensor(ig.x_mm()), indexing="ij")
    mumap = (mu * ((x * x + y * y) <= r * r)).double()[None]
    af = attenuation_factors(mumap, ig, sg, projector=P)[0]
    torch.testing.assert_close(af, torch.exp(-line_integrals_cm(mumap, ig, sg, projector=P)[0]))
    torch.testing.assert_close(af, torch.exp(-ig.voxel_size_mm[2] / 10 * P.forward(mumap)[0]))
    s = torch.as_tensor(sg.s())
    assert float((af[:, s.abs() > r + 3] - 1).abs().max()) == 0.0
    centre = float(af[:, s.abs() < 1e-9].mean())
    assert centre == pytest.approx(math.exp(-mu * 2 * r / 10), rel=0.02)


def test_autograd_uses_exact_adjoint():
    P = _projector("span3")
    views = torch.arange(2, 16, 3)
    x = _rand(P.image_shape, 17).requires_grad_(True)
    data = _rand((P.data_shape[0], len(views), P.data_shape[2]), 18)
    loss = ((P.forward(x, views) - data) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    expected = 2 * P.adjoint(P.forward(x.detach(), views) - data, views)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    y = _rand(data.shape, 19).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: P.adjoint(u, views), (y,), fast_mode=True)
