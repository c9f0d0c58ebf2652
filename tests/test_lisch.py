"""PET-LiSch: likelihood schedule, exact MLEM steps, reaching the scheduled likelihood.

No trained network: an exact Gaussian denoiser and a small dense Poisson problem.
"""

import pytest
import torch
from conftest import GaussianDenoiser, poisson_problem

from sirf_diffusion.diffusion.normalisation import IntensityNormalisation
from sirf_diffusion.likelihood import Likelihood, PoissonLogLikelihood, ProjectingLikelihood
from sirf_diffusion.physics.base import DenseMatrixPhysics
from sirf_diffusion.recon.em import em_step, mlem
from sirf_diffusion.samplers import em_steps
from sirf_diffusion.samplers.dds import AnchoredEMDC
from sirf_diffusion.samplers.em_steps import ascend_to_target, em_ascent_step, uniform_image
from sirf_diffusion.samplers.lisch import (
    LikelihoodScheduleDC,
    likelihood_schedule,
    mlem_likelihood_schedule,
)
from sirf_diffusion.samplers.loop import StepContext, reverse_diffusion
from sirf_diffusion.samplers.methods import reconstruct

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


class GradientOnly:
    """A likelihood known only through values and gradients (like a SIRF objective function):
    the :class:`Likelihood` protocol of a Poisson log-likelihood, without its projections."""

    def __init__(self, lik: PoissonLogLikelihood) -> None:
        self._lik = lik
        for name in ("image_shape", "voxel_size_mm", "dtype", "device", "value", "gradient",
                     "value_and_gradient", "sensitivity", "em_update", "uniform_image",
                     "subsets", "count_projections"):
            setattr(self, name, getattr(lik, name))


def ctx(step, num_steps, x):
    one = torch.tensor(1.0, dtype=DT)
    return StepContext(step, num_steps, one, one * 0.5, x, None)


def test_likelihood_schedule_monotone_and_interpolates():
    pll = [0.0, 1.0, 3.0, 3.5, 4.0]                      # K = 4
    t = likelihood_schedule(pll, 8)                       # kappa_n = (n + 1) / 2
    assert t.tolist() == [0.5, 1.0, 2.0, 3.0, 3.25, 3.5, 3.75, 4.0]
    assert likelihood_schedule(pll, 2).tolist() == [3.0, 4.0]   # N < K: every other iterate
    assert likelihood_schedule(pll, 4).tolist() == pll[1:]       # N == K: the MLEM PLLs
    # rounding dips in MLEM's tail are levelled, never make the targets decrease
    t = likelihood_schedule([0.0, 2.0, 1.999, 3.0], 7)
    assert bool((t[1:] >= t[:-1]).all()) and float(t[-1]) == 3.0
    with pytest.raises(ValueError, match="at least 2"):
        likelihood_schedule([1.0], 5)
    with pytest.raises(ValueError, match="num_steps"):
        likelihood_schedule(pll, 0)
    with pytest.raises(ValueError, match="NaN"):
        likelihood_schedule([0.0, float("nan")], 3)


def test_mlem_schedule_uses_the_mlem_likelihoods():
    lik, _ = poisson_problem()
    sched = mlem_likelihood_schedule(lik, 5, 10)
    x = uniform_image(lik)
    expected = [float(lik.value(x))]
    for _ in range(5):
        x = mlem(lik, x, num_iterations=1, progress=False)
        expected.append(float(lik.value(x)))
    assert sched.pll == pytest.approx(expected, rel=1e-12)
    assert all(b > a for a, b in zip(expected, expected[1:]))        # MLEM is monotone
    assert torch.allclose(sched.image, x)
    assert float(sched.targets[-1]) == pytest.approx(expected[-1], rel=1e-12)
    assert float(sched.targets[1]) == pytest.approx(expected[1], rel=1e-12)   # kappa_1 = 1
    with pytest.raises(ValueError, match="positive integer"):
        mlem_likelihood_schedule(lik, 0, 10)


def test_ascent_step_alpha_one_is_exactly_mlem():
    lik, truth = poisson_problem()
    u = (truth * 0.7 + 0.3)[None]
    u_new, value = em_ascent_step(lik, u, alpha=1.0)
    x_em, _, v_em = em_step(lik, u, None)
    assert torch.equal(u_new, x_em) and torch.equal(value, v_em)
    assert torch.equal(u_new, mlem(lik, u, num_iterations=1, progress=False))
    # alpha = 1/2 goes half way along the EM direction
    half, _ = em_ascent_step(lik, u, alpha=0.5)
    assert torch.allclose(half, u + 0.5 * (x_em - u), rtol=1e-12, atol=0)


def test_lisch_rule_one_step_is_mlem_and_records_info():
    lik, truth = poisson_problem()
    norm = IntensityNormalisation(2.0)
    x0 = norm.to_prior(truth[None] * 0.8)
    rule = LikelihoodScheduleDC(lik, norm, torch.tensor([1e30]), max_likelihood_steps=1)
    c = ctx(0, 1, x0)
    out = rule(x0, c)
    u1 = mlem(lik, truth[None] * 0.8, num_iterations=1, progress=False)
    assert torch.equal(out, norm.to_prior(u1))
    assert c.info["n_likelihood_steps"] == [1] and c.info["n_likelihood_evaluations"] == 2
    assert c.info["pll"] == pytest.approx([float(lik.value(u1))], rel=1e-12)
    # a target below the estimate's PLL: no update, one evaluation, the estimate is kept
    low = LikelihoodScheduleDC(lik, norm, torch.tensor([-1e30]))
    c = ctx(0, 1, x0)
    assert torch.equal(low(x0, c), x0) and c.info["n_likelihood_steps"] == [0]
    assert c.info["n_likelihood_evaluations"] == 1


def test_lisch_reaches_the_mlem_target_with_adaptive_cost():
    lik, truth = poisson_problem()
    K, N = 10, 30
    norm = IntensityNormalisation(float(truth.mean()))
    mu = torch.ones(1, 1, 4, 4, dtype=DT)
    D = GaussianDenoiser(mu, torch.full_like(mu, 0.1))
    r = reconstruct("lisch", lik, D, norm, num_steps=N, num_samples=4, num_mlem_iterations=K,
                    generator=torch.Generator().manual_seed(1), progress=False, dtype=DT)
    sched = mlem_likelihood_schedule(lik, K, N)
    target, span = sched.pll[-1], sched.pll[-1] - sched.pll[0]
    assert float(r.pll_target[-1]) == pytest.approx(target, rel=1e-12)
    assert torch.allclose(r.pll_target, sched.targets)
    final = r.pll[-1]
    assert bool((final >= target).all()), (final, target)                # the target is reached
    assert bool((final <= target + 0.1 * span).all()), (final, target)   # ... and not far passed
    # every step ends at (or above) its scheduled likelihood unless the cap stopped it
    steps = r.likelihood_steps
    assert bool(((r.pll >= r.pll_target[:, None] - 1e-9) | (steps == 20)).all())
    # the cost adapts: steps whose estimate already meets the target take no likelihood step,
    # so LiSch spends fewer evaluations than a fixed per-step budget sized for its hardest step
    # (DDS with num_subiterations = that maximum) on the same case
    p = int(steps.max())
    assert int((steps == 0).sum()) > 0 and p > 1
    dds = reconstruct("dds", lik, D, norm, num_steps=N, num_samples=4, num_subsets=1,
                      num_subiterations=p, generator=torch.Generator().manual_seed(1), progress=False, dtype=DT)
    assert dds.num_likelihood_evaluations == N * p
    assert r.num_likelihood_evaluations < dds.num_likelihood_evaluations
    # forward projections in full-data passes of the batch: one test per step, one more per
    # ascent step of each sample still climbing
    assert r.num_likelihood_evaluations == pytest.approx(N + float(steps.sum()) / 4, rel=1e-12)
    # K is the data-fit knob: fewer MLEM iterations, lower final likelihood
    r2 = reconstruct("lisch", lik, D, norm, num_steps=N, num_samples=4, num_mlem_iterations=2,
                     generator=torch.Generator().manual_seed(1), progress=False, dtype=DT)
    assert bool((r2.pll[-1] < target).all())


def test_ascent_pays_the_adjoint_only_for_samples_that_climb():
    lik, truth = poisson_problem()
    u = (truth * 0.5 + 0.1)[None]
    ref = [u]
    for _ in range(3):
        ref.append(mlem(lik, ref[-1], num_iterations=1, progress=False))
    target = float(lik.value(ref[3]))                 # reached after exactly 3 MLEM updates
    f0, a0 = lik.num_forward, lik.num_adjoint
    res = ascend_to_target(lik, u, target)
    assert res.num_steps.tolist() == [3] and torch.equal(res.image, ref[3])
    assert lik.num_forward - f0 == 4 and lik.num_adjoint - a0 == 3      # 3 + 1 tests, 3 gradients
    assert (res.num_evaluations, res.num_gradients) == (4.0, 3.0)
    assert float(res.pll[0]) == pytest.approx(target, rel=1e-12)
    # a batch: the sample already at the target costs one forward projection and no adjoint
    both = torch.cat([u, ref[3]])
    f0, a0 = lik.num_forward, lik.num_adjoint
    res = ascend_to_target(lik, both, target)
    assert res.num_steps.tolist() == [3, 0] and torch.equal(res.image[1], ref[3][0])
    assert torch.allclose(res.image[0], ref[3][0], rtol=1e-12, atol=0)   # batched: ulps
    assert (res.num_evaluations, res.num_gradients) == (1 + 3 * 0.5, 3 * 0.5)
    assert lik.num_adjoint - a0 == 3

    g = GradientOnly(lik)
    assert isinstance(g, Likelihood) and not isinstance(g, ProjectingLikelihood)
    f0, a0 = lik.num_forward, lik.num_adjoint
    res_g = ascend_to_target(g, u, target)
    # without the expected data each gradient pays its own forward projection
    assert lik.num_forward - f0 == 4 + 3 and lik.num_adjoint - a0 == 3
    assert res_g.num_steps.tolist() == [3]
    assert torch.allclose(res_g.image, ref[3], rtol=1e-12, atol=0)


def test_lisch_with_a_3d_denoiser():
    lik, truth = poisson_problem(image_shape=(2, 3, 3), num_views=6, num_tangential=5)
    norm = IntensityNormalisation(float(truth.mean()))
    mu = torch.ones(1, 1, 2, 3, 3, dtype=DT)          # prior tensors [B, 1, z, y, x]
    D = GaussianDenoiser(mu, torch.full_like(mu, 0.2))
    r = reconstruct("lisch", lik, D, norm, num_steps=12, num_samples=2, num_mlem_iterations=6,
                    generator=torch.Generator().manual_seed(3), progress=False, dtype=DT)
    assert r.sample.shape == (2, 2, 3, 3) and bool((r.sample >= 0).all())
    assert bool((r.pll[-1] >= r.pll_target[-1]).all())


def test_lisch_bad_inputs():
    lik, truth = poisson_problem()
    norm = IntensityNormalisation(1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        LikelihoodScheduleDC(lik, norm, torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="alpha"):
        LikelihoodScheduleDC(lik, norm, torch.tensor([1.0]), alpha=0.0)
    with pytest.raises(ValueError, match="max_likelihood_steps"):
        LikelihoodScheduleDC(lik, norm, torch.tensor([1.0]), max_likelihood_steps=0)
    rule = LikelihoodScheduleDC(lik, norm, torch.tensor([1.0, 2.0]))
    D = GaussianDenoiser(torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="2 targets but the reverse diffusion has 3 steps"):
        reverse_diffusion(D, torch.tensor([2.0, 1.0, 0.5, 0.0]), shape=(1, 1, 4, 4),
                          data_consistency=rule, progress=False, dtype=DT)
    with pytest.raises(ValueError, match="image_shape"):   # a prior tensor of the wrong grid
        rule(torch.ones(1, 1, 5, 5, dtype=DT), ctx(0, 2, torch.ones(1, 1, 5, 5, dtype=DT)))
    with pytest.raises(ValueError, match="num_iterations"):
        reconstruct("lisch", lik, D, norm, num_steps=3, num_mlem_iterations=0, progress=False)


def test_voxels_outside_the_field_of_view_are_zeroed_not_amplified():
    """A voxel the scanner barely sees (column of A ~1e-7 of the others, like the corners of a
    square image outside the ring) has a huge EM preconditioner u / s: both EM rules set it to 0
    (fov_fraction), and with fov_fraction = 0 it is left to the ascent."""
    lik, truth = poisson_problem()
    A = lik.physics.matrix.clone()
    A[:, 0] *= 1e-7
    phys = DenseMatrixPhysics(A, lik.physics.image_shape, lik.physics.data_shape,
                              additive=lik.physics.additive_term)
    lik = PoissonLogLikelihood(phys, lik.data)
    norm = IntensityNormalisation(1.0)
    x0 = norm.to_prior(truth[None])
    x0.view(-1)[0] = 50.0                               # the prior puts activity there
    fov = em_steps.field_of_view(lik, x0, 0.01)
    assert fov.shape == truth.shape and not bool(fov.view(-1)[0]) and bool(fov.view(-1)[1:].all())
    for rule in (LikelihoodScheduleDC(lik, norm, torch.tensor([1e30]), max_likelihood_steps=3),
                 AnchoredEMDC(lik, norm, beta=0.0, precond_floor=0.1)):
        out = rule(x0, ctx(0, 1, x0))
        assert float(out.view(-1)[0]) == 0.0 and bool((out.view(-1)[1:] > 0).all())
        rule.fov_fraction = 0.0
        kept = rule(x0, ctx(0, 1, x0))
        assert float(kept.view(-1)[0]) > 0
    assert em_steps.field_of_view(lik, x0, 0.0) is None
    with pytest.raises(ValueError, match="fov_fraction"):
        em_steps.field_of_view(lik, x0, 1.0)
    with pytest.raises(ValueError, match="fov_fraction"):
        LikelihoodScheduleDC(lik, norm, torch.tensor([0.0]), fov_fraction=-0.1)
