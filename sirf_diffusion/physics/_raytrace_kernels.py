"""numba kernels of :mod:`.raytrace_numba` (imported lazily: this module imports numba).

The kernels walk the bins ``(view, t)``; for each bin, the segments of a group, and for each
segment, the bin's stored transaxial elements, so the elements' image rows stay in the L1
cache while all segments use them and the elements are read from memory once.  Segment ``s``
of the group is described by

* ``rt[s, t] = tan(theta_s(t)) / vz`` and ``ct[s, t] = sqrt(1 + tan^2) / n`` per tangential bin;
* ``f0s[s]``: the axial coordinate of the ray's foot point minus the base plane (plane units);
* ``mirror[s]`` and ``refl[s]``: the segment with the opposite ``tan`` and the same ``f0``, whose
  plane offset ``refl[s] - q`` (``refl = 2 f0``) gets the weight of offset ``q`` of ``s``, so
  the weights of a pair are computed once (STIR's segment symmetry); ``-1``: none;
* ``qmins[s]`` and ``lut[s, q - qmins[s]]``: the position in a row of ``planes`` of the plane
  that plane offset ``q`` sees at axial position 0 (planes ``k + a n`` of the axial positions
  ``a`` are contiguous: plane ``k`` sits at ``(k % n) J + k // n``);
* ``offs[s]``, ``nas[s]``: its first sinogram and its number of axial positions;
* ``aoffs[s]``: its first slot in the per-bin buffer of axial positions; the buffer gives every
  segment a multiple of ``W`` slots (``aoffs[S]`` in all), so that the inner loops run over
  whole SIMD blocks (:func:`axpy_block`; the spare slots read planes that exist and are never
  written out; in the adjoint they hold zeros and add nothing).

A view's bins keep their buffers side by side (``[T, aoffs[S]]``), so that the sinogram rows
``out[sinogram, view, :]`` (forward) and ``y[sinogram, view, :]`` (adjoint) are written and read
contiguously, once per view.

The elements come as one float64 record each (value, ``tau0``, ``tau1``, voxel) and every
array in the loop over the elements is flat and read with :func:`ld`: this keeps the loop's
pointers in registers (one record pointer instead of four arrays, no row views, no
negative-index fix-ups), which took the forward from 1.8x to 1.2x and the adjoint from 2.6x
to 1.9x of the stored matrix's time (docs/projector.md).

An element's axial interval ``[umin, umax]`` nearly always meets one or two planes
(:func:`element`); the rare element that meets more falls back to the loop of :func:`weights`.
Ranges are stepped by hand (a stepped ``range`` divides).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

_TINY = 1e-12
#: SIMD block of the inner loops over axial positions (slots per segment are a multiple of it)
W = 16


@numba.njit(inline="always", cache=True)
def weights(ua, ub, scale, qs, ws):
    """Plane offsets ``qs`` and weights ``ws`` of one element; returns their number.

    The axial interval ``[min(ua, ub), max(ua, ub)]`` gives plane offset ``q`` the fraction of
    it inside ``[q - 1/2, q + 1/2]``, times ``scale`` (``extended_triplets``).
    """
    umin, umax = min(ua, ub), max(ua, ub)
    width = umax - umin
    q_lo = math.floor(umin + 0.5)
    q_hi = math.floor(umax + 0.5)
    if width <= _TINY:
        qs[0] = int(q_lo)
        ws[0] = scale
        return 1
    m = 0
    q = q_lo
    while q <= q_hi:
        ov = min(umax, q + 0.5) - max(umin, q - 0.5)
        if ov > 0:
            qs[m] = int(q)
            ws[m] = scale * (ov / width)
            m += 1
        q += 1.0
    return m


@intrinsic
def axpy_block(typingctx, dst, di, w, src, si):
    """``dst[di:di + W] += w * src[si:si + W]`` as one SIMD block (no bounds checks; ``w`` is
    first rounded to the arrays' dtype).  LLVM cannot vectorise this short loop itself: it
    cannot rule out that ``dst`` and ``src`` overlap."""
    if not (isinstance(di, types.Integer) and isinstance(si, types.Integer)):
        raise TypeError("axpy_block: the indices must be integers")
    dt = dst.dtype
    sig = types.void(dst, di, w, src, si)

    def codegen(context, builder, signature, args):
        dst_v, di_v, w_v, src_v, si_v = args
        da = context.make_array(signature.args[0])(context, builder, dst_v)
        sa = context.make_array(signature.args[3])(context, builder, src_v)
        lty = context.get_data_type(dt)
        vty = ir.VectorType(lty, W)
        align = context.get_abi_sizeof(lty)
        wv = context.cast(builder, w_v, signature.args[2], dt)
        zero = ir.Constant(ir.IntType(32), 0)
        splat = builder.insert_element(ir.Constant(vty, ir.Undefined), wv, zero)
        splat = builder.shuffle_vector(splat, ir.Constant(vty, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))
        pd = builder.bitcast(builder.gep(da.data, [di_v]), vty.as_pointer())
        ps = builder.bitcast(builder.gep(sa.data, [si_v]), vty.as_pointer())
        vs = builder.load(ps, align=align, typ=vty)
        vd = builder.load(pd, align=align, typ=vty)
        builder.store(builder.fadd(vd, builder.fmul(splat, vs)), pd, align=align)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def ld(typingctx, arr, i):
    """``arr[i]`` of a flat array, without numba's fix-up of negative indices (``i >= 0``)."""
    if not isinstance(i, types.Integer):
        raise TypeError("ld: the index must be an integer")
    sig = arr.dtype(arr, i)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load(builder.gep(a.data, [args[1]]))
    return sig, codegen


@numba.njit(inline="always", cache=True)
def element(u0, u1, scale):
    """``(q, w0, w1, many)``: the weights of an element whose axial interval runs from ``u0`` to
    ``u1`` when it meets at most two planes (plane offset ``q`` gets ``w0``, ``q + 1`` gets
    ``w1``), with the formulas of :func:`weights` (one plane: the whole ``scale``); ``many``:
    it meets more, use :func:`weights`."""
    umin, umax = min(u0, u1), max(u0, u1)
    width = umax - umin
    q = math.floor(umin + 0.5)
    if width <= _TINY or umax + 0.5 < q + 1.0:
        return int(q), scale, 0.0, False
    if umax + 0.5 >= q + 2.0:
        return int(q), 0.0, 0.0, True
    ov0 = min(umax, q + 0.5) - max(umin, q - 0.5)
    ov1 = min(umax, q + 1.5) - max(umin, q + 0.5)
    w0 = scale * (ov0 / width) if ov0 > 0 else 0.0
    w1 = scale * (ov1 / width) if ov1 > 0 else 0.0
    return int(q), w0, w1, False


@numba.njit(inline="always", cache=True)
def axpy(dst, d0, w, src, s0, count):
    """``dst[d0:d0 + count] += w * src[s0:s0 + count]``, ``count`` a multiple of ``W``."""
    end = d0 + count
    while d0 < end:                         # (a stepped range would divide)
        axpy_block(dst, d0, w, src, s0)
        d0 += W
        s0 += W


@numba.njit(inline="always", cache=True)
def add(adjoint, ao, count, i, w, buf, row):
    """Weight ``w`` of the plane at ``i`` of ``row`` for the segment whose slots are
    ``buf[ao:ao + count]``: ``buf[slots] += w row[i:i + count]`` (forward) or its transpose
    ``row[i:i + count] += w buf[slots]`` (adjoint)."""
    if adjoint:
        axpy(row, i, w, buf, ao, count)
    else:
        axpy(buf, ao, w, row, i, count)


@numba.njit(inline="always", cache=True)
def serve(adjoint, s, t, e0, e1, rec, buf, bo, rows, wd, rt, ct, f0s, mirror, refl, qmins, lut,
          aoffs, qs, ws):
    """The elements ``e0 .. e1`` of bin ``(view, t)`` for segment ``s`` and its mirror
    ``mirror[s]`` (``tan`` of the opposite sign: plane offset ``refl[s] - q`` gets the weight of
    ``q``; ``-1``: none), so that the weights are computed once for both.

    Forward: ``buf[bo:]`` is the bin's buffer of axial positions and ``rows`` the plane sums;
    adjoint: ``buf[bo:]`` holds the bin's values and ``rows`` is the accumulator.  Every array
    comes flat (row ``v`` of ``rows`` at ``v wd``, ``lut[s, j]`` at ``s lw + j``) and is read
    with :func:`ld`: a row view per element costs a reference count update, and numba's
    negative-index fix-up of each subscript costs registers the loop needs.  The segments'
    tables are read once, before the loop over the elements (the compiler cannot keep them
    in registers across the stores into ``buf`` or ``rows`` otherwise).
    """
    s2 = mirror[s]
    r, c, f0 = rt[s, t], ct[s, t], f0s[s]
    pair = s2 >= 0
    t2 = s2 if pair else s
    ao, n1 = bo + aoffs[s], aoffs[s + 1] - aoffs[s]
    ao2, n2 = bo + aoffs[t2], aoffs[t2 + 1] - aoffs[t2]
    lw = lut.size // len(f0s)
    l1 = s * lw - qmins[s]                  # plane offset q of s at lut[l1 + q]
    l2 = t2 * lw - qmins[t2] + refl[s]      # the mirror's offset refl - q at lut[l2 - q]
    for e in range(e0, e1):
        e4 = 4 * e
        base = int(ld(rec, e4 + 3)) * wd
        scale = ld(rec, e4) * c
        u0, u1 = f0 + ld(rec, e4 + 1) * r, f0 + ld(rec, e4 + 2) * r
        q, w0, w1, many = element(u0, u1, scale)
        if many:
            for j in range(weights(u0, u1, scale, qs, ws)):
                add(adjoint, ao, n1, base + ld(lut, l1 + qs[j]), ws[j], buf, rows)
                if pair:
                    add(adjoint, ao2, n2, base + ld(lut, l2 - qs[j]), ws[j], buf, rows)
            continue
        if w0 != 0:
            add(adjoint, ao, n1, base + ld(lut, l1 + q), w0, buf, rows)
            if pair:
                add(adjoint, ao2, n2, base + ld(lut, l2 - q), w0, buf, rows)
        if w1 != 0:
            add(adjoint, ao, n1, base + ld(lut, l1 + q + 1), w1, buf, rows)
            if pair:
                add(adjoint, ao2, n2, base + ld(lut, l2 - q - 1), w1, buf, rows)


@numba.njit(parallel=True, cache=True)
def forward(bin_ptr, views, rec, T, rt, ct, f0s, mirror, refl, qmins, lut,
            offs, nas, aoffs, planes, out, kmax):
    S = len(f0s)
    A = aoffs[S]
    lutf = lut.reshape(lut.size)
    wd = planes.shape[1]
    flat = planes.reshape(planes.size)
    for p in numba.prange(len(views)):
        v = views[p]
        # the view's bins, each with its buffer of axial positions (written out per sinogram
        # row at the end: rows of ``out`` are contiguous in ``t``, a bin's sinograms are not)
        vbuf = np.zeros(T * A, planes.dtype)
        qs = np.empty(kmax, np.int64)
        ws = np.empty(kmax)
        for t in range(T):
            e0, e1 = bin_ptr[v * T + t], bin_ptr[v * T + t + 1]
            if e0 == e1:
                continue
            for s in range(S):
                if not 0 <= mirror[s] < s:          # else served with its mirror
                    serve(False, s, t, e0, e1, rec, vbuf, t * A, flat, wd,
                          rt, ct, f0s, mirror, refl, qmins, lutf, aoffs, qs, ws)
        for s in range(S):
            for a in range(nas[s]):
                row = out[offs[s] + a, p]
                k = aoffs[s] + a
                for t in range(T):
                    row[t] = vbuf[t * A + k]


@numba.njit(parallel=True, cache=True)
def adjoint(bin_ptr, views, rec, T, rt, ct, f0s, mirror, refl, qmins, lut,
            offs, nas, aoffs, y, kmax, acc):
    S = len(f0s)
    A = aoffs[S]
    lutf = lut.reshape(lut.size)
    groups, npix, wd = acc.shape
    for g in numba.prange(groups):
        flat = acc[g].reshape(npix * wd)
        # the view's bins, each with its values of the axial positions (read per sinogram row;
        # the spare slots stay zero)
        vbuf = np.zeros(T * A, acc.dtype)
        qs = np.empty(kmax, np.int64)
        ws = np.empty(kmax)
        for p in range(g, len(views), groups):
            v = views[p]
            for s in range(S):
                for a in range(nas[s]):
                    row = y[offs[s] + a, p]
                    k = aoffs[s] + a
                    for t in range(T):
                        vbuf[t * A + k] = row[t]
            for t in range(T):
                e0, e1 = bin_ptr[v * T + t], bin_ptr[v * T + t + 1]
                if e0 == e1:
                    continue
                for s in range(S):
                    if not 0 <= mirror[s] < s:
                        serve(True, s, t, e0, e1, rec, vbuf, t * A, flat,
                              wd, rt, ct, f0s, mirror, refl, qmins, lutf, aoffs, qs, ws)
