"""Matrix-free CPU kernels of the oblique segments (numba, optional).

For an oblique segment, every stored transaxial element ``(view, t, voxel, L, tau0, tau1)``
(:mod:`.raytrace`) is turned on the fly into the axial weights of
:func:`~sirf_diffusion.physics.raytrace.extended_triplets` (the same float64 formulas: plane
offset ``q`` gets ``L sqrt(1 + tan^2) / n`` times the fraction of ``[umin, umax]`` inside
``[q - 1/2, q + 1/2]``) and applied at once to every axial position ``a``:

.. math::

    y_{a, p, t} \\mathrel{+}= w \\, X^{(n)}_{\\mathrm{voxel}}[b_0 + q + a n], \\qquad
    X^{(n)}[k] = \\sum_{r < n} x[k + r]

The transaxial path of a 3D line of response is its 2D one (a cylindrical scanner), so one pass
over the elements serves every oblique segment: per bin ``(view, t)``, the kernels loop over
the segments and, for each, over the bin's elements (cached in L1 after the first segment),
accumulating the bin's axial positions of all segments in one buffer in the input's dtype
(a view's buffers are written into the sinogram rows at the end of the view).  Segments
``+d`` and ``-d`` share their weights by reflection (:func:`_mirrors`), and the axial
positions are applied in SIMD blocks
(:mod:`._raytrace_kernels`).  The forward pass is parallel over views; the adjoint is the
transpose of the very same loop, parallel over groups of views with one private accumulator
``[voxel, plane]`` per group, summed at the end.  Nothing of size ``bins x voxels`` is stored.

numba is imported on first use only (:func:`available`); without it :mod:`.projector` uses its
torch path.  The kernels are compiled once per dtype (cached on disk by numba).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .raytrace import RayElements, _AxialSegment, add_plane_sums_adjoint, plane_bounds, plane_sums

__all__ = ["PackedElements", "adjoint_oblique", "available", "forward_oblique", "pack"]


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


@dataclass(frozen=True)
class PackedElements:
    """The transaxial elements as the kernels read them.

    Attributes
    ----------
    bin_ptr
        ``bin_ptr[v T + t] .. bin_ptr[v T + t + 1]``: the elements of bin ``(v, t)`` (int64).
    rec
        Element ``e`` at ``rec[4 e:4 e + 4]`` (float64): its value, ``tau0`` and ``tau1`` (as in
        :class:`~sirf_diffusion.physics.raytrace.RayElements`) and its voxel ``iy * nx + ix``
        (exact in float64).  One record per element keeps the kernels' loop to one pointer.
    num_tangential
        ``T``.
    max_span
        Largest ``|tau1 - tau0|`` (mm).
    traced
        Tangential bins that have elements (bool ``[T]``).
    """

    bin_ptr: np.ndarray
    rec: np.ndarray
    num_tangential: int
    max_span: float
    traced: np.ndarray


def pack(e: RayElements, num_views: int, num_tangential: int) -> PackedElements:
    """:class:`PackedElements` of the row-sorted elements ``e`` of all ``num_views`` views."""
    rows = e.rows.numpy()
    counts = np.bincount(rows, minlength=num_views * num_tangential)
    bin_ptr = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=bin_ptr[1:])
    tau0, tau1 = e.tau0.numpy(), e.tau1.numpy()
    span = float(np.abs(tau1 - tau0).max()) if len(rows) else 0.0
    traced = counts.reshape(num_views, num_tangential).sum(0) > 0
    rec = np.stack([e.values.numpy(), tau0, tau1, e.cols.numpy().astype(np.float64)], 1)
    return PackedElements(bin_ptr, rec.ravel(), int(num_tangential), span, traced)


@dataclass(frozen=True)
class _Group:
    """Kernel tables of the oblique segments that share ``n`` (see :mod:`._raytrace_kernels`):
    the padded plane range ``lo .. hi``, ``J`` planes per residue modulo ``n`` and ``width``
    entries per row of the kernels' ``planes`` (``n J`` and a spare SIMD block)."""

    n: int
    lo: int
    hi: int
    J: int
    width: int
    tables: dict


def _mirrors(f0s: np.ndarray, tans: np.ndarray) -> np.ndarray:
    """``mirror[s]``: the segment whose weights are those of ``s`` reflected (``tan`` of the
    opposite sign, the same ``f0`` with ``2 f0`` an integer), or -1."""
    mirror = np.full(len(f0s), -1, np.int64)
    for a in range(len(f0s)):
        if mirror[a] >= 0 or 2 * f0s[a] != round(2 * f0s[a]):
            continue
        for b in range(a + 1, len(f0s)):
            if mirror[b] < 0 and f0s[b] == f0s[a] and np.array_equal(tans[b], -tans[a]):
                mirror[a], mirror[b] = b, a
                break
    return mirror


def _groups(packed: PackedElements, segments: Sequence[_AxialSegment],
            tan_t: Sequence[np.ndarray], q_ranges: Sequence[tuple[int, int]], nz: int,
            vz: float) -> list[_Group]:
    from ._raytrace_kernels import W

    out = []
    for n in sorted({ax.n_axial_rays for ax in segments}):
        pick = [i for i, ax in enumerate(segments) if ax.n_axial_rays == n]
        segs = [segments[i] for i in pick]
        f0s = np.array([ax.frac - (n - 1) / 2 for ax in segs])
        tans = np.stack([np.asarray(tan_t[i], np.float64) for i in pick])       # [S, T]
        mirror = _mirrors(f0s, tans)
        refl = np.round(2 * f0s).astype(np.int64)
        # plane offsets: a segment's own range and the reflection of its mirror's
        first = np.array([q_ranges[i][0] for i in pick], np.int64)
        last = first + np.array([q_ranges[i][1] for i in pick], np.int64) - 1
        qmins, qmaxs = first.copy(), last.copy()
        for a, b in enumerate(mirror):
            if b >= 0:
                qmins[a] = min(first[a], refl[b] - last[b])
                qmaxs[a] = max(last[a], refl[b] - first[b])
        bounds = [plane_bounds(ax, int(q0), int(q1 - q0 + 1), nz)[1:]
                  for ax, q0, q1 in zip(segs, qmins, qmaxs)]
        lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
        J = -(-(hi - lo + 2 - n) // n)
        lut = np.zeros((len(segs), int((qmaxs - qmins).max()) + 1), np.int64)
        for row, ax in enumerate(segs):
            k = ax.first_plane - lo + np.arange(qmins[row], qmaxs[row] + 1)
            lut[row, :len(k)] = (k % n) * J + k // n
        traced = np.abs(tans[:, packed.traced])
        tan_max = float(traced.max()) if traced.size else 0.0
        nas = np.array([ax.num_axial for ax in segs], np.int64)
        tables = dict(rt=tans / vz, ct=np.sqrt(1 + tans * tans) / n, f0s=f0s, mirror=mirror,
                      refl=refl, qmins=qmins, lut=lut,
                      offs=np.array([ax.offset for ax in segs], np.int64), nas=nas,
                      aoffs=np.concatenate([[0], np.cumsum(-(-nas // W) * W)]).astype(np.int64),
                      kmax=int(packed.max_span * tan_max / vz) + 3)
        out.append(_Group(n, lo, hi, J, n * J + W, tables))
    return out


def _split_residues(X2: torch.Tensor, n: int, J: int, width: int) -> np.ndarray:
    """``[L, npix]`` plane sums -> ``[npix, width]`` with plane ``k`` at ``(k % n) J + k // n``
    (zeros beyond)."""
    L, npix = X2.shape
    padded = X2.new_zeros(n * J, npix)
    padded[:L] = X2
    rows = X2.new_zeros(npix, width)
    rows[:, :n * J] = padded.reshape(J, n, npix).permute(2, 1, 0).reshape(npix, n * J)
    return rows.numpy()


def _merge_residues(acc: np.ndarray, n: int, J: int, L: int) -> torch.Tensor:
    """Transpose of :func:`_split_residues`: ``[npix, width]`` -> ``[L, npix]``."""
    npix = acc.shape[0]
    rows = torch.from_numpy(acc)[:, :n * J]
    return rows.reshape(npix, n, J).permute(2, 1, 0).reshape(n * J, npix)[:L]


def _set_threads(threads: int) -> None:
    import numba

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


def forward_oblique(packed: PackedElements, segments: Sequence[_AxialSegment],
                    tan_t: Sequence[np.ndarray], q_ranges: Sequence[tuple[int, int]],
                    X: torch.Tensor, out: np.ndarray, views: np.ndarray, *, vz: float,
                    threads: int) -> None:
    """Write the oblique ``segments`` of the images ``X`` ``[B, nz, npix]`` into ``out``
    ``[B, sinogram, len(views), T]``.

    ``tan_t[i]`` is :func:`~sirf_diffusion.physics.raytrace.tan_theta_per_tangential` of
    ``segments[i]`` and ``q_ranges[i]`` its
    :func:`~sirf_diffusion.physics.raytrace.plane_offset_range` ``(qmin, nq)`` (a superset of
    the plane offsets its elements reach); ``views`` the view numbers (int64).
    """
    fwd, _ = _kernels()
    _set_threads(threads)
    B, nz, _ = X.shape
    views = np.ascontiguousarray(views, np.int64)
    for g in _groups(packed, segments, tan_t, q_ranges, nz, vz):
        X2 = plane_sums(X, g.n, g.lo, g.hi)                                   # [B, L, npix]
        for b in range(B):
            planes = _split_residues(X2[b], g.n, g.J, g.width)
            fwd(packed.bin_ptr, views, packed.rec, packed.num_tangential, planes=planes,
                out=out[b], **g.tables)


def adjoint_oblique(packed: PackedElements, segments: Sequence[_AxialSegment],
                    tan_t: Sequence[np.ndarray], q_ranges: Sequence[tuple[int, int]],
                    Y: np.ndarray, out: torch.Tensor, views: np.ndarray, *, vz: float,
                    threads: int) -> None:
    """Transpose of :func:`forward_oblique`: accumulate the back projection of the oblique
    ``segments`` of ``Y`` ``[B, sinogram, len(views), T]`` into ``out`` ``[B, nz, npix]``
    (``threads`` private accumulators of the image's plane sums)."""
    _, adj = _kernels()
    _set_threads(threads)
    B, nz, npix = out.shape
    views = np.ascontiguousarray(views, np.int64)
    for g in _groups(packed, segments, tan_t, q_ranges, nz, vz):
        L = g.hi - g.lo + 2 - g.n
        for b in range(B):
            acc = np.zeros((max(1, threads), npix, g.width), dtype=Y.dtype)
            adj(packed.bin_ptr, views, packed.rec, packed.num_tangential, y=Y[b], acc=acc,
                **g.tables)
            total = acc.sum(0) if len(acc) > 1 else acc[0]
            add_plane_sums_adjoint(out[b:b + 1], _merge_residues(total, g.n, g.J, L)[None],
                                   g.n, g.lo, g.hi)
