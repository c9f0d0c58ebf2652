"""The physics contract every backend (embedded PyTorch, SIRF, STIR) implements.

The model is SIRF's ``AcquisitionModel``::

    ybar = m * (G P x) + b

with ``x`` an image ``[..., z, y, x]``, ``P`` an image-space PSF, ``G`` the geometric projector,
``m`` the multiplicative factors (attenuation x normalisation) and ``b`` the additive background
(randoms + scatter) in sinogram space ``[..., sinogram, view, tangential]``.  Leading batch
dimensions are allowed on both sides; device and dtype follow the input.

Subsets are view-based, as in STIR: subset ``k`` of ``K`` holds the views ``v`` with
``v % K == k``.  Every method that takes ``subset`` works on the views of that subset only
(``subset=None``: all views); data passed with a subset has only those views.

A backend implements :meth:`PETPhysics._forward_linear` and :meth:`PETPhysics._adjoint`;
everything else (affine forward, subsets, sensitivities, self-checks) comes from the base class.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

__all__ = ["PETPhysics", "DenseMatrixPhysics", "adjointness_test", "operator_norm"]


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
        self._num_subsets = 1
        self._sens_cache: dict[Any, torch.Tensor] = {}
        self.set_num_subsets(num_subsets)

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

    # ------------------------------------------------------------ subsets
    @property
    def num_subsets(self) -> int:
        return self._num_subsets

    def set_num_subsets(self, num_subsets: int) -> None:
        num_subsets = int(num_subsets)
        if not 1 <= num_subsets <= self.data_shape[1]:
            raise ValueError(
                f"num_subsets={num_subsets} must be between 1 and the number of views "
                f"({self.data_shape[1]})")
        self._num_subsets = num_subsets
        self._sens_cache = {k: v for k, v in self._sens_cache.items() if k[0] is None}

    def subset_views(self, subset: int | None) -> torch.Tensor | None:
        """View indices of ``subset`` (STIR: ``v % num_subsets == subset``); ``None`` for all."""
        if subset is None:
            return None
        if not 0 <= int(subset) < self._num_subsets:
            raise ValueError(f"subset {subset} out of range for {self._num_subsets} subsets")
        return torch.arange(int(subset), self.data_shape[1], self._num_subsets)

    def subset_data(self, y: torch.Tensor, subset: int | None) -> torch.Tensor:
        """The views of ``subset`` from full data ``y`` (``[..., sinogram, view, tangential]``)."""
        self._check_data(y, subset=None)
        views = self.subset_views(subset)
        return y if views is None else y.index_select(-2, views.to(y.device))

    # ------------------------------------------------------------ public maps
    def forward_linear(self, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """Linear part ``m * G P x`` (on the views of ``subset``)."""
        xb, lead = self._flatten(x, self.image_shape, "image")
        views = self.subset_views(subset)
        y = self._forward_linear(xb, None if views is None else views.to(x.device))
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, x: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """Affine forward model ``m * G P x + b`` (expected data, ``ybar``)."""
        y = self.forward_linear(x, subset)
        b = self.additive_term
        if b is not None:
            y = y + self.subset_data(b.to(device=y.device, dtype=y.dtype), subset)
        return y

    def adjoint(self, y: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """Exact adjoint of :meth:`forward_linear`: ``P^T G^T (m * y)``."""
        self._check_data(y, subset)
        yb, lead = self._flatten(y, y.shape[-3:], "sinogram")
        views = self.subset_views(subset)
        x = self._adjoint(yb, None if views is None else views.to(y.device))
        return x.reshape(*lead, *x.shape[1:])

    backward = adjoint

    def sensitivity(self, subset: int | None = None, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """Sensitivity image ``P^T G^T m`` = adjoint of ones on the views of ``subset`` (cached)."""
        key = (subset, self._num_subsets if subset is not None else 0, dtype, str(device))
        if key not in self._sens_cache:
            shape = list(self.data_shape)
            if subset is not None:
                shape[1] = len(self.subset_views(subset))
            ones = torch.ones(shape, dtype=dtype, device=device)
            self._sens_cache[key] = self.adjoint(ones, subset)
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

    def _check_data(self, y: torch.Tensor, subset: int | None) -> None:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"sinogram must be a torch.Tensor, got {type(y).__name__}")
        nv = self.data_shape[1] if subset is None else len(self.subset_views(subset))
        expected = (self.data_shape[0], nv, self.data_shape[2])
        if y.ndim < 3 or tuple(y.shape[-3:]) != expected:
            what = "all views" if subset is None else f"subset {subset} of {self._num_subsets}"
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


def adjointness_test(physics: PETPhysics, *, subset: int | None = None,
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


def operator_norm(physics: PETPhysics, *, num_iterations: int = 20, dtype: torch.dtype = torch.float64,
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
