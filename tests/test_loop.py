"""The generative step and the reverse-diffusion loop against analytic oracles.

A Gaussian prior has an exact denoiser; the DDIM noise levels have the DDPM posterior as their
oracle at ``eta = 1``; toy denoisers pin the contract for denoisers that change during sampling
and that take extra conditioning.
"""

import math

import pytest
import torch
from conftest import GaussianDenoiser, gaussian_denoiser, poisson_problem

from sirf_diffusion.diffusion.normalisation import IntensityNormalisation
from sirf_diffusion.samplers.loop import (
    ConditionalDenoiser,
    DenoiserContext,
    DiffusionStepper,
    StepContext,
    ddim_noise_levels,
    reverse_diffusion,
)

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _geometric_sigmas(n, smax=80.0, smin=0.01):
    s = torch.exp(torch.linspace(math.log(smax), math.log(smin), n, dtype=torch.float64))
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_samples_match_gaussian_prior(eta):
    mu = torch.tensor([[[[1.0, -2.0, 0.5]]]], dtype=torch.float64)
    var = torch.tensor([[[[0.25, 1.0, 4.0]]]], dtype=torch.float64)
    D = GaussianDenoiser(mu, var)
    n = 4000
    sigmas = _geometric_sigmas(200)
    g = torch.Generator().manual_seed(1)
    x_init = mu + torch.sqrt(var + sigmas[0] ** 2) * torch.randn(n, 1, 1, 3, generator=g,
                                                                 dtype=torch.float64)
    x = reverse_diffusion(D, sigmas, x_init=x_init, eta=eta, generator=g, progress=False)
    m, v = x.mean(0), x.var(0)
    # statistical tolerances: 5 standard errors of the mean / of the variance
    assert torch.all((m - mu[0]).abs() < 5 * torch.sqrt(var[0] / n))
    assert torch.all((v - var[0]).abs() < 5 * var[0] * math.sqrt(2 / (n - 1)) + 0.01 * var[0])


def test_ddim_noise_levels_are_the_ddpm_posterior_at_eta_one():
    """x_i = x0 + sigma_i z: q(x_{i+1} | x_i, x0) has mean x0 + (s'^2 / s^2)(x_i - x0) and
    variance s'^2 (s^2 - s'^2) / s^2; eta = 1 must give exactly that, eta = 0 no noise."""
    for s, sn in [(2.0, 1.5), (0.8, 0.1), (5.0, 4.99), (1.0, 1e-3)]:
        sigma, sigma_next = torch.tensor(s, dtype=DT), torch.tensor(sn, dtype=DT)
        det, sto = ddim_noise_levels(sigma, sigma_next, 1.0)
        # x_{i+1} = x0 + det * eps + sto * z with eps = (x_i - x0) / sigma
        assert float(det) == pytest.approx(sn**2 / s, rel=1e-12)
        assert float(sto) ** 2 == pytest.approx(sn**2 * (s**2 - sn**2) / s**2, rel=1e-12)
        det0, sto0 = ddim_noise_levels(sigma, sigma_next, 0.0)
        assert float(sto0) == 0.0 and float(det0) == pytest.approx(sn, rel=1e-12)
        # the marginal variance sigma_{i+1}^2 is kept for every eta
        for eta in (0.0, 0.3, 1.0):
            d, c = ddim_noise_levels(sigma, sigma_next, eta)
            assert float(d**2 + c**2) == pytest.approx(sn**2, rel=1e-12)
    z = ddim_noise_levels(torch.tensor(1.0), torch.tensor(0.0), 1.0)
    assert float(z[0]) == 0.0 and float(z[1]) == 0.0


def test_eta_zero_is_deterministic_given_the_initial_noise():
    D = gaussian_denoiser(dtype=DT)
    sig = _geometric_sigmas(6, smax=3.0)
    x_init = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=DT)
    a = reverse_diffusion(D, sig, x_init=x_init, eta=0.0,
                          generator=torch.Generator().manual_seed(1), progress=False)
    b = reverse_diffusion(D, sig, x_init=x_init, eta=0.0,
                          generator=torch.Generator().manual_seed(2), progress=False)
    c = reverse_diffusion(D, sig, x_init=x_init, eta=1.0,
                          generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_identity_dc_and_callback_and_stop():
    D = GaussianDenoiser(torch.zeros(1), torch.ones(1))
    seen = []

    def dc(x0, ctx):
        ctx.info["pll"] = float(ctx.step)
        return x0

    def cb(d):
        seen.append((d["i"], d["pll"]))
        if d["i"] == 2:
            raise StopIteration

    g = torch.Generator().manual_seed(0)
    out = reverse_diffusion(D, _geometric_sigmas(10), shape=(2, 1, 4, 4), data_consistency=dc,
                            callback=cb, generator=g, progress=False, dtype=torch.float64)
    assert seen == [(0, 0.0), (1, 1.0), (2, 2.0)] and out.shape == (2, 1, 4, 4)


def test_reproducible_with_generator_and_bad_sigmas():
    D = GaussianDenoiser(torch.zeros(1), torch.ones(1))
    runs = [reverse_diffusion(D, _geometric_sigmas(5), shape=(1, 1, 3, 3), eta=0.5,
                              generator=torch.Generator().manual_seed(7), progress=False)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="decreasing"):
        reverse_diffusion(D, torch.tensor([1.0, 2.0, 0.0]), shape=(1, 1, 2, 2), progress=False)


# ---------------------------------------------------------------------------- the stepper
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("last_sigma", [0.0, 0.05])
def test_stepper_by_hand_is_the_loop(eta, last_sigma):
    """Stepping by hand (as the CIL Algorithms do) gives the loop's callbacks and result."""
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
    assert st.done and st.num_network_evaluations == 4
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
    with pytest.raises(TypeError, match="noise_denoiser"):
        DiffusionStepper(D, torch.tensor([2.0, 0.0]), shape=(1, 1, 4, 4), noise_denoiser=3)
    with pytest.raises(TypeError, match="adapt"):
        DiffusionStepper(D, torch.tensor([2.0, 0.0]), shape=(1, 1, 4, 4), adapt="no")


# ----------------------------------------------- denoisers that change during sampling (SCD)
class ShiftAdaptation:
    """A toy of steerable diffusion's LoRA fit: after each step it moves the prior mean of the
    (Gaussian) denoiser towards the data-consistent estimate; records what it saw."""

    def __init__(self, denoiser, rate):
        self.denoiser, self.rate, self.seen = denoiser, rate, []

    def __call__(self, ctx: StepContext) -> None:
        assert ctx.denoised is not None and ctx.denoised_dc is not None
        self.seen.append((ctx.step, ctx.denoised.clone(), ctx.denoised_dc.clone()))
        self.denoiser.mu = self.denoiser.mu + self.rate * (ctx.denoised_dc.mean(0, keepdim=True)
                                                           - self.denoiser.mu)


def _by_hand(sigmas, x, eta, mus, var, dc, noise_mu, g):
    """The same steps written out: step i uses the prior mean mus[i]; eps from noise_mu."""
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        k = var / (var + s**2)
        x0 = mus[i] + k * (x - mus[i])
        mu_eps = mus[i] if noise_mu is None else noise_mu
        eps = (x - (mu_eps + k * (x - mu_eps))) / s
        x0 = dc(x0)
        det, sto = ddim_noise_levels(s, sn, eta)
        x = x0 + det * eps
        if sto > 0:
            x = x + sto * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x0 if sigmas[-1] == 0 else x


@pytest.mark.parametrize("frozen_noise", [False, True])
def test_an_adapted_denoiser_is_seen_from_the_next_step(frozen_noise):
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.2, 0.0], dtype=DT)
    var = 0.5
    D = GaussianDenoiser(torch.zeros(1, 1, 2, 2, dtype=DT), var)
    frozen = GaussianDenoiser(torch.zeros(1, 1, 2, 2, dtype=DT), var)   # the unadapted network
    adapt = ShiftAdaptation(D, rate=0.5)
    target = torch.full((1, 1, 2, 2), 3.0, dtype=DT)

    def dc(x0, ctx=None):  # pulls the estimate towards the "data"
        return 0.5 * x0 + 0.5 * target

    st = DiffusionStepper(D, sigmas, shape=(3, 1, 2, 2), eta=0.6, data_consistency=dc,
                          generator=torch.Generator().manual_seed(4), dtype=DT, adapt=adapt,
                          noise_denoiser=frozen if frozen_noise else None)
    mus = []
    while not st.done:
        mus.append(D.mu.clone())          # the mean the step is about to use
        st.step()
    assert [s for s, _, _ in adapt.seen] == [0, 1, 2, 3]
    assert not torch.equal(mus[1], mus[0]) and not torch.equal(mus[3], mus[2])  # it did change
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 1, 2, 2, generator=g, dtype=DT) * sigmas[0]
    ref = _by_hand(sigmas, x, 0.6, mus, var, dc, torch.zeros(1, 1, 2, 2, dtype=DT)
                   if frozen_noise else None, g)
    torch.testing.assert_close(st.result(), ref, rtol=1e-12, atol=1e-12)
    assert st.num_network_evaluations == (8 if frozen_noise else 4)
    # re-noising with the frozen network's eps is a different chain (the oracle can fail)
    if frozen_noise:
        other = _by_hand(sigmas, x, 0.6, mus, var, dc, None, torch.Generator().manual_seed(4))
        assert not torch.allclose(other, ref)


# ------------------------------------------- denoisers that take conditioning (PET-DEFT)
class LikelihoodGuidedDenoiser:
    """A toy of PET-DEFT's h-transform: the unconditional estimate plus ``w`` times the PLL
    gradient at that estimate (physical units, mapped to the prior's), and the iterate."""

    def __init__(self, unconditional, w):
        self.unconditional_denoiser, self.w = unconditional, w
        self.contexts = []

    def __call__(self, x, sigma, context: DenoiserContext):
        self.contexts.append(context)
        x0 = context.unconditional()
        norm, lik = context.normalisation, context.likelihood
        grad = lik.gradient(norm.from_prior(torch.clamp(x0, min=0)))
        return x0 + self.w * norm.to_prior(grad) + 0.0 * context.x


def test_a_conditional_denoiser_sees_iterate_estimate_and_likelihood():
    lik, truth = poisson_problem()
    norm = IntensityNormalisation(2.0)
    base = gaussian_denoiser(dtype=DT)
    D = LikelihoodGuidedDenoiser(base, w=0.01)
    assert isinstance(D, ConditionalDenoiser) and not isinstance(base, ConditionalDenoiser)
    sigmas = torch.tensor([2.0, 1.0, 0.3, 0.0], dtype=DT)
    st = DiffusionStepper(D, sigmas, shape=(2, 1, 4, 4), eta=0.0, dtype=DT,
                          generator=torch.Generator().manual_seed(0), likelihood=lik,
                          normalisation=norm)
    x_prev = st.x.clone()
    info = st.step()
    ctx = D.contexts[0]
    assert torch.equal(ctx.x, x_prev) and ctx.step == 0 and ctx.num_steps == 3
    assert ctx.likelihood is lik and ctx.normalisation is norm
    assert torch.equal(ctx.sigma, sigmas[0].expand(2))
    u0 = base(x_prev, sigmas[0].expand(2))
    expected = u0 + 0.01 * norm.to_prior(lik.gradient(norm.from_prior(torch.clamp(u0, min=0))))
    torch.testing.assert_close(info["denoised"], expected, rtol=1e-12, atol=1e-12)
    # eps follows from the conditional estimate (x1 = x0 + sigma_1 eps for eta = 0)
    eps = (x_prev - expected) / sigmas[0]
    torch.testing.assert_close(st.x, expected + sigmas[1] * eps, rtol=1e-12, atol=1e-12)
    # the unconditional estimate is evaluated once per step, on demand, and counted
    assert ctx.unconditional() is ctx.unconditional()
    assert st.num_network_evaluations == 2
    while not st.done:
        st.step()
    assert st.num_network_evaluations == 6 and len(D.contexts) == 3
