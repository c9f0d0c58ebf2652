"""The physics contract and the likelihood on a dense small projector (analytic oracles)."""

import pytest
import torch

from sirf_diffusion import DenseMatrixPhysics, PoissonLogLikelihood
from sirf_diffusion.physics import adjointness_test


def _physics(num_subsets=1, additive=True):
    g = torch.Generator().manual_seed(0)
    image_shape, data_shape = (1, 3, 4), (2, 6, 5)
    A = torch.rand(60, 12, generator=g, dtype=torch.float64)
    b = 0.1 * torch.ones(data_shape, dtype=torch.float64) if additive else None
    return DenseMatrixPhysics(A, image_shape, data_shape, additive=b, num_subsets=num_subsets)


def test_dense_adjointness_and_subsets():
    phys = _physics(num_subsets=3)
    assert adjointness_test(phys) < 1e-12
    for k in range(3):
        assert adjointness_test(phys, subset=k) < 1e-12
    x = torch.rand(phys.image_shape, dtype=torch.float64)
    full = phys.forward(x)
    for k in range(3):
        assert torch.allclose(phys.forward(x, k), full[:, k::3])
    assert torch.allclose(sum(phys.sensitivity(k, dtype=torch.float64) for k in range(3)),
                          phys.sensitivity(dtype=torch.float64))


def test_batch_dimensions():
    phys = _physics()
    x = torch.rand(2, 4, *phys.image_shape, dtype=torch.float64)
    y = phys.forward(x)
    assert y.shape == (2, 4, *phys.data_shape)
    assert torch.allclose(y[1, 2], phys.forward(x[1, 2]))


def test_pll_gradient_matches_autograd():
    phys = _physics(num_subsets=2)
    x0 = torch.rand(phys.image_shape, dtype=torch.float64) + 0.5
    y = torch.poisson(phys.forward(x0))
    pll = PoissonLogLikelihood(phys, y)
    x = (torch.rand(phys.image_shape, dtype=torch.float64) + 0.5).requires_grad_(True)
    for subset in (None, 0, 1):
        (g_auto,) = torch.autograd.grad(pll.value(x, subset), x)
        assert torch.allclose(pll.gradient(x.detach(), subset), g_auto, rtol=1e-10, atol=1e-10)


def test_bad_input_is_named():
    phys = _physics()
    with pytest.raises(ValueError, match="shape"):
        phys.forward(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="negative"):
        PoissonLogLikelihood(phys, -torch.ones(phys.data_shape))
    y = torch.ones(phys.data_shape)
    y[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        PoissonLogLikelihood(phys, y)
