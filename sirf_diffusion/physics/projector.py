"""Ray-driven PET projector reproducing STIR's ``ProjMatrixByBinUsingRayTracing``.

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

Implementation: the transaxial ray tracing is done once (vectorised, float64) and stored as a
sparse CSR matrix with rows ``(view, tangential)``; stacked planes are projected with one
sparse-dense product.  Oblique segments use an "extended" CSR matrix whose columns are
``(plane offset, voxel)`` pairs applied to a strided copy of the image planes.  Matrices and
their transposes are cached per (device, dtype, views) so that the adjoint is the exact
transpose of the forward operator.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .geometry import ImageGeometry, SinogramGeometry

__all__ = ["RayElements", "RayTracingProjector", "fov_radius_mm", "projector_for", "trace_rays_2d"]

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


# ---------------------------------------------------------------------------- projector
class RayTracingProjector:
    """Geometric projector ``G`` of STIR's ``ProjMatrixByBinUsingRayTracing`` (see module doc).

    Parameters
    ----------
    sinogram_geometry, image_geometry
        Sinogram layout and voxel grid (image centred on the scanner axis and axial centre).
    num_rays
        Rays per bin in the tangential direction (STIR ``num_tangential_LORs``).
    restrict_to_cylindrical_fov
        STIR ``restrict_to_cylindrical_FOV`` (default ``True``).
    cache_bytes
        Budget for cached sparse matrices beyond the full-view 2D matrix (subset and oblique
        segment matrices, per device and dtype).  Matrices that do not fit are rebuilt on use.
    progress
        Show tqdm progress bars while building matrices.

    Notes
    -----
    ``forward(x, views)`` maps ``[..., z, y, x]`` to ``[..., sinogram, len(views), tangential]``;
    ``adjoint`` is its exact transpose (the same stored numbers).  Device and dtype follow the
    input.
    """

    def __init__(self, sinogram_geometry: SinogramGeometry, image_geometry: ImageGeometry, *,
                 num_rays: int = 1, restrict_to_cylindrical_fov: bool = True,
                 cache_bytes: int = 4 * 2 ** 30, progress: bool = False) -> None:
        if not isinstance(sinogram_geometry, SinogramGeometry):
            raise TypeError("sinogram_geometry must be a SinogramGeometry")
        if not isinstance(image_geometry, ImageGeometry):
            raise TypeError("image_geometry must be an ImageGeometry")
        if int(num_rays) < 1:
            raise ValueError(f"num_rays must be >= 1, got {num_rays}")
        self.sinogram_geometry = sinogram_geometry
        self.image_geometry = image_geometry
        self.num_rays = int(num_rays)
        self.restrict_to_cylindrical_fov = bool(restrict_to_cylindrical_fov)
        self.cache_bytes = int(cache_bytes)
        self.progress = bool(progress)
        self.image_shape: tuple[int, int, int] = image_geometry.shape
        self.data_shape: tuple[int, int, int] = sinogram_geometry.shape
        self._axial = _axial_layout(sinogram_geometry, image_geometry)
        self._has_oblique = any(not a.direct for a in self._axial)
        self._elements: RayElements | None = None
        self._last_view_elements: tuple | None = None
        self._cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._cached_bytes = 0

    # ------------------------------------------------------------ caching
    def clear_cache(self) -> None:
        """Forget every cached matrix (the traced elements are kept)."""
        self._cache.clear()
        self._cached_bytes = 0
        self._last_view_elements = None

    def _cached(self, key: tuple, build, always: bool = False) -> tuple[torch.Tensor, ...]:
        if key in self._cache:
            return self._cache[key]
        value = build()
        size = _nbytes(*[v for v in value if isinstance(v, torch.Tensor)])
        if always or self._cached_bytes + size <= self.cache_bytes:
            self._cache[key] = value
            self._cached_bytes += 0 if always else size
        return value

    def elements(self) -> RayElements:
        """The traced 2D elements of all views (computed once, CPU float64)."""
        if self._elements is None:
            e = trace_rays_2d(self.sinogram_geometry, self.image_geometry, num_rays=self.num_rays,
                              restrict_to_cylindrical_fov=self.restrict_to_cylindrical_fov,
                              progress=self.progress)
            if not self._has_oblique and self.num_rays > 1:   # merge sub-rays; tau not needed
                empty = torch.empty(0, dtype=torch.float64)
                e = RayElements(*_coalesce(e.rows, e.cols, e.values, e.num_cols), empty, empty,
                                e.num_rows, e.num_cols)
            self._elements = e
        return self._elements

    def _view_elements(self, views: torch.Tensor | None) -> RayElements:
        """Elements of the rows of ``views`` (the last subset is remembered)."""
        e = self.elements()
        if views is None:
            return e
        key = self._views_key(views)
        if self._last_view_elements is not None and self._last_view_elements[0] == key:
            return self._last_view_elements[1]
        nv, T = self.data_shape[1], self.data_shape[2]
        pos = torch.full((nv,), -1, dtype=torch.long)
        pos[views] = torch.arange(len(views))
        p = pos[e.rows // T]
        keep = p >= 0
        rows = p[keep] * T + e.rows[keep] % T
        order = torch.argsort(rows, stable=True)
        pick = torch.nonzero(keep).squeeze(1)[order]
        tau0 = e.tau0[pick] if e.tau0.numel() else e.tau0
        tau1 = e.tau1[pick] if e.tau1.numel() else e.tau1
        sub = RayElements(rows[order], e.cols[pick], e.values[pick], tau0, tau1,
                          len(views) * T, e.num_cols)
        self._last_view_elements = (key, sub)
        return sub

    @staticmethod
    def _views_key(views: torch.Tensor | None):
        return None if views is None else tuple(int(v) for v in views)

    def matrix_2d(self, views: torch.Tensor | None = None, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """Transaxial matrix ``(A, A^T)`` as CSR, rows ``(view, tangential)``, cols ``(y, x)``."""
        views = self._check_views(views)
        device = torch.device(device)
        key = ("2d", self._views_key(views), str(device), dtype)

        def build():
            if views is not None:
                A, _ = self.matrix_2d(None, device=device, dtype=dtype)
                return _slice_views(A, views, self.data_shape[2])
            e = self._view_elements(views)
            unique = self.num_rays == 1 or not self._has_oblique   # see elements()
            return _csr_pair(e.rows, e.cols, e.values, (e.num_rows, e.num_cols), device, dtype,
                             row_sorted_unique=unique)
        return self._cached(key, build, always=views is None)

    def _tan_theta_per_tangential(self, tan0: float) -> torch.Tensor:
        """STIR ``get_tantheta``: ``tan0 * R / sqrt(R^2 - s^2)`` for every tangential bin."""
        R = self.sinogram_geometry.scanner.effective_ring_radius_mm
        s = torch.as_tensor(self.sinogram_geometry.s(), dtype=torch.float64)
        return tan0 * R / torch.sqrt(torch.clamp(R * R - s * s, min=1e-6))

    def _oblique_matrices(self, ax: _AxialSegment, views: torch.Tensor | None,
                          device: torch.device, dtype: torch.dtype):
        key = ("ext", ax.number, self._views_key(views), str(device), dtype)
        full = ("ext", ax.number, None, str(device), dtype)
        if views is not None and key not in self._cache and full in self._cache:
            A, _, q = self._cache[full]       # slicing is much cheaper than rebuilding
            return self._cached(key, lambda: (*_slice_views(A, views, self.data_shape[2]), q))

        def build():
            e = self._view_elements(views)
            vz = self.image_geometry.voxel_size_mm[0]
            T = self.data_shape[2]
            tan = self._tan_theta_per_tangential(ax.tan_theta)[e.rows % T]
            f0 = ax.frac - (ax.n_axial_rays - 1) / 2
            ua, ub = f0 + e.tau0 * tan / vz, f0 + e.tau1 * tan / vz
            umin, umax = torch.minimum(ua, ub), torch.maximum(ua, ub)
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
            qmin = int(qs.min()) if len(qs) else 0
            nq = int(qs.max()) - qmin + 1 if len(qs) else 1
            A, At = _csr_pair(rows, (qs - qmin) * e.num_cols + cols, vals,
                              (e.num_rows, nq * e.num_cols), device, dtype,
                              row_sorted_unique=self.num_rays == 1)
            return A, At, torch.tensor([qmin, nq])
        return self._cached(key, build)

    # ------------------------------------------------------------ checks
    def _check_views(self, views) -> torch.Tensor | None:
        if views is None:
            return None
        views = torch.as_tensor(views).cpu()
        if views.ndim != 1 or views.is_floating_point() or views.dtype == torch.bool:
            raise ValueError("views must be a 1D tensor of integer view numbers")
        views = views.long()
        nv = self.data_shape[1]
        if len(views) == 0 or int(views.min()) < 0 or int(views.max()) >= nv:
            raise ValueError(f"views must be non-empty and within [0, {nv - 1}]")
        if len(torch.unique(views)) != len(views):
            raise ValueError("views must not repeat")
        return views

    def _check_input(self, t: torch.Tensor, core: tuple[int, ...], name: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.ndim < 3 or tuple(t.shape[-3:]) != tuple(core):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected (..., "
                             f"{', '.join(map(str, core))})")

    # ------------------------------------------------------------ operators
    def forward(self, x: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """``G x``: image ``[..., z, y, x]`` -> sinograms ``[..., sinogram, view, tangential]``.

        Differentiable; the gradient is computed with the cached transpose (:meth:`adjoint`).
        """
        self._check_input(x, self.image_shape, "image")
        return _Linear.apply(x, self, self._check_views(views), False)

    def adjoint(self, y: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """``G^T y``: sinograms ``[..., sinogram, view, tangential]`` -> image ``[..., z, y, x]``"""
        views = self._check_views(views)
        V = self.data_shape[1] if views is None else len(views)
        self._check_input(y, (self.data_shape[0], V, self.data_shape[2]), "sinogram")
        return _Linear.apply(y, self, views, True)

    __call__ = forward

    def _apply_forward(self, x: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        lead = x.shape[:-3]
        nz, ny, nx = self.image_shape
        S, _, T = self.data_shape
        V = self.data_shape[1] if views is None else len(views)
        X = x.reshape(-1, nz, ny * nx)
        B = X.shape[0]
        out = x.new_zeros(B, S, V, T)
        for ax in self._axial:
            if ax.direct:
                A, _ = self.matrix_2d(views, device=x.device, dtype=x.dtype)
                W = ax.weights.to(device=x.device, dtype=x.dtype)
                rhs = torch.einsum("ak,bkp->pab", W, X).reshape(ny * nx, ax.num_axial * B)
            else:
                A, _, q = self._oblique_matrices(ax, views, x.device, x.dtype)
                rhs = self._gather_planes(X, ax, int(q[0]), int(q[1]))
            y = (A @ rhs).reshape(V, T, ax.num_axial, B).permute(3, 2, 0, 1)
            out[:, ax.offset:ax.offset + ax.num_axial] = y
        return out.reshape(*lead, S, V, T)

    def _apply_adjoint(self, y: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        S, _, T = self.data_shape
        V = self.data_shape[1] if views is None else len(views)
        lead = y.shape[:-3]
        nz, ny, nx = self.image_shape
        Y = y.reshape(-1, S, V, T)
        B = Y.shape[0]
        out = y.new_zeros(B, nz, ny * nx)
        for ax in self._axial:
            ys = Y[:, ax.offset:ax.offset + ax.num_axial].permute(2, 3, 1, 0)
            ys = ys.reshape(V * T, ax.num_axial * B)
            if ax.direct:
                _, At = self.matrix_2d(views, device=y.device, dtype=y.dtype)
                z = (At @ ys).reshape(ny * nx, ax.num_axial, B)
                W = ax.weights.to(device=y.device, dtype=y.dtype)
                out += torch.einsum("ak,pab->bkp", W, z)
            else:
                _, At, q = self._oblique_matrices(ax, views, y.device, y.dtype)
                self._scatter_planes(out, At @ ys, ax, int(q[0]), int(q[1]))
        return out.reshape(*lead, nz, ny, nx)

    # ------------------------------------------------------------ plane bookkeeping
    def _plane_index(self, ax: _AxialSegment, qmin: int, nq: int,
                     device: torch.device) -> tuple[torch.Tensor, int, int]:
        """Plane of (offset q, axial position a): ``first_plane + a n + q`` and padding bounds."""
        n = ax.n_axial_rays
        q = torch.arange(qmin, qmin + nq, device=device)
        a = torch.arange(ax.num_axial, device=device)
        idx = ax.first_plane + a[None] * n + q[:, None]          # [nq, num_axial]
        lo = min(0, ax.first_plane + qmin)
        hi = max(self.image_shape[0] - 1, int(idx.max()) + n - 1)
        return idx, lo, hi

    def _gather_planes(self, X: torch.Tensor, ax: _AxialSegment, qmin: int,
                       nq: int) -> torch.Tensor:
        """``[nq * npix, num_axial * B]`` right-hand side: sums of ``n`` consecutive planes."""
        B, nz, npix = X.shape
        n = ax.n_axial_rays
        idx, lo, hi = self._plane_index(ax, qmin, nq, X.device)
        Xp = X.new_zeros(B, hi - lo + 1, npix)
        Xp[:, -lo:-lo + nz] = X
        L = hi - lo + 1 - (n - 1)
        X2 = sum(Xp[:, r:r + L] for r in range(n))
        g = X2.index_select(1, (idx - lo).reshape(-1)).reshape(B, nq, ax.num_axial, npix)
        return g.permute(1, 3, 2, 0).reshape(nq * npix, ax.num_axial * B)

    def _scatter_planes(self, out: torch.Tensor, z: torch.Tensor, ax: _AxialSegment,
                        qmin: int, nq: int) -> None:
        """Adjoint of :meth:`_gather_planes`, accumulated into ``out`` ``[B, nz, npix]``."""
        B, nz, npix = out.shape
        n = ax.n_axial_rays
        idx, lo, hi = self._plane_index(ax, qmin, nq, out.device)
        L = hi - lo + 1 - (n - 1)
        z = z.reshape(nq, npix, ax.num_axial, B).permute(3, 0, 2, 1).reshape(B, -1, npix)
        X2 = out.new_zeros(B, L, npix).index_add_(1, (idx - lo).reshape(-1), z)
        Xp = out.new_zeros(B, hi - lo + 1, npix)
        for r in range(n):
            Xp[:, r:r + L] += X2
        out += Xp[:, -lo:-lo + nz]


def projector_for(sinogram_geometry: SinogramGeometry, image_geometry: ImageGeometry, *,
                  num_rays: int = 1, restrict_to_cylindrical_fov: bool = True,
                  projector: RayTracingProjector | None = None,
                  what: str = "given geometries") -> RayTracingProjector:
    """``projector`` when it was built for these geometries (to reuse its cached matrices), a new
    :class:`RayTracingProjector` with ``num_rays`` / ``restrict_to_cylindrical_fov`` when it is
    ``None``; a ``ValueError`` naming ``what`` the geometries belong to otherwise."""
    if projector is None:
        return RayTracingProjector(sinogram_geometry, image_geometry, num_rays=num_rays,
                                   restrict_to_cylindrical_fov=restrict_to_cylindrical_fov)
    if (projector.image_geometry != image_geometry
            or not projector.sinogram_geometry.is_compatible(sinogram_geometry)):
        raise ValueError(f"the given projector was built for other geometries than the {what}")
    return projector


class _Linear(torch.autograd.Function):
    """``G`` or ``G^T`` with the other one as its exact derivative."""

    @staticmethod
    def forward(ctx, u, projector, views, transpose):  # type: ignore[override]
        ctx.projector, ctx.views, ctx.transpose = projector, views, transpose
        if transpose:
            return projector._apply_adjoint(u, views)
        return projector._apply_forward(u, views)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _Linear.apply(grad, ctx.projector, ctx.views, not ctx.transpose), None, None, None
