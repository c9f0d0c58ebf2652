"""Resampling at the prior boundary: denoise an image on the grid the prior was trained on.

A slice prior learns anatomy at its training voxel size (the shipped prior: the simulated
brains' mMR grid, ``(2.03125, 2.08626, 2.08626)`` mm).  :class:`ResampledDenoiser` evaluates a
denoiser on the image resampled to that voxel size and maps the estimate back:

.. math::

    D_{\\mathrm{image}}(x, \\sigma) = B\\, D_{\\mathrm{prior}}(R x,\\ g\\sigma),

* :math:`R` and :math:`B` are separable **box-overlap** resamplings, the image taken as
  piecewise constant over its voxels (STIR's voxel basis): each new voxel is the mean of the
  old image over its extent, :math:`R_{ij} = |c^{\\mathrm{out}}_i \\cap c^{\\mathrm{in}}_j| /
  v_{\\mathrm{out}}`.  They are **value-preserving**: a uniform region keeps its value (an
  activity concentration, and the prior's normalisation by the support mean, stay as they
  are), while the total activity scales with the voxel volume.  (Mass-preserving resampling,
  :math:`v_{\\mathrm{out}} R / v_{\\mathrm{in}}`, would change the concentration the prior's
  intensity normalisation is defined on.)  :math:`B` is the same construction from the prior's
  grid back to the image's; both grids share their centre, and the prior's has
  ``round(n * v_image / v_prior)`` voxels along an axis, so the field of view is kept to within
  a voxel (what it gains is zero activity);
* :math:`g` is the noise gain of :math:`R`: white noise of level :math:`\\sigma` on the image
  grid has, on average over the voxels, the standard deviation :math:`g\\sigma` after
  :math:`R` (:math:`g^2 = \\prod_{\\mathrm{axes}} \\mathrm{mean}_i \\sum_j R_{ij}^2`; 1/2 for a
  2:1 reduction in a plane), so the prior is asked to remove the noise it actually sees.
  Resampling also correlates the noise, which the prior never saw in training: an
  approximation, better than a prior used at the wrong anatomical scale.

Only the axes the prior's slices span are resampled (``y, x`` for an axial prior; all three for
a perpendicular prior with ``yz`` or ``xz`` models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .adapters import batch_sigma
from .denoiser import Denoiser, DenoiserWrapper

__all__ = ["overlap_matrix", "resampled_size", "as_voxel_size", "ResampledDenoiser"]


def resampled_size(n: int, voxel_in: float, voxel_out: float) -> int:
    """Voxels along an axis of ``n`` voxels of ``voxel_in`` mm resampled to ``voxel_out`` mm."""
    return max(1, round(n * voxel_in / voxel_out))


def overlap_matrix(n_in: int, voxel_in: float, n_out: int, voxel_out: float, *,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[n_out, n_in]`` value-preserving box-overlap resampling of one axis (module docstring):
    ``W[i, j]`` = length of output voxel ``i`` covered by input voxel ``j``, over ``voxel_out``;
    both grids are centred on 0."""
    if min(n_in, n_out) < 1 or not (voxel_in > 0 and voxel_out > 0):
        raise ValueError(f"resampling needs positive sizes, got {n_in} x {voxel_in} mm -> "
                         f"{n_out} x {voxel_out} mm")
    e_in = (torch.arange(n_in + 1, dtype=torch.float64) - n_in / 2) * voxel_in
    e_out = (torch.arange(n_out + 1, dtype=torch.float64) - n_out / 2) * voxel_out
    lo = torch.maximum(e_out[:-1, None], e_in[None, :-1])
    hi = torch.minimum(e_out[1:, None], e_in[None, 1:])
    return ((hi - lo).clamp(min=0) / voxel_out).to(dtype)


def _apply(x: torch.Tensor, axis: int, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix [m, n]`` applied along ``axis`` (of length ``n``) of ``x``."""
    return torch.movedim(torch.movedim(x, axis, -1) @ matrix.T, -1, axis)


class ResampledDenoiser(DenoiserWrapper):
    """``D_image(x, sigma) = B D_prior(R x, g sigma)`` (module docstring).

    Parameters
    ----------
    denoiser
        The prior's denoiser (a slice :class:`~.model.ScoreModel` on ``[B, 1, y, x]``, or a
        :class:`~.prior3d.PerpendicularPrior3D` on ``[B, 1, z, y, x]``).
    image_voxel_size_mm, prior_voxel_size_mm
        ``(vz, vy, vx)`` of the image and of the prior's training data.
    axes
        Which of ``(z, y, x)`` (0, 1, 2) to resample: those the prior's slices span.  Axes
        absent from a call's tensor (``z`` of a single slice) are skipped.
    """

    def __init__(self, denoiser: Denoiser, image_voxel_size_mm: Sequence[float],
                 prior_voxel_size_mm: Sequence[float], axes: Sequence[int] = (1, 2)) -> None:
        super().__init__(denoiser)
        self.image_voxel_size_mm = as_voxel_size(image_voxel_size_mm, "image_voxel_size_mm")
        self.prior_voxel_size_mm = as_voxel_size(prior_voxel_size_mm, "prior_voxel_size_mm")
        self.axes = tuple(sorted({int(a) for a in axes}))
        if not self.axes or not set(self.axes) <= {0, 1, 2}:
            raise ValueError(f"axes must be among (0, 1, 2) = (z, y, x), got {tuple(axes)}")
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def _matrices(self, axis: int, n: int, x: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(R, B, mean_i sum_j R_ij^2)`` of one (z, y, x) ``axis`` of length ``n``."""
        key = (axis, n, x.dtype, x.device)
        if key not in self._cache:
            vi, vp = self.image_voxel_size_mm[axis], self.prior_voxel_size_mm[axis]
            m = resampled_size(n, vi, vp)
            fwd = overlap_matrix(n, vi, m, vp)
            back = overlap_matrix(m, vp, n, vi)
            gain2 = float(fwd.pow(2).sum(1).mean())
            self._cache[key] = (fwd.to(x.dtype).to(x.device), back.to(x.dtype).to(x.device),
                                gain2)
        return self._cache[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if x.ndim not in (4, 5):
            raise ValueError(f"expected [B, 1, y, x] or [B, 1, z, y, x], got {tuple(x.shape)}")
        first = x.ndim - 3  # tensor axis of z (5D); of y is first + 1
        plan = [(a, first + a) for a in self.axes if first + a >= 2]
        s = batch_sigma(x, sigma)
        xr, gain2, backs = x, 1.0, []
        for axis, dim in plan:
            fwd, back, g2 = self._matrices(axis, x.shape[dim], x)
            xr = _apply(xr, dim, fwd)
            gain2 *= g2
            backs.append((dim, back))
        out = self.denoiser(xr, s * math.sqrt(gain2))
        for dim, back in backs:
            out = _apply(out, dim, back)
        return out


def as_voxel_size(v: Sequence[float], name: str) -> tuple[float, float, float]:
    """``v`` as three positive finite voxel sizes ``(vz, vy, vx)``; else ``ValueError`` naming
    the argument ``name``."""
    try:
        t = tuple(float(a) for a in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (vz, vy, vx) in mm, got {v!r}") from None
    if len(t) != 3 or not all(math.isfinite(a) and a > 0 for a in t):
        raise ValueError(f"{name} must be three positive voxel sizes (vz, vy, vx) in mm, "
                         f"got {v!r}")
    return t  # type: ignore[return-value]
