"""Schedules, eps/v/score adapters and unconditional sampling against closed forms."""

import math

import pytest
import torch

from sirf_diffusion.diffusion.adapters import ADAPTERS, EpsDenoiser, ScoreDenoiser, VDenoiser
from sirf_diffusion.diffusion.sampling import sampling_sigmas
from sirf_diffusion.diffusion.schedules import (
    ContinuousVP,
    DiscreteVP,
    ddpm_sigmas,
    karras_sigmas,
    schedule_from_dict,
    vp_sigmas,
)
from sirf_diffusion.samplers.unconditional import sample

F64 = torch.float64
SCHEDULES = [ContinuousVP(), ContinuousVP(0.1, 10.0), DiscreteVP.linear()]


# ----------------------------------------------------------------------------- schedules
def test_continuous_alpha_bar_is_exp_of_integrated_beta():
    """alpha_bar(t) = exp(-int_0^t beta(s) ds), integral by the trapezoidal rule."""
    vp = ContinuousVP(0.1, 20.0)
    s = torch.linspace(0, 0.7, 70001, dtype=F64)
    integral = torch.trapezoid(0.1 + s * (20.0 - 0.1), s)
    assert torch.allclose(vp.alpha_bar(torch.tensor(0.7, dtype=F64)), torch.exp(-integral),
                          rtol=1e-9)


def test_discrete_alpha_bar_is_cumulative_product():
    d = DiscreteVP.linear(1000, 1e-4, 0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    k = torch.tensor([0, 1, 17, 500, 999])
    expected = torch.cumprod(1 - betas, 0)[k]
    assert torch.allclose(d.alpha_bar(k.to(F64)), expected, rtol=1e-10)
    assert torch.allclose(d.sigma(k.to(F64)), torch.sqrt(1 / expected - 1), rtol=1e-10)


@pytest.mark.parametrize("sched", SCHEDULES, ids=["vp20", "vp10", "ddpm"])
def test_sigma_increasing_and_inverse(sched):
    t = torch.linspace(0.0, sched.t_max, 2001, dtype=F64)[1:]
    s = sched.sigma(t)
    assert bool((s[1:] > s[:-1]).all())
    assert torch.allclose(sched.t_of_sigma(s), t, rtol=1e-9, atol=1e-9)
    # and the other way round, for arbitrary sigmas inside the range
    sig = torch.exp(torch.linspace(math.log(float(s[0])), math.log(float(s[-1])), 333, dtype=F64))
    assert torch.allclose(sched.sigma(sched.t_of_sigma(sig)), sig, rtol=1e-9)
    # VE/VP relation
    assert torch.allclose(sched.alpha_bar(t), 1 / (1 + s**2), rtol=1e-10)


def test_vp_sigma_values_and_ranges():
    vp = ContinuousVP()
    # sigma(1)^2 = exp(beta_min + (beta_max - beta_min) / 2) - 1
    assert float(vp.sigma(1.0)) == pytest.approx(math.sqrt(math.expm1(0.1 + 19.9 / 2)))
    assert float(vp.t_of_sigma(0.0)) == 0.0
    d = DiscreteVP.linear()
    assert float(d.t_of_sigma(1e-9)) == 0.0 and float(d.t_of_sigma(1e9)) == 999.0


@pytest.mark.parametrize("sched", SCHEDULES, ids=["vp20", "vp10", "ddpm"])
def test_schedule_dict_round_trip(sched):
    back = schedule_from_dict(sched.to_dict())
    t = torch.linspace(0, sched.t_max, 7, dtype=F64)
    assert type(back) is type(sched) and torch.equal(back.sigma(t), sched.sigma(t))


def test_bad_schedules_refused():
    with pytest.raises(ValueError, match="beta_min"):
        ContinuousVP(0.0, 20.0)
    with pytest.raises(ValueError, match="betas"):
        DiscreteVP((0.1, 1.5))
    with pytest.raises(ValueError, match="schedule kind"):
        schedule_from_dict({"kind": "cosine"})


# ------------------------------------------------------------------------ sigma sequences
def _check_sequence(s, n):
    assert s.shape == (n + 1,) and s[-1] == 0
    assert bool((s[1:] < s[:-1]).all())


def test_vp_sigmas_uniform_in_t():
    vp = ContinuousVP()
    s = vp_sigmas(50, t_min=1e-3)
    _check_sequence(s, 50)
    t = vp.t_of_sigma(s[:-1])
    assert torch.allclose(t, torch.linspace(1.0, 1e-3, 50, dtype=F64), atol=1e-10)
    d = DiscreteVP.linear()
    _check_sequence(vp_sigmas(10, schedule=d), 10)
    assert torch.allclose(d.t_of_sigma(vp_sigmas(10, schedule=d)[:-1]),
                          torch.linspace(999, 0, 10, dtype=F64), atol=1e-8)


def test_ddpm_sigmas_are_ddim_strided_steps():
    d = DiscreteVP.linear()
    s = ddpm_sigmas(50, d)
    _check_sequence(s, 50)
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    k = torch.arange(0, 1000, 20).flip(0)
    assert torch.allclose(s[:-1], torch.sqrt(1 / ab[k] - 1), rtol=1e-10)
    with pytest.raises(ValueError, match="exceeds"):
        ddpm_sigmas(1001, d)


def test_karras_sigmas():
    s = karras_sigmas(20, 0.01, 80.0, rho=7.0)
    _check_sequence(s, 20)
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.01)
    lin = karras_sigmas(5, 1.0, 5.0, rho=1.0)  # rho = 1: linear spacing
    assert torch.allclose(lin[:-1], torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(5, 2.0, 1.0)
    with pytest.raises(ValueError, match="num_steps"):
        vp_sigmas(0)


# ------------------------------------------------------------------------------ adapters
class GaussianVPNetwork:
    """Exact eps/v/score of a VP-diffused Gaussian prior x0 ~ N(mu, diag(var)) at time t.

    x_vp = a x0 + b eps with a = sqrt(ab), b = sqrt(1 - ab); x_vp ~ N(a mu, a^2 var + b^2):
    score = -(x_vp - a mu) / (a^2 var + b^2), E[eps|x_vp] = -b score,
    E[x0|x_vp] = mu - a var score, E[v|x_vp] = a E[eps] - b E[x0].
    """

    def __init__(self, mu, var, schedule, kind):
        self.mu, self.var, self.schedule, self.kind = mu, var, schedule, kind
        self.seen_t = None

    def __call__(self, x_vp, t):
        self.seen_t = t
        ab = self.schedule.alpha_bar(t).reshape(-1, 1, 1, 1)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        score = -(x_vp - a * self.mu) / (a**2 * self.var + b**2)
        eps = -b * score
        x0 = self.mu - a * self.var * score
        return {"eps": eps, "score": score, "v": a * eps - b * x0}[self.kind]


def gaussian_ve_denoiser(x, sigma, mu, var):
    s2 = sigma.reshape(-1, 1, 1, 1) ** 2
    return mu + var / (var + s2) * (x - mu)


@pytest.mark.parametrize("sched", SCHEDULES, ids=["vp20", "vp10", "ddpm"])
@pytest.mark.parametrize("kind,cls", [("eps", EpsDenoiser), ("v", VDenoiser),
                                      ("score", ScoreDenoiser)])
def test_adapter_equals_exact_tweedie(sched, kind, cls):
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(1, 1, 3, 4, generator=g, dtype=F64)
    var = 0.1 + torch.rand(1, 1, 3, 4, generator=g, dtype=F64)
    sigma = torch.tensor([0.02, 0.5, 3.0, 40.0], dtype=F64)
    z = torch.randn(4, 1, 3, 4, generator=g, dtype=F64)
    x = mu + torch.sqrt(var + sigma.reshape(-1, 1, 1, 1) ** 2) * z
    net = GaussianVPNetwork(mu, var, sched, kind)
    D = cls(net, sched)
    assert torch.allclose(D(x, sigma), gaussian_ve_denoiser(x, sigma, mu, var), rtol=1e-8,
                          atol=1e-10)
    assert torch.allclose(sched.sigma(net.seen_t), sigma, rtol=1e-8)  # t = t(sigma)
    # a scalar sigma broadcasts over the batch
    assert torch.allclose(D(x, torch.tensor(0.5, dtype=F64)),
                          gaussian_ve_denoiser(x, torch.full((4,), 0.5, dtype=F64), mu, var))


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_training_target_inverts_to_x0(kind):
    """to_x0(x0 + sigma eps, sigma, target(x0, eps, ab)) == x0 for every parametrisation."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g, dtype=F64).unbind(0)
    sigma = torch.tensor([0.1, 1.0, 7.0], dtype=F64).reshape(-1, 1, 1, 1)
    ab = 1 / (1 + sigma**2)
    A = ADAPTERS[kind]
    assert torch.allclose(A.to_x0(x0 + sigma * eps, sigma, A.target(x0, eps, ab)), x0, atol=1e-12)


def test_adapter_rejects_wrong_sigma_size():
    D = EpsDenoiser(lambda x, t: x)
    with pytest.raises(ValueError, match="broadcast"):
        D(torch.zeros(4, 1, 2, 2), torch.ones(3))


# ------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("schedule", ["vp", "karras"])
def test_unconditional_sample_matches_gaussian_prior(schedule):
    mu = torch.tensor([[[[1.0, -2.0]]]], dtype=F64)
    var = torch.tensor([[[[0.25, 2.0]]]], dtype=F64)
    n = 3000
    x = sample(lambda x, s: gaussian_ve_denoiser(x, s, mu, var), (n, 1, 1, 2), num_steps=100,
               schedule=schedule, eta=1.0, generator=torch.Generator().manual_seed(0),
               dtype=F64)
    m, v = x.mean(0), x.var(0)
    assert torch.all((m - mu[0]).abs() < 5 * torch.sqrt(var[0] / n))
    assert torch.all((v - var[0]).abs() < 5 * var[0] * math.sqrt(2 / (n - 1)) + 0.02 * var[0])


def test_sampling_sigmas_choices():
    d = DiscreteVP.linear()
    assert torch.equal(sampling_sigmas(10, "ddpm", d), ddpm_sigmas(10, d))
    assert torch.equal(sampling_sigmas(10, "vp"), vp_sigmas(10))
    given = torch.tensor([2.0, 1.0, 0.0])
    assert sampling_sigmas(10, given) is given
    with pytest.raises(ValueError, match="schedule must be"):
        sampling_sigmas(10, "linear")  # type: ignore[arg-type]
