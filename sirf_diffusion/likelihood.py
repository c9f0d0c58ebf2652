"""Poisson log-likelihood of PET data, as STIR defines it.

.. math::

    L(x) = \\sum_i y_i \\log \\bar y_i(x) - \\bar y_i(x), \\qquad
    \\bar y(x) = m \\cdot (G P x) + b

(STIR's ``PoissonLogLikelihoodWithLinearModelForMeanAndProjData``, constant ``-log y_i!``
dropped).  Its gradient is ``A^T (y / ybar) - A^T 1`` with ``A`` the linear part of the model;
the subset versions use the views of one subset only, so that the sum over subsets is the full
objective.  Bins where ``ybar == 0`` and ``y == 0`` contribute nothing; ``y > 0`` with
``ybar == 0`` is guarded by a small floor on ``ybar``.
"""

from __future__ import annotations

import torch

from .physics.base import PETPhysics

__all__ = ["PoissonLogLikelihood", "check_prompts"]


def check_prompts(y: torch.Tensor, name: str = "prompts") -> None:
    """Raise ``ValueError`` if measured data contain NaN, infinite or negative values."""
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    if (y < 0).any():
        raise ValueError(f"{name} contain negative values (min {float(y.min()):.4g}); "
                         "Poisson data must be >= 0")


class PoissonLogLikelihood:
    """Poisson log-likelihood ``L(x)`` over a physics model and measured data.

    Parameters
    ----------
    physics
        Any :class:`~sirf_diffusion.physics.base.PETPhysics` backend.
    data
        Measured prompts ``y`` of shape ``physics.data_shape`` (all views).
    ybar_floor
        Floor applied to ``ybar`` where ``y > 0`` to avoid ``log 0`` and division by zero.

    Attributes
    ----------
    num_forward, num_adjoint
        Counters of forward / adjoint projections (in units of full-data passes; a subset pass
        counts ``1 / num_subsets``), for reporting the cost of algorithms.
    has_projections
        Whether :meth:`ybar` and :meth:`ratio` are available (``False`` for likelihoods known
        only through gradients, such as a SIRF objective function).
    """

    has_projections = True

    def __init__(self, physics: PETPhysics, data: torch.Tensor, *, ybar_floor: float = 1e-8) -> None:
        physics._check_data(data, subset=None)
        check_prompts(data)
        self.physics = physics
        self.data = data
        self.ybar_floor = float(ybar_floor)
        self.num_forward = 0.0
        self.num_adjoint = 0.0

    def _cost(self, subset: int | None) -> float:
        return 1.0 if subset is None else 1.0 / self.physics.num_subsets

    def _y(self, subset: int | None, like: torch.Tensor) -> torch.Tensor:
        return self.physics.subset_data(self.data, subset).to(device=like.device, dtype=like.dtype)

    def ybar(self, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """Expected data ``m * G P x + b`` on the views of ``subset``."""
        self.num_forward += self._cost(subset)
        return self.physics.forward(x, subset)

    def value(self, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """``L(x)`` (restricted to ``subset``); one value per leading batch element."""
        ybar = self.ybar(x, subset)
        return self._value_from_ybar(ybar, self._y(subset, ybar))

    def _value_from_ybar(self, ybar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pos = y > 0
        logterm = torch.where(pos, y * torch.log(torch.clamp(ybar, min=self.ybar_floor)),
                              torch.zeros_like(ybar))
        return (logterm - ybar).sum(dim=(-3, -2, -1))

    def gradient(self, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """``grad L(x) = A^T (y / ybar) - A^T 1`` on the views of ``subset``."""
        ratio = self.ratio(x, subset)
        self.num_adjoint += self._cost(subset)
        return self.physics.adjoint(ratio - 1.0, subset)

    def value_and_gradient(self, x: torch.Tensor, subset: int | None = None):
        """Both at the cost of one forward and one adjoint projection."""
        ybar = self.ybar(x, subset)
        return self.value_at(ybar, subset), self.gradient_at(ybar, subset)

    def value_at(self, ybar: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """``L`` from expected data ``ybar`` already computed by :meth:`ybar` (no projection).

        With :meth:`gradient_at` this splits :meth:`value_and_gradient` into its forward and
        adjoint halves, so that an algorithm that only needs the value (e.g. a stopping test)
        does not pay for the adjoint.
        """
        return self._value_from_ybar(ybar, self._y(subset, ybar))

    def gradient_at(self, ybar: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """``grad L = A^T (y / ybar) - A^T 1`` from ``ybar`` of :meth:`ybar` (one adjoint)."""
        y = self._y(subset, ybar)
        ratio = torch.where(y > 0, y / torch.clamp(ybar, min=self.ybar_floor), torch.zeros_like(ybar))
        self.num_adjoint += self._cost(subset)
        return self.physics.adjoint(ratio - 1.0, subset)

    def ratio(self, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """``y / ybar(x)`` with ``0 / 0 -> 0``."""
        ybar = self.ybar(x, subset)
        y = self._y(subset, ybar)
        return torch.where(y > 0, y / torch.clamp(ybar, min=self.ybar_floor), torch.zeros_like(ybar))

    def sensitivity(self, subset: int | None = None, like: torch.Tensor | None = None) -> torch.Tensor:
        """``A^T 1`` on the views of ``subset`` (cached by the physics)."""
        kw = {} if like is None else {"dtype": like.dtype, "device": like.device}
        return self.physics.sensitivity(subset, **kw)

    def em_update(self, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """One (OS)EM update ``x * A_k^T (y_k / ybar_k) / A_k^T 1``; voxels with zero
        sensitivity become 0 (STIR's convention)."""
        sens = self.sensitivity(subset, like=x)
        bp = self.physics.adjoint(self.ratio(x, subset), subset)
        self.num_adjoint += self._cost(subset)
        return torch.where(sens > 0, x * bp / torch.where(sens > 0, sens, torch.ones_like(sens)),
                           torch.zeros_like(x))
