"""The DDIM / ancestral noise levels of the reverse-diffusion loop against the DDPM posterior.

``ddim_noise_levels(sigma_i, sigma_{i+1}, eta)`` gives the ``(deterministic, stochastic)``
scales of ``x_{i+1} = x0 + det * (x_i - x0) / sigma_i + sto * z`` in the variance-exploding
parametrisation ``x = x0 + sigma * eps`` (``samplers/loop.py``).  The oracle is computed
independently, in the variance-preserving form, from the cumulative products ``alpha_bar`` of a
DDPM noise schedule (Ho et al. 2020, Eqs. 6-7; for a strided schedule, Nichol & Dhariwal 2021
Sec. 4 with ``beta_t = 1 - alpha_bar_t / alpha_bar_s``):

.. math::

    q(x_s | x_t, x_0) = \\mathcal N\\Big(
        \\frac{\\sqrt{\\bar\\alpha_s} \\beta_t}{1 - \\bar\\alpha_t} x_0
        + \\frac{\\sqrt{\\alpha_t} (1 - \\bar\\alpha_s)}{1 - \\bar\\alpha_t} x_t,\\;
        \\frac{1 - \\bar\\alpha_s}{1 - \\bar\\alpha_t} \\beta_t \\Big),
    \\qquad \\alpha_t = \\bar\\alpha_t / \\bar\\alpha_s,

mapped to VE by ``x^VE = x^VP / sqrt(alpha_bar)``, ``sigma^2 = (1 - alpha_bar) / alpha_bar``.
``eta = 1`` must be this posterior (mean and variance), ``eta = 0`` deterministic, and every
``eta`` keeps the marginal: ``det^2 + sto^2 = sigma_{i+1}^2``.
"""

from __future__ import annotations

import math

import pytest
import torch

from sirf_diffusion.samplers.loop import ddim_noise_levels, reverse_diffusion


def _alpha_bars(num_steps: int = 10) -> list[float]:
    """``alpha_bar`` of Ho et al.'s linear schedule (T = 1000, beta 1e-4 .. 0.02), strided to
    ``num_steps`` decreasing noise levels (noisiest first)."""
    T = 1000
    betas = [1e-4 + (0.02 - 1e-4) * k / (T - 1) for k in range(T)]
    ab, out = 1.0, []
    for b in betas:
        ab *= 1.0 - b
        out.append(ab)
    ts = [round(T - 1 - k * (T - 1) / (num_steps - 1)) for k in range(num_steps)]
    return [out[t] for t in ts]


def _pairs() -> list[tuple[float, float]]:
    ab = _alpha_bars()
    return list(zip(ab[:-1], ab[1:]))


def _sigma(alpha_bar: float) -> torch.Tensor:
    return torch.tensor(math.sqrt((1.0 - alpha_bar) / alpha_bar), dtype=torch.float64)


def _ddpm_posterior_ve(ab_t: float, ab_s: float) -> tuple[float, float, float]:
    """``(coefficient of x0, coefficient of x_t, variance)`` of ``q(x_s | x_t, x0)`` in VE units."""
    beta = 1.0 - ab_t / ab_s
    c0 = math.sqrt(ab_s) * beta / (1.0 - ab_t)
    ct = math.sqrt(1.0 - beta) * (1.0 - ab_s) / (1.0 - ab_t)
    var = (1.0 - ab_s) / (1.0 - ab_t) * beta
    # x_t^VP = sqrt(ab_t) x_t^VE; x_s^VE = x_s^VP / sqrt(ab_s)
    return c0 / math.sqrt(ab_s), ct * math.sqrt(ab_t) / math.sqrt(ab_s), var / ab_s


@pytest.mark.parametrize("ab_t,ab_s", _pairs())
def test_eta_one_is_the_ddpm_posterior(ab_t, ab_s):
    sigma, sigma_next = _sigma(ab_t), _sigma(ab_s)
    det, sto = ddim_noise_levels(sigma, sigma_next, 1.0)
    c0, ct, var = _ddpm_posterior_ve(ab_t, ab_s)
    # x_next = (1 - det / sigma) x0 + (det / sigma) x_t + sto z
    assert float(det / sigma) == pytest.approx(ct, rel=1e-9)
    assert float(1 - det / sigma) == pytest.approx(c0, rel=1e-9, abs=1e-12)
    assert float(sto**2) == pytest.approx(var, rel=1e-9)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("ab_t,ab_s", _pairs()[::3])
def test_total_variance_is_the_next_noise_level(ab_t, ab_s, eta):
    sigma, sigma_next = _sigma(ab_t), _sigma(ab_s)
    det, sto = ddim_noise_levels(sigma, sigma_next, eta)
    assert float(det**2 + sto**2) == pytest.approx(float(sigma_next**2), rel=1e-12)
    if eta == 0.0:
        assert float(sto) == 0.0 and float(det) == pytest.approx(float(sigma_next), rel=1e-12)


def test_last_step_to_zero_noise_has_no_noise():
    det, sto = ddim_noise_levels(torch.tensor(0.3), torch.tensor(0.0), 1.0)
    assert float(det) == 0.0 and float(sto) == 0.0


def _constant_denoiser(x0: torch.Tensor):
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x0.expand_as(x).clone()
    return denoise


def test_eta_zero_is_deterministic():
    """Two runs from the same start with different generators give the same sample."""
    sigmas = torch.tensor([float(_sigma(a)) for a in _alpha_bars(6)] + [0.0], dtype=torch.float64)
    x_init = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64) * sigmas[0]
    shrink = lambda x, sigma: x / (1 + sigma.view(-1, 1, 1, 1) ** 2)  # noqa: E731  Gaussian prior
    runs = [reverse_diffusion(shrink, sigmas, x_init=x_init, eta=0.0, progress=False,
                              generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    stochastic = [reverse_diffusion(shrink, sigmas, x_init=x_init, eta=1.0, progress=False,
                                    generator=torch.Generator().manual_seed(seed))
                  for seed in (1, 2)]
    assert not torch.equal(stochastic[0], stochastic[1])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_loop_step_has_the_posterior_mean_and_variance(eta):
    """The loop applies the levels: one step from ``x_t`` with a denoiser returning ``x0``,
    over 40,000 draws, has the mean ``c0 x0 + ct x_t`` and variance ``sto^2`` (DDPM posterior at
    eta = 1); sigma 2 -> 1, where a missing square root changes the variance by a third."""
    sigma = torch.tensor(2.0, dtype=torch.float64)
    sigma_next = torch.tensor(1.0, dtype=torch.float64)
    n = 40_000
    x0, xt = torch.tensor(0.5, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    x_init = torch.full((n, 1, 1, 1), float(xt), dtype=torch.float64)
    out = reverse_diffusion(_constant_denoiser(x0), torch.stack([sigma, sigma_next]),
                            x_init=x_init, eta=eta, progress=False,
                            generator=torch.Generator().manual_seed(3))
    ab_t, ab_s = 1 / (1 + float(sigma) ** 2), 1 / (1 + float(sigma_next) ** 2)
    c0, ct, var = _ddpm_posterior_ve(ab_t, ab_s)
    if eta == 0.0:
        c0, ct, var = 1 - float(sigma_next / sigma), float(sigma_next / sigma), 0.0
    mean = c0 * float(x0) + ct * float(xt)
    assert float(out.mean()) == pytest.approx(mean, abs=5 * math.sqrt(var / n) + 1e-12)
    assert float(out.var()) == pytest.approx(var, rel=0.05, abs=1e-12)
