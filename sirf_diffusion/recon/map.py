"""Convergent MAP reconstruction: De Pierro's modified EM (MAP-EM) and BSREM.

Both maximise the penalised log-likelihood (STIR's sign convention, the prior a penalty)

.. math:: \\Phi(x) = L(x) - R(x), \\qquad x \\ge 0,

over the voxels with non-zero sensitivity (voxels the scanner does not see are held at 0, as
STIR's EM-type algorithms do).  ``R`` is any object with ``value``, ``gradient`` and (for MAP-EM)
``separable_curvature(x, lower_ratio)`` and ``min_lower_ratio``, e.g.
:class:`~sirf_diffusion.recon.priors.RelativeDifferencePrior` or
:class:`~sirf_diffusion.recon.priors.QuadraticPrior`.
"""

from __future__ import annotations

import math

import torch

from ..likelihood import Likelihood
from .em import (
    Callback,
    ReconHistory,
    _check_count,
    _updates_from,
    em_step,
    initial_image,
    run_iterations,
)
from .priors import NeighbourhoodPrior

__all__ = ["map_objective", "map_em", "bsrem"]


def map_objective(likelihood: Likelihood, prior: NeighbourhoodPrior,
                  x: torch.Tensor) -> torch.Tensor:
    """:math:`\\Phi(x) = L(x) - R(x)` (one value per leading batch element)."""
    return likelihood.value(x) - prior.value(x)


def _surrogate_maximiser(sens: torch.Tensor, sens_x_em: torch.Tensor, grad_r: torch.Tensor,
                         curv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Positive root of ``c z^2 + (s + g - c x) z - s x_em = 0`` (see :func:`map_em`).

    Uses ``2 s x_em / (B + sqrt(B^2 + 4 c s x_em))`` when ``B > 0`` (no cancellation, and the
    plain EM update when ``c = 0``) and ``(sqrt(...) - B) / (2 c)`` otherwise.
    """
    b = sens + grad_r - curv * x
    disc = torch.sqrt(b * b + 4 * curv * sens_x_em)
    one = torch.ones_like(b)
    pos_b = b > 0
    small = torch.where(pos_b, 2 * sens_x_em / torch.where(pos_b, b + disc, one),
                        torch.zeros_like(b))
    large = torch.where(curv > 0, (disc - b) / torch.where(curv > 0, 2 * curv, one), x)
    return torch.where(pos_b, small, large)


def map_em(likelihood: Likelihood, prior: NeighbourhoodPrior,
           x0: torch.Tensor | None = None, *, num_iterations: int, num_subsets: int = 1,
           lower_ratio: float | None = None, callback: Callback | None = None,
           progress: bool = True, return_history: bool = False,
           ) -> torch.Tensor | tuple[torch.Tensor, ReconHistory]:
    """De Pierro's modified EM with a separable paraboloidal surrogate for the prior (MAP-EM).

    Maximises :math:`\\Phi(x) = L(x) - R(x)` by optimisation transfer (De Pierro, "A modified
    expectation maximization algorithm for penalized likelihood estimation in emission
    tomography", IEEE TMI 14(1):132-137, 1995).  At the current image ``x`` (sensitivity ``s``,
    EM update ``x_EM``) the likelihood is minorised by the EM surrogate and the penalty majorised
    by a separable quadratic
    (:meth:`~sirf_diffusion.recon.priors.NeighbourhoodPrior.separable_curvature`, curvatures
    ``c``), which gives for every voxel independently

    .. math::

        z_j = \\arg\\max_{z \\ge \\rho x_j}\\; s_j x^{EM}_j \\log z - s_j z
              - [\\nabla R(x)]_j (z - x_j) - \\tfrac{c_j}{2}(z - x_j)^2,

    i.e. the positive root of :math:`c_j z^2 + (s_j + [\\nabla R(x)]_j - c_j x_j) z
    - s_j x^{EM}_j = 0`, clamped below at :math:`\\rho x_j`.  The EM surrogate is a minoriser of
    ``L`` (also with a background term, by concavity of the logarithm) and the quadratic a majoriser
    of ``R`` on :math:`\\{z \\ge \\rho x\\}`, so with ``num_subsets=1`` every iteration increases
    ``Phi`` (monotone MM); its fixed points satisfy the KKT conditions of ``Phi`` on ``x >= 0``.

    For the quadratic prior the majoriser is global (De Pierro's original, ``rho = 0``).  The
    relative difference prior has unbounded curvature near 0, so no global separable quadratic
    majoriser exists; restricting each update to ``z >= rho x`` with ``rho >= 1/2`` keeps the
    arguments of De Pierro's convexity split inside the non-negative orthant, where the RDP is
    jointly convex and its curvature along the split is bounded (a trust region in the spirit of
    Wang & Qi, "Edge-preserving PET image reconstruction using trust optimization transfer",
    IEEE TMI 34(4):930-939, 2015).  The default ``rho = 3/4`` bounds the curvature away from the
    point 0 (a voxel can still shrink by 25% per iteration).

    With ``num_subsets = K > 1`` each sub-iteration uses the subset EM surrogate and ``R / K``
    (ordered-subsets MAP-EM): faster at first but no longer monotone or convergent; use ``K = 1``
    or :func:`bsrem` for the converged MAP image.

    Parameters
    ----------
    likelihood
        Poisson log-likelihood ``L``.
    prior
        Penalty ``R`` with ``value``, ``gradient``, ``separable_curvature`` and ``min_lower_ratio``.
    x0
        Initial image (``None``: 1 everywhere).
    num_iterations
        Number of epochs (full passes through the data; ``K`` sub-iterations each).
    num_subsets
        ``K`` (STIR view subsets ``v % K == k``, visited in the order 0, 1, ...).
    lower_ratio
        ``rho``; ``None``: 3/4 when the prior needs a trust region (``min_lower_ratio > 0``),
        else 0.
    callback, progress, return_history
        As :func:`~sirf_diffusion.recon.em.osem`; the recorded objective is ``Phi``.
    """
    if lower_ratio is None:
        rho = 0.75 if prior.min_lower_ratio > 0 else 0.0
    else:
        rho = float(lower_ratio)
        if not (math.isfinite(rho) and max(prior.min_lower_ratio, 0.0) <= rho < 1):
            raise ValueError(f"lower_ratio must be in [{prior.min_lower_ratio}, 1) for "
                             f"{type(prior).__name__}, got {lower_ratio}")
    num_iterations = _check_count(num_iterations, "num_iterations")
    x = initial_image(likelihood, x0)
    subsets = likelihood.subsets(num_subsets)
    k = len(subsets)

    def update(z, subset):
        _, sens_x_em, value = em_step(likelihood, z, subset)
        sens = likelihood.sensitivity(subset, like=z)
        grad_r = prior.gradient(z) / k
        curv = prior.separable_curvature(z, rho) / k
        z_new = torch.maximum(_surrogate_maximiser(sens, sens_x_em, grad_r, curv, z), rho * z)
        z_new = torch.where(sens > 0, z_new, torch.zeros_like(z_new))
        previous = value - prior.value(z) if subset is None else None
        return z_new, previous

    x, hist = run_iterations(likelihood, x, update=update,
                             objective=lambda z: map_objective(likelihood, prior, z),
                             num_updates=num_iterations * k, subsets=subsets,
                             callback=callback, progress=progress, record=return_history,
                             desc="MAP-EM" if k == 1 else f"OS-MAP-EM ({k} subsets)")
    return (x, hist) if return_history else x


def bsrem(likelihood: Likelihood, prior: NeighbourhoodPrior,
          x0: torch.Tensor | None = None, *, num_subsets: int, num_epochs: int | None = None,
          num_subiterations: int | None = None, initial_step_size: float = 1.0,
          relaxation_eta: float = 0.1, eps: float | None = None, upper_bound: float | None = None,
          callback: Callback | None = None, progress: bool = True, return_history: bool = False,
          ) -> torch.Tensor | tuple[torch.Tensor, ReconHistory]:
    """Block sequential regularised EM (BSREM; Ahn & Fessler, IEEE TMI 22(5):613-626, 2003).

    Relaxed, EM-preconditioned ordered-subsets gradient ascent on
    :math:`\\Phi(x) = L(x) - R(x) = \\sum_k [L_k(x) - R(x)/K]`, as in SIRF-Contribs' ``BSREM``
    and the PETRIC reference:

    .. math::

        x \\leftarrow \\Big[x + \\alpha_n \\frac{x + \\varepsilon}{\\bar s}
        \\big(\\nabla L_k(x) - \\tfrac1K \\nabla R(x)\\big)\\Big]_{[0, U]},
        \\qquad \\alpha_n = \\frac{\\alpha_0}{1 + \\eta\\, n},
        \\qquad \\bar s = \\tfrac1K A^T 1,

    with ``n`` the epoch and ``k`` cycling 0, 1, ..., K-1.  With ``alpha_0 = 1`` the first
    sub-iteration from a prior-free start is an OSEM step.  Relaxation ``eta > 0`` makes the step
    sizes satisfy ``sum alpha_n = inf``, ``sum alpha_n^2 < inf``, under which Ahn & Fessler prove
    convergence to the maximiser (on a bounded box ``[0, U]``; pass ``upper_bound`` for ``U``).

    Parameters
    ----------
    likelihood, prior, x0
        As :func:`map_em` (a good ``x0`` is a few OSEM epochs).
    num_subsets
        ``K``.
    num_epochs, num_subiterations
        Length of the run (exactly one).
    initial_step_size, relaxation_eta
        ``alpha_0 > 0`` and ``eta >= 0``.
    eps
        Preconditioner offset letting zero voxels move; ``None``: ``max(x0) / 1000``
        (SIRF-Contribs).
    upper_bound
        Optional ``U``.
    callback, progress, return_history
        As :func:`~sirf_diffusion.recon.em.osem`; the recorded objective is ``Phi``.
    """
    alpha0, eta = float(initial_step_size), float(relaxation_eta)
    if not (math.isfinite(alpha0) and alpha0 > 0):
        raise ValueError(f"initial_step_size must be > 0, got {initial_step_size}")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"relaxation_eta must be >= 0, got {relaxation_eta}")
    if upper_bound is not None and not float(upper_bound) > 0:
        raise ValueError(f"upper_bound must be > 0 or None, got {upper_bound}")
    x = initial_image(likelihood, x0)
    if eps is None:
        eps = float(x.max()) / 1e3
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    subsets = likelihood.subsets(num_subsets)
    k = len(subsets)
    num_updates = _updates_from(k, num_epochs, num_subiterations)
    sens = likelihood.sensitivity(None, like=x)
    pos = sens > 0
    precond_den = torch.where(pos, sens / k, torch.ones_like(sens))
    counter = {"n": 0}

    def update(z, subset):
        alpha = alpha0 / (1 + eta * (counter["n"] // k))
        counter["n"] += 1
        value, grad = likelihood.value_and_gradient(z, subset)
        grad = grad - prior.gradient(z) / k
        z_new = torch.clamp(z + alpha * (z + eps) * grad / precond_den, min=0,
                            max=None if upper_bound is None else float(upper_bound))
        z_new = torch.where(pos, z_new, torch.zeros_like(z_new))
        previous = value - prior.value(z) if subset is None else None
        return z_new, previous

    x, hist = run_iterations(likelihood, x, update=update,
                             objective=lambda z: map_objective(likelihood, prior, z),
                             num_updates=num_updates, subsets=subsets, callback=callback,
                             progress=progress, record=return_history,
                             desc=f"BSREM ({k} subsets)")
    return (x, hist) if return_history else x
