"""MLEM / OSEM / MAP-EM / BSREM on small dense problems with analytic oracles.

Oracles: monotonicity of the objective, the KKT conditions of the (penalised) likelihood on
``x >= 0``, an independent L-BFGS-B (scipy) optimum, hand-written EM updates with STIR's view
subsets, and exact reductions (OSEM with 1 subset == MLEM, MAP-EM with beta = 0 == MLEM).
"""

import numpy as np
import pytest
import torch

from sirf_diffusion import DenseMatrixPhysics, PoissonLogLikelihood
from sirf_diffusion.recon import (
    QuadraticPrior,
    RelativeDifferencePrior,
    bsrem,
    map_em,
    map_objective,
    mlem,
    osem,
)

IMAGE, DATA = (2, 3, 4), (2, 12, 6)


def _problem(seed=1, sparse=True):
    """A well-posed (144 bins, 24 voxels) problem whose ML solution has active constraints."""
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(144, 24, generator=g, dtype=torch.float64)
    if sparse:
        A = A * (torch.rand(144, 24, generator=g, dtype=torch.float64) < 0.3)
    xt = torch.rand(IMAGE, generator=g, dtype=torch.float64) * 4
    xt[0, 0, :2] = 0
    phys = DenseMatrixPhysics(A, IMAGE, DATA, additive=0.2 * torch.ones(DATA, dtype=torch.float64))
    y = torch.poisson(phys.forward(xt), generator=g)
    return PoissonLogLikelihood(phys, y)


def _lbfgsb(lik, prior):
    """Independent optimum of L(x) - R(x) on x >= 0 by scipy's L-BFGS-B with autograd gradients."""
    from scipy.optimize import minimize

    def f(v):
        x = torch.tensor(v).reshape(IMAGE).requires_grad_(True)
        val = -(lik.value(x) - (prior.value(x) if prior is not None else 0))
        (gr,) = torch.autograd.grad(val, x)
        return float(val.detach()), gr.reshape(-1).numpy()

    n = int(np.prod(IMAGE))
    res = minimize(f, np.ones(n), jac=True, method="L-BFGS-B", bounds=[(0, None)] * n,
                   options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    return torch.tensor(res.x).reshape(IMAGE)


def _assert_kkt(grad, x, tol):
    """KKT of max Phi on x >= 0: grad_j = 0 where x_j > 0, grad_j <= 0 where x_j = 0."""
    scale = float(grad.abs().max()) + 1.0
    free = x > 1e-6 * float(x.max())
    assert float((x * grad).abs().max()) < tol * scale * float(x.max())
    assert float(grad[free].abs().max()) < tol * scale
    assert bool((grad[~free] <= tol * scale).all())


# ---------------------------------------------------------------------------- MLEM / OSEM
def test_mlem_increases_pll_monotonically():
    lik = _problem(seed=2, sparse=False)
    x, hist = mlem(lik, num_iterations=50, progress=False, return_history=True)
    assert hist.iterations == list(range(51))
    obj = np.array(hist.objective)
    assert np.all(np.diff(obj) >= -1e-9 * np.abs(obj).max())
    assert obj[-1] > obj[0]
    assert obj[-1] == pytest.approx(float(lik.value(x)), rel=1e-12)
    assert hist.num_forward == pytest.approx(51) and hist.num_adjoint == pytest.approx(50)


def test_mlem_converges_to_ml_solution_kkt():
    lik = _problem()
    x = mlem(lik, num_iterations=800, progress=False)
    x_ref = _lbfgsb(lik, None)
    assert int((x_ref < 1e-8).sum()) >= 1  # the oracle problem really has active constraints
    _assert_kkt(lik.gradient(x), x, 1e-4)
    assert float((x - x_ref).norm() / x_ref.norm()) < 1e-4


def test_osem_with_one_subset_is_mlem_exactly():
    lik = _problem(seed=4)
    a = mlem(lik, num_iterations=7, progress=False)
    b = osem(lik, num_subsets=1, num_epochs=7, progress=False)
    assert torch.equal(a, b)


def test_osem_subsets_follow_stir_views_in_order():
    lik = _problem(seed=5)
    phys, K = lik.physics, 4
    A = phys.matrix.reshape(*DATA, -1)
    b = phys.additive_term

    def hand_update(x, k):
        Ak = A[:, k::K].reshape(-1, A.shape[-1])  # views v with v % K == k
        yk, bk = lik.data[:, k::K].reshape(-1), b[:, k::K].reshape(-1)
        xv = x.reshape(-1)
        return (xv * (Ak.T @ (yk / (Ak @ xv + bk))) / Ak.sum(0)).reshape(IMAGE)

    x1 = osem(lik, num_subsets=K, num_subiterations=1, progress=False)
    expected = hand_update(torch.ones(IMAGE, dtype=torch.float64), 0)  # STIR: start from 1
    assert torch.allclose(x1, expected, rtol=1e-12)
    x6 = osem(lik, num_subsets=K, num_subiterations=6, progress=False)
    ref = torch.ones(IMAGE, dtype=torch.float64)
    for k in (0, 1, 2, 3, 0, 1):
        ref = hand_update(ref, k)
    assert torch.allclose(x6, ref, rtol=1e-10)
    assert phys.num_subsets == 1  # nothing was switched on the physics


def test_zero_sensitivity_voxels_become_zero():
    lik = _problem(seed=6)
    lik.physics.matrix[:, 5] = 0.0  # voxel 5 is never seen
    lik.physics._sens_cache.clear()
    x = osem(lik, num_subsets=3, num_subiterations=1, progress=False)
    assert float(x.reshape(-1)[5]) == 0.0
    assert bool((x.reshape(-1)[torch.arange(24) != 5] > 0).all())


def test_callback_history_and_early_stop():
    lik = _problem(seed=7)
    seen = []

    def cb(info):
        seen.append((info["iteration"], info["subset"], info["objective"] is not None))
        assert info["x"].shape == IMAGE
        if info["iteration"] == 5:
            raise StopIteration

    x, hist = osem(lik, num_subsets=2, num_epochs=10, callback=cb, progress=False,
                   return_history=True)
    assert seen == [(1, 0, False), (2, 1, True), (3, 0, False), (4, 1, True), (5, 0, False)]
    assert hist.iterations == [0, 2, 4, 5]
    assert hist.objective[-1] == pytest.approx(float(lik.value(x)), rel=1e-12)


def test_batched_initial_images():
    lik = _problem(seed=8)
    x0 = torch.rand(2, *IMAGE, dtype=torch.float64) + 0.5
    xb, hist = osem(lik, x0, num_subsets=3, num_epochs=2, progress=False, return_history=True)
    for i in range(2):
        assert torch.allclose(xb[i], osem(lik, x0[i], num_subsets=3, num_epochs=2, progress=False))
    assert len(hist.objective[0]) == 2


# ---------------------------------------------------------------------------- MAP
def _priors():
    return [RelativeDifferencePrior(2.0, epsilon=0.05, voxel_size_mm=(2.0, 1.0, 1.0)),
            QuadraticPrior(0.5)]


def test_map_em_with_zero_beta_is_mlem():
    lik = _problem(seed=9)
    for prior in (RelativeDifferencePrior(0.0), QuadraticPrior(0.0)):
        a = map_em(lik, prior, num_iterations=10, progress=False)
        assert torch.allclose(a, mlem(lik, num_iterations=10, progress=False), rtol=1e-10)


@pytest.mark.parametrize("prior", _priors(), ids=["rdp", "quadratic"])
def test_map_em_monotone_and_converges_to_kkt_optimum(prior):
    lik = _problem()
    x_ref = _lbfgsb(lik, prior)
    x, hist = map_em(lik, prior, num_iterations=200, progress=False, return_history=True)
    obj = np.array(hist.objective)
    assert np.all(np.diff(obj) >= -1e-10 * np.abs(obj).max())
    assert obj[-1] >= float(map_objective(lik, prior, x_ref)) - 1e-9 * abs(obj[-1])
    assert float((x - x_ref).norm() / x_ref.norm()) < 1e-5
    _assert_kkt(lik.gradient(x_ref) - prior.gradient(x_ref), x_ref, 1e-5)
    _assert_kkt(lik.gradient(x) - prior.gradient(x), x, 1e-4)


def test_map_em_rdp_monotone_with_zeros_and_epsilon_zero():
    """The trust-region surrogate stays a valid minoriser next to zero voxels (eps = 0)."""
    lik = _problem(seed=3)
    prior = RelativeDifferencePrior(5.0, epsilon=0.0)
    x0 = torch.ones(IMAGE, dtype=torch.float64)
    x0[0, 0] = 0.0
    for rho in (0.5, 0.9):
        _, hist = map_em(lik, prior, x0, num_iterations=60, lower_ratio=rho, progress=False,
                         return_history=True)
        obj = np.array(hist.objective)
        assert np.all(np.diff(obj) >= -1e-10 * np.abs(obj).max())


@pytest.mark.parametrize("prior", _priors(), ids=["rdp", "quadratic"])
def test_bsrem_approaches_the_optimum(prior):
    lik = _problem()
    x_ref = _lbfgsb(lik, prior)
    x0 = osem(lik, num_subsets=3, num_epochs=2, progress=False)
    errs = []
    bsrem(lik, prior, x0, num_subsets=3, num_epochs=200, relaxation_eta=0.1, progress=False,
          callback=lambda info: errs.append(float((info["x"] - x_ref).norm() / x_ref.norm())))
    assert errs[-1] < 0.01
    assert errs[-1] < 0.5 * errs[30]  # still improving (the relaxation decays the OS limit cycle)
    assert lik.physics.num_subsets == 1


def test_bad_input_is_named():
    lik = _problem()
    with pytest.raises(ValueError, match="negative"):
        mlem(lik, -torch.ones(IMAGE, dtype=torch.float64), num_iterations=1, progress=False)
    with pytest.raises(ValueError, match="shape"):
        mlem(lik, torch.ones(3, 3, 3), num_iterations=1, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        osem(lik, num_subsets=2, num_epochs=1, num_subiterations=2, progress=False)
    with pytest.raises(ValueError, match="num_subsets"):
        osem(lik, num_subsets=13, num_epochs=1, progress=False)
    with pytest.raises(ValueError, match="num_iterations"):
        mlem(lik, num_iterations=-1, progress=False)
    with pytest.raises(ValueError, match="lower_ratio"):
        map_em(lik, RelativeDifferencePrior(1.0), num_iterations=1, lower_ratio=0.3, progress=False)
    with pytest.raises(ValueError, match="initial_step_size"):
        bsrem(lik, QuadraticPrior(1.0), num_subsets=2, num_epochs=1, initial_step_size=0,
              progress=False)


# ---------------------------------------------------------------------------- immutable subsets
def test_subsets_are_immutable_objects_not_modes():
    """A ViewSubset (k, K) is a value: any partition on one physics, caches keyed by (k, K),
    integers index the partition given at construction, nothing is switched on the physics."""
    from sirf_diffusion.physics.base import DenseMatrixPhysics, ViewSubset

    lik = _problem(seed=8)
    phys = DenseMatrixPhysics(lik.physics.matrix, IMAGE, DATA, num_subsets=3)
    x = torch.rand(IMAGE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A = phys.matrix.reshape(*DATA, -1)
    for K in (2, 4, 3):
        subs = phys.subsets(K)
        assert subs == tuple(ViewSubset(k, K) for k in range(K))
        for sub in subs:
            assert phys.subset_views(sub).tolist() == list(range(sub.index, DATA[1], K))
            ref = (A[:, sub.index::K].reshape(-1, A.shape[-1]) @ x.reshape(-1))
            assert torch.allclose(phys.forward_linear(x, sub).reshape(-1), ref, rtol=1e-12)
        total = sum(phys.sensitivity(sub, dtype=torch.float64) for sub in subs)
        assert torch.allclose(total, phys.sensitivity(None, dtype=torch.float64), rtol=1e-12)
    assert phys.num_subsets == 3
    assert torch.equal(phys.forward(x, 1), phys.forward(x, ViewSubset(1, 3)))
    assert phys.resolve_subset(ViewSubset(0, 1)) is None          # one subset = all data
    keys = {k[0] for k in phys._sens_cache}
    assert {(0, 2), (1, 2), (3, 4), (2, 3), None} <= keys
    with pytest.raises(ValueError, match="out of range"):
        ViewSubset(3, 3)
    with pytest.raises(TypeError, match="int"):
        ViewSubset(0.5, 2)                                           # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 1 and the number of views"):
        phys.forward(x, ViewSubset(0, DATA[1] + 1))
    with pytest.raises(ValueError, match="out of range for 3 subsets"):
        phys.forward(x, 3)
    with pytest.warns(DeprecationWarning, match="ViewSubset"):
        phys.set_num_subsets(2)
    assert phys.num_subsets == 2 and phys.subset_views(1).tolist() == list(range(1, DATA[1], 2))


def test_algorithms_count_their_own_projections():
    """Costs come from the algorithm's own scope: exact per call, unaffected by other work on
    the same likelihood, and nested scopes both count."""
    lik = _problem(seed=9)
    lik.value(torch.ones(IMAGE, dtype=torch.float64))               # earlier, unrelated work
    _, h = osem(lik, num_subsets=3, num_epochs=2, progress=False, return_history=True)
    # 6 subset updates (1/3 each) + the objective at 0 and after each of 2 epochs (the last
    # epoch's is also the final one): 2 + 3 forward, 2 adjoint
    assert h.num_forward == pytest.approx(5.0) and h.num_adjoint == pytest.approx(2.0)
    with lik.count_projections() as outer:
        with lik.count_projections() as inner:
            lik.gradient(torch.ones(IMAGE, dtype=torch.float64), lik.subsets(4)[1])
        lik.value(torch.ones(IMAGE, dtype=torch.float64))
    assert (inner.forward, inner.adjoint) == (0.25, 0.25)
    assert (outer.forward, outer.adjoint) == (1.25, 0.25)


def test_saturated_log_likelihood_is_the_pll_at_the_data_and_its_maximum():
    """``sum(y log y - y)`` by hand (0 log 0 = 0), equal to the PLL of a model whose mean is the
    data exactly, and no PLL of another mean exceeds it (zero deviance at the data)."""
    import math

    from sirf_diffusion.likelihood import saturated_log_likelihood

    y = torch.tensor([0.0, 1.0, math.e, 4.0])
    assert saturated_log_likelihood(y) == pytest.approx(0 - 1 + 0 + (4 * math.log(4) - 4))
    phys = DenseMatrixPhysics(torch.eye(4, dtype=torch.float64), (1, 2, 2), (1, 2, 2),
                              additive=torch.full((1, 2, 2), 1e-12, dtype=torch.float64))
    lik = PoissonLogLikelihood(phys, y.double().reshape(1, 2, 2))
    at_data = float(lik.value(y.double().reshape(1, 2, 2)))
    assert at_data == pytest.approx(saturated_log_likelihood(y), abs=1e-9)
    assert float(lik.value(torch.full((1, 2, 2), 1.5, dtype=torch.float64))) < at_data
