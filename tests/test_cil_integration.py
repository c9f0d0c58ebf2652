"""CIL integration: the step-by-step machinery (no toolkit) and the CIL classes (real CIL).

The CIL tests import CIL through :func:`toolkits.require`: skipped when CIL is missing, failed
when ``SIRF_DIFFUSION_REQUIRE_TOOLKITS=1``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_diffusion_prior import FakeSIRFImage, GaussianDenoiser, poisson_problem, prior_layout
from toolkits import require

from sirf_diffusion.integrations import DiffusionPrior, to_numpy
from sirf_diffusion.integrations.cil import (
    DiffusionStepper,
    prepare_diffusion_sampling,
    require_cil,
)
from sirf_diffusion.samplers.loop import reverse_diffusion
from sirf_diffusion.samplers.methods import reconstruct

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gaussian_denoiser(shape=(1, 4, 4), mu=1.0, var=0.3, dtype=torch.float32):
    return GaussianDenoiser(prior_layout(torch.full(shape, mu, dtype=dtype)),
                            prior_layout(torch.full(shape, var, dtype=dtype)))


# ============================================================================ no toolkit needed
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("last_sigma", [0.0, 0.05])
def test_stepper_reproduces_reverse_diffusion(eta, last_sigma):
    D = gaussian_denoiser(dtype=DT)
    sigmas = torch.tensor([3.0, 1.5, 0.6, 0.2, last_sigma], dtype=DT)

    def dc(x0, ctx):  # a data-consistency rule that uses the context
        ctx.info["step"] = ctx.step
        return 0.9 * x0 + 0.1 * ctx.x

    seen = []
    ref = reverse_diffusion(D, sigmas, shape=(2, 1, 4, 4), eta=eta, data_consistency=dc,
                            generator=torch.Generator().manual_seed(1), progress=False, dtype=DT,
                            callback=lambda d: seen.append(d))
    st = DiffusionStepper(D, sigmas, shape=(2, 1, 4, 4), eta=eta, data_consistency=dc,
                          generator=torch.Generator().manual_seed(1), dtype=DT)
    assert st.num_steps == 4 and not st.done
    with pytest.raises(RuntimeError, match="no generative step"):
        st.result()
    for k in range(4):
        info = st.step()
        assert info.keys() == seen[k].keys() and info["step"] == k
        assert torch.equal(info["x"], seen[k]["x"])
    assert st.done
    assert torch.equal(st.result(), ref)
    with pytest.raises(StopIteration):
        st.step()


def test_stepper_validation():
    D = gaussian_denoiser()
    with pytest.raises(ValueError, match="decreasing"):
        DiffusionStepper(D, torch.tensor([1.0, 2.0]), shape=(1, 1, 4, 4))
    with pytest.raises(ValueError, match="eta"):
        DiffusionStepper(D, torch.tensor([2.0, 0.0]), shape=(1, 1, 4, 4), eta=2.0)
    with pytest.raises(ValueError, match="shape or x_init"):
        DiffusionStepper(D, torch.tensor([2.0, 0.0]))
    with pytest.raises(TypeError, match="callable"):
        DiffusionStepper(None, torch.tensor([2.0, 0.0]), shape=(1, 1, 4, 4))


@pytest.mark.parametrize("method,options", [
    ("lisch", {"num_mlem_iterations": 4}),
    ("dds", {"beta": 0.5, "num_subsets": 2, "init_epochs": 3}),
])
def test_prepared_run_matches_reconstruct(method, options):
    lik, _ = poisson_problem(dtype=torch.float32)  # float32: the samplers' default dtype
    D = gaussian_denoiser()
    ref = reconstruct(method, lik, D, num_steps=5, eta=0.5, num_samples=2,
                      generator=torch.Generator().manual_seed(3), progress=False, **options)
    run = prepare_diffusion_sampling(method, lik, D, num_steps=5, eta=0.5, num_samples=2,
                                     generator=torch.Generator().manual_seed(3), **options)
    assert run.samples() is None
    torch.testing.assert_close(run.estimate(), run.init_image.reshape(lik.physics.image_shape))
    assert math.isfinite(run.init_pll)
    while not run.stepper.done:
        run.stepper.step()
    assert torch.equal(run.samples(), ref.sample)
    assert run.normalisation.to_dict() == ref.normalisation.to_dict()
    torch.testing.assert_close(run.estimate(), ref.mean)


def test_prepare_refuses_wrong_options():
    lik, _ = poisson_problem()
    D = gaussian_denoiser(dtype=DT)
    with pytest.raises(ValueError, match="method must be"):
        prepare_diffusion_sampling("sde", lik, D, num_steps=2)
    with pytest.raises(ValueError, match="do not apply to method 'lisch'"):
        prepare_diffusion_sampling("lisch", lik, D, num_steps=2, beta=1.0)
    with pytest.raises(ValueError, match="num_steps=3 but sigmas"):
        prepare_diffusion_sampling("dds", lik, D, num_steps=3, sigmas=torch.tensor([1.0, 0.0]))
    with pytest.raises(TypeError, match="PoissonLogLikelihood"):
        prepare_diffusion_sampling("dds", object(), D, num_steps=2)
    with pytest.raises(ValueError, match="step_size"):
        prepare_diffusion_sampling("dps", lik, D, num_steps=2)


def test_missing_cil_gives_install_route(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cil(name, *args, **kwargs):
        if name == "cil" or name.startswith("cil."):
            raise ImportError("No module named 'cil'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cil)
    with pytest.raises(ImportError, match="conda install -c conda-forge -c ccpi cil"):
        require_cil()


# ============================================================================ real CIL
# each test starts with require("cil"): skipped without CIL, FAILED (not an error of a fixture)
# when SIRF_DIFFUSION_REQUIRE_TOOLKITS=1

def cil_image(values: np.ndarray):
    from cil.framework import ImageGeometry

    z, y, x = values.shape
    ig = ImageGeometry(voxel_num_x=x, voxel_num_y=y, voxel_num_z=z)
    img = ig.allocate(0)
    img.fill(values.astype(np.float32))
    return img


def _gaussian_prior(shape, beta=0.8, sigma=0.2, scale=2.0):
    mu = torch.full(shape, 1.2)
    var = torch.full(shape, 0.3)
    D = GaussianDenoiser(prior_layout(mu), prior_layout(var))
    return DiffusionPrior(D, sigma, beta, normalisation=scale)


def test_cil_function_out_conventions():
    cil = require("cil")
    from sirf_diffusion.integrations.cil import DiffusionPriorFunction

    rng = np.random.default_rng(0)
    u = (1 + rng.random((3, 4, 5))).astype(np.float32)
    x = cil_image(u)
    prior = _gaussian_prior((3, 4, 5))
    f = DiffusionPriorFunction(prior)
    assert isinstance(f, cil.optimisation.functions.Function)
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
    # CIL's function algebra: scaled and summed functions call gradient(x, out=...)
    g2 = (2 * f).gradient(x)
    np.testing.assert_allclose(g2.as_array(), 2 * ref_g, rtol=1e-5, atol=1e-6)
    out = x.geometry.allocate(0)
    (2 * f).gradient(x, out=out)
    np.testing.assert_allclose(out.as_array(), 2 * ref_g, rtol=1e-5, atol=1e-6)
    L2 = cil.optimisation.functions.L2NormSquared(b=x.geometry.allocate(1.0))
    gs = (f + L2).gradient(x)
    np.testing.assert_allclose(gs.as_array(), ref_g + 2 * (u - 1), rtol=1e-5, atol=1e-5)
    # built from a denoiser and keyword arguments
    f2 = DiffusionPriorFunction(prior.denoiser, sigma=0.2, penalisation_factor=0.8)
    f2.set_up(x)
    assert math.isclose(float(f2.prior.get_normalisation().scale),
                        float(u[u > 0.05 * u.max()].mean()), rel_tol=1e-5)
    with pytest.raises(TypeError, match="prior_kwargs"):
        DiffusionPriorFunction(prior, sigma=0.1)


def test_cil_solvers_with_the_prior_function():
    """FISTA (uses proximal) and GD (uses gradient) on 1/2||u - b||^2 + R(u) reach the closed form
    of the Gaussian prior."""
    require("cil")
    from cil.optimisation.algorithms import FISTA, GD
    from cil.optimisation.functions import L2NormSquared

    from sirf_diffusion.integrations.cil import DiffusionPriorFunction

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


def _float_problem():
    return poisson_problem(dtype=torch.float32)[0]


@pytest.mark.parametrize("name,options", [
    ("LikelihoodScheduledDiffusion", {"num_mlem_iterations": 4}),
    ("DecomposedDiffusion", {"beta": 0.5, "num_subsets": 2, "init_epochs": 3}),
])
def test_cil_algorithms_run_with_callbacks_and_stop(name, options):
    require("cil")
    from cil.optimisation.algorithms import Algorithm
    from cil.optimisation.utilities.callbacks import Callback

    import sirf_diffusion.integrations.cil as sdcil

    cls = getattr(sdcil, name)
    lik = _float_problem()
    D = gaussian_denoiser()
    method = "lisch" if name.startswith("Likelihood") else "dds"
    ref = reconstruct(method, lik, D, num_steps=5, generator=torch.Generator().manual_seed(2),
                      progress=False, **options)
    template = cil_image(np.zeros((1, 4, 4), np.float32))

    class Record(Callback):
        def __init__(self):
            super().__init__(verbose=0)
            self.seen = []

        def __call__(self, algorithm):
            self.seen.append((algorithm.iteration, algorithm.step_info.get("i")))

    algo = cls(lik, D, template=template, num_steps=5, generator=torch.Generator().manual_seed(2),
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
    np.testing.assert_allclose(sol.as_array(), ref.mean.numpy().reshape(sol.shape), rtol=1e-6,
                               atol=1e-6)
    assert torch.equal(algo.samples, ref.sample)
    # the objective is the negative PLL: initial image, then every step
    assert len(algo.objective) == 6 and algo.iterations == [-1, 1, 2, 3, 4, 5]
    assert math.isclose(algo.objective[0], -algo.run_state.init_pll, rel_tol=1e-12)
    np.testing.assert_allclose(algo.objective[1:], [-p[0] for p in ref.pll.tolist()], rtol=1e-6)
    assert math.isclose(algo.objective[-1], -float(lik.value(ref.sample[0])), rel_tol=1e-6)

    # StopIteration from a callback stops early; a later run() continues the same chain
    def stop_at_2(algorithm):
        if algorithm.iteration >= 2:
            raise StopIteration

    algo2 = cls(lik, D, template=FakeSIRFImage(np.zeros((1, 4, 4))), num_steps=5,
                generator=torch.Generator().manual_seed(2), **options)
    algo2.run(10, callbacks=[stop_at_2])
    assert algo2.iteration == 2 and algo2.run_state.stepper.step_index == 2
    assert isinstance(algo2.solution, FakeSIRFImage)
    algo2.run(10, callbacks=[])
    assert algo2.iteration == 5
    np.testing.assert_allclose(to_numpy(algo2.solution), ref.mean.numpy(), rtol=1e-6, atol=1e-6)
    # update() after the last step raises StopIteration (CIL's stop signal)
    with pytest.raises(StopIteration):
        algo2.update()
    # CIL's own progress callbacks work with it
    algo3 = cls(lik, D, num_steps=3, **options)
    algo3.run(3, verbose=0)
    assert isinstance(algo3.solution, torch.Tensor) and algo3.iteration == 3


def test_cil_algorithm_refuses_a_wrong_template():
    require("cil")
    from sirf_diffusion.integrations.cil import LikelihoodScheduledDiffusion

    lik = _float_problem()
    with pytest.raises(ValueError, match="template has shape"):
        LikelihoodScheduledDiffusion(lik, gaussian_denoiser(), template=np.zeros((2, 4, 4)),
                                     num_steps=2, num_mlem_iterations=2)


def test_cil_operator_of_the_physics():
    """``PETPhysicsOperator``: CIL's dot test, ``out=`` conventions, equal to the physics, and
    usable with CIL's KullbackLeibler (gradient = -grad PLL)."""
    require("cil")
    from cil.optimisation.functions import KullbackLeibler, OperatorCompositionFunction
    from cil.optimisation.operators import LinearOperator

    from sirf_diffusion.integrations.cil import PETPhysicsOperator

    lik = poisson_problem(dtype=torch.float32)[0]
    phys = lik.physics
    op = PETPhysicsOperator(phys)
    assert isinstance(op, LinearOperator) and op.is_linear()
    assert LinearOperator.dot_test(op, tolerance=4)
    x = op.domain_geometry().allocate("random", seed=1)
    y = op.direct(x)
    xt = torch.as_tensor(x.as_array()).reshape(phys.image_shape)
    np.testing.assert_allclose(y.as_array().reshape(phys.data_shape),
                               phys.forward_linear(xt).numpy(), rtol=1e-5, atol=1e-6)
    out = op.range_geometry().allocate(0)
    assert op.direct(x, out=out) is out
    np.testing.assert_allclose(out.as_array(), y.as_array())
    back = op.domain_geometry().allocate(0)
    assert op.adjoint(y, out=back) is back
    # CIL's KL(b=y, eta=additive) composed with the operator is -L (up to a constant)
    b = op.range_geometry().allocate(0)
    b.fill(lik.data.numpy().reshape(b.shape))
    eta = op.range_geometry().allocate(0)
    eta.fill(phys.additive_term.numpy().reshape(eta.shape))
    f = OperatorCompositionFunction(KullbackLeibler(b=b, eta=eta), op)
    g_cil = f.gradient(x).as_array().reshape(phys.image_shape)
    np.testing.assert_allclose(g_cil, -lik.gradient(xt).numpy(), rtol=1e-4, atol=1e-4)
    phys.set_num_subsets(2)
    sub = PETPhysicsOperator(phys, subset=1)
    ys = sub.direct(x).as_array().reshape(phys.data_shape[0], -1, phys.data_shape[2])
    np.testing.assert_allclose(ys, phys.forward_linear(xt, 1).numpy(), rtol=1e-5, atol=1e-6)
    assert LinearOperator.dot_test(sub, tolerance=4)
