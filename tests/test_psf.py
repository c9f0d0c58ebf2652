"""The image-space PSF: STIR's kernel, counts preserved, in-plane on one plane, self-adjoint.

Oracles are analytic (sums of uniform images and point sources away from the edges, the
Gaussian's variance and its ratio of neighbouring samples, dot-product adjointness) plus the
2D total-activity check of ``docs/physics.md``: on a simulated 2D case, MLEM with the PSF and
MLEM without it agree in total activity inside the field of view.  The toolkit halves (STIR's MLEM
without PSF, SIRF's blurred projection) are in ``test_toolkits_stir.py`` /
``test_toolkits_sirf.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from sirf_diffusion.physics.geometry import ImageGeometry
from sirf_diffusion.physics.psf import (
    STIR_TRUNCATE,
    GaussianPSF,
    fwhm_to_sigma,
    gaussian_kernel_1d,
    psf_fwhms_zyx,
)

#: A 2D case's grid: one plane as thick as the mMR's ring spacing, mMR voxels in-plane.
IMG2D = ImageGeometry((1, 64, 64), (4.0625, 2.08626, 2.08626))
IMG3D = ImageGeometry((24, 40, 40), (2.03125, 2.08626, 2.08626))


def _rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _disk(geom: ImageGeometry, radius_mm: float) -> torch.Tensor:
    _, ny, nx = geom.shape
    _, vy, vx = geom.voxel_size_mm
    y = (torch.arange(ny, dtype=torch.float64) - (ny - 1) / 2) * vy
    x = (torch.arange(nx, dtype=torch.float64) - (nx - 1) / 2) * vx
    return ((y[:, None] ** 2 + x[None, :] ** 2) <= radius_mm**2).double()


# ---------------------------------------------------------------------------- kernel
@pytest.mark.parametrize("fwhm,voxel", [(4.5, 2.08626), (4.5, 4.0625), (9.0, 1.0)])
def test_kernel_is_stirs_sampled_gaussian(fwhm, voxel):
    """Unit sum, STIR's automatic length ``2 ceil(sqrt(2 ln 1e6) sigma) + 1`` and samples of
    ``exp(-k^2 / (2 sigma^2))`` (ratios of neighbours are exact)."""
    k = gaussian_kernel_1d(fwhm, voxel)
    s = fwhm_to_sigma(fwhm) / voxel
    radius = math.ceil(math.sqrt(-2 * math.log(1e-6)) * s)
    assert len(k) == 2 * radius + 1 and STIR_TRUNCATE == pytest.approx(5.25652177)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-15)
    c = radius
    for j in (1, 2):
        assert float(k[c + j] / k[c]) == pytest.approx(math.exp(-j * j / (2 * s * s)), rel=1e-12)
    torch.testing.assert_close(k, k.flip(0), rtol=0, atol=0)


def test_kernel_variance_is_sigma_squared():
    """A sampled (not voxel-integrated) Gaussian: variance ``sigma^2`` (no ``+ 1/12``)."""
    k = gaussian_kernel_1d(6.0, 1.0)
    off = torch.arange(len(k), dtype=torch.float64) - len(k) // 2
    assert float((k * off * off).sum()) == pytest.approx(fwhm_to_sigma(6.0) ** 2, rel=1e-6)
    assert len(gaussian_kernel_1d(0.0, 2.0)) == 1


def test_bad_fwhm_is_named():
    with pytest.raises(ValueError, match="FWHM"):
        GaussianPSF(IMG2D, -1.0)
    with pytest.raises(ValueError, match="psf_fwhm_mm"):
        psf_fwhms_zyx((4.5, 4.5, 4.5), 3)
    with pytest.raises(ValueError, match="psf_fwhm_mm"):
        psf_fwhms_zyx(float("nan"), 3)
    with pytest.raises(ValueError, match="psf_fwhm_mm"):
        psf_fwhms_zyx("wide", 3)


# ---------------------------------------------------------------------------- convention
def test_fwhms_convention_in_plane_on_one_plane():
    assert psf_fwhms_zyx(4.5, 1) == (0.0, 4.5, 4.5)
    assert psf_fwhms_zyx((4.5, 3.0), 1) == (0.0, 4.5, 4.5)
    assert psf_fwhms_zyx(4.5, 15) == (4.5, 4.5, 4.5)
    assert psf_fwhms_zyx((4.5, 3.0), 15) == (3.0, 4.5, 4.5)
    assert psf_fwhms_zyx(None, 15) is None and psf_fwhms_zyx(0.0, 15) is None
    assert psf_fwhms_zyx((0.0, 3.0), 1) is None
    assert GaussianPSF.from_fwhm(IMG2D, None) is None
    assert GaussianPSF.from_fwhm(IMG2D, 4.5).fwhms_zyx_mm == (0.0, 4.5, 4.5)
    assert GaussianPSF.from_fwhm(IMG3D, (4.5, 3.0)).fwhms_zyx_mm == (3.0, 4.5, 4.5)


def test_single_plane_blur_ignores_the_axial_fwhm():
    x = _rand(IMG2D.shape, 1)
    torch.testing.assert_close(GaussianPSF(IMG2D, 4.5, 4.5)(x), GaussianPSF(IMG2D, 4.5, 0.0)(x),
                               rtol=0, atol=0)


# ---------------------------------------------------------------------------- counts
def test_uniform_disk_keeps_its_sum_in_2d():
    """A uniform disk inside the field of view on a 2D case's grid: the sum is unchanged (a 3D
    blur with zero padding lost 29 % here)."""
    x = _disk(IMG2D, 40.0)[None]
    y = GaussianPSF.from_fwhm(IMG2D, 4.5)(x)
    assert float(y.sum()) == pytest.approx(float(x.sum()), rel=1e-12)
    assert float(y.max()) == pytest.approx(1.0, rel=1e-12)      # interior of the disk unchanged


def test_uniform_block_keeps_its_sum_in_3d_interior():
    x = torch.zeros(IMG3D.shape, dtype=torch.float64)
    x[6:18, 12:28, 12:28] = 1.0                 # >= 6 voxels from every edge of the image
    psf = GaussianPSF(IMG3D, 4.5, 4.5)
    assert max(len(k) for k in psf.kernels()) // 2 == 5
    y = psf(x)
    assert float(y.sum()) == pytest.approx(float(x.sum()), rel=1e-12)
    assert float(y[12, 20, 20]) == pytest.approx(1.0, rel=1e-12)   # >= 5 voxels inside


@pytest.mark.parametrize("geom", [IMG2D, IMG3D], ids=["2d", "3d"])
def test_point_source_keeps_its_count_and_has_the_fwhm(geom):
    x = torch.zeros(geom.shape, dtype=torch.float64)
    cz, cy, cx = geom.shape[0] // 2, 20, 25
    x[cz, cy, cx] = 1.0
    psf = GaussianPSF(geom, 6.0, 5.0)
    y = psf(x)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-12)
    iy = torch.arange(geom.shape[1], dtype=torch.float64)
    var_y = float((y.sum(dim=(0, 2)) * (iy - cy) ** 2).sum())
    assert var_y == pytest.approx((fwhm_to_sigma(6.0) / geom.voxel_size_mm[1]) ** 2, rel=1e-6)
    iz = torch.arange(geom.shape[0], dtype=torch.float64)
    var_z = float((y.sum(dim=(1, 2)) * (iz - cz) ** 2).sum())
    axial = 0.0 if geom.shape[0] == 1 else fwhm_to_sigma(5.0) / geom.voxel_size_mm[0]
    assert var_z == pytest.approx(axial**2, rel=1e-6, abs=1e-15)


def test_edge_planes_lose_what_the_axial_kernel_puts_outside():
    """Volumes: zero padding at the first and last planes, as STIR's filter (counts blurred
    beyond the axial field of view are lost); the loss is the kernel's weight outside."""
    x = torch.zeros(IMG3D.shape, dtype=torch.float64)
    x[0, 20, 20] = 1.0
    psf = GaussianPSF(IMG3D, 0.0, 4.5)
    kz = psf.kernels()[0]
    c = len(kz) // 2
    assert float(psf(x).sum()) == pytest.approx(float(kz[c:].sum()), rel=1e-12)


# ---------------------------------------------------------------------------- adjoint
@pytest.mark.parametrize("geom,fw", [(IMG2D, (4.5, 4.5)), (IMG3D, (5.0, 3.0)),
                                     (IMG3D, (0.0, 6.0))], ids=["2d", "3d", "axial-only"])
def test_psf_is_self_adjoint(geom, fw):
    psf = GaussianPSF(geom, *fw)
    x, y = _rand((2, *geom.shape), 2), _rand((2, *geom.shape), 3)
    lhs, rhs = float((psf(x) * y).sum()), float((x * psf.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    assert not psf.is_identity and GaussianPSF(geom, 0.0, 0.0).is_identity


# ---------------------------------------------------------------------------- total activity
@pytest.fixture(scope="module")
def scan_2d():
    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan

    return simulate_scan(SimulationConfig(seed=0), progress=False)


def test_mlem_total_activity_with_and_without_psf_agree_on_a_2d_case(scan_2d):
    """The 2D must-show, package side: a case simulated with the default 4.5 mm PSF,
    reconstructed by MLEM with the PSF and without it (as STIR's MLEM without PSF would), has the
    same total activity inside the ray tracer's field of view within 5 % (1.39 x with the
    lossy 3D blur), and both have the simulated total."""
    from sirf_diffusion import PoissonLogLikelihood, mlem
    from sirf_diffusion.physics.model import AcquisitionModel

    scan = scan_2d
    with_psf = scan.acquisition_model()
    assert with_psf.psf is not None and with_psf.psf.fwhms_zyx_mm == (0.0, 4.5, 4.5)
    no_psf = AcquisitionModel(scan.sinogram_geometry, scan.image_geometry,
                              multiplicative=scan.multiplicative, additive=scan.additive,
                              projector=with_psf.projector)
    fov = with_psf.projector.adjoint(torch.ones(with_psf.data_shape)) > 0
    totals = {}
    for name, model in (("psf", with_psf), ("no_psf", no_psf)):
        x = mlem(PoissonLogLikelihood(model, scan.prompts), num_iterations=20, progress=False)
        totals[name] = float(x[fov].sum())
    reference = float(scan.reference.sum())
    assert float(scan.reference[~fov].sum()) == 0.0
    assert totals["psf"] / totals["no_psf"] == pytest.approx(1.0, abs=0.05)
    assert totals["no_psf"] / reference == pytest.approx(1.0, abs=0.05)
    assert totals["psf"] / reference == pytest.approx(1.0, abs=0.05)
