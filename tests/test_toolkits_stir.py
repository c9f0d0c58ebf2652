"""Against STIR's Python bindings (``import stir``): ``stir_wrappers`` on STIR's projectors.

Skipped without STIR; failed instead with ``SIRF_DIFFUSION_REQUIRE_TOOLKITS=1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import simulated_case_with_osem
from toolkits import require

pytestmark = pytest.mark.toolkit


@pytest.fixture(scope="module")
def stir():
    return require("stir")


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    return simulated_case_with_osem(tmp_path_factory.mktemp("stir") / "case", seed=1)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_conversions_round_trip(stir, case_dir):
    from stir_wrappers import fill_projdata, image_to_torch, projdata_to_torch, torch_to_image

    pd = stir.ProjData.read_from_file(str(case_dir / "prompts.hs"))
    y = projdata_to_torch(pd)
    from sirf_diffusion.io import read_sinogram

    np.testing.assert_array_equal(y.numpy(), read_sinogram(case_dir / "prompts.hs")[0])
    mem = stir.ProjDataInMemory(pd.get_exam_info(), pd.get_proj_data_info())
    fill_projdata(mem, 2 * y)
    np.testing.assert_array_equal(projdata_to_torch(mem).numpy(), 2 * y.numpy())
    img = stir.FloatVoxelsOnCartesianGrid.read_from_file(str(case_dir / "OSEM_image.hv"))
    x = image_to_torch(img)
    back = image_to_torch(torch_to_image(3 * x, img))
    np.testing.assert_array_equal(back.numpy(), 3 * x.numpy())
    with pytest.raises(ValueError, match="do not fit"):
        torch_to_image(torch.zeros(2, 3, 4), img)


@pytest.mark.parametrize("num_subsets", [1, 4])
def test_stir_physics_equals_the_embedded_model(stir, case_dir, num_subsets):
    """STIR's ray-tracing matrix and the package's ray tracer on the same case (with ``m``,
    ``b`` and the PSF), subsets included; exact adjoint."""
    from sirf_diffusion.physics.base import adjointness_test
    from sirf_diffusion.commands.case import case_physics, load_case
    from stir_wrappers import stir_case_physics

    case, meta = load_case(case_dir)
    phys = stir_case_physics(case_dir, psf_fwhm_mm=meta["psf_fwhm_mm"], num_subsets=num_subsets)
    own = case_physics(case, meta, num_subsets=num_subsets)
    assert phys.data_shape == own.data_shape and phys.image_shape == own.image_shape
    x = torch.as_tensor(case.reference, dtype=torch.float32)
    assert _rel(phys.forward(x), own.forward(x)) < 1e-4
    for k in range(num_subsets if num_subsets > 1 else 0):
        views = phys.subset_views(k)
        y_stir = phys.forward(x, k)
        y_own = own.forward(x)[:, views, :]
        assert _rel(y_stir, y_own) < 1e-4
    assert adjointness_test(phys, dtype=torch.float32) < 1e-4
    if num_subsets > 1:
        assert adjointness_test(phys, subset=1, dtype=torch.float32) < 1e-4
        allv = torch.cat([phys.subset_views(k) for k in range(num_subsets)]).sort().values
        assert allv.tolist() == list(range(phys.data_shape[1]))


def test_samplers_run_on_stir_physics(stir, case_dir):
    from sirf_diffusion import PoissonLogLikelihood
    from sirf_diffusion.samplers.methods import reconstruct
    from sirf_diffusion.diffusion import load_slice_prior
    from sirf_diffusion.commands.case import load_case
    from stir_wrappers import stir_case_physics

    case, meta = load_case(case_dir)
    phys = stir_case_physics(case_dir, psf_fwhm_mm=meta["psf_fwhm_mm"])
    lik = PoissonLogLikelihood(phys, torch.as_tensor(case.prompts, dtype=torch.float32))
    res = reconstruct("dds", lik, load_slice_prior(), num_steps=4, num_subsets=4, progress=False,
                      generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.mean).all() and res.num_network_evaluations == 4


def test_multiplicative_factors_from_stir_attenuation(stir, stir_reference):
    """``BinNormalisationFromAttenuationImage`` through :func:`multiplicative_factors` gives the
    attenuation factors STIR wrote (``mu_disk_af``)."""
    from stir_wrappers import multiplicative_factors, projdata_to_torch

    mu = stir.FloatVoxelsOnCartesianGrid.read_from_file(str(stir_reference / "mu_disk.hv"))
    tpl = stir.ProjData.read_from_file(str(stir_reference / "mu_disk_af.hs"))
    fp = stir.ForwardProjectorByBinUsingProjMatrixByBin(stir.ProjMatrixByBinUsingRayTracing())
    norm = stir.BinNormalisationFromAttenuationImage(mu, fp)
    m = multiplicative_factors(norm, tpl, forward_projector=fp)
    assert float((m - projdata_to_torch(tpl)).abs().max()) < 1e-4


def test_scatter_estimate_missing_parameter_file(stir, tmp_path):
    from stir_wrappers import scatter_estimate

    with pytest.raises(FileNotFoundError, match="parameter file"):
        scatter_estimate(tmp_path / "missing.par")


def test_cli_reconstructs_on_stir_physics(stir, case_dir, tmp_path):
    import json

    from sirf_diffusion.cli import main

    out = tmp_path / "stir"
    own = tmp_path / "own"
    args = ["--method", "osem", "--iterations", "3", "--subsets", "4", "--no-progress"]
    assert main(["reconstruct", str(case_dir), "--physics", "stir", "--out", str(out), *args]) == 0
    assert main(["reconstruct", str(case_dir), "--physics", "torch", "--out", str(own), *args]) == 0
    a = json.loads((out / "metrics.json").read_text())["nrmse"]
    b = json.loads((own / "metrics.json").read_text())["nrmse"]
    assert abs(a - b) < 0.01


# ---------------------------------------------------------------------------- PSF (docs/physics.md)
def test_stir_gaussian_filter_equals_the_embedded_psf(stir, case_dir):
    """STIR's ``SeparableGaussianImageFilter`` with the FWHMs of ``psf_fwhms_zyx`` (axial 0 on
    the case's single plane) blurs as the embedded PSF."""
    from sirf_diffusion.physics.geometry import ImageGeometry
    from sirf_diffusion.physics.psf import GaussianPSF, psf_fwhms_zyx
    from sirf_diffusion.commands.case import load_case
    from stir_wrappers import image_to_torch

    case, meta = load_case(case_dir)
    img = stir.FloatVoxelsOnCartesianGrid.read_from_file(str(case_dir / "OSEM_image.hv"))
    x = image_to_torch(img).double()
    geom = ImageGeometry(tuple(x.shape), case.image_geometry.voxel_size_mm)
    fwhms = psf_fwhms_zyx(meta["psf_fwhm_mm"], x.shape[0])
    assert fwhms is not None and fwhms[0] == 0.0
    blur = stir.SeparableGaussianImageFilter3DFloat()
    blur.set_fwhms(stir.Float3BasicCoordinate(tuple(float(f) for f in fwhms)))
    blur.set_up(img)
    blur.apply(img)
    ours = GaussianPSF.from_fwhm(geom, meta["psf_fwhm_mm"])(x)
    assert _rel(image_to_torch(img), ours) < 1e-5


def test_stir_mlem_without_psf_has_the_total_activity_of_the_package_mlem(stir, case_dir):
    """MLEM on STIR's projector without PSF and the package's MLEM with the case's PSF agree in
    total activity inside the field of view within 5 % (0.71 x before)."""
    from sirf_diffusion import PoissonLogLikelihood, mlem
    from sirf_diffusion.commands.case import case_physics, load_case
    from stir_wrappers import stir_case_physics

    case, meta = load_case(case_dir)
    y = torch.as_tensor(case.prompts, dtype=torch.float32)
    theirs = mlem(PoissonLogLikelihood(stir_case_physics(case_dir), y), num_iterations=20,
                  progress=False).double()
    own = case_physics(case, meta)
    assert own.psf is not None
    ours = mlem(PoissonLogLikelihood(own, y), num_iterations=20, progress=False).double()
    fov = own.projector.adjoint(torch.ones(own.data_shape)) > 0
    ratio = float(ours[fov].sum()) / float(theirs[fov].sum())
    print(f"\npackage MLEM (PSF) / MLEM on STIR's projector (no PSF), total activity: {ratio:.4f}")
    assert ratio == pytest.approx(1.0, abs=0.05)
