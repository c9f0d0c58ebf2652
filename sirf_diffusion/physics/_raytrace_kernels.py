"""numba kernels of :mod:`.raytrace_numba` (imported lazily: this module imports numba)."""

from __future__ import annotations

import math

import numba
import numpy as np

_TINY = 1e-12


@numba.njit(inline="always", cache=True)
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
                if n == 1:                  # contiguous: lets LLVM vectorise
                    for a in range(na):
                        acc[a] += w * row[k + a]
                else:
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
                    if n == 1:
                        for a in range(na):
                            row[k + a] += w * ybuf[a]
                    else:
                        for a in range(na):
                            row[k + a * n] += w * ybuf[a]
