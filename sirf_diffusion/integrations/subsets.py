"""View subsets as STIR defines them, for physics backends that delegate to STIR.

STIR's subset ``k`` of ``K`` holds the views ``v`` with ``v % K == k`` *and every view related to
them by the projector's symmetries*: with STIR's default symmetries of the ray-tracing matrix
the views ``v``, ``n/2 - v``, ``n/2 + v`` and ``n - v`` of ``n`` views always fall into one
subset.  The embedded projector uses ``v % K == k``; a backend that calls STIR's partial
projections must use STIR's sets instead, so that its subset gradients and sensitivities are
those of SIRF's/STIR's objective functions.  :class:`ToolkitSubsets` finds them by projecting
a uniform image onto each subset (one full projection in all, once per ``K``) and checks that
they partition the views.

The subset to project is an immutable :class:`~sirf_diffusion.physics.base.ViewSubset`
``(k, K)``: the backend passes STIR's numbering ``subset_num=k, num_subsets=K`` from it, and
every cache is keyed by ``K``; nothing on the backend changes with the subset used.
"""

from __future__ import annotations

import torch

from ..physics.base import ViewSubset

__all__ = ["ToolkitSubsets"]


class ToolkitSubsets:
    """Mixin for :class:`~sirf_diffusion.physics.base.PETPhysics` backends over STIR.

    The backend implements ``_partial_forward_of_ones(k, K) -> [sinogram, view, tangential]``
    (the toolkit's partial projection of a uniform image onto subset ``k`` of ``K``, zero on the
    other views) and the projections of one toolkit subset, ``_toolkit_forward(x, k, K, views)``
    and ``_toolkit_adjoint(y, k, K, views)`` (``views``: the subset's views, ``None`` for all;
    ``x`` / ``y`` flat batches as for ``_forward_linear`` / ``_adjoint``).
    """

    _subset_sets: dict[int, list[torch.Tensor]]

    def _partial_forward_of_ones(self, subset: int, num_subsets: int) -> torch.Tensor:
        raise NotImplementedError

    def _toolkit_forward(self, x: torch.Tensor, k: int, K: int,
                         views: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _toolkit_adjoint(self, y: torch.Tensor, k: int, K: int,
                         views: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _subsets_for(self, K: int) -> list[torch.Tensor]:
        """STIR's view sets of the ``K`` subsets (found once per ``K``)."""
        if not hasattr(self, "_subset_sets"):
            self._subset_sets = {}
        if K not in self._subset_sets:
            nv = self.data_shape[1]  # type: ignore[attr-defined]
            if K == 1:
                self._subset_sets[K] = [torch.arange(nv)]
            else:
                sets, owner = [], torch.full((nv,), -1, dtype=torch.int64)
                for k in range(K):
                    y = self._partial_forward_of_ones(k, K)
                    views = torch.nonzero(y.abs().sum(dim=(0, 2)) > 0).flatten().cpu()
                    if views.numel() == 0:
                        raise RuntimeError(f"the toolkit's subset {k} of {K} projects onto no view")
                    if bool((owner[views] >= 0).any()):
                        raise RuntimeError(f"the toolkit's subsets {k} and "
                                           f"{int(owner[views].max())} of {K} share views")
                    owner[views] = k
                    sets.append(views)
                if bool((owner < 0).any()):
                    missing = torch.nonzero(owner < 0).flatten().tolist()
                    raise RuntimeError(f"the toolkit's {K} subsets miss views {missing[:8]}")
                self._subset_sets[K] = sets
        return self._subset_sets[K]

    def _full_data(self, yb: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """One data element ``yb`` (all views, or the subset's ``views``) as a float32 CPU tensor
        of the full ``data_shape``, zero on the other views: what a toolkit back projects."""
        full = torch.zeros(self.data_shape, dtype=torch.float32)  # type: ignore[attr-defined]
        if views is None:
            full.copy_(yb.detach().cpu())
        else:
            full[:, views.cpu(), :] = yb.detach().cpu().to(torch.float32)
        return full

    # hooks of PETPhysics
    def _views_of(self, subset: ViewSubset) -> torch.Tensor:
        """Views of STIR's subset ``(k, K)``."""
        return self._subsets_for(subset.num_subsets)[subset.index]

    def _forward_subset(self, x: torch.Tensor, subset: ViewSubset | None) -> torch.Tensor:
        if subset is None:
            return self._toolkit_forward(x, 0, 1, None)
        return self._toolkit_forward(x, subset.index, subset.num_subsets, self._views_of(subset))

    def _adjoint_subset(self, y: torch.Tensor, subset: ViewSubset | None) -> torch.Tensor:
        if subset is None:
            return self._toolkit_adjoint(y, 0, 1, None)
        return self._toolkit_adjoint(y, subset.index, subset.num_subsets, self._views_of(subset))

    def _forward_linear(self, x: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """All views only: STIR projects whole subsets (:class:`ViewSubset`), not view lists."""
        if views is not None:
            raise ValueError("a toolkit backend projects whole STIR subsets (ViewSubset), "
                             "not arbitrary views")
        return self._toolkit_forward(x, 0, 1, None)

    def _adjoint(self, y: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """All views only (see :meth:`_forward_linear`)."""
        if views is not None:
            raise ValueError("a toolkit backend projects whole STIR subsets (ViewSubset), "
                             "not arbitrary views")
        return self._toolkit_adjoint(y, 0, 1, None)
