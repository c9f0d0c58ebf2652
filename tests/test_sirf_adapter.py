"""The SIRF adapters (physics, objective route, drop-in reconstructor) on a SIRF stand-in.

``tests/fake_sirf.py`` reproduces SIRF's calling conventions over a dense matrix, with subsets
grouped like STIR's symmetries (not ``v % K == k``); the oracle is the package's own
:class:`DenseMatrixPhysics` with the same matrix.  The same adapters against the real SIRF are
tested in ``test_toolkits_sirf.py``.
"""

from __future__ import annotations

import sys

import fake_sirf as fs
import numpy as np
import pytest
import torch

from sirf_diffusion import PoissonLogLikelihood
from sirf_diffusion.integrations.sirf import (
    DiffusionReconstructor,
    ObjectiveFunctionLikelihood,
    SIRFPhysics,
    acquisition_to_torch,
    require_sirf,
    sirf_likelihood,
)
from sirf_diffusion.likelihood import Likelihood, ProjectingLikelihood
from sirf_diffusion.physics.base import DenseMatrixPhysics, ViewSubset, adjointness_test
from sirf_diffusion.recon import mlem, osem

IMG = (1, 6, 6)
DATA = (2, 8, 7)


class GaussianDenoiser(torch.nn.Module):
    """Exact Tweedie denoiser of the prior N(mu, v I) (an analytic oracle)."""

    def __init__(self, mu: float = 1.0, v: float = 0.25) -> None:
        super().__init__()
        self.mu, self.v = mu, v

    def forward(self, x, sigma):
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (self.v * x + s2 * self.mu) / (self.v + s2)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    A = torch.rand(int(np.prod(DATA)), int(np.prod(IMG)), generator=g, dtype=torch.float64)
    A = A * (torch.rand(A.shape, generator=g, dtype=torch.float64) > 0.6)
    S = 0.5 + torch.rand(DATA, generator=g, dtype=torch.float64)
    a = 0.2 * torch.rand(DATA, generator=g, dtype=torch.float64)
    x_true = 1.0 + torch.rand(IMG, generator=g, dtype=torch.float64)
    ybar = S * ((A @ x_true.flatten()).reshape(DATA) + a)
    y = torch.poisson(ybar, generator=g)
    # SIRF side
    am = fs.AcquisitionModel(A.numpy(), DATA)
    am.set_acquisition_sensitivity(fs.AcquisitionData(S.numpy()))
    am.set_additive_term(fs.AcquisitionData(a.numpy()))
    img = fs.ImageData(np.zeros(IMG), voxel_sizes=(4.0, 2.0, 2.0))
    acq = fs.AcquisitionData(y.numpy())
    am.set_up(acq, img)
    # oracle: the package's dense physics with m = S, b = S a
    dense = DenseMatrixPhysics((S.reshape(-1, 1) * A), IMG, DATA, additive=S * a)
    return dict(am=am, img=img, acq=acq, dense=dense, y=y, x_true=x_true)


class StirLikeDense(DenseMatrixPhysics):
    """The oracle physics with the stand-in's (STIR-like) subsets, for every ``(k, K)``."""

    def _views_of(self, subset: ViewSubset) -> torch.Tensor:
        return torch.as_tensor(fs.subset_views(self.data_shape[1], subset.index,
                                               subset.num_subsets))


def _dense_subsets(dense: DenseMatrixPhysics, K: int) -> StirLikeDense:
    """The oracle physics with the stand-in's subsets; integer subsets index ``K`` of them."""
    return StirLikeDense(dense.matrix, IMG, DATA, additive=dense.additive_term, num_subsets=K)


def test_require_sirf_names_the_install_route(monkeypatch):
    monkeypatch.setitem(sys.modules, "sirf", None)
    monkeypatch.setitem(sys.modules, "sirf.STIR", None)
    with pytest.raises(ImportError, match="conda install -c conda-forge sirf"):
        require_sirf()


def test_physics_matches_the_dense_oracle(problem):
    phys = SIRFPhysics(problem["am"])
    assert phys.image_shape == IMG and phys.data_shape == DATA
    assert phys.voxel_size_mm == (4.0, 2.0, 2.0)
    dense = problem["dense"]
    x = problem["x_true"][None].repeat(2, 1, 1, 1)   # a batch of 2
    torch.testing.assert_close(phys.forward(x), dense.forward(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(phys.additive_term.double(), dense.additive_term, rtol=1e-6,
                               atol=1e-6)
    assert adjointness_test(phys) < 1e-5


@pytest.mark.parametrize("K", [2, 3])
def test_subsets_are_the_toolkits_own(problem, K):
    phys = SIRFPhysics(problem["am"], num_subsets=K)
    dense = _dense_subsets(problem["dense"], K)
    for k in range(K):
        expected = fs.subset_views(DATA[1], k, K)
        assert phys.subset_views(k).tolist() == expected.tolist()
        x = problem["x_true"]
        torch.testing.assert_close(phys.forward(x, k), dense.forward(x, k), rtol=1e-5, atol=1e-5)
        y = torch.rand(DATA[0], len(expected), DATA[2], dtype=torch.float64)
        torch.testing.assert_close(phys.adjoint(y, k), dense.adjoint(y, k), rtol=1e-5, atol=1e-5)
        assert adjointness_test(phys, subset=k) < 1e-5
    # the subsets partition the views
    allv = torch.cat([phys.subset_views(k) for k in range(K)]).sort().values
    assert allv.tolist() == list(range(DATA[1]))
    # a physics built for one partition projects a ViewSubset of any other: STIR's (k, K) are
    # taken from the subset, nothing is switched on the physics
    one = SIRFPhysics(problem["am"])
    for sub in one.subsets(K):
        torch.testing.assert_close(one.forward(x, sub), dense.forward(x, sub), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(one.sensitivity(sub), dense.sensitivity(sub), rtol=1e-5,
                                   atol=1e-5)
    assert one.num_subsets == 1
    with pytest.raises(ValueError, match="whole STIR subsets"):
        one._forward_linear(x[None].float(), torch.tensor([0, 1]))


def test_likelihood_equals_sirf_objective_subsets_included(problem):
    obj = fs.PoissonLogLikelihood(problem["acq"])
    obj.set_acquisition_model(problem["am"])
    K = 2
    obj.set_num_subsets(K)
    obj.set_up(problem["img"])
    lik = sirf_likelihood(problem["am"], problem["acq"], num_subsets=K)
    x = problem["x_true"].float()
    img = problem["img"].get_uniform_copy(0.0)
    img.fill(x.numpy())
    assert float(lik.value(x)) == pytest.approx(obj.value(img), rel=1e-5)
    torch.testing.assert_close(lik.gradient(x), torch.from_numpy(obj.gradient(img).as_array()),
                               rtol=1e-4, atol=1e-4)
    for k in range(K):
        torch.testing.assert_close(lik.gradient(x, k),
                                   torch.from_numpy(obj.gradient(img, k).as_array()),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(lik.sensitivity(k),
                                   torch.from_numpy(obj.get_subset_sensitivity(k).as_array()),
                                   rtol=1e-5, atol=1e-5)


def test_mismatched_geometry_is_refused(problem):
    wrong = fs.AcquisitionData(np.ones((DATA[0], DATA[1] + 1, DATA[2])))
    with pytest.raises(ValueError, match="mismatched geometry"):
        sirf_likelihood(problem["am"], wrong)
    tof = fs.AcquisitionData(np.ones((2, *DATA)))
    with pytest.raises(NotImplementedError, match="TOF"):
        acquisition_to_torch(tof)
    unset = fs.AcquisitionModel(np.eye(3), (1, 1, 3))
    with pytest.raises(ValueError, match="not set up"):
        SIRFPhysics(unset)


def _objective(problem, K=1):
    obj = fs.PoissonLogLikelihood(problem["acq"])
    obj.set_acquisition_model(problem["am"])
    obj.set_num_subsets(K)
    obj.set_up(problem["img"])
    return obj


def test_objective_route_gives_exact_em_updates(problem):
    K = 2
    lik = ObjectiveFunctionLikelihood(_objective(problem), problem["img"], num_subsets=K)
    dense = PoissonLogLikelihood(_dense_subsets(problem["dense"], K), problem["y"])
    x = problem["x_true"]
    for k in (None, 0, 1):
        torch.testing.assert_close(lik.em_update(x.float(), k).double(), dense.em_update(x, k),
                                   rtol=1e-4, atol=1e-5)
    # MLEM and OSEM through the objective equal the oracle's
    x0 = torch.ones(IMG, dtype=torch.float32)
    torch.testing.assert_close(mlem(lik, x0, num_iterations=5, progress=False).double(),
                               mlem(dense, x0.double(), num_iterations=5, progress=False),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        osem(lik, x0, num_subsets=K, num_epochs=3, progress=False).double(),
        osem(dense, x0.double(), num_subsets=K, num_epochs=3, progress=False),
        rtol=1e-4, atol=1e-4)


def test_objective_uniform_image_matches_net_counts_without_background(problem):
    problem["am"].a = None
    lik = ObjectiveFunctionLikelihood(_objective(problem), problem["img"])
    dense = PoissonLogLikelihood(DenseMatrixPhysics(problem["dense"].matrix, IMG, DATA),
                                 problem["y"])
    from sirf_diffusion.samplers.em_steps import uniform_image

    torch.testing.assert_close(uniform_image(lik).double(), uniform_image(dense),
                               rtol=1e-4, atol=0)


def test_objective_route_is_a_likelihood_without_projections(problem):
    lik = ObjectiveFunctionLikelihood(_objective(problem), problem["img"], num_views=DATA[1])
    from sirf_diffusion.samplers.methods import reconstruct

    assert isinstance(lik, Likelihood) and not isinstance(lik, ProjectingLikelihood)
    assert not hasattr(lik, "physics") and not hasattr(lik, "data")
    assert lik.image_shape == IMG and lik.voxel_size_mm == (4.0, 2.0, 2.0)
    with pytest.raises(TypeError, match="no projections"):
        reconstruct("dps", lik, GaussianDenoiser(), num_steps=2, step_size=1.0, progress=False)
    with pytest.raises(ValueError, match="num_subsets"):
        lik.subsets(DATA[1] + 1)
    with pytest.raises(NotImplementedError, match="all data only"):
        lik.value(problem["x_true"].float(), ViewSubset(0, 2))


def test_objective_subsets_are_immutable_objects(problem):
    """Subsets of any K on one objective likelihood: SIRF's objective is set up for the K of the
    subset used, the default partition stays, and the cost is counted per call."""
    obj = _objective(problem)
    lik = ObjectiveFunctionLikelihood(obj, problem["img"], num_subsets=2)
    x = problem["x_true"].float()
    dense = PoissonLogLikelihood(_dense_subsets(problem["dense"], 2), problem["y"].float())
    for K in (3, 2):
        for sub in lik.subsets(K):
            torch.testing.assert_close(lik.gradient(x, sub), dense.gradient(x, sub),
                                       rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(lik.sensitivity(sub), dense.sensitivity(sub),
                                       rtol=1e-5, atol=1e-5)
    assert obj.num_subsets == 2 and lik.num_subsets == 2
    torch.testing.assert_close(lik.gradient(x, 1), dense.gradient(x, ViewSubset(1, 2)),
                               rtol=1e-4, atol=1e-4)
    with lik.count_projections() as cost:
        lik.gradient(x, ViewSubset(0, 4))
        lik.value(x)
    assert (cost.forward, cost.adjoint) == (1.25, 0.25)


@pytest.mark.parametrize("method", ["lisch", "dds"])
def test_reconstructor_is_the_library_sampler(problem, method):
    """SIRF's reconstructor calls, in SIRF's order, give the library's result on the same data."""
    from sirf_diffusion.samplers.methods import reconstruct

    obj = _objective(problem)
    recon = DiffusionReconstructor(method, GaussianDenoiser(), num_steps=6, seed=3,
                                   progress=False, **({"num_mlem_iterations": 4}
                                                      if method == "lisch" else {}))
    recon.set_objective_function(obj)
    recon.set_num_subsets(2)
    recon.set_up(problem["img"])
    recon.set_current_estimate(problem["img"].get_uniform_copy(1.0))
    recon.process()
    out = recon.get_output()
    assert isinstance(out, fs.ImageData) and out.shape == IMG
    # oracle: the package's sampler on the dense physics with the same (STIR-like) subsets
    dense = PoissonLogLikelihood(_dense_subsets(problem["dense"], 1), problem["y"])
    kw = {"num_mlem_iterations": 4} if method == "lisch" else {"num_subsets": 2}
    ref = reconstruct(method, dense, GaussianDenoiser(), num_steps=6, progress=False,
                      generator=torch.Generator().manual_seed(3), **kw)
    np.testing.assert_allclose(out.as_array(), ref.mean.reshape(IMG).numpy(), rtol=2e-3,
                               atol=2e-3)
    assert recon.result.num_network_evaluations == 6


def test_reconstructor_with_acquisition_model_runs_dps(problem):
    recon = DiffusionReconstructor("dps", GaussianDenoiser(), num_steps=3, progress=False,
                                   step_size=0.5)
    recon.set_acquisition_model(problem["am"])
    recon.set_acquisition_data(problem["acq"])
    recon.set_up(problem["img"])
    recon.set_current_estimate(problem["img"])
    recon.process()
    out = recon.get_output()
    assert isinstance(out, fs.ImageData) and np.isfinite(out.as_array()).all()


def test_reconstructor_usage_errors(problem):
    recon = DiffusionReconstructor("lisch", GaussianDenoiser(), progress=False)
    with pytest.raises(ValueError, match="set_objective_function"):
        recon.set_up(problem["img"])
    recon.set_objective_function(_objective(problem))
    with pytest.raises(RuntimeError, match="set_up"):
        recon.process()
    recon.set_up(problem["img"])
    with pytest.raises(RuntimeError, match="current estimate"):
        recon.process()
    with pytest.raises(RuntimeError, match="process"):
        recon.get_output()
    with pytest.raises(ValueError, match="method"):
        DiffusionReconstructor("osem")
