"""PET-LiSch: likelihood-scheduled data consistency (Webber et al., IEEE TMI 2025).

arXiv 2412.04339.

The method replaces the data-fidelity weights of earlier score-based PET reconstructions by a
*likelihood schedule*: the Poisson log-likelihood (PLL) that each generative step must reach is
read off an ordinary MLEM run on the same data.

1. MLEM from a uniform image for ``K`` iterations gives ``PLL_0 <= PLL_1 <= ... <= PLL_K``
   (MLEM increases the PLL monotonically), see :func:`mlem_likelihood_schedule`;
2. the ``N`` generative steps get targets by linear interpolation of those values at the
   fractional MLEM iterations ``kappa_n = (n + 1) K / N``, ``n = 0..N-1``
   (:func:`likelihood_schedule`):
   the reverse diffusion is matched to MLEM's progress so that its last step has the likelihood
   of MLEM iterate ``K`` — the single data-versus-prior hyperparameter of the method;
3. at step ``n`` the rule (:class:`LikelihoodScheduleDC`) maps the Tweedie estimate to physical
   units, ``u = s max(x0, 0)``, and takes EM-preconditioned ascent steps

   .. math:: u \\leftarrow \\max\\big(u + \\alpha\\, \\tfrac{u}{A^T 1} \\nabla L(u), 0\\big)

   only until ``L(u) >= PLL*_n`` (no step when the estimate already reaches it; at most
   ``max_likelihood_steps``).  With ``alpha = 1`` each step is exactly an MLEM update.  The number
   of likelihood evaluations therefore adapts to how far the prior's estimate is from the
   scheduled likelihood, instead of a fixed per-step budget as in PET-DDS.

Works for slice (2D) and volumetric priors alike: the rule only sees the Tweedie estimate through
the :class:`~sirf_diffusion.diffusion.normalisation.IntensityNormalisation` (any 3D denoiser, e.g.
:class:`~sirf_diffusion.diffusion.prior3d.PerpendicularPrior3D`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..diffusion.normalisation import IntensityNormalisation
from ..likelihood import Likelihood
from .em_steps import (
    ascend_to_target,
    check_positive_float,
    check_positive_int,
    field_of_view,
    to_physical,
    to_prior,
    uniform_image,
)
from .loop import StepContext

__all__ = ["likelihood_schedule", "MLEMSchedule", "mlem_likelihood_schedule",
           "LikelihoodScheduleDC"]


def likelihood_schedule(mlem_pll: Sequence[float] | torch.Tensor, num_steps: int) -> torch.Tensor:
    """Per-step PLL targets interpolated from MLEM's PLL trajectory (PET-LiSch, step 2).

    .. math::

        \\mathrm{PLL}^*_n = (1 - w)\\,\\mathrm{PLL}_{\\lfloor\\kappa_n\\rfloor}
        + w\\,\\mathrm{PLL}_{\\lfloor\\kappa_n\\rfloor + 1}, \\qquad
        \\kappa_n = \\frac{(n + 1) K}{N}, \\quad w = \\kappa_n - \\lfloor\\kappa_n\\rfloor

    Parameters
    ----------
    mlem_pll
        ``[PLL_0, ..., PLL_K]``: the PLL of the initial image and of ``K >= 1`` MLEM iterates.
        Rounding can make MLEM's last values dip by a few ulps; the running maximum is used so the
        schedule is always non-decreasing.
    num_steps
        ``N``, the number of generative steps.

    Returns
    -------
    torch.Tensor
        ``N`` non-decreasing targets (float64); the last one is ``PLL_K``.
    """
    N = check_positive_int(num_steps, "num_steps")
    p = torch.as_tensor(mlem_pll, dtype=torch.float64).detach().cpu()
    if p.ndim != 1 or p.numel() < 2:
        raise ValueError("mlem_pll must hold the PLL of the initial image and of K >= 1 MLEM "
                         f"iterates (at least 2 values), got shape {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise ValueError("mlem_pll contains NaN or infinite values")
    p = torch.cummax(p, 0).values
    K = p.numel() - 1
    kappa = torch.arange(1, N + 1, dtype=torch.float64) * K / N
    lo = torch.clamp(kappa.floor().long(), max=K - 1)
    w = kappa - lo.to(torch.float64)
    return (1 - w) * p[lo] + w * p[lo + 1]


@dataclass
class MLEMSchedule:
    """MLEM run behind a likelihood schedule.

    Attributes
    ----------
    targets
        The ``N`` per-step PLL targets (:func:`likelihood_schedule`).
    image
        MLEM iterate ``K`` (physical units, ``likelihood.image_shape``).
    pll
        ``[PLL_0, ..., PLL_K]``.
    num_forward, num_adjoint
        Projections spent (full-data passes).
    """

    targets: torch.Tensor
    image: torch.Tensor
    pll: list[float] = field(default_factory=list)
    num_forward: float = 0.0
    num_adjoint: float = 0.0


def mlem_likelihood_schedule(likelihood: Likelihood, num_iterations: int,
                             num_steps: int, *, x_init: torch.Tensor | None = None,
                             progress: bool = False) -> MLEMSchedule:
    """Run ``K = num_iterations`` MLEM iterations and build the ``N = num_steps`` targets.

    ``x_init`` defaults to the count-matched uniform image
    (:func:`~sirf_diffusion.samplers.em_steps.uniform_image`).  MLEM is
    :func:`sirf_diffusion.recon.em.mlem` (STIR's conventions); its PLLs come free with its updates.
    """
    from ..recon.em import mlem

    K = check_positive_int(num_iterations, "num_iterations (K, the number of MLEM iterations)")
    check_positive_int(num_steps, "num_steps")
    x0 = uniform_image(likelihood) if x_init is None else x_init
    image, hist = mlem(likelihood, x0, num_iterations=K, progress=progress, return_history=True)
    if hist.iterations != list(range(K + 1)):
        raise RuntimeError(f"MLEM history has iterations {hist.iterations}, expected 0..{K}")
    pll = [float(v) for v in hist.objective]
    return MLEMSchedule(likelihood_schedule(pll, num_steps), image, pll,
                        hist.num_forward, hist.num_adjoint)


@dataclass
class LikelihoodScheduleDC:
    """PET-LiSch data-consistency rule ``x0' = DC(x0, context)`` (module docstring, step 3).

    Parameters
    ----------
    likelihood
        Log-likelihood of the measured data (any :class:`~sirf_diffusion.likelihood.Likelihood`;
        full-data steps).
    normalisation
        Maps the prior's estimate to physical units and back.
    targets
        One PLL target per generative step (:func:`likelihood_schedule`); its length must equal
        the number of steps of the loop.
    alpha
        Step size of the EM-preconditioned ascent (1: each step is an MLEM update).
    max_likelihood_steps
        Cap on the ascent steps per generative step.
    fov_fraction
        Voxels whose full-data sensitivity is below this fraction of the maximum are outside the
        field of view and set to 0 (:func:`~.em_steps.field_of_view`; 0 keeps them all).

    Notes
    -----
    Fills ``context.info`` with ``pll`` (list, PLL of each sample after the step), ``pll_target``,
    ``n_likelihood_steps`` (list, ascent steps per sample), ``n_likelihood_evaluations``
    (forward projections of this step, in full-data passes of the batch: the stopping test needs
    only the value) and ``n_likelihood_gradients`` (adjoint projections, same units; one fewer
    than the forward projections for every sample that ascends).
    """

    likelihood: Likelihood
    normalisation: IntensityNormalisation
    targets: torch.Tensor
    alpha: float = 1.0
    max_likelihood_steps: int = 20
    fov_fraction: float = 0.01

    def __post_init__(self) -> None:
        t = torch.as_tensor(self.targets, dtype=torch.float64)
        if t.ndim != 1 or t.numel() < 1 or not bool(torch.isfinite(t).all()):
            raise ValueError("targets must be a non-empty 1D sequence of finite PLL values")
        if bool((t[1:] < t[:-1]).any()):
            raise ValueError("likelihood targets must be non-decreasing")
        self.targets = t
        self.alpha = check_positive_float(self.alpha, "alpha")
        self.max_likelihood_steps = check_positive_int(self.max_likelihood_steps,
                                                       "max_likelihood_steps")
        self.fov_fraction = check_positive_float(self.fov_fraction, "fov_fraction",
                                                 allow_zero=True)

    def __call__(self, x0: torch.Tensor, context: StepContext) -> torch.Tensor:
        if context.num_steps != self.targets.numel():
            raise ValueError(f"the likelihood schedule has {self.targets.numel()} targets but the "
                             f"reverse diffusion has {context.num_steps} steps")
        # 1. u = s * max(x0, 0): Tweedie estimate in physical units
        u = to_physical(x0, self.normalisation, self.likelihood)
        #    restricted to the field of view (EM keeps the zeros outside it at 0)
        fov = field_of_view(self.likelihood, u, self.fov_fraction)
        if fov is not None:
            u = u * fov
        # 2. PLL*_n, the scheduled likelihood of this step
        target = float(self.targets[context.step])
        # 3. EM-preconditioned ascent until L(u) >= PLL*_n
        res = ascend_to_target(self.likelihood, u, target, alpha=self.alpha,
                               max_steps=self.max_likelihood_steps)
        context.info.update(pll=res.pll.detach().cpu().tolist(), pll_target=target,
                            n_likelihood_steps=res.num_steps.tolist(),
                            n_likelihood_evaluations=res.num_evaluations,
                            n_likelihood_gradients=res.num_gradients)
        # 4. back to the prior's normalised space
        return to_prior(res.image, self.normalisation).to(x0.dtype)
