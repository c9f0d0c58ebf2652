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
import math

import numpy as np

__all__ = ["available", "forward_segment", "adjoint_segment"]

_TINY = 1e-12


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
    """Compile (lazily) the forward and adjoint kernels."""
    import numba

    @numba.njit(inline="always")
    def weights(tau0, tau1, tan, val, f0, vz, n, qs, ws):
        """Plane offsets ``qs`` and weights ``ws`` of one element; returns their number."""
        ua = f0 + tau0 * tan / vz
        ub = f0 + tau1 * tan / vz
        umin, umax = min(ua, ub), max(ua, ub)
        width = umax - umin
        scale = val * math.sqrt(1 + tan * tan) / n
        q_lo = math.floor(umin + 0.5)
        q_hi = math.floor(umax + 0.5)
        m = 0
        q = q_lo
        while q <= q_hi:
            if width > _TINY:
                ov = min(umax, q + 0.5) - max(umin, q - 0.5)
                frac = (ov if ov > 0 else 0.0) / width
            else:
                frac = 1.0 if q == q_lo else 0.0
            if frac > 0:
                qs[m] = int(q)
                ws[m] = scale * frac
                m += 1
            q += 1.0
        return m

    @numba.njit(parallel=True, cache=True)
    def forward(ptr, views, rows, cols, vals, tau0, tau1, tan_t, T, f0, vz, n, base0,
                planes, out, off, na, kmax):
        for p in numba.prange(len(views)):
            v = views[p]
            acc = np.zeros(na)
            qs = np.empty(kmax, np.int64)
            ws = np.empty(kmax)
            cur = -1
            for e in range(ptr[v], ptr[v + 1]):
                t = rows[e] - v * T
                if t != cur:
                    if cur >= 0:
                        for a in range(na):
                            out[off + a, p, cur] = acc[a]
                            acc[a] = 0.0
                    cur = t
                m = weights(tau0[e], tau1[e], tan_t[t], vals[e], f0, vz, n, qs, ws)
                row = planes[cols[e]]
                for j in range(m):
                    k = base0 + qs[j]
                    w = ws[j]
                    for a in range(na):
                        acc[a] += w * row[k + a * n]
            if cur >= 0:
                for a in range(na):
                    out[off + a, p, cur] = acc[a]

    @numba.njit(parallel=True, cache=True)
    def adjoint(ptr, views, rows, cols, vals, tau0, tau1, tan_t, T, f0, vz, n, base0,
                y, off, na, kmax, acc):
        groups = acc.shape[0]
        for g in numba.prange(groups):
            mine = acc[g]
            ybuf = np.zeros(na)
            qs = np.empty(kmax, np.int64)
            ws = np.empty(kmax)
            for p in range(g, len(views), groups):
                v = views[p]
                cur = -1
                for e in range(ptr[v], ptr[v + 1]):
                    t = rows[e] - v * T
                    if t != cur:
                        for a in range(na):
                            ybuf[a] = y[off + a, p, t]
                        cur = t
                    m = weights(tau0[e], tau1[e], tan_t[t], vals[e], f0, vz, n, qs, ws)
                    row = mine[cols[e]]
                    for j in range(m):
                        k = base0 + qs[j]
                        w = ws[j]
                        for a in range(na):
                            row[k + a * n] += w * ybuf[a]

    return forward, adjoint


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
