"""MLEM and OSEM as STIR runs them, on any :class:`~sirf_diffusion.physics.base.PETPhysics`.

The (OS)EM update on subset ``k`` of ``K`` (Shepp & Vardi, IEEE TMI 1982; Hudson & Larkin,
IEEE TMI 13(4):601-609, 1994) is

.. math::

    x^{+}_j = \\frac{x_j}{s^k_j} \\big[A_k^T \\frac{y_k}{A_k x + b_k}\\big]_j,
    \\qquad s^k = A_k^T 1,

with ``A_k`` the rows (views ``v % K == k``, STIR's view subsets) of the linear model.  As in
STIR's ``OSMAPOSL``: the initial image is 1 everywhere, the subsets are visited in the order
0, 1, 2, ... without randomisation, subset sensitivities are used, and voxels with zero (subset)
sensitivity are set to 0.  One MLEM iteration is OSEM with one subset; the two share one code path.

The subsets are immutable :class:`~sirf_diffusion.physics.base.ViewSubset` objects of the
likelihood's partition (``likelihood.subsets(K)``): nothing is switched on the physics.  Any
:class:`~sirf_diffusion.likelihood.Likelihood` works (the package's Poisson log-likelihood on any
physics backend, or a SIRF objective function).

This module also holds the iteration engine (history, callbacks, progress bar) reused by
:mod:`sirf_diffusion.recon.map`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..likelihood import Likelihood
from ..physics.base import ViewSubset
from ..physics.geometry import check_finite_non_negative

__all__ = ["ReconHistory", "mlem", "osem", "initial_image", "em_step"]

#: ``callback(info)``; ``info`` has ``iteration`` (updates done), ``epoch`` (full passes through the
#: data, fractional with subsets), ``subset`` (the subset just used, ``None``: all data), ``x`` (the
#: image after the update), ``objective_previous`` (objective of the image *before* the update
#: when it came for free, else ``None``) and ``objective`` (objective of ``x`` when it was
#: recorded at this iteration, else ``None``).  Raise ``StopIteration`` to stop early (CIL's
#: protocol).
Callback = Callable[[dict[str, Any]], None]


@dataclass
class ReconHistory:
    """Objective trajectory of an iterative reconstruction.

    Attributes
    ----------
    iterations
        Number of (sub-)iterations completed when each objective value was taken (0: initial image).
    objective
        The objective maximised (PLL for MLEM/OSEM, ``PLL - R`` for MAP methods) at those
        iterations; a float, or a list for batched images.
    num_forward, num_adjoint
        Projections used by the run (full-data passes, counted in the run's own scope), including
        the extra ones spent on recording the objective.
    """

    iterations: list[int] = field(default_factory=list)
    objective: list[Any] = field(default_factory=list)
    num_forward: float = 0.0
    num_adjoint: float = 0.0


def initial_image(likelihood: Likelihood, x0: torch.Tensor | None) -> torch.Tensor:
    """``x0`` checked and copied, or STIR's default: 1 in every voxel (dtype/device of the data)."""
    shape = tuple(likelihood.image_shape)
    if x0 is None:
        return torch.ones(shape, dtype=likelihood.dtype, device=likelihood.device)
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor or None, got {type(x0).__name__}")
    if x0.ndim < 3 or tuple(x0.shape[-3:]) != shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected (..., "
                         f"{', '.join(map(str, shape))})")
    check_finite_non_negative(x0, "x0", "EM-type algorithms need a non-negative initial image")
    return x0.detach().clone()


def _check_count(value: int | None, name: str) -> int:
    if value is None or isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def em_step(likelihood: Likelihood, x: torch.Tensor, subset: ViewSubset | int | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (OS)EM update; also returns ``s^k * x_EM`` and the (subset) PLL of the input image.

    Uses one forward and one adjoint projection (``value_and_gradient``), with
    ``A_k^T (y_k / ybar_k) = grad L_k(x) + s^k``.

    Returns
    -------
    x_em
        The EM update (0 where ``s^k == 0``).
    sens_x_em
        ``s^k * x_em = x * A_k^T (y_k / ybar_k)`` (clamped at 0 against rounding).
    value
        ``L_k(x)``, the PLL of ``x`` on the views of ``subset`` (one value per batch element).
    """
    value, grad = likelihood.value_and_gradient(x, subset)
    sens = likelihood.sensitivity(subset, like=x)
    sens_x_em = torch.clamp(x * (grad + sens), min=0)
    pos = sens > 0
    x_em = torch.where(pos, sens_x_em / torch.where(pos, sens, torch.ones_like(sens)),
                       torch.zeros_like(x))
    return x_em, sens_x_em, value


def _to_record(value: torch.Tensor) -> Any:
    return value.detach().cpu().tolist()


def run_iterations(likelihood: Likelihood, x: torch.Tensor, *,
                   update: Callable[[torch.Tensor, ViewSubset | None],
                                    tuple[torch.Tensor, torch.Tensor | None]],
                   objective: Callable[[torch.Tensor], torch.Tensor],
                   num_updates: int, subsets: tuple[ViewSubset, ...], callback: Callback | None,
                   progress: bool, record: bool, desc: str) -> tuple[torch.Tensor, ReconHistory]:
    """The loop shared by all algorithms here.

    ``update(x, subset) -> (x_new, objective of x or None)`` with ``subset`` the
    :class:`~sirf_diffusion.physics.base.ViewSubset` to use (``None``: all data, when there is one
    subset); the objective of the input image is passed back when it came for free (full-data
    updates).  With ``record``, the objective is also evaluated (one extra forward projection) at
    the initial image and after every epoch when it did not come for free, and at the final
    image.  Subsets are visited in the order 0, 1, ..., K-1.  The projections are counted in the
    run's own scope (:meth:`~sirf_diffusion.likelihood.PoissonLogLikelihood.count_projections`).
    """
    from tqdm.auto import tqdm

    num_subsets = len(subsets)
    values: dict[int, Any] = {}
    with likelihood.count_projections() as cost:
        if record and num_subsets > 1:
            values[0] = _to_record(objective(x))
        for n in tqdm(range(1, num_updates + 1), desc=desc, disable=not progress, leave=False):
            k = None if num_subsets == 1 else (n - 1) % num_subsets
            x, previous = update(x, None if k is None else subsets[k])
            if record and previous is not None:
                values[n - 1] = _to_record(previous)
            current = None
            if record and num_subsets > 1 and n % num_subsets == 0:
                current = objective(x)
                values[n] = _to_record(current)
            if callback is not None:
                info = {"iteration": n, "epoch": n / num_subsets, "subset": k, "x": x,
                        "objective_previous": previous, "objective": current}
                try:
                    callback(info)
                except StopIteration:
                    num_updates = n
                    break
        if record and num_updates not in values:
            values[num_updates] = _to_record(objective(x))
    its = sorted(values)
    history = ReconHistory(iterations=its, objective=[values[i] for i in its],
                           num_forward=cost.forward, num_adjoint=cost.adjoint)
    return x, history


def _updates_from(num_subsets: int, num_epochs: int | None, num_subiterations: int | None) -> int:
    if (num_epochs is None) == (num_subiterations is None):
        raise ValueError("give exactly one of num_epochs and num_subiterations")
    if num_epochs is not None:
        return _check_count(num_epochs, "num_epochs") * num_subsets
    return _check_count(num_subiterations, "num_subiterations")


def osem(likelihood: Likelihood, x0: torch.Tensor | None = None, *,
         num_subsets: int, num_epochs: int | None = None, num_subiterations: int | None = None,
         callback: Callback | None = None, progress: bool = True, return_history: bool = False,
         ) -> torch.Tensor | tuple[torch.Tensor, ReconHistory]:
    """Ordered-subsets EM (Hudson & Larkin 1994) exactly as STIR's ``OSMAPOSL`` without prior.

    .. math::

        x^{(n+1)} = \\frac{x^{(n)}}{A_k^T 1}\\, A_k^T \\frac{y_k}{A_k x^{(n)} + b_k},
        \\qquad k = n \\bmod K .

    Parameters
    ----------
    likelihood
        Any :class:`~sirf_diffusion.likelihood.Likelihood` (Poisson log-likelihood over any
        physics backend, SIRF objective function).
    x0
        Initial image (``None``: 1 in every voxel, as STIR); leading batch dimensions allowed.
    num_subsets
        ``K``; subset ``k`` holds the views ``v % K == k`` (``likelihood.subsets(K)``; the
        likelihood and its physics are not modified).
    num_epochs, num_subiterations
        Length of the run: exactly one of them (an epoch is ``K`` sub-iterations).
    callback
        Called after every sub-iteration (see :data:`Callback`); may raise ``StopIteration``.
    progress
        Show a tqdm progress bar.
    return_history
        Also return a :class:`ReconHistory` with the full PLL at the initial image, after every
        epoch and at the end (one extra forward projection each when ``K > 1``; free when
        ``K == 1``, up to the final one).

    Returns
    -------
    torch.Tensor or (torch.Tensor, ReconHistory)
    """
    x = initial_image(likelihood, x0)
    subsets = likelihood.subsets(num_subsets)  # validates 1 <= K <= num_views
    k = len(subsets)
    num_updates = _updates_from(k, num_epochs, num_subiterations)

    def update(z, subset):
        z_new, _, value = em_step(likelihood, z, subset)
        return z_new, (value if subset is None else None)

    x, hist = run_iterations(likelihood, x, update=update, objective=likelihood.value,
                             num_updates=num_updates, subsets=subsets, callback=callback,
                             progress=progress, record=return_history,
                             desc="MLEM" if k == 1 else f"OSEM ({k} subsets)")
    return (x, hist) if return_history else x


def mlem(likelihood: Likelihood, x0: torch.Tensor | None = None, *,
         num_iterations: int, callback: Callback | None = None, progress: bool = True,
         return_history: bool = False) -> torch.Tensor | tuple[torch.Tensor, ReconHistory]:
    """Maximum-likelihood EM (Shepp & Vardi 1982): :func:`osem` with one subset.

    .. math:: x^{(n+1)} = \\frac{x^{(n)}}{A^T 1}\\, A^T \\frac{y}{A x^{(n)} + b}

    Increases the Poisson log-likelihood monotonically and converges to a maximiser (the KKT
    conditions ``x_j [grad L]_j = 0``, ``[grad L]_j <= 0`` where ``x_j = 0``).  The PLL of each
    iterate comes for free (``return_history``; the callback's ``objective_previous``).
    Parameters as :func:`osem`.
    """
    num_iterations = _check_count(num_iterations, "num_iterations")
    return osem(likelihood, x0, num_subsets=1, num_subiterations=num_iterations,
                callback=callback, progress=progress, return_history=return_history)
