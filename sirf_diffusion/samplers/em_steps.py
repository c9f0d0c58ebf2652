"""EM-preconditioned ascent steps shared by the PET data-consistency rules (PET-LiSch, PET-DDS).

All rules act on the Tweedie estimate ``x0`` of the prior, in the prior's normalised space.  The
crossing to physical units is explicit and the same for every rule:

.. math::

    u = s \\cdot \\max(\\hat x_0, 0) \\quad (\\text{layout } [B, z, y, x]), \\qquad
    \\hat x_0' = u' / s ,

done by :func:`to_physical` / :func:`to_prior` with the
:class:`~sirf_diffusion.diffusion.normalisation.IntensityNormalisation` the rule is given.

In physical units one step on subset ``k`` of ``K`` (views ``v % K == k``, subset sensitivity
``s^k = A_k^T 1``) is

.. math::

    u^{+} = \\max\\Big(u + \\alpha \\frac{\\tilde u}{s^k} \\Big[\\nabla L_k(u)
            + \\frac{\\beta}{K}(a - u) - \\frac{1}{K}\\nabla R(u)\\Big],\\ 0\\Big),
    \\qquad \\tilde u = \\max(u, u_{\\min}),

the EM-preconditioned gradient ascent on ``L(u) - beta/2 ||u - a||^2 - R(u)`` of PET-DDS
(Singh et al., MELBA 2024, Sec. 3.3 and their public code: anchor ``a`` = Tweedie estimate,
full-data step for 2D, subsets with a ``K``-scaled gradient for 3D) and PET-LiSch (Webber et al.,
IEEE TMI 2025: ``beta = 0``, no ``R``).  The anchor and penalty are split evenly over the
subsets, so that ``K`` subset steps see the full objective once (as OSEM-type MAP methods do).
It is evaluated in the multiplicative form

.. math::

    u^{+} = u - \\alpha\\tilde u + \\alpha \\frac{\\tilde u\\,[A_k^T(y_k/\\bar y_k)
            + \\tfrac{\\beta}{K}(a - u) - \\tfrac1K \\nabla R(u)]}{s^k},

so that ``alpha = 1``, ``u_min = 0`` and no anchor or penalty give *bit for bit* the (OS)EM update
of :func:`sirf_diffusion.recon.em.em_step` (STIR's ``OSMAPOSL``): voxels with ``s^k = 0`` are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.normalisation import IntensityNormalisation
from ..likelihood import Likelihood, ProjectingLikelihood
from ..physics.base import ViewSubset

__all__ = ["to_physical", "to_prior", "em_ascent_step", "em_ascent_update", "ascend_to_target",
           "AscentResult", "uniform_image", "field_of_view", "check_positive_int",
           "check_positive_float"]


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an ``int >= 1``, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive_float(value: object, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``), else ``ValueError``."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = v >= 0 if allow_zero else v > 0
    if not (ok and v == v and v != float("inf")):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def to_physical(x0: torch.Tensor, normalisation: IntensityNormalisation,
                likelihood: Likelihood) -> torch.Tensor:
    """``u = scale * max(x0, 0)`` as an image batch ``[B, z, y, x]`` in physical units.

    Raises ``ValueError`` when the prior tensor does not map onto the likelihood's image grid.
    """
    u = normalisation.from_prior(torch.clamp(x0.detach(), min=0))
    expected = tuple(likelihood.image_shape)
    if tuple(u.shape[1:]) != expected:
        raise ValueError(f"the denoiser's estimate {tuple(x0.shape)} maps to images of shape "
                         f"{tuple(u.shape[1:])}, but the likelihood has image_shape {expected}")
    return u


def to_prior(u: torch.Tensor, normalisation: IntensityNormalisation) -> torch.Tensor:
    """Physical image batch ``[B, z, y, x]`` -> prior tensor (inverse of :func:`to_physical`)."""
    return normalisation.to_prior(u)


def uniform_image(likelihood: Likelihood) -> torch.Tensor:
    """The likelihood's uniform start of MLEM with the data's global scale
    (:meth:`~sirf_diffusion.likelihood.PoissonLogLikelihood.uniform_image`: the measured net
    counts over the total sensitivity; a SIRF objective finds it from gradients)."""
    return likelihood.uniform_image()


def field_of_view(likelihood: Likelihood, like: torch.Tensor,
                  fraction: float) -> torch.Tensor | None:
    """Voxels the data determine: full-data sensitivity above ``fraction`` of its maximum.

    The data-consistency rules set the other voxels to 0, as STIR truncates images to the
    cylindrical field of view.  Their EM preconditioner ``u / s`` is huge (the corners of a square
    image outside the scanner's ring have ``s`` down to ``1e-8`` of the maximum), so a
    multiplicative ascent step lets any activity the prior puts there grow without bound; fed back
    to the network, such a voxel derails the rest of the reverse diffusion.  ``fraction = 0``
    keeps every voxel with ``s > 0`` (returns ``None``).
    """
    fraction = check_positive_float(fraction, "fov_fraction", allow_zero=True)
    if fraction == 0:
        return None
    if fraction >= 1:
        raise ValueError(f"fov_fraction must be in [0, 1), got {fraction}")
    sens = likelihood.sensitivity(None, like=like)
    return sens > fraction * sens.amax()


def em_ascent_step(likelihood: Likelihood, u: torch.Tensor, *,
                   subset: ViewSubset | None = None, sensitivity: torch.Tensor | None = None,
                   alpha: float = 1.0, anchor: torch.Tensor | None = None, beta: float = 0.0,
                   penalty_gradient: torch.Tensor | None = None, precond_floor: float = 0.0,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One EM-preconditioned ascent step (module docstring), on the views of ``subset``.

    Parameters
    ----------
    likelihood
        Poisson log-likelihood ``L``; one forward and one adjoint projection of the subset.
    u
        Current image(s) ``[..., z, y, x]`` in physical units, ``>= 0``.
    subset
        The :class:`~sirf_diffusion.physics.base.ViewSubset` ``(k, K)`` to use (from
        ``likelihood.subsets(K)``; ``None``: all data, ``K = 1``).
    sensitivity
        ``s^k`` (default: ``likelihood.sensitivity(subset)``); pass it to avoid the cache lookup.
    alpha
        Step size; 1 is the (OS)EM step.
    anchor, beta
        Anchor ``a`` (same shape as ``u``) and weight ``beta >= 0`` of ``-beta/2 ||u - a||^2``.
    penalty_gradient
        ``grad R(u)`` of a penalty ``R`` subtracted from the objective (e.g. an axial RDP).
    precond_floor
        ``u_min``: the preconditioner uses ``max(u, u_min) / s^k`` so that zero voxels can grow
        again (Singh et al. use a small positive floor in 3D); 0 keeps the pure EM step.

    Returns
    -------
    (u_new, value)
        The updated image(s) and ``L_k(u)``, the PLL of the *input* on the subset (one per batch
        element; free with the gradient).
    """
    if subset is not None and not isinstance(subset, ViewSubset):
        raise TypeError(f"subset must be a ViewSubset (likelihood.subsets(K)) or None, got "
                        f"{subset!r}")
    K = 1 if subset is None else subset.num_subsets
    value, grad = likelihood.value_and_gradient(u, subset)
    sens = likelihood.sensitivity(subset, like=u) if sensitivity is None else sensitivity
    u_new = em_ascent_update(u, grad, sens, num_subsets=K, alpha=alpha, anchor=anchor, beta=beta,
                             penalty_gradient=penalty_gradient, precond_floor=precond_floor)
    return u_new, value


def em_ascent_update(u: torch.Tensor, gradient: torch.Tensor, sensitivity: torch.Tensor, *,
                     num_subsets: int = 1, alpha: float = 1.0, anchor: torch.Tensor | None = None,
                     beta: float = 0.0, penalty_gradient: torch.Tensor | None = None,
                     precond_floor: float = 0.0) -> torch.Tensor:
    """The update of :func:`em_ascent_step` from a likelihood gradient already computed.

    ``gradient`` is ``grad L_k(u)`` and ``sensitivity`` is ``s^k`` of the same subset;
    ``num_subsets`` is the ``K`` that splits the anchor and penalty terms (1 for full data).
    No projection is done here.
    """
    K = num_subsets
    sens = sensitivity
    # 1. backprojected ratio A_k^T (y_k / ybar_k) = grad L_k(u) + s^k  (as recon.em.em_step)
    t = gradient + sens
    # 2. anchor (DDS) and penalty terms, split over the K subsets
    if anchor is not None and beta != 0:
        t = t + (beta / K) * (anchor - u)
    if penalty_gradient is not None:
        t = t - penalty_gradient / K
    # 3. EM preconditioner u~ / s^k and the multiplicative update
    ut = u if precond_floor == 0 else torch.clamp(u, min=precond_floor)
    pos = sens > 0
    em_like = torch.where(pos, torch.clamp(ut * t, min=0)
                          / torch.where(pos, sens, torch.ones_like(sens)), torch.zeros_like(u))
    # (alpha = 1: u - u~ is exactly 0 when u_min = 0, so u_new is the EM image bit for bit)
    u_new = (u - ut) + em_like if alpha == 1.0 else (u - alpha * ut) + alpha * em_like
    return torch.where(pos, torch.clamp(u_new, min=0), torch.zeros_like(u_new))


@dataclass
class AscentResult:
    """Outcome of :func:`ascend_to_target` for a batch.

    Attributes
    ----------
    image
        Final images ``[B, z, y, x]``.
    pll
        Full-data PLL of the final images, shape ``[B]``.
    num_steps
        Ascent steps taken per batch element, shape ``[B]`` (int64).
    num_evaluations
        Likelihood evaluations in full-data forward projections of the whole batch: a pass
        over the ``m`` of ``B`` elements still ascending counts ``m / B``.
    num_gradients
        Adjoint projections (gradients), in the same units.
    """

    image: torch.Tensor
    pll: torch.Tensor
    num_steps: torch.Tensor
    num_evaluations: float
    num_gradients: float = 0.0


def _value_and_state(likelihood: Likelihood, u: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``L(u)`` and what :func:`_gradient` needs to finish ``grad L(u)`` without a new forward
    projection (``ybar`` of a :class:`~sirf_diffusion.likelihood.ProjectingLikelihood`;
    ``None`` for likelihoods known through gradients only, e.g. a SIRF objective)."""
    if isinstance(likelihood, ProjectingLikelihood):
        ybar = likelihood.ybar(u)
        return likelihood.value_at(ybar), ybar
    return likelihood.value(u), None


def _gradient(likelihood: Likelihood, u: torch.Tensor,
              ybar: torch.Tensor | None) -> torch.Tensor:
    if ybar is None:
        return likelihood.gradient(u)
    assert isinstance(likelihood, ProjectingLikelihood)
    return likelihood.gradient_at(ybar)


def ascend_to_target(likelihood: Likelihood, u: torch.Tensor, target: float, *,
                     alpha: float = 1.0, max_steps: int = 20, precond_floor: float = 0.0
                     ) -> AscentResult:
    """Full-data EM-preconditioned ascent from ``u`` until ``L(u) >= target`` (PET-LiSch step).

    Each batch element stops on its own as soon as its PLL reaches ``target`` or after
    ``max_steps`` steps; an element already at or above the target is left unchanged (no
    update: the prior's estimate is kept when it already explains the data as well as the
    scheduled MLEM iterate).

    The stopping test needs only the value, i.e. a forward projection; the adjoint is taken
    only for the elements that still have to climb, from the same expected data ``ybar``.  A
    generative step that takes ``n`` ascent steps therefore costs ``n + 1`` forward and ``n``
    adjoint projections (a likelihood without projections, such as a SIRF objective, computes
    its gradient on its own and pays one more forward projection per step).  For ``alpha = 1``
    each update is exactly :func:`em_ascent_step`, i.e. an MLEM update.
    """
    u = u.clone()
    n = u.shape[0]
    steps = torch.zeros(n, dtype=torch.int64)
    sens = likelihood.sensitivity(None, like=u)
    active = torch.arange(n, device=u.device)
    value, ybar = _value_and_state(likelihood, u)
    pll = value.clone()
    forward, adjoint = 1.0, 0.0
    while True:
        go = (value < target) & (steps.index_select(0, active.cpu()) < max_steps).to(value.device)
        if not bool(go.any()):
            break
        active, ua = active[go], u.index_select(0, active[go])
        if ybar is not None:
            ybar = ybar[go]
        grad = _gradient(likelihood, ua, ybar)
        adjoint += active.numel() / n
        ua = em_ascent_update(ua, grad, sens, alpha=alpha, precond_floor=precond_floor)
        u.index_copy_(0, active, ua)
        steps[active.cpu()] += 1
        value, ybar = _value_and_state(likelihood, ua)
        forward += active.numel() / n
        pll.index_copy_(0, active, value)
    return AscentResult(u, pll, steps, forward, adjoint)
