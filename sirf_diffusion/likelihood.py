"""Poisson log-likelihood of PET data, as STIR defines it, and the protocols the algorithms use.

.. math::

    L(x) = \\sum_i y_i \\log \\bar y_i(x) - \\bar y_i(x), \\qquad
    \\bar y(x) = m \\cdot (G P x) + b

(STIR's ``PoissonLogLikelihoodWithLinearModelForMeanAndProjData``, constant ``-log y_i!``
dropped).  Its gradient is ``A^T (y / ybar) - A^T 1`` with ``A`` the linear part of the model;
the subset versions use the views of one subset only, so that the sum over subsets is the full
objective.  Bins where ``ybar == 0`` and ``y == 0`` contribute nothing; ``y > 0`` with
``ybar == 0`` is guarded by a small floor on ``ybar``.

Two protocols separate what the reconstruction algorithms call from how it is computed (the data
fidelity of deepinv's ``optim/data_fidelity.py``):

:class:`Likelihood`
    What every EM-preconditioned algorithm (MLEM/OSEM, MAP-EM, BSREM, PET-LiSch, PET-DDS) needs:
    the image grid, value and gradient per subset, sensitivity, EM update, a uniform start, the
    subsets of a partition and a scoped projection counter.  A SIRF objective function
    (:class:`~sirf_diffusion.integrations.sirf.ObjectiveFunctionLikelihood`) implements it.
:class:`ProjectingLikelihood`
    Adds the measured data, the physics and the expected data ``ybar`` with its value and
    gradient (``value_at`` / ``gradient_at``), which DPS (and any method differentiating the
    Poisson misfit through projections) requires: algorithms check it with ``isinstance``.
    :class:`PoissonLogLikelihood` implements it.

Subsets are immutable :class:`~sirf_diffusion.physics.base.ViewSubset` objects (or integer
indices into the physics' fixed partition, or ``None`` for all data); a subset evaluation costs
``1 / K`` of a full-data projection.  Algorithms count the projections they do with
:meth:`PoissonLogLikelihood.count_projections` (a scoped counter), never by differencing totals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ContextManager, Protocol, runtime_checkable

import torch

from .physics.base import PETPhysics, Subset, ViewSubset

__all__ = ["Likelihood", "ProjectingLikelihood", "PoissonLogLikelihood", "ProjectionCount",
           "ProjectionCounter", "CountsProjections", "check_prompts", "saturated_log_likelihood"]


def check_prompts(y: torch.Tensor, name: str = "prompts") -> None:
    """Raise ``ValueError`` if measured data contain NaN, infinite or negative values."""
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    if (y < 0).any():
        raise ValueError(f"{name} contain negative values (min {float(y.min()):.4g}); "
                         "Poisson data must be >= 0")


def saturated_log_likelihood(y: torch.Tensor) -> float:
    """The Poisson log-likelihood of data ``y`` at their own mean, ``sum(y log y - y)`` in
    float64 (``0 log 0 = 0``; without the ``log y!`` term, as :class:`PoissonLogLikelihood`).

    ``2 (L_sat - L(x)) / M`` is the Poisson deviance per bin of an image ``x`` (about 1 for the
    true image; ``M`` bins), the measure of steering's discrepancy principle.
    """
    pos = y > 0
    y64 = y.double()
    return float(torch.where(pos, y64 * torch.log(torch.where(pos, y64, 1.0)) - y64,
                             torch.zeros_like(y64)).sum())


# ----------------------------------------------------------------------------- cost counting
@dataclass
class ProjectionCount:
    """Projections in units of full-data passes (a subset pass counts ``1 / K``)."""

    forward: float = 0.0
    adjoint: float = 0.0


class ProjectionCounter:
    """Running totals of a likelihood's projections, and scoped counts for one algorithm.

    ``with counter.scope() as c: ...`` gives a :class:`ProjectionCount` of the projections done
    inside the block only (scopes nest: an OSEM inside a sampler counts in both).
    """

    def __init__(self) -> None:
        self.total = ProjectionCount()
        self._scopes: list[ProjectionCount] = []

    def add(self, forward: float = 0.0, adjoint: float = 0.0) -> None:
        for c in (self.total, *self._scopes):
            c.forward += forward
            c.adjoint += adjoint

    @contextlib.contextmanager
    def scope(self) -> Iterator[ProjectionCount]:
        count = ProjectionCount()
        self._scopes.append(count)
        try:
            yield count
        finally:
            self._scopes = [c for c in self._scopes if c is not count]


class CountsProjections:
    """Mixin of the likelihoods: totals and scoped counts from ``self.projections``."""

    projections: ProjectionCounter

    @property
    def num_forward(self) -> float:
        """Forward projections so far (full-data passes)."""
        return self.projections.total.forward

    @property
    def num_adjoint(self) -> float:
        """Adjoint projections so far (full-data passes)."""
        return self.projections.total.adjoint

    def count_projections(self) -> ContextManager[ProjectionCount]:
        """``with likelihood.count_projections() as c:`` counts the projections of the block."""
        return self.projections.scope()


# ----------------------------------------------------------------------------- protocols
@runtime_checkable
class Likelihood(Protocol):
    """What the reconstruction algorithms call on a log-likelihood ``L`` (module docstring).

    ``subset`` arguments take a :class:`~sirf_diffusion.physics.base.ViewSubset` from
    :meth:`subsets`, an integer index into the likelihood's default partition, or ``None``.
    Values have one entry per leading batch element of ``x``.
    """

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def value(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor: ...

    def gradient(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor: ...

    def value_and_gradient(self, x: torch.Tensor, subset: Subset = None
                           ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def sensitivity(self, subset: Subset = None, like: torch.Tensor | None = None
                    ) -> torch.Tensor: ...

    def em_update(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor: ...

    def uniform_image(self) -> torch.Tensor: ...

    def subsets(self, num_subsets: int) -> tuple[ViewSubset, ...]: ...

    def count_projections(self) -> ContextManager[ProjectionCount]: ...


@runtime_checkable
class ProjectingLikelihood(Likelihood, Protocol):
    """A :class:`Likelihood` that also exposes its data, physics and expected data ``ybar``."""

    @property
    def physics(self) -> PETPhysics: ...

    @property
    def data(self) -> torch.Tensor: ...

    def ybar(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor: ...

    def value_at(self, ybar: torch.Tensor, subset: Subset = None) -> torch.Tensor: ...

    def gradient_at(self, ybar: torch.Tensor, subset: Subset = None) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- implementation
class PoissonLogLikelihood(CountsProjections):
    """Poisson log-likelihood ``L(x)`` over a physics model and measured data.

    Implements :class:`ProjectingLikelihood`.

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
        Totals of forward / adjoint projections (in units of full-data passes; a subset pass
        counts ``1 / K``); an algorithm counts its own with :meth:`count_projections`.
    """

    def __init__(self, physics: PETPhysics, data: torch.Tensor, *,
                 ybar_floor: float = 1e-8) -> None:
        physics._check_data(data, subset=None)
        check_prompts(data)
        self.physics = physics
        self.data = data
        self.ybar_floor = float(ybar_floor)
        self.projections = ProjectionCounter()

    # ------------------------------------------------------------------ geometry and costs
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.physics.image_shape)  # type: ignore[return-value]

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        return tuple(self.physics.voxel_size_mm)  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def subsets(self, num_subsets: int) -> tuple[ViewSubset, ...]:
        """The ``K`` view subsets of a partition of the data (``physics.subsets``)."""
        return self.physics.subsets(num_subsets)

    def _cost(self, subset: Subset) -> float:
        sub = self.physics.resolve_subset(subset)
        return 1.0 if sub is None else sub.cost

    def _y(self, subset: Subset, like: torch.Tensor) -> torch.Tensor:
        return self.physics.subset_data(self.data, subset).to(device=like.device, dtype=like.dtype)

    # ------------------------------------------------------------------ value and gradient
    def ybar(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """Expected data ``m * G P x + b`` on the views of ``subset``."""
        self.projections.add(forward=self._cost(subset))
        return self.physics.forward(x, subset)

    def value(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """``L(x)`` (restricted to ``subset``); one value per leading batch element."""
        ybar = self.ybar(x, subset)
        return self._value_from_ybar(ybar, self._y(subset, ybar))

    def _value_from_ybar(self, ybar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pos = y > 0
        logterm = torch.where(pos, y * torch.log(torch.clamp(ybar, min=self.ybar_floor)),
                              torch.zeros_like(ybar))
        return (logterm - ybar).sum(dim=(-3, -2, -1))

    def gradient(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """``grad L(x) = A^T (y / ybar) - A^T 1`` on the views of ``subset``."""
        ratio = self.ratio(x, subset)
        self.projections.add(adjoint=self._cost(subset))
        return self.physics.adjoint(ratio - 1.0, subset)

    def value_and_gradient(self, x: torch.Tensor, subset: Subset = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both at the cost of one forward and one adjoint projection."""
        ybar = self.ybar(x, subset)
        return self.value_at(ybar, subset), self.gradient_at(ybar, subset)

    def value_at(self, ybar: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """``L`` from expected data ``ybar`` already computed by :meth:`ybar` (no projection).

        With :meth:`gradient_at` this splits :meth:`value_and_gradient` into its forward and
        adjoint halves, so that an algorithm that only needs the value (e.g. a stopping test)
        does not pay for the adjoint.
        """
        return self._value_from_ybar(ybar, self._y(subset, ybar))

    def gradient_at(self, ybar: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """``grad L = A^T (y / ybar) - A^T 1`` from ``ybar`` of :meth:`ybar` (one adjoint)."""
        ratio = self._ratio_at(ybar, subset)
        self.projections.add(adjoint=self._cost(subset))
        return self.physics.adjoint(ratio - 1.0, subset)

    def ratio(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """``y / ybar(x)`` with ``0 / 0 -> 0``."""
        return self._ratio_at(self.ybar(x, subset), subset)

    def _ratio_at(self, ybar: torch.Tensor, subset: Subset) -> torch.Tensor:
        y = self._y(subset, ybar)
        return torch.where(y > 0, y / torch.clamp(ybar, min=self.ybar_floor),
                           torch.zeros_like(ybar))

    def sensitivity(self, subset: Subset = None, like: torch.Tensor | None = None) -> torch.Tensor:
        """``A^T 1`` on the views of ``subset`` (cached by the physics)."""
        kw = {} if like is None else {"dtype": like.dtype, "device": like.device}
        return self.physics.sensitivity(subset, **kw)

    def em_update(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """One (OS)EM update ``x * A_k^T (y_k / ybar_k) / A_k^T 1``; voxels with zero
        sensitivity become 0 (STIR's convention)."""
        sens = self.sensitivity(subset, like=x)
        bp = self.physics.adjoint(self.ratio(x, subset), subset)
        self.projections.add(adjoint=self._cost(subset))
        return torch.where(sens > 0, x * bp / torch.where(sens > 0, sens, torch.ones_like(sens)),
                           torch.zeros_like(x))

    def uniform_image(self) -> torch.Tensor:
        """Uniform image ``c`` with the measured net counts: ``c = (sum y - sum b) / sum_j s_j``.

        (``sum_i [A c 1]_i = c sum_j s_j``), the usual uniform start of MLEM with the right
        global scale; shape ``image_shape``, dtype and device of the data.
        """
        data = self.data
        sens = self.sensitivity(None, like=data.new_zeros(()))
        b = self.physics.additive_term
        net = data.sum() - (b.to(data).sum() if b is not None else 0.0)
        total = sens.sum()
        if not total > 0:
            raise ValueError("the sensitivity image is zero everywhere: the scanner sees no voxel")
        c = torch.clamp(net, min=torch.finfo(data.dtype).tiny) / total
        return torch.full(self.image_shape, float(c), dtype=data.dtype, device=data.device)
