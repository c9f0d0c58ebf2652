"""CIL integration: the CIL classes on CIL's protocol, against ``reconstruct`` bit for bit.

Every test marked with the ``cil`` fixture runs twice: on ``tests/fake_cil.py`` (a stand-in with
CIL's ``Algorithm`` / ``Function`` / ``LinearOperator`` protocol, so the non-toolkit suite covers
the classes) and on the real CIL (``toolkit``: skipped when CIL is missing, failed when
``SIRF_DIFFUSION_REQUIRE_TOOLKITS=1``).  The tests of CIL's own solvers and function algebra need
the real CIL.
"""

from __future__ import annotations

import importlib
import math
import sys

import fake_sirf as fs
import numpy as np
import pytest
import torch
from conftest import GaussianDenoiser, gaussian_denoiser, poisson_problem, prior_layout
from toolkits import require

from sirf_diffusion.integrations import DiffusionPrior, to_numpy
from sirf_diffusion.physics.base import ViewSubset
from sirf_diffusion.samplers.methods import reconstruct

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.toolkit)])
def cil(request):
    """``sirf_diffusion.integrations.cil`` on the fake or on the real CIL."""
    if request.param == "fake":
        return request.getfixturevalue("fake_cil")
    require("cil")
    return importlib.import_module("sirf_diffusion.integrations.cil")


def cil_image(values: np.ndarray):
    from cil.framework import ImageGeometry

    z, y, x = values.shape
    ig = ImageGeometry(voxel_num_x=x, voxel_num_y=y, voxel_num_z=z)
    img = ig.allocate(0)
    img.fill(values.astype(np.float32).reshape(img.shape))
    return img


def _gaussian_prior(shape, beta=0.8, sigma=0.2, scale=2.0):
    mu = torch.full(shape, 1.2)
    var = torch.full(shape, 0.3)
    D = GaussianDenoiser(prior_layout(mu), prior_layout(var))
    return DiffusionPrior(D, sigma, beta, normalisation=scale)


# ============================================================================ the module
def test_missing_cil_gives_install_route(monkeypatch):
    import sirf_diffusion.integrations as integrations

    monkeypatch.setitem(sys.modules, "cil", None)
    monkeypatch.delitem(sys.modules, "sirf_diffusion.integrations.cil", raising=False)
    monkeypatch.delattr(integrations, "cil", raising=False)
    with pytest.raises(ImportError, match="conda install -c conda-forge -c ccpi cil"):
        importlib.import_module("sirf_diffusion.integrations.cil")
    with pytest.raises(ImportError, match="SIRF SuperBuild"):
        integrations.DiffusionPriorFunction  # noqa: B018  (the lazy name)
    from sirf_diffusion.toolkits import require_toolkit

    with pytest.raises(ImportError, match="conda install -c conda-forge -c ccpi cil"):
        require_toolkit("cil")
    with pytest.raises(ValueError, match="toolkit must be one of"):
        require_toolkit("matlab")  # type: ignore[arg-type]


def test_classes_are_ordinary_subclasses(cil):
    from cil.optimisation.algorithms import Algorithm
    from cil.optimisation.functions import Function
    from cil.optimisation.operators import LinearOperator

    import sirf_diffusion.integrations as integrations

    assert not hasattr(cil, "__getattr__")
    for name in ("LikelihoodScheduledDiffusion", "DecomposedDiffusion",
                 "DiffusionPosteriorSampling"):
        cls = getattr(cil, name)
        assert issubclass(cls, Algorithm) and cls.__module__ == cil.__name__
        assert getattr(integrations, name) is cls           # the lazy name of the package
    assert issubclass(cil.DiffusionPriorFunction, Function)
    assert issubclass(cil.PETPhysicsOperator, LinearOperator)


def test_deprecated_prepare_diffusion_sampling(cil):
    from sirf_diffusion.samplers.run import DiffusionRun

    lik, _ = poisson_problem(dtype=torch.float32)
    with pytest.warns(DeprecationWarning, match="samplers.run.prepare"):
        run = cil.prepare_diffusion_sampling("dds", lik, gaussian_denoiser(), num_steps=2)
    assert isinstance(run, DiffusionRun) and run.stepper.num_steps == 2


# ============================================================================ Function
def test_cil_function_out_conventions(cil):
    rng = np.random.default_rng(0)
    u = (1 + rng.random((3, 4, 5))).astype(np.float32)
    x = cil_image(u)
    prior = _gaussian_prior((3, 4, 5))
    f = cil.DiffusionPriorFunction(prior)
    ref_g = prior.get_gradient(u)
    # __call__: a float
    v = f(x)
    assert isinstance(v, float) and math.isclose(v, prior.get_value(u), rel_tol=1e-6)
    # gradient: a new container without out; with out, out is filled AND returned
    g = f.gradient(x)
    assert type(g) is type(x) and g is not x and g.geometry == x.geometry
    np.testing.assert_allclose(g.as_array(), ref_g, rtol=1e-5, atol=1e-6)
    out = x.geometry.allocate(0)
    r = f.gradient(x, out=out)
    assert r is out
    np.testing.assert_allclose(out.as_array(), ref_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x.as_array(), u)  # input untouched
    # proximal: same conventions
    p_ref = prior.proximal(u, 0.5)
    p = f.proximal(x, 0.5)
    assert type(p) is type(x)
    np.testing.assert_allclose(p.as_array(), p_ref, rtol=1e-5, atol=1e-6)
    out = x.geometry.allocate(0)
    assert f.proximal(x, 0.5, out=out) is out
    np.testing.assert_allclose(out.as_array(), p_ref, rtol=1e-5, atol=1e-6)
    # built from a denoiser and keyword arguments
    f2 = cil.DiffusionPriorFunction(prior.denoiser, sigma=0.2, penalisation_factor=0.8)
    f2.set_up(x)
    assert math.isclose(float(f2.prior.get_normalisation().scale),
                        float(u[u > 0.05 * u.max()].mean()), rel_tol=1e-5)
    with pytest.raises(TypeError, match="prior_kwargs"):
        cil.DiffusionPriorFunction(prior, sigma=0.1)


def test_cil_function_algebra_and_solvers():
    """CIL's function algebra calls gradient(x, out=...); FISTA (proximal) and GD (gradient) on
    1/2||u - b||^2 + R(u) reach the closed form of the Gaussian prior (real CIL)."""
    cil = require("cil")
    from cil.optimisation.algorithms import FISTA, GD
    from cil.optimisation.functions import L2NormSquared

    from sirf_diffusion.integrations.cil import DiffusionPriorFunction

    rng = np.random.default_rng(0)
    u = (1 + rng.random((3, 4, 5))).astype(np.float32)
    x = cil_image(u)
    prior = _gaussian_prior((3, 4, 5))
    f = DiffusionPriorFunction(prior)
    ref_g = prior.get_gradient(u)
    g2 = (2 * f).gradient(x)
    np.testing.assert_allclose(g2.as_array(), 2 * ref_g, rtol=1e-5, atol=1e-6)
    out = x.geometry.allocate(0)
    (2 * f).gradient(x, out=out)
    np.testing.assert_allclose(out.as_array(), 2 * ref_g, rtol=1e-5, atol=1e-6)
    L2 = cil.optimisation.functions.L2NormSquared(b=x.geometry.allocate(1.0))
    gs = (f + L2).gradient(x)
    np.testing.assert_allclose(gs.as_array(), ref_g + 2 * (u - 1), rtol=1e-5, atol=1e-5)

    shape = (2, 3, 4)
    b_np = (1 + np.random.default_rng(1).random(shape)).astype(np.float32)
    b = cil_image(b_np)
    beta, sigma, s = 0.8, 0.2, 2.0
    f = DiffusionPriorFunction(_gaussian_prior(shape, beta, sigma, s))
    w = 0.3 + sigma**2
    expected = (b_np + beta * 1.2 / (w * s)) / (1 + beta / (w * s**2))
    data = 0.5 * L2NormSquared(b=b)
    fista = FISTA(b.geometry.allocate(0), data, f, step_size=0.5)
    fista.run(60, verbose=0)
    np.testing.assert_allclose(fista.solution.as_array(), expected, rtol=1e-4, atol=1e-4)
    gd = GD(b.geometry.allocate(0), data + f, 0.5)
    gd.run(200, verbose=0)
    np.testing.assert_allclose(gd.solution.as_array(), expected, rtol=1e-4, atol=1e-4)


# ============================================================================ Algorithms
@pytest.mark.parametrize("name,method,options", [
    ("LikelihoodScheduledDiffusion", "lisch", {"num_mlem_iterations": 4}),
    ("DecomposedDiffusion", "dds", {"beta": 0.5, "num_subsets": 2, "init_epochs": 3}),
    ("DiffusionPosteriorSampling", "dps", {"step_size": 0.5}),
])
def test_cil_algorithms_are_reconstruct_step_by_step(cil, name, method, options):
    from cil.optimisation.algorithms import Algorithm
    from cil.optimisation.utilities.callbacks import Callback

    cls = getattr(cil, name)
    lik, _ = poisson_problem(dtype=torch.float32)
    D = gaussian_denoiser()
    common = dict(num_steps=5, num_samples=2, eta=0.5)
    ref = reconstruct(method, lik, D, generator=torch.Generator().manual_seed(2), progress=False,
                      **common, **options)
    template = cil_image(np.zeros((1, 4, 4), np.float32))

    class Record(Callback):
        def __init__(self):
            super().__init__(verbose=0)
            self.seen = []

        def __call__(self, algorithm):
            self.seen.append((algorithm.iteration, algorithm.step_info.get("i")))

    algo = cls(lik, D, template=template, generator=torch.Generator().manual_seed(2), **common,
               **options)
    assert isinstance(algo, Algorithm) and algo.num_steps == 5
    rec = Record()
    algo.run(100, callbacks=[rec])  # more iterations than steps: stops by itself
    assert algo.iteration == 5
    assert [i for i, _ in rec.seen] == [0, 1, 2, 3, 4, 5]
    assert [k for _, k in rec.seen] == [None, 0, 1, 2, 3, 4]
    sol = algo.solution
    assert type(sol) is type(template) and sol.shape == template.shape
    # CIL drops a dimension of size 1: a one-slice geometry is 2D
    np.testing.assert_array_equal(sol.as_array(), ref.mean.numpy().reshape(sol.shape))
    assert torch.equal(algo.samples, ref.sample)               # bit for bit
    res = algo.result()
    assert torch.equal(res.pll, ref.pll) and res.config == ref.config
    assert res.num_network_evaluations == ref.num_network_evaluations
    # the objective is the negative PLL: initial image, then every step
    assert len(algo.objective) == 6 and algo.iterations == [-1, 1, 2, 3, 4, 5]
    assert math.isclose(algo.objective[0], -algo.run_state.init_pll, rel_tol=1e-12)
    expected = [-sum(p) / len(p) for p in ref.pll.tolist()]
    np.testing.assert_allclose(algo.objective[1:], expected, rtol=1e-6)
    if method != "dps":   # DPS records the PLL of the unguided estimate
        assert math.isclose(algo.objective[-1], -float(lik.value(ref.sample).mean()),
                            rel_tol=1e-5)

    # StopIteration from a callback stops early; a later run() continues the same chain
    def stop_at_2(algorithm):
        if algorithm.iteration >= 2:
            raise StopIteration

    algo2 = cls(lik, D, template=fs.ImageData(np.zeros((1, 4, 4))),
                generator=torch.Generator().manual_seed(2), **common, **options)
    algo2.run(10, callbacks=[stop_at_2])
    assert algo2.iteration == 2 and algo2.run_state.stepper.step_index == 2
    assert isinstance(algo2.solution, fs.ImageData)
    algo2.run(10, callbacks=[])
    assert algo2.iteration == 5
    np.testing.assert_allclose(to_numpy(algo2.solution), ref.mean.numpy(), rtol=1e-6, atol=1e-6)
    # update() after the last step raises StopIteration (CIL's stop signal)
    with pytest.raises(StopIteration):
        algo2.update()
    # CIL's own progress callbacks work with it; no template: a torch tensor
    algo3 = cls(lik, D, num_steps=3, **options)
    algo3.run(3, verbose=0)
    assert isinstance(algo3.solution, torch.Tensor) and algo3.iteration == 3


def test_cil_algorithm_refuses_a_wrong_template_and_options(cil):
    lik, _ = poisson_problem(dtype=torch.float32)
    with pytest.raises(ValueError, match="template has shape"):
        cil.LikelihoodScheduledDiffusion(lik, gaussian_denoiser(), template=np.zeros((2, 4, 4)),
                                         num_steps=2, num_mlem_iterations=2)
    with pytest.raises(ValueError, match="do not apply to method 'lisch'"):
        cil.LikelihoodScheduledDiffusion(lik, gaussian_denoiser(), num_steps=2, beta=1.0)


# ============================================================================ LinearOperator
def test_cil_operator_of_the_physics(cil):
    """``PETPhysicsOperator``: ``out=`` conventions, equal to the physics, adjoint, subsets."""
    lik, _ = poisson_problem(dtype=torch.float32)
    phys = lik.physics
    op = cil.PETPhysicsOperator(phys)
    assert op.is_linear()
    x = cil_image(np.random.default_rng(1).random(phys.image_shape).astype(np.float32))
    y = op.direct(x)
    xt = torch.as_tensor(x.as_array()).reshape(phys.image_shape)
    np.testing.assert_allclose(y.as_array().reshape(phys.data_shape),
                               phys.forward_linear(xt).numpy(), rtol=1e-5, atol=1e-6)
    out = op.range_geometry().allocate(0)
    assert op.direct(x, out=out) is out
    np.testing.assert_allclose(out.as_array(), y.as_array())
    back = op.domain_geometry().allocate(0)
    assert op.adjoint(y, out=back) is back
    r = np.random.default_rng(2).random(y.shape).astype(np.float32)
    yr = op.range_geometry().allocate(0)
    yr.fill(r)
    lhs = float((op.direct(x).as_array().astype(np.float64) * r).sum())
    rhs = float((x.as_array().astype(np.float64) * op.adjoint(yr).as_array()).sum())
    assert math.isclose(lhs, rhs, rel_tol=1e-5)
    # a subset operator projects the views of an immutable ViewSubset
    sub = cil.PETPhysicsOperator(phys, subset=ViewSubset(1, 2))
    ys = sub.direct(x).as_array().reshape(phys.data_shape[0], -1, phys.data_shape[2])
    np.testing.assert_allclose(ys, phys.forward_linear(xt, ViewSubset(1, 2)).numpy(), rtol=1e-5,
                               atol=1e-6)
    assert phys.num_subsets == 1                               # nothing switched on the physics


def test_cil_operator_dot_test_and_kullback_leibler():
    """CIL's dot test, and CIL's KullbackLeibler composed with the operator (real CIL)."""
    require("cil")
    from cil.optimisation.functions import KullbackLeibler, OperatorCompositionFunction
    from cil.optimisation.operators import LinearOperator

    from sirf_diffusion.integrations.cil import PETPhysicsOperator

    lik = poisson_problem(dtype=torch.float32)[0]
    phys = lik.physics
    op = PETPhysicsOperator(phys)
    assert isinstance(op, LinearOperator) and LinearOperator.dot_test(op, tolerance=4)
    assert LinearOperator.dot_test(PETPhysicsOperator(phys, subset=ViewSubset(1, 2)),
                                   tolerance=4)
    x = op.domain_geometry().allocate("random", seed=1)
    xt = torch.as_tensor(x.as_array()).reshape(phys.image_shape)
    b = op.range_geometry().allocate(0)
    b.fill(lik.data.numpy().reshape(b.shape))
    eta = op.range_geometry().allocate(0)
    eta.fill(phys.additive_term.numpy().reshape(eta.shape))
    f = OperatorCompositionFunction(KullbackLeibler(b=b, eta=eta), op)
    g_cil = f.gradient(x).as_array().reshape(phys.image_shape)
    np.testing.assert_allclose(g_cil, -lik.gradient(xt).numpy(), rtol=1e-4, atol=1e-4)
