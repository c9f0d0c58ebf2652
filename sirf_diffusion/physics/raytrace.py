"""The ray tracing of STIR's ``ProjMatrixByBinUsingRayTracing``: system-matrix elements.

The geometric system matrix ``G`` maps an image ``[B, z, y, x]`` to sinograms
``[B, sinogram, view, tangential]`` (STIR ``as_array`` order, see
:mod:`sirf_diffusion.physics.geometry`).  Element ``G[i, j]`` is the intersection length of the
ray(s) of bin ``i`` with voxel ``j`` in units of the x voxel size (STIR's units):

.. math::

    (G f)_i = \\frac{1}{n_\\mathrm{rays}} \\sum_{k=0}^{n_\\mathrm{rays}-1}
              \\sum_j f_j \\, \\frac{L_j(\\phi_i, s_i + (k - \\tfrac{n_\\mathrm{rays}-1}{2})\\,
              \\Delta s_i / n_\\mathrm{rays})}{v_x}

with ``L_j`` computed exactly (Siddon, R. L. 1985, Med. Phys. 12:252), as in STIR's
``RayTraceVoxelsOnCartesianGrid`` (Thielemans et al. 2012, Phys. Med. Biol. 57:867):

* transaxially, a ray ``p(tau) = s n + tau d`` (``n = (cos phi, sin phi)``,
  ``d = (-sin phi, cos phi)``) is clipped to the circle of radius
  ``min((nx - 1) // 2 * vx, (ny - 1) // 2 * vy)`` (``restrict_to_cylindrical_fov``; otherwise to
  the square of that half-width), and every voxel the clipped segment enters gets the *full*
  length of the line inside it (STIR starts and stops its ray tracing on voxel boundaries; this
  is what makes 12745 voxels of a 128 x 128 grid visible);
* a ray exactly parallel to a grid axis and lying on a voxel boundary gives half its length to
  each neighbour;
* axially, a bin of a segment with axial sampling ``Delta = n vz`` is modelled as in STIR:
  for a direct segment (``tan theta = 0``) plane ``k`` gets weight
  ``|[m - Delta/2, m + Delta/2] cap plane_k| / (n vz)``; for an oblique segment the ray
  ``z(tau) = m + tau tan theta(s)`` (with ``tan theta(s) = delta_ring * ring_spacing /
  (2 sqrt(R^2 - s^2))``, STIR ``get_tantheta``) is traced in 3D at ``n`` axial offsets
  ``(r - (n - 1)/2) vz`` with weight ``1/n`` each, and lengths are 3D lengths
  (``sqrt(1 + tan^2 theta)`` times the transaxial ones).

The transaxial (2D) elements are traced once (:func:`trace_rays_2d`, vectorised, float64).  An
oblique segment sees them through :func:`extended_triplets`: its matrix has columns
``(plane offset q, voxel)`` applied to sums of ``n`` consecutive image planes
(:func:`gather_planes`, adjoint :func:`scatter_planes`).  :mod:`.projector` applies these as
stored sparse matrices or builds them per chunk of views on the fly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .geometry import ImageGeometry, SinogramGeometry

__all__ = ["RayElements", "add_plane_sums_adjoint", "chunk_elements", "extended_triplets",
           "fov_radius_mm", "gather_planes", "plane_bounds", "plane_offset_range", "plane_sums",
           "scatter_planes", "tan_theta_per_tangential", "trace_rays_2d", "view_pointers"]

_TINY = 1e-12


def fov_radius_mm(image_geometry: ImageGeometry) -> float:
    """Radius of STIR's cylindrical FOV for the ray tracer (mm).

    ``min(min(max_index_x, -min_index_x) * vx, ...y)`` with STIR index ranges
    ``-(n // 2) .. n - n // 2 - 1``, i.e. ``min((nx - 1) // 2 * vx, (ny - 1) // 2 * vy)``.
    """
    _, ny, nx = image_geometry.shape
    _, vy, vx = image_geometry.voxel_size_mm
    return min((nx - 1) // 2 * vx, (ny - 1) // 2 * vy)


def _s_of_t(geom: SinogramGeometry, t: torch.Tensor) -> torch.Tensor:
    """Tangential coordinate (mm) of (possibly out-of-range) tangential numbers ``t``."""
    if geom.arc_corrected:
        return t * float(geom.tangential_sampling_mm)
    sc = geom.scanner
    return sc.effective_ring_radius_mm * torch.sin(t * (math.pi / sc.num_detectors_per_ring))


@dataclass
class RayElements:
    """Non-zero elements of the transaxial (2D) system matrix, one per ray-voxel intersection.

    Rows are ``view_position * num_tangential + tangential_index`` of the traced views, columns
    ``iy * nx + ix``.  Elements are sorted by row and, within a row, by ray and ``tau``.

    Attributes
    ----------
    rows, cols
        int64 indices.
    values
        ``L / vx / n_rays`` (float64), ``L`` the full 2D intersection length (mm).
    tau0, tau1
        Entry / exit of the ray into the voxel (mm along ``d`` from the ray's foot point).
    num_rows, num_cols
        Matrix shape.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    tau0: torch.Tensor
    tau1: torch.Tensor
    num_rows: int
    num_cols: int


def _clip_interval(s, c, sn, fovrad: float, vx: float, restrict: bool):
    """``tau`` interval of the ray inside STIR's FOV and a validity mask (``ray_trace_one_lor``)."""
    if restrict:
        valid = s.abs() < fovrad
        h = torch.sqrt(torch.clamp(fovrad ** 2 - s * s, min=0.0))
        return -h, h, valid
    # square FOV |X|, |Y| <= fovrad, STIR's parametrisation a = -tau
    sign_s = torch.where(sn < 0, -1.0, 1.0).to(s)
    sign_c = torch.where(c < 0, -1.0, 1.0).to(s)
    near_axis = (c.abs() < 1e-3) | (sn.abs() < 1e-3)
    sn_safe = torch.where(sn.abs() < _TINY, torch.ones_like(sn), sn)
    c_safe = torch.where(c.abs() < _TINY, torch.ones_like(c), c)
    max_a = torch.minimum((fovrad * sign_s - s * c) / sn_safe, (fovrad * sign_c + s * sn) / c_safe)
    min_a = torch.maximum((-fovrad * sign_s - s * c) / sn_safe,
                          (-fovrad * sign_c + s * sn) / c_safe)
    max_a = torch.where(near_axis, torch.full_like(s, fovrad), max_a)
    min_a = torch.where(near_axis, torch.full_like(s, -fovrad), min_a)
    valid = torch.where(near_axis, s.abs() <= fovrad, min_a <= max_a - 1e-3 * vx)
    return -max_a, -min_a, valid


def _trace_chunk(s, c, sn, w, row, lo, hi, image_geometry: ImageGeometry):
    """Siddon ray tracing of a batch of 2D rays; returns the kept (row, col, value, tau0, tau1)."""
    _, ny, nx = image_geometry.shape
    _, vy, vx = image_geometry.voxel_size_mm
    dt = s.dtype
    xb = vx * (torch.arange(nx + 1, dtype=dt) - nx // 2 - 0.5)
    yb = vy * (torch.arange(ny + 1, dtype=dt) - ny // 2 - 0.5)
    px, py, dx, dy = s * c, s * sn, -sn, c
    big = 1e30                                   # "no crossing" (ray parallel to the planes)
    okx, oky = dx.abs() > _TINY, dy.abs() > _TINY
    dx_safe, dy_safe = torch.where(okx, dx, 1.0)[:, None], torch.where(oky, dy, 1.0)[:, None]
    tx = torch.where(okx[:, None], (xb[None] - px[:, None]) / dx_safe, big)
    ty = torch.where(oky[:, None], (yb[None] - py[:, None]) / dy_safe, big)
    ts = torch.sort(torch.cat([tx, ty], 1), dim=1).values
    a, b = ts[:, :-1], ts[:, 1:]
    # voxels whose chord overlaps the clipped ray get their full chord (STIR starts and stops
    # on voxel boundaries); the sentinel segments fail ``a < hi``
    sel = (b > lo[:, None]) & (a < hi[:, None]) & (b - a > 1e-9 * vx)
    ray = torch.nonzero(sel, as_tuple=True)[0]
    a, b = a[sel], b[sel]
    length, mid = b - a, 0.5 * (a + b)
    ix = torch.floor((px[ray] + mid * dx[ray] - xb[0]) / vx).long()
    iy = torch.floor((py[ray] + mid * dy[ray] - yb[0]) / vy).long()
    keep = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    # STIR stops tracing 1e-4 (relative) before the far boundary of the last voxel: a last voxel
    # with a tiny chord is dropped.  The ray runs from smaller to larger y (then x).
    lo_r, hi_r = lo[ray], hi[ray]
    start_lo = (dy[ray] > 1e-9) | ((dy[ray].abs() <= 1e-9) & (dx[ray] >= 0))
    stop_hi = (b >= hi_r) & (length <= 1e-4 * (b - lo_r))
    stop_lo = (a <= lo_r) & (length <= 1e-4 * (hi_r - a))
    keep &= ~torch.where(start_lo, stop_hi, stop_lo)
    ray = ray[keep]
    return (row[ray], (iy * nx + ix)[keep], (w[ray] / vx) * length[keep], a[keep], b[keep])


def trace_rays_2d(sinogram_geometry: SinogramGeometry, image_geometry: ImageGeometry, *,
                  num_rays: int = 1, restrict_to_cylindrical_fov: bool = True,
                  views: torch.Tensor | None = None, progress: bool = False,
                  max_chunk_elements: int = 2_000_000) -> RayElements:
    """Trace the transaxial rays of every (view, tangential) bin through the image grid.

    Parameters
    ----------
    sinogram_geometry, image_geometry
        Scanner/sinogram layout and voxel grid.
    num_rays
        STIR ``num_tangential_LORs``: rays at ``s + (k - (n-1)/2) ds / n`` with weight ``1/n``,
        ``ds = |s(t+1) - s(t-1)| / 2`` (STIR ``get_sampling_in_s``).
    restrict_to_cylindrical_fov
        Clip rays to STIR's cylindrical FOV (default), else to the square FOV.
    views
        View numbers to trace (default all); row ``p * T + t`` belongs to ``views[p]``.
    progress
        Show a tqdm progress bar over view chunks.
    max_chunk_elements
        Bound on ``rays x crossings`` held in memory at once.

    Returns
    -------
    RayElements
        The float64 element list (on the CPU).
    """
    if int(num_rays) < 1:
        raise ValueError(f"num_rays must be >= 1, got {num_rays}")
    from tqdm.auto import tqdm

    dt = torch.float64
    n_rays = int(num_rays)
    T = int(sinogram_geometry.num_tangential)
    _, ny, nx = image_geometry.shape
    _, vy, vx = image_geometry.voxel_size_mm
    fovrad = fov_radius_mm(image_geometry)
    phi_all = torch.as_tensor(sinogram_geometry.phi(), dtype=dt)
    if views is None:
        views = torch.arange(sinogram_geometry.num_views)
    views = torch.as_tensor(views, dtype=torch.long).cpu()
    phi = phi_all[views]
    t = torch.as_tensor(sinogram_geometry.tangential_indices(), dtype=dt)
    s_c = _s_of_t(sinogram_geometry, t)
    ds = (_s_of_t(sinogram_geometry, t + 1) - _s_of_t(sinogram_geometry, t - 1)).abs() / 2
    k = torch.arange(n_rays, dtype=dt) - (n_rays - 1) / 2
    s_sub = (s_c[:, None] + k[None] * ds[:, None] / n_rays).reshape(-1)        # [T * K]
    t_idx = torch.arange(T).repeat_interleave(n_rays)
    n_cross = nx + ny + 2
    chunk = max(1, max_chunk_elements // (T * n_rays * n_cross))
    out: list[tuple[torch.Tensor, ...]] = []
    for v0 in tqdm(range(0, len(views), chunk), disable=not progress, desc="ray tracing"):
        pv = torch.arange(v0, min(v0 + chunk, len(views)))
        nv = len(pv)
        s = s_sub.repeat(nv)
        c = torch.cos(phi[pv]).repeat_interleave(T * n_rays)
        sn = torch.sin(phi[pv]).repeat_interleave(T * n_rays)
        row = (pv[:, None] * T + t_idx[None]).reshape(-1)
        lo, hi, valid = _clip_interval(s, c, sn, fovrad, vx, restrict_to_cylindrical_fov)
        w = torch.full_like(s, 1.0 / n_rays)
        # STIR: a ray parallel to the y (x) axis lying on a voxel boundary is traced half a
        # voxel to either side with half the weight (y is checked before x).
        dx, dy = -sn, c
        start = torch.where(dy > 0, lo, hi)
        sx, sy = (s * c + start * dx) / vx, (s * sn + start * dy) / vy
        half_int = lambda u: (torch.floor(u) + 0.5 - u).abs() < 1e-4  # noqa: E731
        split_y = ((hi - lo) * dy / vy).abs().le(1e-4) & half_int(sy)
        split_x = ~split_y & ((hi - lo) * dx / vx).abs().le(1e-4) & half_int(sx)
        split = (split_x | split_y) & valid
        reps = 1 + split.long()
        idx = torch.repeat_interleave(torch.arange(len(s)), reps)
        first = torch.ones(len(idx), dtype=torch.bool)
        first[1:] = idx[1:] != idx[:-1]
        shift = torch.where(split_y[idx], 0.5 * vy, 0.5 * vx) * torch.where(first, -1.0, 1.0)
        s2 = s[idx] + torch.where(split[idx], shift, torch.zeros_like(shift)).to(dt)
        w2 = w[idx] / reps[idx]
        sel = valid[idx]
        idx, s2, w2 = idx[sel], s2[sel], w2[sel]
        out.append(_trace_chunk(s2, c[idx], sn[idx], w2, row[idx], lo[idx], hi[idx],
                                image_geometry))
    rows, cols, vals, tau0, tau1 = (torch.cat(parts) for parts in zip(*out))
    return RayElements(rows, cols, vals, tau0, tau1, len(views) * T, ny * nx)


# ---------------------------------------------------------------------------- sparse helpers
def _coalesce(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, ncols: int):
    """Sort COO triplets by (row, col) and sum duplicates."""
    order = torch.argsort(rows * ncols + cols)
    rows, cols, vals = rows[order], cols[order], vals[order]
    new = torch.ones(len(rows), dtype=torch.bool)
    new[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    group = torch.cumsum(new.long(), 0) - 1
    summed = torch.zeros(int(new.sum()), dtype=vals.dtype).index_add_(0, group, vals)
    return rows[new], cols[new], summed


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int],
         device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """CSR matrix from row-sorted COO triplets without duplicates."""
    nrows, ncols = shape
    crow = torch.zeros(nrows + 1, dtype=torch.long)
    crow[1:] = torch.bincount(rows, minlength=nrows).cumsum(0)
    itype = torch.int32 if max(len(rows), nrows, ncols) < 2 ** 31 - 1 else torch.long
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow.to(itype), cols.to(itype), vals, (nrows, ncols),
                                       dtype=dtype, device=device)


def _csr_pair(rows, cols, vals, shape, device, dtype, *,
              row_sorted_unique: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, A^T)`` as CSR matrices holding exactly the same numbers (duplicates summed)."""
    if not row_sorted_unique:
        rows, cols, vals = _coalesce(rows, cols, vals, shape[1])
    perm = torch.argsort(cols, stable=True)        # (col, row) order for the transpose
    return (_csr(rows, cols, vals, shape, device, dtype),
            _csr(cols[perm], rows[perm], vals[perm], (shape[1], shape[0]), device, dtype))


def _slice_views(A: torch.Tensor, views: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_v, A_v^T)`` with ``A_v`` the rows of ``views`` (blocks of ``T`` rows) of CSR ``A``."""
    dev = A.device
    crow, col, val = A.crow_indices().long(), A.col_indices().long(), A.values()
    rows = (views.to(dev)[:, None] * T + torch.arange(T, device=dev)[None]).reshape(-1)
    starts, lens = crow[rows], crow[rows + 1] - crow[rows]
    first = torch.cumsum(lens, 0) - lens
    idx = torch.repeat_interleave(starts - first, lens) + torch.arange(int(lens.sum()), device=dev)
    new_rows = torch.repeat_interleave(torch.arange(len(rows), device=dev), lens)
    return _csr_pair(new_rows.cpu(), col[idx].cpu(), val[idx].cpu(), (len(rows), A.shape[1]),
                     dev, val.dtype, row_sorted_unique=True)


def _nbytes(*tensors: torch.Tensor) -> int:
    total = 0
    for t in tensors:
        if t.layout == torch.sparse_csr:
            total += sum(u.numel() * u.element_size()
                         for u in (t.crow_indices(), t.col_indices(), t.values()))
        else:
            total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------- axial model
@dataclass
class _AxialSegment:
    """How one segment's sinograms see the image planes (see module docstring)."""

    number: int
    offset: int                 # first sinogram of the segment in as_array order
    num_axial: int
    direct: bool
    n_axial_rays: int           # STIR num_lors_per_axial_pos
    weights: torch.Tensor | None = None   # direct: [num_axial, nz] plane weights
    first_plane: int = 0        # oblique: base plane of axial position 0
    frac: float = 0.0           # oblique: m of axial position 0 minus base plane (index units)
    tan_theta: float = 0.0      # oblique: tan(theta) at s = 0


def _axial_layout(sino: SinogramGeometry, img: ImageGeometry) -> list[_AxialSegment]:
    nz = img.shape[0]
    vz = img.voxel_size_mm[0]
    out = []
    for seg in sino.segments:
        delta = seg.axial_sampling_mm
        ratio = delta / vz
        n = int(math.ceil(ratio - 1e-3))
        if abs(ratio - n) > 1e-3:
            raise ValueError(
                f"segment {seg.number}: axial sampling {delta:g} mm is not an integer multiple of "
                f"the image plane thickness {vz:g} mm (STIR's ray tracer requires this)")
        c = (nz - 1) / 2 + torch.as_tensor(seg.m_mm(), dtype=torch.float64) / vz
        off = sino.sinogram_offset(seg.number)
        if abs(seg.average_ring_difference) < 1e-4:
            k = torch.arange(nz, dtype=torch.float64)
            hw = ratio / 2
            ov = (torch.minimum(c[:, None] + hw, k[None] + 0.5)
                  - torch.maximum(c[:, None] - hw, k[None] - 0.5))
            ov = torch.where(ov > 1e-4, ov, torch.zeros_like(ov))
            out.append(_AxialSegment(seg.number, off, seg.num_axial_positions, True, n, ov / n))
            continue
        if abs(ratio - n) > 1e-6:
            raise ValueError(
                f"segment {seg.number}: oblique segments need the axial sampling ({delta:g} mm) "
                f"to be an exact multiple of the plane thickness ({vz:g} mm)")
        p0 = int(torch.round(c[0]))
        out.append(_AxialSegment(seg.number, off, seg.num_axial_positions, False, n,
                                 first_plane=p0, frac=float(c[0]) - p0, tan_theta=seg.tan_theta))
    return out


# ---------------------------------------------------------------------------- oblique segments
def tan_theta_per_tangential(sinogram_geometry: SinogramGeometry, tan0: float) -> torch.Tensor:
    """STIR ``get_tantheta``: ``tan0 * R / sqrt(R^2 - s^2)`` for every tangential bin (float64)."""
    R = sinogram_geometry.scanner.effective_ring_radius_mm
    s = torch.as_tensor(sinogram_geometry.s(), dtype=torch.float64)
    return tan0 * R / torch.sqrt(torch.clamp(R * R - s * s, min=1e-6))


def _axial_span(e: RayElements, tan: torch.Tensor, ax: _AxialSegment, vz: float):
    """Plane-offset interval ``[umin, umax]`` (plane units) each element's ray crosses."""
    f0 = ax.frac - (ax.n_axial_rays - 1) / 2
    ua, ub = f0 + e.tau0 * tan / vz, f0 + e.tau1 * tan / vz
    return torch.minimum(ua, ub), torch.maximum(ua, ub)


def plane_offset_range(tau_max: float, tan_max: float, ax: _AxialSegment,
                       vz: float) -> tuple[int, int]:
    """``(qmin, nq)``: plane offsets that cover every element of segment ``ax`` whose
    ``|tau0|, |tau1| <= tau_max`` on bins with ``|tan(theta)| <= tan_max`` (a superset of those
    :func:`extended_triplets` keeps)."""
    f0 = ax.frac - (ax.n_axial_rays - 1) / 2
    reach = tau_max * tan_max / vz
    qmin = math.floor(f0 - reach + 0.5)
    return qmin, math.floor(f0 + reach + 0.5) - qmin + 1


def extended_triplets(e: RayElements, tan_t: torch.Tensor, ax: _AxialSegment, vz: float,
                      q_range: tuple[int, int] | None = None):
    """COO triplets of an oblique segment's matrix over the rows of ``e``.

    Columns are ``(q - qmin) * num_cols + voxel`` with ``q`` the plane offset (see
    :func:`gather_planes`).  A ray crossing a voxel over ``[tau0, tau1]`` climbs the axial
    interval ``[umin, umax]`` (plane units, ``z = m + tau tan(theta)``); plane offset ``q`` gets
    the fraction of it inside ``[q - 1/2, q + 1/2]`` of the 3D length
    ``L sqrt(1 + tan^2)``, divided by the ``n`` axial rays (module docstring).

    Parameters
    ----------
    e
        2D elements (with ``tau0`` / ``tau1``); rows ``p * T + t``.
    tan_t
        :func:`tan_theta_per_tangential` of the segment, one per tangential bin ``t``.
    ax
        The segment's axial layout.
    vz
        Plane thickness (mm).
    q_range
        ``(qmin, nq)`` to index the columns with (e.g. the segment's
        :func:`plane_offset_range` over all views); default the range of the kept elements.

    Returns
    -------
    rows, cols, values, qmin, nq
        Row-sorted triplets (float64 values) and the column layout.
    """
    T = len(tan_t)
    tan = tan_t[e.rows % T]
    umin, umax = _axial_span(e, tan, ax, vz)
    q_lo = torch.floor(umin + 0.5)
    width = umax - umin
    K = int((torch.floor(umax + 0.5) - q_lo).max()) + 1 if len(q_lo) else 1
    scale = e.values * torch.sqrt(1 + tan * tan) / ax.n_axial_rays
    q = q_lo[:, None] + torch.arange(K, dtype=q_lo.dtype)[None]      # [nE, K]
    ov = torch.clamp(torch.minimum(umax[:, None], q + 0.5)
                     - torch.maximum(umin[:, None], q - 0.5), min=0)
    first = torch.zeros(K, dtype=ov.dtype)
    first[0] = 1.0
    frac = torch.where(width[:, None] > _TINY,
                       ov / torch.clamp(width, min=_TINY)[:, None], first[None])
    keep = frac > 0                     # row-major flattening keeps rows sorted
    rows = e.rows[:, None].expand(-1, K)[keep]
    qs = q.long()[keep]
    cols = e.cols[:, None].expand(-1, K)[keep]
    vals = (scale[:, None] * frac)[keep]
    if q_range is None:
        qmin = int(qs.min()) if len(qs) else 0
        nq = int(qs.max()) - qmin + 1 if len(qs) else 1
    else:
        qmin, nq = q_range
    return rows, (qs - qmin) * e.num_cols + cols, vals, qmin, nq


def plane_bounds(ax: _AxialSegment, qmin: int, nq: int, nz: int,
                 axial: tuple[int, int] | None = None) -> tuple[torch.Tensor, int, int]:
    """Plane ``first_plane + a n + q`` of every (plane offset ``q``, axial position ``a`` in
    ``axial``) as ``[nq, na]``, and the padded plane range ``lo .. hi`` they (and the ``n - 1``
    planes after each) need."""
    n = ax.n_axial_rays
    axial = (0, ax.num_axial) if axial is None else axial
    q = torch.arange(qmin, qmin + nq)
    a = torch.arange(*axial)
    idx = ax.first_plane + a[None] * n + q[:, None]          # [nq, na]
    lo = min(0, ax.first_plane + axial[0] * n + qmin)
    hi = max(nz - 1, int(idx.max()) + n - 1)
    return idx, lo, hi


def plane_sums(X: torch.Tensor, n: int, lo: int, hi: int) -> torch.Tensor:
    """``X2[:, k] = sum_{r < n} X[:, lo + k + r]`` (zero outside the image), ``X``:
    ``[B, nz, npix]`` -> ``[B, hi - lo + 2 - n, npix]``."""
    B, nz, npix = X.shape
    Xp = X.new_zeros(B, hi - lo + 1, npix)
    Xp[:, -lo:-lo + nz] = X
    L = hi - lo + 1 - (n - 1)
    return sum(Xp[:, r:r + L] for r in range(n))


def add_plane_sums_adjoint(out: torch.Tensor, X2: torch.Tensor, n: int, lo: int,
                           hi: int) -> None:
    """Accumulate the adjoint of :func:`plane_sums` of ``X2`` into ``out`` ``[B, nz, npix]``."""
    B, nz, npix = out.shape
    L = X2.shape[1]
    Xp = out.new_zeros(B, hi - lo + 1, npix)
    for r in range(n):
        Xp[:, r:r + L] += X2
    out += Xp[:, -lo:-lo + nz]


def gather_planes(X: torch.Tensor, ax: _AxialSegment, qmin: int, nq: int,
                  axial: tuple[int, int] | None = None) -> torch.Tensor:
    """``[nq * npix, na * B]`` right-hand side of an oblique segment's matrix.

    Entry ``(q, pixel), (a, b)`` is the sum of the ``n`` planes ``first_plane + a n + q + r``,
    ``r < n``, of ``X[b]`` (``X``: ``[B, nz, npix]``; planes outside the image are zero) for the
    axial positions ``a`` in ``axial = (a0, a1)`` (default all).
    """
    B, nz, npix = X.shape
    idx, lo, hi = plane_bounds(ax, qmin, nq, nz, axial)
    na = idx.shape[1]
    X2 = plane_sums(X, ax.n_axial_rays, lo, hi)
    g = X2.index_select(1, (idx - lo).reshape(-1).to(X.device)).reshape(B, nq, na, npix)
    return g.permute(1, 3, 2, 0).reshape(nq * npix, na * B)


def scatter_planes(out: torch.Tensor, z: torch.Tensor, ax: _AxialSegment, qmin: int, nq: int,
                   axial: tuple[int, int] | None = None) -> None:
    """Adjoint of :func:`gather_planes`, accumulated into ``out`` ``[B, nz, npix]``."""
    B, nz, npix = out.shape
    n = ax.n_axial_rays
    idx, lo, hi = plane_bounds(ax, qmin, nq, nz, axial)
    na = idx.shape[1]
    L = hi - lo + 1 - (n - 1)
    z = z.reshape(nq, npix, na, B).permute(3, 0, 2, 1).reshape(B, -1, npix)
    X2 = out.new_zeros(B, L, npix).index_add_(1, (idx - lo).reshape(-1).to(out.device), z)
    add_plane_sums_adjoint(out, X2, n, lo, hi)


# ---------------------------------------------------------------------------- view chunks
def view_pointers(e: RayElements, num_views: int, num_tangential: int) -> torch.Tensor:
    """``ptr[v] .. ptr[v + 1]``: the elements of view ``v`` in the row-sorted ``e``."""
    bounds = torch.arange(num_views + 1, dtype=e.rows.dtype) * num_tangential
    return torch.searchsorted(e.rows, bounds)


def chunk_elements(e: RayElements, ptr: torch.Tensor, views: torch.Tensor,
                   num_tangential: int) -> RayElements:
    """Elements of ``views`` (rows renumbered ``p * T + t``, ``p`` the position in ``views``)."""
    starts, lens = ptr[views], ptr[views + 1] - ptr[views]
    first = torch.cumsum(lens, 0) - lens
    total = int(lens.sum())
    idx = torch.repeat_interleave(starts - first, lens) + torch.arange(total)
    pos = torch.repeat_interleave(torch.arange(len(views)), lens)
    rows = pos * num_tangential + e.rows[idx] % num_tangential
    pick = (lambda t: t[idx] if t.numel() else t)  # noqa: E731
    return RayElements(rows, e.cols[idx], e.values[idx], pick(e.tau0), pick(e.tau1),
                       len(views) * num_tangential, e.num_cols)
