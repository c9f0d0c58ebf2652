"""Matrix-free CPU kernels of the oblique segments (numba, optional).

For one oblique segment, every stored transaxial element ``(view, t, voxel, L, tau0, tau1)``
(:mod:`.raytrace`) is turned on the fly into the axial weights of
:func:`~sirf_diffusion.physics.raytrace.extended_triplets` (the same float64 formulas: plane
offset ``q`` gets ``L sqrt(1 + tan^2) / n`` times the fraction of ``[umin, umax]`` inside
``[q - 1/2, q + 1/2]``) and applied at once to every axial position ``a``:

.. math::

    y_{a, p, t} \\mathrel{+}= w \\, X^{(n)}_{\\mathrm{voxel}}[b_0 + q + a n], \\qquad
    X^{(n)}[k] = \\sum_{r < n} x[k + r]

(forward, parallel over views, each bin accumulated in float64 and written once), and the
transpose of the very same loop (adjoint, parallel over groups of views with one private
accumulator per group, summed at the end).  Nothing of size ``bins x voxels`` is stored.

numba is imported on first use only (:func:`available`); without it :mod:`.projector` uses its
torch path.  The kernels are compiled once per dtype (cached on disk by numba).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["available", "forward_segment", "adjoint_segment"]


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether numba can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _kernels():
    """The compiled ``(forward, adjoint)`` kernels (imports numba on first use)."""
    from . import _raytrace_kernels

    return _raytrace_kernels.forward, _raytrace_kernels.adjoint


def forward_segment(elements, ptr: np.ndarray, views: np.ndarray, tan_t: np.ndarray, *,
                    num_tangential: int, f0: float, vz: float, n: int, base0: int,
                    planes: np.ndarray, out: np.ndarray, offset: int, num_axial: int,
                    max_offsets: int) -> None:
    """Write one oblique segment of one image into ``out`` ``[sinogram, len(views), T]``.

    ``elements``: the row-sorted float64 :class:`~sirf_diffusion.physics.raytrace.RayElements`
    as numpy arrays ``(rows, cols, values, tau0, tau1)``; ``ptr`` their view pointers;
    ``planes`` the pixel-major plane sums ``[voxel, plane]`` with plane ``base0 + q + a n`` seen
    by plane offset ``q`` at axial position ``a``; ``max_offsets`` bounds the plane offsets one
    element reaches.
    """
    fwd, _ = _kernels()
    rows, cols, vals, tau0, tau1 = elements
    fwd(ptr, views, rows, cols, vals, tau0, tau1, tan_t, num_tangential, f0, vz, n, base0,
        planes, out, offset, num_axial, max_offsets)


def adjoint_segment(elements, ptr: np.ndarray, views: np.ndarray, tan_t: np.ndarray, *,
                    num_tangential: int, f0: float, vz: float, n: int, base0: int,
                    y: np.ndarray, offset: int, num_axial: int, num_pixels: int,
                    num_planes: int, groups: int, max_offsets: int) -> np.ndarray:
    """Transpose of :func:`forward_segment`: pixel-major plane sums ``[voxel, plane]`` of one
    sinogram array ``y`` ``[sinogram, len(views), T]`` (``groups`` private accumulators)."""
    _, adj = _kernels()
    rows, cols, vals, tau0, tau1 = elements
    acc = np.zeros((max(1, groups), num_pixels, num_planes), dtype=y.dtype)
    adj(ptr, views, rows, cols, vals, tau0, tau1, tan_t, num_tangential, f0, vz, n, base0,
        y, offset, num_axial, max_offsets, acc)
    return acc.sum(0) if groups > 1 else acc[0]
