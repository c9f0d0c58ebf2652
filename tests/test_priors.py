"""STIR's relative difference and quadratic priors against independent oracles.

Oracles: a hand-written loop over ordered voxel pairs (STIR's formula, written independently of
the vectorised code), autograd for gradients and Hessian diagonals, and the majorisation
inequality that MAP-EM relies on.
"""

import itertools
import math

import pytest
import torch

from sirf_diffusion.recon.priors import (
    QuadraticPrior,
    RelativeDifferencePrior,
    neighbourhood_offsets,
)

NEIGHBOURHOODS = ["26", "axial", "transaxial"]
VOXEL = (2.03125, 1.5, 2.08626)


def _loop_value(x, kind, beta, gamma, eps, neighbourhood, voxel, kappa=None):
    """STIR's compute_value as a plain loop over voxels r and offsets d (ordered pairs)."""
    nz, ny, nx = x.shape
    vz, vy, vx = voxel
    if neighbourhood == "26":
        rng = (range(-1, 2), range(-1, 2), range(-1, 2))
    elif neighbourhood == "transaxial":
        rng = (range(0, 1), range(-1, 2), range(-1, 2))
    else:
        rng = (range(-1, 2), range(0, 1), range(0, 1))
    total = 0.0
    for z, y, xx in itertools.product(range(nz), range(ny), range(nx)):
        for dz, dy, dx in itertools.product(*rng):
            if (dz, dy, dx) == (0, 0, 0):
                continue
            z2, y2, x2 = z + dz, y + dy, xx + dx
            if not (0 <= z2 < nz and 0 <= y2 < ny and 0 <= x2 < nx):
                continue
            w = vx / math.sqrt((dz * vz) ** 2 + (dy * vy) ** 2 + (dx * vx) ** 2)
            a, b = float(x[z, y, xx]), float(x[z2, y2, x2])
            if kind == "rdp" and eps == 0 and a == 0 and b == 0:
                term = 0.0  # STIR: "handle the undefined nature of the function"
            elif kind == "rdp":
                term = 0.5 * w * (a - b) ** 2 / (a + b + gamma * abs(a - b) + eps)
            else:
                term = 0.25 * w * (a - b) ** 2
            if kappa is not None:
                term *= float(kappa[z, y, xx]) * float(kappa[z2, y2, x2])
            total += term
    return beta * total


def _prior(kind, neighbourhood, kappa=None, beta=0.7, gamma=2.0, eps=0.05):
    if kind == "rdp":
        return RelativeDifferencePrior(beta, gamma=gamma, epsilon=eps, neighbourhood=neighbourhood,
                                       voxel_size_mm=VOXEL, kappa=kappa)
    return QuadraticPrior(beta, neighbourhood=neighbourhood, voxel_size_mm=VOXEL, kappa=kappa)


def test_weights_are_stir_inverse_distance():
    offs = dict(neighbourhood_offsets("26", VOXEL))
    assert len(offs) == 13
    assert offs[(0, 0, 1)] == pytest.approx(1.0)
    assert offs[(0, 1, 0)] == pytest.approx(VOXEL[2] / VOXEL[1])
    assert offs[(1, 1, 1)] == pytest.approx(VOXEL[2] / math.sqrt(sum(v * v for v in VOXEL)))
    assert sorted(dict(neighbourhood_offsets("transaxial", VOXEL))) == [
        (0, 0, 1), (0, 1, -1), (0, 1, 0), (0, 1, 1)]
    axial = dict(neighbourhood_offsets("axial", VOXEL))
    assert axial == pytest.approx({(1, 0, 0): VOXEL[2] / VOXEL[0]})


@pytest.mark.parametrize("kind", ["rdp", "quadratic"])
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS)
@pytest.mark.parametrize("with_kappa", [False, True])
def test_value_matches_pair_loop(kind, neighbourhood, with_kappa):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 3, generator=g, dtype=torch.float64) * 2
    x[1, 1, 1] = 0.0
    kappa = torch.rand(3, 3, 3, generator=g, dtype=torch.float64) + 0.5 if with_kappa else None
    prior = _prior(kind, neighbourhood, kappa)
    expected = _loop_value(x, kind, 0.7, 2.0, 0.05, neighbourhood, VOXEL, kappa)
    assert float(prior.value(x)) == pytest.approx(expected, rel=1e-12)


def test_rdp_epsilon_zero_pairs_of_zeros():
    """STIR: with epsilon = 0 a pair of zero voxels contributes 0 (value and gradient)."""
    x = torch.zeros(1, 3, 3, dtype=torch.float64)
    x[0, 1, 1] = 2.0
    prior = RelativeDifferencePrior(1.0, gamma=2.0, epsilon=0.0, neighbourhood="transaxial")
    assert float(prior.value(x)) == pytest.approx(_loop_value(x, "rdp", 1.0, 2.0, 0.0, "transaxial",
                                                              (1.0, 1.0, 1.0)))
    grad = prior.gradient(x)
    assert torch.isfinite(grad).all()
    # centre voxel: 8 neighbours at 0, d/da (a^2 / (3a)) = 1/3 per unit weight
    w = sum(2 * w for _, w in neighbourhood_offsets("transaxial"))
    assert float(grad[0, 1, 1]) == pytest.approx(w / 3)


@pytest.mark.parametrize("kind", ["rdp", "quadratic"])
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS)
@pytest.mark.parametrize("with_kappa", [False, True])
def test_gradient_and_hessian_diagonal_match_autograd(kind, neighbourhood, with_kappa):
    g = torch.Generator().manual_seed(5)
    shape = (3, 4, 5)
    kappa = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5 if with_kappa else None
    prior = _prior(kind, neighbourhood, kappa)
    x = torch.rand(2, *shape, generator=g, dtype=torch.float64) + 0.1  # batch of 2
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(prior.value(xr).sum(), xr)
    assert torch.allclose(prior.gradient(x), auto, rtol=1e-10, atol=1e-12)
    h = torch.autograd.functional.hessian(lambda z: prior.value(z), x[0])
    n = x[0].numel()
    assert torch.allclose(prior.hessian_diagonal(x[0]), h.reshape(n, n).diagonal().reshape(shape),
                          rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_dtype_and_out(dtype):
    g = torch.Generator().manual_seed(0)
    prior = RelativeDifferencePrior(1.3, epsilon=0.01)
    x = torch.rand(2, 3, 4, 5, 6, generator=g).to(dtype)
    v = prior.value(x)
    assert v.shape == (2, 3) and v.dtype == dtype
    assert torch.allclose(v[1, 2], prior.value(x[1, 2]))
    out = torch.empty_like(x)
    res = prior.gradient(x, out=out)
    assert res is out and torch.allclose(out[0, 1], prior.gradient(x[0, 1]))
    assert prior.get_gradient(x).dtype == dtype


def test_axial_couples_only_slices():
    """The axial RDP does not see in-plane structure and penalises z differences only."""
    g = torch.Generator().manual_seed(1)
    plane = torch.rand(1, 6, 6, generator=g, dtype=torch.float64) + 0.1
    prior = RelativeDifferencePrior(1.0, neighbourhood="axial", epsilon=0.0)
    assert float(prior.value(plane.expand(4, 6, 6))) == 0.0
    x = plane.repeat(2, 1, 1)
    x[1] *= 2
    a, b = x[0], x[1]
    expected = ((a - b) ** 2 / (a + b + 2 * (a - b).abs())).sum()
    assert float(prior.value(x)) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("kind", ["rdp", "quadratic"])
@pytest.mark.parametrize("eps", [0.0, 0.02])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_separable_curvature_majorises(kind, eps, gamma):
    """R(z) <= R(x) + grad R(x).(z - x) + 1/2 sum c (z - x)^2 for all z >= rho x (MAP-EM)."""
    g = torch.Generator().manual_seed(11)
    shape = (2, 4, 4)
    prior = (RelativeDifferencePrior(1.0, gamma=gamma, epsilon=eps) if kind == "rdp"
             else QuadraticPrior(1.0))
    for rho in (0.5, 0.75):
        for _ in range(40):
            x = torch.rand(shape, generator=g, dtype=torch.float64) * 3
            x[x < 0.3] = 0.0  # exact zeros and tiny values: where the RDP curvature blows up
            z = rho * x + torch.rand(shape, generator=g, dtype=torch.float64) ** 3 * 4
            c = prior.separable_curvature(x, rho)
            bound = (prior.value(x) + (prior.gradient(x) * (z - x)).sum()
                     + 0.5 * (c * (z - x) ** 2).sum())
            assert float(prior.value(z)) <= float(bound) + 1e-10
            # the curvature is never below the true Hessian diagonal at x (a majoriser must not be)
            h = prior.hessian_diagonal(x)
            finite = torch.isfinite(h)
            assert (c[finite] >= h[finite] - 1e-12).all()


@pytest.mark.parametrize("kind", ["rdp", "quadratic"])
def test_separable_majoriser_is_tight_for_opposite_moves(kind):
    """Two equal voxels moved in opposite directions: the majoriser is exact to O(delta^3), so
    any smaller curvature would not majorise (this test fails for c scaled by 0.9)."""
    prior = RelativeDifferencePrior(1.0, epsilon=0.0) if kind == "rdp" else QuadraticPrior(1.0)
    x = torch.ones(1, 1, 2, dtype=torch.float64)
    delta = torch.tensor([[[1e-3, -1e-3]]], dtype=torch.float64)
    excess = float(prior.value(x + delta) - prior.value(x) - (prior.gradient(x) * delta).sum())
    quad = float(0.5 * (prior.separable_curvature(x, 0.75) * delta**2).sum())
    assert excess <= quad <= excess * 1.01


def test_quadratic_curvature_is_twice_stir_parabolic_surrogate():
    prior = QuadraticPrior(0.8, neighbourhood="transaxial")
    c = prior.separable_curvature(torch.rand(1, 3, 3, dtype=torch.float64), 0.0)
    wsum = sum(2 * w for _, w in neighbourhood_offsets("transaxial"))
    assert float(c[0, 1, 1]) == pytest.approx(2 * 0.8 * wsum)


def test_sirf_like_surface_and_zero_beta():
    prior = RelativeDifferencePrior(2.0)
    prior.set_penalisation_factor(0.0)
    assert prior.get_penalisation_factor() == 0.0
    x = torch.rand(2, 3, 3)
    assert float(prior.get_value(x)) == 0.0 and float(prior.gradient(x).abs().max()) == 0.0
    prior.set_penalisation_factor(3.0)
    unit = float(RelativeDifferencePrior(1.0).value(x))
    assert float(prior(x)) == pytest.approx(3.0 * unit, rel=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="penalisation_factor"):
        RelativeDifferencePrior(-1.0)
    with pytest.raises(ValueError, match="gamma"):
        RelativeDifferencePrior(1.0, gamma=-2)
    with pytest.raises(ValueError, match="epsilon"):
        RelativeDifferencePrior(1.0, epsilon=float("nan"))
    with pytest.raises(ValueError, match="neighbourhood"):
        QuadraticPrior(1.0, neighbourhood="6")
    with pytest.raises(ValueError, match="voxel_size_mm"):
        QuadraticPrior(1.0, voxel_size_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="non-negative"):
        RelativeDifferencePrior(1.0).value(-torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="kappa"):
        QuadraticPrior(1.0, kappa=torch.ones(2, 2, 2)).value(torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        QuadraticPrior(1.0).gradient(torch.ones(3, 3))
    with pytest.raises(ValueError, match="lower_ratio"):
        RelativeDifferencePrior(1.0).separable_curvature(torch.ones(2, 2, 2), 0.25)
