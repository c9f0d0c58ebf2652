"""View subsets as STIR defines them, for physics backends that delegate to STIR.

STIR's subset ``k`` of ``K`` holds the views ``v`` with ``v % K == k`` *and every view related to
them by the projector's symmetries*: with STIR's default symmetries of the ray-tracing matrix
the views ``v``, ``n/2 - v``, ``n/2 + v`` and ``n - v`` of ``n`` views always fall into one
subset.  The embedded projector uses ``v % K == k``; a backend that calls STIR's partial
projections must use STIR's sets instead, so that its subset gradients and sensitivities are
those of SIRF's/STIR's objective functions.  :class:`ToolkitSubsets` finds them by projecting
a uniform image onto each subset (one full projection in all, once per ``K``) and checks that
they partition the views.
"""

from __future__ import annotations

import torch

__all__ = ["ToolkitSubsets"]


class ToolkitSubsets:
    """Mixin for :class:`~sirf_diffusion.physics.base.PETPhysics` backends over STIR.

    The backend implements ``_partial_forward_of_ones(k, K) -> [sinogram, view, tangential]``
    (the toolkit's partial projection of a uniform image onto subset ``k`` of ``K``, zero on the
    other views).
    """

    _subset_sets: dict[int, list[torch.Tensor]]

    def _partial_forward_of_ones(self, subset: int, num_subsets: int) -> torch.Tensor:
        raise NotImplementedError

    def _subsets_for(self, K: int) -> list[torch.Tensor]:
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

    def subset_views(self, subset: int | None) -> torch.Tensor | None:
        """Views of STIR's subset ``subset`` (``None``: all views)."""
        if subset is None:
            return None
        K = self.num_subsets  # type: ignore[attr-defined]
        if not 0 <= int(subset) < K:
            raise ValueError(f"subset {subset} out of range for {K} subsets")
        return self._subsets_for(K)[int(subset)]

    def _subset_index(self, views: torch.Tensor | None) -> tuple[int, int]:
        """``(k, K)`` of the views given to ``_forward_linear`` / ``_adjoint``."""
        if views is None:
            return 0, 1
        K = self.num_subsets  # type: ignore[attr-defined]
        for k, v in enumerate(self._subsets_for(K)):
            if v.numel() == views.numel() and bool((v == views.cpu()).all()):
                return k, K
        raise ValueError("only whole STIR subsets can be projected by a toolkit backend")
