"""PET-DDS: anchored EM-preconditioned data consistency (Singh et al., MELBA 2024).

arXiv 2308.14190; public code: github.com/Imraj-Singh/
Score-Based-Generative-Models-for-PET-Image-Reconstruction.

Decomposed diffusion sampling (Chung, Lee & Ye, ICLR 2024, arXiv 2303.05754, Alg. 4) replaces the
Tweedie estimate by a few iterations of a data-fidelity solver started from it; Singh et al. adapt
it to PET with an EM-preconditioned ascent on the Poisson log-likelihood *anchored* to the Tweedie
estimate ``a = s max(x0, 0)`` (physical units):

.. math::

    u \\leftarrow \\max\\Big(u + \\frac{u}{s^k}\\Big[\\nabla L_k(u) + \\frac{\\beta}{K}(a - u)
    - \\frac{1}{K}\\nabla R_z(u)\\Big],\\ 0\\Big), \\qquad u^{(0)} = a,

for ``num_epochs`` passes over ``K`` view subsets (or ``num_subiterations`` subset steps) per
generative step.  ``beta`` weights the anchor (the proximal term ``-beta/2 ||u - a||^2``; it is in
physical units, ``1 / activity^2``, and may change per step); ``beta = 0`` is their "OSEM" variant
(plain (OS)EM started from the estimate).  ``R_z`` is the optional axial relative difference
prior of their 3D method, which couples the slices of a slice-wise (2D) prior; pass
``RelativeDifferencePrior(beta_z, neighbourhood='axial')`` from :mod:`sirf_diffusion.recon.priors`.

Conventions of their public code kept here: a full-data EM step for 2D; for 3D, subsets with the
gradient of one subset (they scale it by ``K`` against the full sensitivity, equivalent to the
subset sensitivity ``s^k`` used here since ``s^k ~ s / K``) and the subsets visited in a fixed
order continuing across generative steps (restarted at step 0).  With ``beta = 0``, no penalty and
one subset, one step is exactly an MLEM update.  See :mod:`.em_steps` for the update in detail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..diffusion.normalisation import IntensityNormalisation
from ..likelihood import Likelihood
from ..physics.base import ViewSubset
from ..recon.priors import NeighbourhoodPrior
from .em_steps import (
    check_positive_float,
    check_positive_int,
    em_ascent_step,
    field_of_view,
    to_physical,
    to_prior,
)
from .loop import StepContext

__all__ = ["AnchoredEMDC"]


@dataclass
class AnchoredEMDC:
    """PET-DDS data-consistency rule ``x0' = DC(x0, context)`` (module docstring).

    Parameters
    ----------
    likelihood
        Log-likelihood of the measured data (any :class:`~sirf_diffusion.likelihood.Likelihood`).
    normalisation
        Maps the prior's estimate to physical units and back.
    beta
        Anchor weight ``beta >= 0`` (physical units): a float, or a tensor with one value per
        generative step.
    num_subsets
        ``K`` view subsets (views ``v % K == k``): the immutable subsets
        ``likelihood.subsets(K)``, with their sensitivities computed once.
    num_epochs, num_subiterations
        Length of the ascent per generative step: ``num_epochs * K`` subset steps, or
        ``num_subiterations`` subset steps; give at most one (default: one epoch).
    penalty
        Optional penalty ``R`` subtracted from the objective, e.g. the axial RDP for slice priors.
    precond_floor
        ``u_min`` of the preconditioner ``max(u, u_min) / s^k`` (physical units; 0: pure EM).
    fov_fraction
        Voxels whose full-data sensitivity is below this fraction of the maximum are outside the
        field of view and set to 0 (:func:`~.em_steps.field_of_view`; 0 keeps them all).
    record_pll
        Also compute the full-data PLL of the result (one extra forward projection per step, not
        counted in ``n_likelihood_evaluations``).

    Notes
    -----
    Fills ``context.info`` with ``n_likelihood_steps`` (subset steps), ``n_likelihood_evaluations``
    (full-data passes: each subset step counts ``1 / K``), ``beta`` and, with ``record_pll``,
    ``pll`` (list, one per sample).
    """

    likelihood: Likelihood
    normalisation: IntensityNormalisation
    beta: float | torch.Tensor = 0.0
    num_subsets: int = 1
    num_epochs: int | None = None
    num_subiterations: int | None = None
    penalty: NeighbourhoodPrior | None = None
    precond_floor: float = 0.0
    fov_fraction: float = 0.01
    record_pll: bool = True
    _next_subset: int = field(default=0, init=False, repr=False)
    _subsets: tuple[ViewSubset | None, ...] = field(default=(), init=False, repr=False)
    _sens: dict[tuple[torch.dtype, str], list[torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.num_subsets = check_positive_int(self.num_subsets, "num_subsets")
        subsets = self.likelihood.subsets(self.num_subsets)  # validates K against the views
        # one subset is all data: the full-data path (None), as MLEM
        self._subsets = (None,) if self.num_subsets == 1 else tuple(subsets)
        if self.num_epochs is not None and self.num_subiterations is not None:
            raise ValueError("give at most one of num_epochs and num_subiterations")
        if self.num_subiterations is not None:
            self._num_updates = check_positive_int(self.num_subiterations, "num_subiterations")
        else:
            epochs = 1 if self.num_epochs is None else self.num_epochs
            self._num_updates = check_positive_int(epochs, "num_epochs") * self.num_subsets
        if isinstance(self.beta, torch.Tensor) and self.beta.ndim > 0:
            b = self.beta.detach().to(torch.float64).cpu()
            if b.ndim != 1 or not bool(torch.isfinite(b).all()) or bool((b < 0).any()):
                raise ValueError("a per-step beta must be a 1D tensor of finite values >= 0")
            self.beta = b
        else:
            self.beta = check_positive_float(self.beta, "beta", allow_zero=True)
        self.precond_floor = check_positive_float(self.precond_floor, "precond_floor",
                                                  allow_zero=True)
        self.fov_fraction = check_positive_float(self.fov_fraction, "fov_fraction",
                                                 allow_zero=True)
        if self.penalty is not None and not isinstance(self.penalty, NeighbourhoodPrior):
            raise TypeError("penalty must be a sirf_diffusion.recon.priors.NeighbourhoodPrior "
                            f"(e.g. RelativeDifferencePrior), got {type(self.penalty).__name__}")

    def _beta_at(self, context: StepContext) -> float:
        if isinstance(self.beta, torch.Tensor):
            if self.beta.numel() != context.num_steps:
                raise ValueError(f"beta has {self.beta.numel()} values but the reverse diffusion "
                                 f"has {context.num_steps} steps")
            return float(self.beta[context.step])
        return float(self.beta)

    def _sensitivities(self, like: torch.Tensor) -> list[torch.Tensor]:
        """Subset sensitivities ``s^k``, computed once per dtype and device."""
        key = (like.dtype, str(like.device))
        if key not in self._sens:
            self._sens[key] = [self.likelihood.sensitivity(k, like=like) for k in self._subsets]
        return self._sens[key]

    def __call__(self, x0: torch.Tensor, context: StepContext) -> torch.Tensor:
        lik, K = self.likelihood, self.num_subsets
        if context.step == 0:
            self._next_subset = 0
        beta = self._beta_at(context)
        # 1. anchor a = s * max(x0, 0) (Tweedie estimate, physical units) and start u = a
        a = to_physical(x0, self.normalisation, lik)
        fov = field_of_view(lik, a, self.fov_fraction)
        if fov is not None:
            #    restricted to the field of view (em_steps.field_of_view)
            a = a * fov
        u = a
        sens = self._sensitivities(u)
        with lik.count_projections() as cost:
            for _ in range(self._num_updates):
                k = self._next_subset
                # 2. penalty gradient (axial RDP) at the current iterate
                pg = None if self.penalty is None else self.penalty.gradient(u)
                # 3. anchored EM-preconditioned step on subset k
                u, _ = em_ascent_step(lik, u, subset=self._subsets[k], sensitivity=sens[k],
                                      anchor=a, beta=beta, penalty_gradient=pg,
                                      precond_floor=self.precond_floor)
                self._next_subset = (k + 1) % K
        if fov is not None:
            u = u * fov
        context.info.update(n_likelihood_steps=self._num_updates,
                            n_likelihood_evaluations=cost.forward, beta=beta)
        if self.record_pll:
            context.info["pll"] = lik.value(u).detach().cpu().tolist()
        # 4. back to the prior's normalised space
        return to_prior(u, self.normalisation).to(x0.dtype)
