"""The physics contract every backend (embedded PyTorch, SIRF, STIR) implements.

The model is SIRF's ``AcquisitionModel``::

    ybar = m * (G P x) + b

with ``x`` an image ``[..., z, y, x]``, ``P`` an image-space PSF, ``G`` the geometric projector,
``m`` the multiplicative factors (attenuation x normalisation) and ``b`` the additive background
(randoms + scatter) in sinogram space ``[..., sinogram, view, tangential]``.  Leading batch
dimensions are allowed on both sides; device and dtype follow the input.

Subsets are view-based, as in STIR, and *immutable objects* (the idea of parallelproj's
``SubsetOperator``): :class:`ViewSubset` ``(k, K)`` is subset ``k`` of ``K``, holding the views
``v`` with ``v % K == k`` (toolkit backends use STIR's own view sets of the same ``(k, K)``,
:mod:`sirf_diffusion.integrations.subsets`).  Every method that takes ``subset`` accepts a
:class:`ViewSubset`, an integer ``k`` (subset ``k`` of the fixed partition ``num_subsets`` given
at construction) or ``None`` (all views); data passed with a subset hold only its views.  Nothing
is switched on the physics object: :meth:`PETPhysics.subsets` lists the ``K`` subsets of any
partition, and caches (sensitivities, view sets) are keyed by ``(k, K)``.

A backend implements :meth:`PETPhysics._forward_linear` and :meth:`PETPhysics._adjoint` on view
indices (or, when its toolkit projects whole subsets, :meth:`PETPhysics._forward_subset` and
:meth:`PETPhysics._adjoint_subset`); everything else (affine forward, subsets, sensitivities,
self-checks) comes from the base class.
"""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass
from typing import Any, Union

import torch

__all__ = ["PETPhysics", "DenseMatrixPhysics", "ViewSubset", "Subset", "partition",
           "as_view_subset", "check_num_subsets", "adjointness_test", "operator_norm"]


@dataclass(frozen=True)
class ViewSubset:
    """Subset ``index`` of ``num_subsets`` view subsets (STIR: views ``v % K == k``).

    Immutable and hashable, so it can key caches; ``cost`` is its share of a full-data
    projection (``1 / K``).
    """

    index: int
    num_subsets: int

    def __post_init__(self) -> None:
        for name in ("index", "num_subsets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"ViewSubset.{name} must be an int, got {v!r}")
        if self.num_subsets < 1:
            raise ValueError(f"num_subsets must be >= 1, got {self.num_subsets}")
        if not 0 <= self.index < self.num_subsets:
            raise ValueError(f"subset {self.index} out of range for {self.num_subsets} subsets")

    @property
    def cost(self) -> float:
        """Share of a full-data projection: ``1 / num_subsets``."""
        return 1.0 / self.num_subsets

    def views(self, num_views: int) -> torch.Tensor:
        """View indices ``v % K == k`` among ``num_views`` views."""
        return torch.arange(self.index, int(num_views), self.num_subsets)


#: What the ``subset`` argument of the physics and likelihood methods accepts.
Subset = Union[ViewSubset, int, None]


def check_num_subsets(num_subsets: object, num_views: int | None) -> int:
    """``num_subsets`` as an int in ``[1, num_views]`` (no upper bound when ``num_views`` is
    ``None``), else ``ValueError`` naming it."""
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int):
        raise ValueError(f"num_subsets must be a positive integer, got {num_subsets!r}")
    upper = "" if num_views is None else f" and the number of views ({num_views})"
    if num_subsets < 1 or (num_views is not None and num_subsets > num_views):
        raise ValueError(f"num_subsets={num_subsets} must be between 1{upper}")
    return int(num_subsets)


def partition(num_subsets: int, num_views: int | None) -> tuple[ViewSubset, ...]:
    """The ``K = num_subsets`` subsets of a partition of ``num_views`` views (validated)."""
    K = check_num_subsets(num_subsets, num_views)
    return tuple(ViewSubset(k, K) for k in range(K))


def as_view_subset(subset: Subset, num_subsets: int, num_views: int | None
                   ) -> ViewSubset | None:
    """``subset`` as a :class:`ViewSubset`, or ``None`` for all views (a subset of a one-subset
    partition is all views too).  An integer is an index into the partition of ``num_subsets``;
    ``num_views`` (when known) bounds ``K``."""
    if subset is None:
        return None
    if isinstance(subset, ViewSubset):
        check_num_subsets(subset.num_subsets, num_views)
        sub = subset
    elif isinstance(subset, int) and not isinstance(subset, bool):
        if not 0 <= subset < num_subsets:
            raise ValueError(f"subset {subset} out of range for {num_subsets} subsets")
        sub = ViewSubset(int(subset), num_subsets)
    else:
        raise TypeError(f"subset must be a ViewSubset, an int or None, got {subset!r}")
    return None if sub.num_subsets == 1 else sub


class PETPhysics(abc.ABC):
    """Abstract PET acquisition model ``ybar = m * (G P x) + b``.

    Attributes
    ----------
    image_shape
        ``(nz, ny, nx)``.
    voxel_size_mm
        ``(vz, vy, vx)``.
    data_shape
        ``(num_sinograms, num_views, num_tangential)``.
    """

    image_shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    data_shape: tuple[int, int, int]

    def __init__(self, num_subsets: int = 1) -> None:
        self._num_subsets = check_num_subsets(num_subsets, self.data_shape[1])
        self._sens_cache: dict[Any, torch.Tensor] = {}

    # ------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _forward_linear(self, x: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """``m * G P x`` on the given views (``None``: all), ``x`` of shape ``[B, z, y, x]``."""

    @abc.abstractmethod
    def _adjoint(self, y: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """``P^T G^T (m * y)`` with ``y`` of shape ``[B, sinogram, len(views), tangential]``."""

    @property
    @abc.abstractmethod
    def additive_term(self) -> torch.Tensor | None:
        """``b`` over all views, shape ``data_shape`` (``None`` means zero)."""

    def _forward_subset(self, x: torch.Tensor, subset: ViewSubset | None) -> torch.Tensor:
        """``m * G P x`` on the views of ``subset`` (``x``: ``[B, z, y, x]``); by default
        :meth:`_forward_linear` on the subset's view indices."""
        views = None if subset is None else self._views_of(subset).to(x.device)
        return self._forward_linear(x, views)

    def _adjoint_subset(self, y: torch.Tensor, subset: ViewSubset | None) -> torch.Tensor:
        """Adjoint of :meth:`_forward_subset`; by default :meth:`_adjoint` on the view indices."""
        views = None if subset is None else self._views_of(subset).to(y.device)
        return self._adjoint(y, views)

    def _views_of(self, subset: ViewSubset) -> torch.Tensor:
        """View indices of ``subset`` (STIR's rule ``v % K == k``)."""
        return subset.views(self.data_shape[1])

    # ------------------------------------------------------------ subsets
    @property
    def num_subsets(self) -> int:
        """``K`` of the fixed partition that integer subset indices refer to."""
        return self._num_subsets

    def set_num_subsets(self, num_subsets: int) -> None:
        """Deprecated: pass :class:`ViewSubset` objects (``physics.subsets(K)``) instead."""
        warnings.warn("PETPhysics.set_num_subsets is deprecated: pass ViewSubset(k, K) objects "
                      "(physics.subsets(K) or likelihood.subsets(K)) as the subset argument, or "
                      "give num_subsets at construction", DeprecationWarning, stacklevel=2)
        self._num_subsets = check_num_subsets(num_subsets, self.data_shape[1])

    def subsets(self, num_subsets: int) -> tuple[ViewSubset, ...]:
        """The ``K = num_subsets`` subsets of a partition of the views (validated)."""
        return partition(num_subsets, self.data_shape[1])

    def resolve_subset(self, subset: Subset) -> ViewSubset | None:
        """``subset`` as a :class:`ViewSubset` (``None``: all views; an integer indexes the
        partition ``num_subsets`` given at construction), see :func:`as_view_subset`."""
        return as_view_subset(subset, self._num_subsets, self.data_shape[1])

    def subset_views(self, subset: Subset) -> torch.Tensor | None:
        """View indices of ``subset`` (STIR: ``v % K == k``); ``None`` for all."""
        sub = self.resolve_subset(subset)
        return None if sub is None else self._views_of(sub)

    def subset_data(self, y: torch.Tensor, subset: Subset) -> torch.Tensor:
        """The views of ``subset`` from full data ``y`` (``[..., sinogram, view, tangential]``)."""
        self._check_data(y, subset=None)
        views = self.subset_views(subset)
        return y if views is None else y.index_select(-2, views.to(y.device))

    # ------------------------------------------------------------ public maps
    def forward_linear(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """Linear part ``m * G P x`` (on the views of ``subset``)."""
        xb, lead = self._flatten(x, self.image_shape, "image")
        y = self._forward_subset(xb, self.resolve_subset(subset))
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """Affine forward model ``m * G P x + b`` (expected data, ``ybar``)."""
        y = self.forward_linear(x, subset)
        b = self.additive_term
        if b is not None:
            y = y + self.subset_data(b.to(device=y.device, dtype=y.dtype), subset)
        return y

    def adjoint(self, y: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        """Exact adjoint of :meth:`forward_linear`: ``P^T G^T (m * y)``."""
        self._check_data(y, subset)
        yb, lead = self._flatten(y, y.shape[-3:], "sinogram")
        x = self._adjoint_subset(yb, self.resolve_subset(subset))
        return x.reshape(*lead, *x.shape[1:])

    backward = adjoint

    def sensitivity(self, subset: Subset = None, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """Sensitivity image ``P^T G^T m`` = adjoint of ones on the views of ``subset``
        (cached per ``(k, K)``, dtype and device)."""
        sub = self.resolve_subset(subset)
        key = (None if sub is None else (sub.index, sub.num_subsets), dtype, str(device))
        if key not in self._sens_cache:
            shape = list(self.data_shape)
            if sub is not None:
                shape[1] = len(self._views_of(sub))
            ones = torch.ones(shape, dtype=dtype, device=device)
            self._sens_cache[key] = self.adjoint(ones, sub)
        return self._sens_cache[key]

    # ------------------------------------------------------------ checks
    def _flatten(self, t: torch.Tensor, core: tuple[int, ...], name: str):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 3 or tuple(t.shape[-3:]) != tuple(core):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected (..., "
                             f"{', '.join(map(str, core))})")
        lead = t.shape[:-3]
        return t.reshape(-1, *t.shape[-3:]), lead

    def _check_data(self, y: torch.Tensor, subset: Subset) -> None:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"sinogram must be a torch.Tensor, got {type(y).__name__}")
        sub = self.resolve_subset(subset)
        nv = self.data_shape[1] if sub is None else len(self._views_of(sub))
        expected = (self.data_shape[0], nv, self.data_shape[2])
        if y.ndim < 3 or tuple(y.shape[-3:]) != expected:
            what = "all views" if sub is None else f"subset {sub.index} of {sub.num_subsets}"
            raise ValueError(f"sinogram has shape {tuple(y.shape)}, expected (..., "
                             f"{', '.join(map(str, expected))}) for {what}")


class DenseMatrixPhysics(PETPhysics):
    """A small PET model with an explicit system matrix (for tests and analytic oracles).

    Parameters
    ----------
    matrix
        ``A`` of shape ``(num_sinograms * num_views * num_tangential, nz * ny * nx)``; the linear
        model is ``m * (A x)`` with ``m`` folded in by the caller if wanted.
    image_shape, data_shape
        Shapes the flat vectors are viewed as.
    additive
        Optional additive term ``b`` of shape ``data_shape``.
    """

    def __init__(self, matrix: torch.Tensor, image_shape: tuple[int, int, int],
                 data_shape: tuple[int, int, int], additive: torch.Tensor | None = None,
                 voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 num_subsets: int = 1) -> None:
        n_data = data_shape[0] * data_shape[1] * data_shape[2]
        n_img = image_shape[0] * image_shape[1] * image_shape[2]
        if tuple(matrix.shape) != (n_data, n_img):
            raise ValueError(f"matrix has shape {tuple(matrix.shape)}, expected {(n_data, n_img)}")
        self.image_shape = tuple(image_shape)
        self.data_shape = tuple(data_shape)
        self.voxel_size_mm = tuple(voxel_size_mm)
        self.matrix = matrix
        self._additive = additive
        super().__init__(num_subsets)

    @property
    def additive_term(self) -> torch.Tensor | None:
        return self._additive

    def _rows(self, A: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        A = A.reshape(*self.data_shape, -1)
        if views is not None:
            A = A.index_select(1, views.to(A.device))
        return A

    def _forward_linear(self, x, views):
        A = self._rows(self.matrix.to(device=x.device, dtype=x.dtype), views)
        return torch.einsum("svtn,bn->bsvt", A, x.reshape(x.shape[0], -1))

    def _adjoint(self, y, views):
        A = self._rows(self.matrix.to(device=y.device, dtype=y.dtype), views)
        return torch.einsum("svtn,bsvt->bn", A, y).reshape(y.shape[0], *self.image_shape)


def adjointness_test(physics: PETPhysics, *, subset: Subset = None,
                     dtype: torch.dtype = torch.float64, device: str = "cpu",
                     generator: torch.Generator | None = None) -> float:
    """Relative mismatch ``|<Ax, y> - <x, A^T y>| / max(|<Ax,y>|, |<x,A^T y>|)`` for random x, y."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.rand(physics.image_shape, generator=g, dtype=dtype).to(device)
    yshape = list(physics.data_shape)
    views = physics.subset_views(subset)
    if views is not None:
        yshape[1] = len(views)
    y = torch.rand(yshape, generator=g, dtype=dtype).to(device)
    lhs = (physics.forward_linear(x, subset) * y).sum()
    rhs = (x * physics.adjoint(y, subset)).sum()
    return float((lhs - rhs).abs() / torch.maximum(lhs.abs(), rhs.abs()))


def operator_norm(physics: PETPhysics, *, num_iterations: int = 20,
                  dtype: torch.dtype = torch.float64,
                  generator: torch.Generator | None = None) -> float:
    """Largest singular value of the linear part, by power iteration on ``A^T A``."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.rand(physics.image_shape, generator=g, dtype=dtype)
    x /= x.norm()
    norm = 0.0
    for _ in range(num_iterations):
        z = physics.adjoint(physics.forward_linear(x))
        norm = float(z.norm())
        if norm == 0:
            return 0.0
        x = z / norm
    return norm ** 0.5
