"""Ray-driven PET projector reproducing STIR's ``ProjMatrixByBinUsingRayTracing``.

The geometric system matrix ``G`` maps an image ``[B, z, y, x]`` to sinograms
``[B, sinogram, view, tangential]`` (STIR ``as_array`` order); its elements are the
ray-voxel intersection lengths of :mod:`.raytrace` (Siddon, R. L. 1985, Med. Phys. 12:252, with
STIR's conventions, Thielemans et al. 2012, Phys. Med. Biol. 57:867).

Two implementations apply the same numbers:

``"matrix"``
    The transaxial (2D) matrix and, per oblique segment, the "extended" matrix (columns
    ``(plane offset, voxel)``) are built once as CSR matrices with their transposes and cached
    per (device, dtype, views), so that the adjoint is the exact transpose of the forward
    operator.  Fastest where they fit: the extended matrices grow with the number of oblique
    segments and the voxels a ray crosses (about 5 GiB for the full mMR in span 11).
``"matrix-free"``
    Only the transaxial ray tracing is kept (one sinogram's worth of elements, shared by every
    sinogram through the axial shift invariance of a cylindrical scanner).  An oblique
    segment's matrix is built on the fly for chunks of views, applied and discarded; the adjoint
    uses the transpose of the very same chunk triplets, so it is exact.  Memory is bounded by
    ``chunk_bytes`` (working arrays) and by the transaxial elements, whatever the number of
    segments.

``mode="auto"`` (the default) takes the matrix when the full-view extended matrices (estimated
for float32, with their transposes) and their subset copies fit ``cache_bytes``, and the
matrix-free path otherwise.
The environment variables ``SIRF_DIFFUSION_PROJECTOR`` (``auto``, ``matrix``,
``matrix-free``) and ``SIRF_DIFFUSION_PROJECTOR_MEMORY_GIB`` (the budget in GiB) set the
defaults of ``mode`` and ``cache_bytes``.
"""

from __future__ import annotations

import math
import os

import torch

from . import raytrace_numba
from .geometry import ImageGeometry, SinogramGeometry
from .raytrace import (
    RayElements,
    _axial_layout,
    _AxialSegment,
    _coalesce,
    _csr,
    _csr_pair,
    _nbytes,
    _slice_views,
    chunk_elements,
    extended_triplets,
    fov_radius_mm,
    gather_planes,
    plane_offset_range,
    scatter_planes,
    tan_theta_per_tangential,
    trace_rays_2d,
    view_pointers,
)

__all__ = ["KERNELS", "MODES", "RayElements", "RayTracingProjector", "fov_radius_mm",
           "projector_for", "trace_rays_2d"]

#: Implementations of :class:`RayTracingProjector` (``mode`` argument).
MODES = ("auto", "matrix", "matrix-free")
#: Kernels of the matrix-free path on the CPU (``kernels`` argument); CUDA always uses torch.
KERNELS = ("auto", "numba", "torch")
MODE_ENV = "SIRF_DIFFUSION_PROJECTOR"
MEMORY_ENV = "SIRF_DIFFUSION_PROJECTOR_MEMORY_GIB"
_DEFAULT_CACHE_BYTES = 4 * 2 ** 30
_DEFAULT_CHUNK_BYTES = 2 ** 30
#: bytes of build temporaries per extended element (a dozen float64 / int64 arrays)
_BUILD_BYTES_PER_ELEMENT = 112


def _resolve_mode(mode: str | None) -> str:
    if mode is None:
        mode = os.environ.get(MODE_ENV, "").strip() or "auto"
        what = f"environment variable {MODE_ENV}"
    else:
        what = "mode"
    if mode not in MODES:
        raise ValueError(f"{what} must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _resolve_cache_bytes(cache_bytes: int | None) -> int:
    if cache_bytes is not None:
        if int(cache_bytes) < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        return int(cache_bytes)
    text = os.environ.get(MEMORY_ENV, "").strip()
    if not text:
        return _DEFAULT_CACHE_BYTES
    try:
        gib = float(text)
    except ValueError:
        gib = float("nan")
    if not (math.isfinite(gib) and gib >= 0):
        raise ValueError(f"environment variable {MEMORY_ENV} must be a number of GiB >= 0, "
                         f"got {text!r}")
    return int(gib * 2 ** 30)


def _csr_one(rows, cols, vals, shape, device, dtype, *, transpose: bool,
             row_sorted_unique: bool) -> torch.Tensor:
    """``A`` or ``A^T`` (CSR) of row-sorted COO triplets (duplicates summed as in ``_csr_pair``)."""
    if not row_sorted_unique:
        rows, cols, vals = _coalesce(rows, cols, vals, shape[1])
    if not transpose:
        return _csr(rows, cols, vals, shape, device, dtype)
    perm = torch.argsort(cols, stable=True)
    return _csr(cols[perm], rows[perm], vals[perm], (shape[1], shape[0]), device, dtype)


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
        ``mode="auto"`` picks the matrix when the full-view oblique matrices fit it.  Default
        ``$SIRF_DIFFUSION_PROJECTOR_MEMORY_GIB`` GiB, else 4 GiB.
    progress
        Show tqdm progress bars while building matrices.
    mode
        ``"auto"``, ``"matrix"`` or ``"matrix-free"`` (module docstring); default
        ``$SIRF_DIFFUSION_PROJECTOR``, else ``"auto"``.
    chunk_bytes
        Matrix-free torch path: bound on the working arrays of one chunk (view chunks of the
        oblique matrices and axial chunks of the plane sums they multiply).
    kernels
        Matrix-free path on the CPU: ``"numba"`` (:mod:`.raytrace_numba`), ``"torch"`` (chunked
        sparse matrices) or ``"auto"`` (numba when it is installed).  CUDA inputs use torch.

    Notes
    -----
    ``forward(x, views)`` maps ``[..., z, y, x]`` to ``[..., sinogram, len(views), tangential]``;
    ``adjoint`` is its exact transpose (the same numbers).  Device and dtype follow the input.
    """

    def __init__(self, sinogram_geometry: SinogramGeometry, image_geometry: ImageGeometry, *,
                 num_rays: int = 1, restrict_to_cylindrical_fov: bool = True,
                 cache_bytes: int | None = None, progress: bool = False,
                 mode: str | None = None, chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
                 kernels: str = "auto") -> None:
        if not isinstance(sinogram_geometry, SinogramGeometry):
            raise TypeError("sinogram_geometry must be a SinogramGeometry")
        if not isinstance(image_geometry, ImageGeometry):
            raise TypeError("image_geometry must be an ImageGeometry")
        if int(num_rays) < 1:
            raise ValueError(f"num_rays must be >= 1, got {num_rays}")
        if int(chunk_bytes) <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        if kernels == "numba" and not raytrace_numba.available():
            raise ValueError("kernels='numba' needs numba (pip install numba)")
        self.sinogram_geometry = sinogram_geometry
        self.image_geometry = image_geometry
        self.num_rays = int(num_rays)
        self.restrict_to_cylindrical_fov = bool(restrict_to_cylindrical_fov)
        self.cache_bytes = _resolve_cache_bytes(cache_bytes)
        self.mode = _resolve_mode(mode)
        self.chunk_bytes = int(chunk_bytes)
        self.kernels = kernels
        self.progress = bool(progress)
        self.image_shape: tuple[int, int, int] = image_geometry.shape
        self.data_shape: tuple[int, int, int] = sinogram_geometry.shape
        self._axial = _axial_layout(sinogram_geometry, image_geometry)
        self._has_oblique = any(not a.direct for a in self._axial)
        self._elements: RayElements | None = None
        self._last_view_elements: tuple | None = None
        self._cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._cached_bytes = 0
        self._implementation: str | None = None
        self._ptr: torch.Tensor | None = None
        self._q_ranges: dict[int, tuple[int, int]] = {}
        self._numpy_elements: raytrace_numba.PackedElements | None = None
        self._traced_bins: torch.Tensor | None = None

    # ------------------------------------------------------------ implementation choice
    @property
    def implementation(self) -> str:
        """``"matrix"`` or ``"matrix-free"``: ``mode``, with ``"auto"`` resolved (on first use):
        the matrix when twice :meth:`estimated_matrix_bytes` (full-view and subset matrices)
        fits ``cache_bytes``."""
        if self._implementation is None:
            if self.mode != "auto":
                self._implementation = self.mode
            elif not self._has_oblique:       # both paths apply the same 2D matrix
                self._implementation = "matrix"
            else:
                # OSEM caches subset copies of the same size beside the full-view matrices
                fits = 2 * self.estimated_matrix_bytes() <= self.cache_bytes
                self._implementation = "matrix" if fits else "matrix-free"
        return self._implementation

    def estimated_matrix_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the cached full-view oblique matrices and their transposes in ``dtype``
        (int32 indices), estimated from every 16th traced element."""
        e = self.elements()
        stride = 16
        sample = RayElements(e.rows[::stride], e.cols[::stride], e.values[::stride],
                             e.tau0[::stride], e.tau1[::stride], e.num_rows, e.num_cols)
        vz = self.image_geometry.voxel_size_mm[0]
        per = torch.empty((), dtype=dtype).element_size() + 4
        total = 0
        for ax in self._axial:
            if ax.direct or not len(sample.rows):
                continue
            tan = tan_theta_per_tangential(self.sinogram_geometry, ax.tan_theta)
            rows, *_ = extended_triplets(sample, tan, ax, vz)
            total += 2 * (len(rows) * stride * per + 4 * e.num_rows)
        return total

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

    def _tan_t(self, ax: _AxialSegment) -> torch.Tensor:
        return tan_theta_per_tangential(self.sinogram_geometry, ax.tan_theta)

    def _tan_max(self, ax: _AxialSegment) -> float:
        """Largest ``|tan(theta)|`` of segment ``ax`` over the tangential bins that have rays
        (bins beyond the scanner radius have none, and a clamped, huge ``tan``)."""
        if self._traced_bins is None:
            e = self.elements()
            self._traced_bins = torch.bincount(e.rows % self.data_shape[2],
                                               minlength=self.data_shape[2]) > 0
        tan = self._tan_t(ax)[self._traced_bins]
        return float(tan.abs().max()) if len(tan) else 0.0

    def _oblique_matrices(self, ax: _AxialSegment, views: torch.Tensor | None,
                          device: torch.device, dtype: torch.dtype):
        """Cached ``(A, A^T, [qmin, nq])`` of an oblique segment (the matrix path)."""
        key = ("ext", ax.number, self._views_key(views), str(device), dtype)
        full = ("ext", ax.number, None, str(device), dtype)
        if views is not None and key not in self._cache and full in self._cache:
            A, _, q = self._cache[full]       # slicing is much cheaper than rebuilding
            return self._cached(key, lambda: (*_slice_views(A, views, self.data_shape[2]), q))

        def build():
            e = self._view_elements(views)
            rows, cols, vals, qmin, nq = extended_triplets(
                e, self._tan_t(ax), ax, self.image_geometry.voxel_size_mm[0])
            A, At = _csr_pair(rows, cols, vals, (e.num_rows, nq * e.num_cols), device, dtype,
                              row_sorted_unique=self.num_rays == 1)
            return A, At, torch.tensor([qmin, nq])
        return self._cached(key, build)

    # ------------------------------------------------------------ matrix-free pieces
    def _view_ptr(self) -> torch.Tensor:
        if self._ptr is None:
            self._ptr = view_pointers(self.elements(), self.data_shape[1], self.data_shape[2])
        return self._ptr

    def _q_range(self, ax: _AxialSegment) -> tuple[int, int]:
        """Plane offsets of segment ``ax`` over all views (so that every chunk shares them)."""
        if ax.number not in self._q_ranges:
            e = self.elements()
            tau_max = float(torch.maximum(e.tau0.abs().max(), e.tau1.abs().max()))
            self._q_ranges[ax.number] = plane_offset_range(
                tau_max, self._tan_max(ax), ax, self.image_geometry.voxel_size_mm[0])
        return self._q_ranges[ax.number]

    def _chunk_matrices(self, ax: _AxialSegment, views: torch.Tensor | None,
                        device: torch.device, dtype: torch.dtype, transpose: bool):
        """``[(p0, p1, M)]``: the oblique matrix (``transpose``: its transpose) of the views at
        positions ``p0:p1`` of ``views``, built chunk by chunk, and the shared ``(qmin, nq)``."""
        e, ptr = self.elements(), self._view_ptr()
        nv, T = self.data_shape[1], self.data_shape[2]
        views = torch.arange(nv) if views is None else views
        counts = ptr[views + 1] - ptr[views]
        per_view = max(1, int(counts.max())) * 2 * _BUILD_BYTES_PER_ELEMENT    # K ~ 2
        step = max(1, min(len(views), self.chunk_bytes // per_view))
        q_range = self._q_range(ax)
        vz = self.image_geometry.voxel_size_mm[0]
        tan_t = self._tan_t(ax)
        out = []
        for p0 in range(0, len(views), step):
            p1 = min(p0 + step, len(views))
            ce = chunk_elements(e, ptr, views[p0:p1], T)
            rows, cols, vals, _, nq = extended_triplets(ce, tan_t, ax, vz, q_range)
            M = _csr_one(rows, cols, vals, (ce.num_rows, nq * ce.num_cols), device, dtype,
                         transpose=transpose, row_sorted_unique=self.num_rays == 1)
            out.append((p0, p1, M))
        return out, q_range

    def _axial_step(self, ax: _AxialSegment, nq: int, batch: int, itemsize: int) -> int:
        """Axial positions per chunk: the plane sums (and their copy) within ``chunk_bytes``."""
        npix = self.image_shape[1] * self.image_shape[2]
        per_position = 2 * nq * npix * batch * itemsize
        return max(1, min(ax.num_axial, self.chunk_bytes // per_position))

    def _forward_oblique_chunked(self, X: torch.Tensor, out: torch.Tensor, ax: _AxialSegment,
                                 views: torch.Tensor | None) -> None:
        B = X.shape[0]
        T = self.data_shape[2]
        chunks, (qmin, nq) = self._chunk_matrices(ax, views, X.device, X.dtype, False)
        step = self._axial_step(ax, nq, B, X.element_size())
        for a0 in range(0, ax.num_axial, step):
            a1 = min(a0 + step, ax.num_axial)
            rhs = gather_planes(X, ax, qmin, nq, (a0, a1))
            for p0, p1, A in chunks:
                y = (A @ rhs).reshape(p1 - p0, T, a1 - a0, B).permute(3, 2, 0, 1)
                out[:, ax.offset + a0:ax.offset + a1, p0:p1] = y
            del rhs

    def _adjoint_oblique_chunked(self, Y: torch.Tensor, out: torch.Tensor, ax: _AxialSegment,
                                 views: torch.Tensor | None) -> None:
        B = Y.shape[0]
        T = self.data_shape[2]
        npix = self.image_shape[1] * self.image_shape[2]
        chunks, (qmin, nq) = self._chunk_matrices(ax, views, Y.device, Y.dtype, True)
        step = self._axial_step(ax, nq, B, Y.element_size())
        for a0 in range(0, ax.num_axial, step):
            a1 = min(a0 + step, ax.num_axial)
            z = Y.new_zeros(nq * npix, (a1 - a0) * B)
            for p0, p1, At in chunks:
                ys = Y[:, ax.offset + a0:ax.offset + a1, p0:p1].permute(2, 3, 1, 0)
                z.addmm_(At, ys.reshape((p1 - p0) * T, (a1 - a0) * B))
            scatter_planes(out, z, ax, qmin, nq, (a0, a1))
            del z

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


    def _use_numba(self, device: torch.device) -> bool:
        return (device.type == "cpu" and self.kernels != "torch"
                and raytrace_numba.available())

    def _numba_arguments(self, views: torch.Tensor | None) -> dict:
        """Arguments of :mod:`.raytrace_numba` shared by the forward and adjoint kernels."""
        import numpy as np

        if self._numpy_elements is None:
            self._numpy_elements = raytrace_numba.pack(self.elements(), *self.data_shape[1:])
        segments = [ax for ax in self._axial if not ax.direct]
        vs = np.arange(self.data_shape[1]) if views is None else views.numpy().astype(np.int64)
        return dict(packed=self._numpy_elements, segments=segments,
                    tan_t=[self._tan_t(ax).numpy() for ax in segments],
                    q_ranges=[self._q_range(ax) for ax in segments], views=vs,
                    vz=self.image_geometry.voxel_size_mm[0],
                    threads=max(1, torch.get_num_threads()))

    def _apply_forward(self, x: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        lead = x.shape[:-3]
        nz, ny, nx = self.image_shape
        S, _, T = self.data_shape
        V = self.data_shape[1] if views is None else len(views)
        X = x.reshape(-1, nz, ny * nx)
        B = X.shape[0]
        out = x.new_zeros(B, S, V, T)
        chunked = self.implementation == "matrix-free"
        fused = chunked and self._has_oblique and self._use_numba(x.device)
        if fused:                             # every oblique segment in one pass
            raytrace_numba.forward_oblique(X=X.detach(), out=out.numpy(),
                                           **self._numba_arguments(views))
        for ax in self._axial:
            if ax.direct:
                A, _ = self.matrix_2d(views, device=x.device, dtype=x.dtype)
                W = ax.weights.to(device=x.device, dtype=x.dtype)
                rhs = torch.einsum("ak,bkp->pab", W, X).reshape(ny * nx, ax.num_axial * B)
            elif chunked:
                if not fused:
                    self._forward_oblique_chunked(X, out, ax, views)
                continue
            else:
                A, _, q = self._oblique_matrices(ax, views, x.device, x.dtype)
                rhs = gather_planes(X, ax, int(q[0]), int(q[1]))
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
        chunked = self.implementation == "matrix-free"
        fused = chunked and self._has_oblique and self._use_numba(y.device)
        if fused:                             # every oblique segment in one pass
            raytrace_numba.adjoint_oblique(Y=Y.detach().contiguous().numpy(), out=out,
                                           **self._numba_arguments(views))
        for ax in self._axial:
            if not ax.direct and chunked:
                if not fused:
                    self._adjoint_oblique_chunked(Y, out, ax, views)
                continue
            ys = Y[:, ax.offset:ax.offset + ax.num_axial].permute(2, 3, 1, 0)
            ys = ys.reshape(V * T, ax.num_axial * B)
            if ax.direct:
                _, At = self.matrix_2d(views, device=y.device, dtype=y.dtype)
                z = (At @ ys).reshape(ny * nx, ax.num_axial, B)
                W = ax.weights.to(device=y.device, dtype=y.dtype)
                out += torch.einsum("ak,pab->bkp", W, z)
            else:
                _, At, q = self._oblique_matrices(ax, views, y.device, y.dtype)
                scatter_planes(out, At @ ys, ax, int(q[0]), int(q[1]))
        return out.reshape(*lead, nz, ny, nx)


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
