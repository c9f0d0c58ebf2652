"""Bowsher's MR-guided neighbour selection for the quadratic and relative difference priors.

Bowsher et al. ("Utilizing MRI information to estimate F18-FDG distributions in rat flank tumors",
IEEE NSS-MIC 2004, M5-292; see also Vunckx et al., IEEE TMI 31(3):599-612, 2012 and Schramm et
al., IEEE TMI 37(2):590-603, 2018) penalise activity differences only between a voxel and the
``B`` neighbours whose MR intensity is most similar to its own.  With the neighbourhood ``N(r)``
of the prior (here the 3x3x3 or 3x3 window of :func:`~.priors.neighbourhood_offsets`) and
``b_{rs} = 1`` when ``s`` is among the ``B`` members of ``N(r)`` with the smallest
``|m_s - m_r|`` (``m`` the MR image; ties broken by the smaller distance, then by a fixed order
of the offsets), 0 otherwise, the penalty in STIR's ordered-pair convention is

.. math::

    R(x) = \\beta \\sum_r \\sum_{s \\in N(r)} \\frac{w_{rs}}{2}\\, b_{rs}\\, \\phi(x_r, x_s)
         = \\beta \\sum_{\\{r, s\\}} w_{rs}\\, \\frac{b_{rs} + b_{sr}}{2}\\, \\phi(x_r, x_s),

so the weight of an unordered pair is the mean of the two selections (``symmetrise="mean"``, the
default): 1 when each voxel picks the other, 1/2 when only one does.  The selection itself is not
symmetric (``s`` may pick ``r`` while ``r`` does not pick ``s``); averaging is what makes ``R``
a well-defined function of ``x`` whose gradient
:math:`\\partial_r R = \\beta \\sum_s w_{rs} \\tfrac{b_{rs} + b_{sr}}{2} \\partial_1\\phi(x_r, x_s)`
is the one :class:`~.priors.NeighbourhoodPrior` computes, and it keeps the penalty convex for a
convex ``phi``.  ``"or"`` (weight ``max(b_rs, b_sr)``) and ``"and"`` (``min``) are the other
symmetric choices found in the literature.

The selection depends only on the order of MR differences, so it is invariant to any increasing
affine change of the MR intensities; a uniform MR selects, for every voxel, its ``B`` nearest
neighbours; ``B = |N(r)|`` gives back the unweighted prior exactly.  Pairs leaving the image are
never selected (a voxel at the border may have fewer than ``B`` neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch

from .priors import (
    Neighbourhood,
    NeighbourhoodPrior,
    QuadraticPrior,
    RelativeDifferencePrior,
    _pair_slices,
    neighbourhood_offsets,
)

__all__ = ["Symmetrisation", "bowsher_selection", "bowsher_weights", "bowsher_prior"]

Symmetrisation = Literal["mean", "or", "and"]
_SYMMETRISATIONS = get_args(Symmetrisation)


def _mr_tensor(mr: Any) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(mr) if not isinstance(mr, torch.Tensor) else mr)
    if m.ndim != 3:
        raise ValueError(f"the MR image must be [z, y, x], got shape {tuple(m.shape)}")
    m = m.to(torch.float64)
    if not torch.isfinite(m).all():
        raise ValueError("the MR image has NaN or infinite values")
    return m


def _full_offsets(neighbourhood: Neighbourhood, voxel_size_mm: Sequence[float]
                  ) -> list[tuple[tuple[int, int, int], float]]:
    """Every offset of the neighbourhood (both signs), nearest first (stable: the forward
    offsets' order, each followed by its negative)."""
    full = []
    for d, w in neighbourhood_offsets(neighbourhood, voxel_size_mm):
        full += [(d, w), ((-d[0], -d[1], -d[2]), w)]
    return sorted(full, key=lambda item: -item[1])


def bowsher_selection(mr: Any, num_neighbours: int, *, neighbourhood: Neighbourhood = "26",
                      voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                      ) -> dict[tuple[int, int, int], torch.Tensor]:
    """``b_{r, r+o}`` for every offset ``o`` of the neighbourhood (both signs): boolean
    ``[z, y, x]`` images, True where voxel ``r`` selects its neighbour ``r + o``.

    Parameters
    ----------
    mr
        MR image ``[z, y, x]`` on the PET grid (numpy or torch).
    num_neighbours
        ``B``, between 1 and the size of the neighbourhood (26 or 8, or 2 for ``"axial"``).
    neighbourhood, voxel_size_mm
        As :class:`~.priors.NeighbourhoodPrior` (distances break ties).
    """
    m = _mr_tensor(mr)
    full = _full_offsets(neighbourhood, voxel_size_mm)
    if isinstance(num_neighbours, bool) or int(num_neighbours) != num_neighbours \
            or not 1 <= num_neighbours <= len(full):
        raise ValueError(f"num_neighbours must be an int between 1 and {len(full)} (the "
                         f"{neighbourhood!r} neighbourhood), got {num_neighbours!r}")
    diffs = torch.full((len(full), *m.shape), torch.inf, dtype=torch.float64)
    for i, (o, _) in enumerate(full):
        sa, sb = _pair_slices(m.shape, o)
        diffs[(i, *sa[1:])] = (m[sb] - m[sa]).abs()
    order = torch.argsort(diffs, dim=0, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(len(full)).view(-1, 1, 1, 1).expand_as(order))
    chosen = (rank < int(num_neighbours)) & torch.isfinite(diffs)
    return {o: chosen[i] for i, (o, _) in enumerate(full)}


def bowsher_weights(mr: Any, num_neighbours: int, *, neighbourhood: Neighbourhood = "26",
                    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                    symmetrise: Symmetrisation = "mean",
                    ) -> dict[tuple[int, int, int], torch.Tensor]:
    """Pair weights of the Bowsher prior (module docstring), for
    :class:`~.priors.NeighbourhoodPrior`'s ``pair_weights``: one float64 tensor per forward
    offset ``d``, of the shape of the pairs ``(r, r + d)`` in the image, with values in
    ``{0, 1/2, 1}`` (``"mean"``) or ``{0, 1}`` (``"or"``, ``"and"``)."""
    if symmetrise not in _SYMMETRISATIONS:
        raise ValueError(f"symmetrise must be one of {_SYMMETRISATIONS}, got {symmetrise!r}")
    chosen = bowsher_selection(mr, num_neighbours, neighbourhood=neighbourhood,
                               voxel_size_mm=voxel_size_mm)
    shape = next(iter(chosen.values())).shape
    out = {}
    for d, _ in neighbourhood_offsets(neighbourhood, voxel_size_mm):
        sa, sb = _pair_slices(shape, d)
        forward = chosen[d][sa].to(torch.float64)                     # r picks r + d
        backward = chosen[(-d[0], -d[1], -d[2])][sb].to(torch.float64)  # r + d picks r
        if symmetrise == "mean":
            out[d] = 0.5 * (forward + backward)
        elif symmetrise == "or":
            out[d] = torch.maximum(forward, backward)
        else:
            out[d] = torch.minimum(forward, backward)
    return out


def bowsher_prior(kind: Literal["quadratic", "rdp"], penalisation_factor: float, mr: Any,
                  num_neighbours: int, *, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                  neighbourhood: Neighbourhood = "26", symmetrise: Symmetrisation = "mean",
                  **options: Any) -> NeighbourhoodPrior:
    """A quadratic or relative difference prior restricted to Bowsher's MR-selected pairs.

    Parameters
    ----------
    kind
        ``"quadratic"`` (:class:`~.priors.QuadraticPrior`) or ``"rdp"``
        (:class:`~.priors.RelativeDifferencePrior`).
    penalisation_factor
        ``beta``.
    mr, num_neighbours, neighbourhood, voxel_size_mm, symmetrise
        As :func:`bowsher_weights`.
    options
        Further keywords of the prior (``gamma``, ``epsilon``, ``kappa`` for the RDP; ``kappa``
        for the quadratic prior).
    """
    classes = {"quadratic": QuadraticPrior, "rdp": RelativeDifferencePrior}
    if kind not in classes:
        raise ValueError(f"kind must be 'quadratic' or 'rdp', got {kind!r}")
    weights = bowsher_weights(mr, num_neighbours, neighbourhood=neighbourhood,
                              voxel_size_mm=voxel_size_mm, symmetrise=symmetrise)
    return classes[kind](penalisation_factor, neighbourhood=neighbourhood,
                         voxel_size_mm=voxel_size_mm, pair_weights=weights, **options)
