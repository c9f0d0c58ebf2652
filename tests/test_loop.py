"""The reverse-diffusion loop against an analytic Gaussian prior (exact denoiser known)."""

import math

import pytest
import torch

from sirf_diffusion.diffusion.normalisation import IntensityNormalisation
from sirf_diffusion.samplers.loop import reverse_diffusion


class GaussianDenoiser:
    """Exact Tweedie estimate for x0 ~ N(mu, diag(var)): mu + var / (var + s^2) (x - mu)."""

    def __init__(self, mu, var):
        self.mu, self.var = mu, var

    def __call__(self, x, sigma):
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return self.mu + self.var / (self.var + s2) * (x - self.mu)


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
    x_init = mu + torch.sqrt(var + sigmas[0] ** 2) * torch.randn(n, 1, 1, 3, generator=g, dtype=torch.float64)
    x = reverse_diffusion(D, sigmas, x_init=x_init, eta=eta, generator=g, progress=False)
    m, v = x.mean(0), x.var(0)
    # statistical tolerances: 5 standard errors of the mean / of the variance
    assert torch.all((m - mu[0]).abs() < 5 * torch.sqrt(var[0] / n))
    assert torch.all((v - var[0]).abs() < 5 * var[0] * math.sqrt(2 / (n - 1)) + 0.01 * var[0])


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


def test_normalisation_round_trip_and_layouts():
    img2d = torch.rand(3, 1, 8, 8) + 0.1
    norm = IntensityNormalisation.fit(img2d)
    p = norm.to_prior(img2d)
    assert p.shape == (3, 1, 8, 8)
    assert torch.allclose(norm.from_prior(p), img2d)
    img3d = torch.rand(2, 5, 8, 8) + 0.1
    norm3 = IntensityNormalisation(2.0)
    assert norm3.to_prior(img3d).shape == (2, 1, 5, 8, 8)
    assert torch.allclose(norm3.from_prior(norm3.to_prior(img3d)), img3d)
    with pytest.raises(ValueError, match="> 0"):
        IntensityNormalisation(0.0)
