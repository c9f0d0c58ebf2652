"""Fully 3D on the real STIR and SIRF: oblique segments, perpendicular prior, CLI, reconstructor.

Skipped without the toolkit a test needs; failed instead with ``SIRF_DIFFUSION_REQUIRE_TOOLKITS=1``
(:mod:`toolkits`).  One small 3D case with oblique segments (:func:`conftest.simulated_3d_case`:
4 rings, ring differences up to 2, 7 planes of 34 x 34 voxels, 252 views) is simulated by the
package and read back by STIR and SIRF from its Interfile files.

* the physics: STIR's and SIRF's projections of the case equal the embedded model's, segment by
  segment and subset by subset, and a point source lands on the axial positions and segments the
  package's geometry predicts (an analytic oracle independent of the embedded projector);
* PET-LiSch-3D and PET-DDS-3D (axial RDP) through a perpendicular prior of three tiny models
  give the embedded physics' images on STIR's and SIRF's physics;
* ``reconstruct --physics stir|sirf`` on the case folder with a three-orientation prior folder;
* :class:`~sirf_diffusion.integrations.sirf.DiffusionReconstructor` on the 3D acquisition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import simulated_3d_case
from toolkits import available, require

from sirf_diffusion.physics.model import AcquisitionModel

pytestmark = pytest.mark.toolkit

TOOLKITS = ("stir", "sirf")
#: Rays per bin of each toolkit's ray-tracing matrix: ``stir_wrappers`` asks STIR for 1, SIRF's
#: ``AcquisitionModelUsingRayTracingMatrix`` traces 2.
RAYS = {"stir": 1, "sirf": 2}
#: Relative L2 bound of projections (as the 2D toolkit tests): both sides compute the same
#: line integrals, in float32 with different summation orders (measured 3e-7 to 5e-7).
PHYSICS_TOL = 1e-4
#: Relative L2 bound of reconstructions with the same seed (see
#: test_3d_methods_give_the_embedded_image_on_toolkit_physics).
RECON_TOL = 1e-4
#: A short run of each method: 2 generative steps, one chain, fp32 network.
RUNS = {"lisch": {"num_steps": 2, "num_mlem_iterations": 2},
        "dds": {"num_steps": 2, "num_subsets": 4, "init_subsets": 4, "init_epochs": 1,
                "axial_penalty": 0.5}}


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    if not any(available(t) for t in TOOLKITS):
        require("stir")                  # skip (or fail) before simulating the case in vain
    return simulated_3d_case(tmp_path_factory.mktemp("tk3d") / "case", seed=3)


@pytest.fixture(scope="module")
def case(case_dir):
    from sirf_diffusion.commands.case import load_case

    return load_case(case_dir)


def _require(toolkit: str) -> None:
    require(toolkit)
    if toolkit == "sirf":
        import sirf.STIR as pet

        pet.set_verbosity(0)


def _toolkit_physics(toolkit: str, case_dir: Path, meta: dict, num_subsets: int = 1):
    """``--physics stir|sirf`` of the case (with ``m``, ``b`` and the PSF)."""
    from sirf_diffusion.commands.case import case_physics, load_case

    _require(toolkit)
    case, _ = load_case(case_dir)
    return case_physics(case, meta, num_subsets=num_subsets, physics=toolkit, folder=case_dir)


class _OnToolkitSubsets(AcquisitionModel):
    """The embedded model projecting the view subsets of a toolkit physics: STIR's subsets
    group the views related by the projector's symmetries, not ``v % K == k``, so that subset
    methods take the same steps on both."""

    def __init__(self, toolkit_physics, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.toolkit_physics = toolkit_physics

    def _views_of(self, subset):
        return self.toolkit_physics._views_of(subset)


def _embedded(case, meta: dict, toolkit: str, *, subsets_of=None) -> AcquisitionModel:
    """The embedded model of the case with the toolkit's rays per bin (and the view subsets of
    ``subsets_of``, a toolkit physics, when given)."""
    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)

    args = (case.sinogram_geometry, case.image_geometry)
    kwargs = dict(num_rays=RAYS[toolkit], multiplicative=t(case.multiplicative),
                  additive=t(case.additive), psf_fwhm_mm=meta["psf_fwhm_mm"])
    if subsets_of is None:
        return AcquisitionModel(*args, **kwargs)
    return _OnToolkitSubsets(subsets_of, *args, **kwargs)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------- physics
def test_stir_reads_the_oblique_segments(case_dir, case):
    """STIR reads the case as the package wrote it: 4 rings, segments -2..2 with their axial
    positions, 252 views, and every bin's value where the package's reader puts it."""
    stir = require("stir")
    from stir_wrappers import projdata_to_torch

    data, _ = case
    g = data.sinogram_geometry
    prompts = stir.ProjData.read_from_file(str(case_dir / "prompts.hs"))
    info = prompts.get_proj_data_info()              # a view into ``prompts``: keep it alive
    assert [s.number for s in g.segments] == [0, 1, -1, 2, -2]
    assert (info.get_min_segment_num(), info.get_max_segment_num()) == (-2, 2)
    assert info.get_scanner().get_num_rings() == 4
    assert info.get_num_views() == g.num_views == 252
    for s in g.segments:
        assert info.get_num_axial_poss(s.number) == s.num_axial_positions
    assert data.image_geometry.shape == (7, 34, 34)
    np.testing.assert_array_equal(projdata_to_torch(prompts).numpy(), data.prompts)


@pytest.mark.parametrize("num_subsets", [1, 4])
@pytest.mark.parametrize("toolkit", TOOLKITS)
def test_toolkit_physics_equals_the_embedded_model_3d(case_dir, case, toolkit, num_subsets):
    """STIR's ray-tracing matrix (directly and through SIRF) and the package's ray tracer on
    the 3D case, with ``m``, ``b`` and the 3D PSF: every segment, every STIR subset, exact
    adjoints."""
    from sirf_diffusion.physics.base import adjointness_test

    data, meta = case
    phys = _toolkit_physics(toolkit, case_dir, meta, num_subsets)
    own = _embedded(data, meta, toolkit)
    assert phys.data_shape == own.data_shape and phys.image_shape == own.image_shape
    assert phys.voxel_size_mm == pytest.approx(own.voxel_size_mm, rel=1e-6)
    x = torch.as_tensor(data.reference, dtype=torch.float32)
    y, y_own = phys.forward(x), own.forward(x)
    assert _rel(y, y_own) < PHYSICS_TOL
    g = data.sinogram_geometry
    for s in g.segments:
        first = g.sinogram_offset(s.number)
        rows = slice(first, first + s.num_axial_positions)
        assert _rel(phys.forward_linear(x)[rows], own.forward_linear(x)[rows]) < PHYSICS_TOL, \
            f"segment {s.number}"
    for k in range(num_subsets if num_subsets > 1 else 0):
        views = phys.subset_views(k)
        assert _rel(phys.forward(x, k), y_own[:, views, :]) < PHYSICS_TOL
    assert adjointness_test(phys, dtype=torch.float32) < 1e-4
    if num_subsets > 1:
        assert adjointness_test(phys, subset=1, dtype=torch.float32) < 1e-4
        allv = torch.cat([phys.subset_views(k) for k in range(num_subsets)]).sort().values
        assert allv.tolist() == list(range(phys.data_shape[1]))


@pytest.mark.parametrize("toolkit", TOOLKITS)
def test_a_point_source_lands_where_the_geometry_says(case_dir, case, toolkit):
    """Analytic oracle of the axial layout and the segment signs, on the toolkit alone.

    A voxel at ``(x, y, z)`` is seen by segment ``k`` (ring difference ``k``) on the LORs
    ``z(tau) = m + tau tan(theta_k)`` through it, ``tau = -x sin(phi) + y cos(phi)`` along the
    LOR (``geometry``: the ``+d`` end lies in the higher ring for ``k > 0``).  With the planes
    half a ring apart:

    * a voxel in the plane of axial position ``a`` (``z = m_a``) projects onto ``a`` only;
    * a voxel half-way between positions ``a`` and ``a + 1`` falls into the lower one exactly
      in the views where ``tau tan(theta_k) > 0``, so segment ``+k`` puts the fraction of views
      with ``tau > 0`` into ``a`` and segment ``-k`` the fraction with ``tau < 0`` (up to the
      few views whose LOR crosses the voxel near ``tau = 0``); segment 0 splits it evenly.

    Swapped segments ``+k`` / ``-k``, reversed axial positions or a wrong ring spacing in the
    files each fail it.
    """
    data, _ = case
    phys = _toolkit_physics(toolkit, case_dir, {})      # no PSF: one voxel stays one voxel
    g, ig = data.sinogram_geometry, data.image_geometry
    m = torch.as_tensor(data.multiplicative, dtype=torch.float64)
    iy, ix = 20, 12                                    # off-centre: tau changes sign with phi
    xy_mm = (ig.x_mm()[ix], ig.y_mm()[iy])
    phi = g.phi()
    tau = -xy_mm[0] * np.sin(phi) + xy_mm[1] * np.cos(phi)
    checked = 0
    for iz, z in enumerate(ig.z_mm()):
        x = torch.zeros(ig.shape)
        x[iz, iy, ix] = 1.0
        y = phys.forward_linear(x).double() / m
        for s in g.segments:
            off = g.sinogram_offset(s.number)
            w = y[off:off + s.num_axial_positions].sum(dim=(1, 2)).numpy()
            if w.sum() <= 0:
                continue
            w = w / w.sum()
            gap = (z - s.m_mm()) / s.axial_sampling_mm
            on = np.flatnonzero(np.isclose(gap, 0.0, atol=1e-6))
            half = np.flatnonzero(np.isclose(gap, 0.5, atol=1e-6))
            if on.size:
                assert w[on[0]] > 0.999, (s.number, iz, w)
                checked += 1
            elif half.size and half[0] + 1 < s.num_axial_positions:
                lower = 0.5 if s.number == 0 else float(np.mean(np.sign(s.number) * tau > 0))
                assert w[half[0]] == pytest.approx(lower, abs=0.03), (s.number, iz, w)
                assert w[half[0]] + w[half[0] + 1] == pytest.approx(1.0, abs=1e-6)
                checked += 1
    # segment 0: 4 planes on, 3 half-way; +-1: 3 on, 2 half-way; +-2: 2 on, 1 half-way
    assert checked == 7 + 2 * 5 + 2 * 3


# ---------------------------------------------------------------------------- methods
def _run(method: str, physics, prompts, prior: Path, seed: int = 0):
    from sirf_diffusion.diffusion import load_denoiser
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.samplers.methods import reconstruct

    denoiser = load_denoiser(prior, physics.image_shape[0], "fp32")
    return reconstruct(method, PoissonLogLikelihood(physics, prompts), denoiser, num_samples=1,
                       generator=torch.Generator().manual_seed(seed), progress=False,
                       **RUNS[method])


@pytest.mark.parametrize("method", ["lisch", "dds"])
@pytest.mark.parametrize("toolkit", TOOLKITS)
def test_3d_methods_give_the_embedded_image_on_toolkit_physics(case_dir, case, tiny_random_prior_3d,
                                                               toolkit, method):
    """PET-LiSch-3D and PET-DDS-3D with its axial RDP, through the perpendicular prior of three
    tiny models (random weights, one per orientation), on STIR's/SIRF's physics and on the
    embedded physics (same rays per bin, same STIR subsets), same seed: the same image.

    Tolerance: the physics agree to ~5e-7 (float32 rounding); a run makes ~20 projections and
    2 x 3 network passes per step, so the images may differ by a few 1e-6 (measured: LiSch
    8e-6 on STIR, 1.1e-5 on SIRF; DDS 5e-6 and 7e-6); 1e-4 leaves a margin of 10 and is
    10^4 times smaller than the difference another seed makes (checked).
    """
    from sirf_diffusion.diffusion import PerpendicularPrior3D, load_denoiser

    data, meta = case
    prior = load_denoiser(tiny_random_prior_3d, 7, "fp32")
    assert isinstance(prior, PerpendicularPrior3D) and prior.orientations == ("xy", "yz", "xz")
    y = torch.as_tensor(data.prompts, dtype=torch.float32)
    phys = _toolkit_physics(toolkit, case_dir, meta)
    own = _embedded(data, meta, toolkit, subsets_of=phys)
    theirs = _run(method, phys, y, tiny_random_prior_3d)
    ours = _run(method, own, y, tiny_random_prior_3d)
    other_seed = _run(method, own, y, tiny_random_prior_3d, seed=1)
    diff = _rel(theirs.mean, ours.mean)
    print(f"\n{method} on {toolkit} physics vs embedded: relative L2 {diff:.2e}")
    assert torch.isfinite(theirs.mean).all() and theirs.mean.shape == (7, 34, 34)
    assert diff < RECON_TOL
    assert _rel(other_seed.mean, ours.mean) > 100 * RECON_TOL
    assert theirs.num_network_evaluations == ours.num_network_evaluations == 2
    assert theirs.num_likelihood_evaluations == ours.num_likelihood_evaluations
    if method == "dds":
        assert theirs.config["penalty"] == "RelativeDifferencePrior"
        assert theirs.config["axial_penalty"] == 0.5


# ---------------------------------------------------------------------------- command line
@pytest.mark.parametrize("toolkit", TOOLKITS)
def test_cli_reconstructs_the_3d_case_on_toolkit_physics(case_dir, case, tiny_random_prior_3d, toolkit,
                                                        tmp_path):
    """``reconstruct --method lisch --physics stir|sirf --model PRIOR`` on the 3D case folder
    with a prior folder of three orientations gives, bit for bit, the library's PET-LiSch-3D on
    the same physics with the perpendicular prior of all three."""
    from sirf_diffusion.cli import main
    from sirf_diffusion.io import read_image

    _require(toolkit)
    out = tmp_path / toolkit
    assert main(["reconstruct", str(case_dir), "--method", "lisch", "--physics", toolkit,
                 "--model", str(tiny_random_prior_3d), "--steps", "2", "--mlem-iterations", "2",
                 "--samples", "1", "--precision", "fp32", "--out", str(out),
                 "--no-progress"]) == 0
    image = read_image(out / "image.hv")[0]
    data, meta = case
    lib = _run("lisch", _toolkit_physics(toolkit, case_dir, meta),
               torch.as_tensor(data.prompts, dtype=torch.float32), tiny_random_prior_3d)
    np.testing.assert_array_equal(image, lib.mean.numpy())
    config = json.loads((out / "config.json").read_text())
    assert config["physics"] == toolkit and config["sampler"]["num_steps"] == 2
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["nrmse"])


# ---------------------------------------------------------------------------- SIRF reconstructor
def _sirf_objective(case_dir: Path):
    """SIRF's Poisson log-likelihood of the case (the set-up of
    ``examples/sirf_diffusion_reconstructor.py``, no PSF) and its image template."""
    _require("sirf")
    import sirf.STIR as pet
    from test_toolkits_sirf import _sirf_model
    from test_toolkits_sirf import _sirf_objective as objective

    am, prompts, image = _sirf_model(pet, case_dir)
    return objective(pet, am, prompts), image


def test_objective_route_equals_physics_route_3d(case_dir):
    """SIRF's objective function (gradients only) and SIRF's projector give the same (OS)EM
    updates on the 3D case, subsets included: the 2D test on the 3D case."""
    _require("sirf")
    import sirf.STIR as pet
    from test_toolkits_sirf import test_objective_route_equals_physics_route as check

    check(pet, case_dir)


def test_sirf_reconstructor_uses_every_orientation_on_a_3d_acquisition(case_dir, tiny_random_prior_3d,
                                                                       tmp_path, monkeypatch):
    """``DiffusionReconstructor`` on a 3D SIRF objective resolves a prior folder into a
    ``PerpendicularPrior3D`` of every orientation the folder holds (at ``set_up``), and runs
    PET-LiSch-3D with it to a SIRF image."""
    import shutil

    from sirf_diffusion.diffusion import PerpendicularPrior3D, load_denoiser
    from sirf_diffusion.integrations.sirf import DiffusionReconstructor

    obj, image = _sirf_objective(case_dir)
    import sirf.STIR as pet

    monkeypatch.setenv("SIRF_DIFFUSION_PRECISION", "fp32")
    two = tmp_path / "two"
    for o in ("xy", "xz"):
        shutil.copytree(tiny_random_prior_3d / o, two / o)
    for prior, orientations in ((two, ("xy", "xz")), (tiny_random_prior_3d, ("xy", "yz", "xz"))):
        recon = DiffusionReconstructor("lisch", prior, num_mlem_iterations=2, num_samples=1,
                                       progress=False, seed=0)
        recon.set_num_subiterations(2)
        recon.set_objective_function(obj)
        recon.set_up(image)
        assert isinstance(recon.denoiser, PerpendicularPrior3D)
        assert recon.denoiser.orientations == orientations
    recon.set_current_estimate(image.get_uniform_copy(1.0))
    recon.process()
    out = recon.get_output()
    assert isinstance(out, pet.ImageData) and out.dimensions() == (7, 34, 34)
    assert np.isfinite(out.as_array()).all() and out.as_array().max() > 0
    assert recon.result.num_network_evaluations == 2
    # the three orientations denoise differently: the prior is their mean, not any one of them
    x = torch.rand(1, 1, 7, 34, 34, generator=torch.Generator().manual_seed(0))
    full = load_denoiser(tiny_random_prior_3d, 7, "fp32")
    with torch.no_grad():
        est = {o: full.denoise_orientation(o, x, torch.tensor([0.5])) for o in full.orientations}
        mean = recon.denoiser(x, torch.tensor([0.5]))
    assert _rel(mean, torch.stack(list(est.values())).mean(0)) < 1e-6
    assert min(_rel(e, mean) for e in est.values()) > 1e-3
