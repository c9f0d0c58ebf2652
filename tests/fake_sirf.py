"""A small stand-in for ``sirf.STIR`` with SIRF's calling conventions, over a dense matrix.

Used by the unit tests of :mod:`sirf_diffusion.integrations.sirf` where SIRF is absent.  It copies
the behaviours the adapters depend on, not SIRF's internals:

* ``ImageData`` arrays ``(z, y, x)`` float32; ``AcquisitionData`` arrays
  ``(TOF bin = 1, sinogram, view, tangential)``; ``get_uniform_copy(value=0)``; ``fill``;
  ``asarray``-less (only ``as_array``, like SIRF < 3.9);
* ``AcquisitionModel``: ``y = S (G x + a) + b``; ``forward(x, subset_num, num_subsets, out)``
  projects only the views of the subset (zeros elsewhere, the constant term on all views);
  methods with ``out=`` return ``None``; ``get_linear_acquisition_model``;
  ``get_constant_term``; ``direct`` refuses affine models;
* subsets grouped like STIR's symmetries, *not* ``v % K == k``: views ``v`` and ``n - 1 - v``
  always share a subset (subset of ``v`` is ``min(v, n - 1 - v) % K``);
* ``make_Poisson_loglikelihood``: ``value``, ``gradient(x, subset=-1)``,
  ``get_subset_sensitivity``, ``set_num_subsets`` (takes effect at ``set_up``).
"""

from __future__ import annotations

import numpy as np


class _Container:
    def __init__(self, arr: np.ndarray) -> None:
        self._arr = np.array(arr, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._arr.shape

    def as_array(self) -> np.ndarray:
        return self._arr.copy()

    def fill(self, value) -> None:
        if isinstance(value, _Container):
            value = value._arr
        if np.isscalar(value):
            self._arr[...] = value
            return
        value = np.asarray(value, dtype=np.float32)
        if value.shape != self._arr.shape:
            raise ValueError(f"fill: shape {value.shape} != {self._arr.shape}")
        self._arr[...] = value

    def get_uniform_copy(self, value: float = 0.0):
        return type(self)._like(self, np.full_like(self._arr, value))

    def clone(self):
        return type(self)._like(self, self._arr)

    def norm(self) -> float:
        return float(np.linalg.norm(self._arr))


class ImageData(_Container):
    def __init__(self, arr: np.ndarray, voxel_sizes=(2.0, 2.0, 2.0)) -> None:
        super().__init__(arr)
        self._vox = tuple(float(v) for v in voxel_sizes)

    @staticmethod
    def _like(other: "ImageData", arr: np.ndarray) -> "ImageData":
        return ImageData(arr, other._vox)

    def dimensions(self) -> tuple[int, int, int]:
        return self._arr.shape

    def voxel_sizes(self) -> tuple[float, float, float]:
        return self._vox


class AcquisitionData(_Container):
    def __init__(self, arr: np.ndarray) -> None:
        arr = np.asarray(arr)
        super().__init__(arr if arr.ndim == 4 else arr[None])

    @staticmethod
    def _like(other: "AcquisitionData", arr: np.ndarray) -> "AcquisitionData":
        return AcquisitionData(arr)


def subset_views(num_views: int, subset: int, num_subsets: int) -> np.ndarray:
    v = np.arange(num_views)
    return v[np.minimum(v, num_views - 1 - v) % num_subsets == subset]


class AcquisitionModel:
    """``y = S (G x + a) + b`` with ``G`` a dense matrix ``[s*v*t, z*y*x]``."""

    def __init__(self, matrix: np.ndarray, data_shape, *, linear_only: bool = False) -> None:
        self.G = np.asarray(matrix, dtype=np.float64)
        self.data_shape = tuple(data_shape)
        self.S = None
        self.a = None
        self.b = None
        self.acq_templ = None
        self.img_templ = None
        self._linear_only = linear_only

    def set_up(self, acq_templ, img_templ) -> None:
        self.acq_templ, self.img_templ = acq_templ, img_templ

    def set_acquisition_sensitivity(self, s: AcquisitionData) -> None:
        self.S = s.as_array()[0].astype(np.float64)

    def set_additive_term(self, a: AcquisitionData) -> None:
        self.a = a.as_array()[0].astype(np.float64)

    def set_background_term(self, b: AcquisitionData) -> None:
        self.b = b.as_array()[0].astype(np.float64)

    def _mask(self, k: int, K: int) -> np.ndarray:
        m = np.zeros(self.data_shape, dtype=bool)
        m[:, subset_views(self.data_shape[1], k, K), :] = True
        return m

    def _linear(self, x: np.ndarray) -> np.ndarray:
        y = (self.G @ x.astype(np.float64).ravel()).reshape(self.data_shape)
        return y if self.S is None else self.S * y

    def constant(self) -> np.ndarray:
        c = np.zeros(self.data_shape)
        if self._linear_only:
            return c
        if self.a is not None:
            c += self.a if self.S is None else self.S * self.a
        if self.b is not None:
            c += self.b
        return c

    def forward(self, image: ImageData, subset_num: int = 0, num_subsets: int = 1, out=None):
        y = np.where(self._mask(subset_num, num_subsets), self._linear(image.as_array()), 0.0)
        y = y + self.constant()
        if out is None:
            return AcquisitionData(y[None])
        out.fill(y[None].astype(np.float32))
        return None

    def backward(self, ad: AcquisitionData, subset_num: int = 0, num_subsets: int = 1, out=None):
        y = np.where(self._mask(subset_num, num_subsets), ad.as_array()[0], 0.0)
        if self.S is not None:
            y = self.S * y
        x = (self.G.T @ y.ravel()).reshape(self.img_templ.shape)
        img = self.img_templ.get_uniform_copy(0.0)
        img.fill(x.astype(np.float32))
        if out is None:
            return img
        out.fill(img)
        return None

    def get_linear_acquisition_model(self) -> "AcquisitionModel":
        lin = AcquisitionModel(self.G, self.data_shape, linear_only=True)
        lin.S, lin.acq_templ, lin.img_templ = self.S, self.acq_templ, self.img_templ
        return lin

    def get_constant_term(self) -> AcquisitionData:
        return AcquisitionData(self.constant()[None])

    def is_linear(self) -> bool:
        return not np.any(self.constant())

    def direct(self, image, out=None):
        if not self.is_linear():
            raise RuntimeError("AcquisitionModel is not linear")
        return self.forward(image, out=out)


class PoissonLogLikelihood:
    """``make_Poisson_loglikelihood``: SIRF's objective over the model above."""

    def __init__(self, acq_data: AcquisitionData) -> None:
        self.y = acq_data.as_array()[0].astype(np.float64)
        self.am: AcquisitionModel | None = None
        self._pending = 1
        self.num_subsets = 1
        self.setups = 0

    def set_acquisition_model(self, am: AcquisitionModel) -> None:
        self.am = am

    def set_num_subsets(self, n: int) -> None:
        self._pending = int(n)

    def get_num_subsets(self) -> int:
        return self.num_subsets

    def set_up(self, image: ImageData) -> None:
        self.num_subsets = self._pending
        self.setups += 1

    def _ybar(self, x: np.ndarray) -> np.ndarray:
        return self.am._linear(x) + self.am.constant()

    def value(self, image: ImageData) -> float:
        ybar = self._ybar(image.as_array())
        return float(np.sum(np.where(self.y > 0, self.y * np.log(np.maximum(ybar, 1e-30)), 0.0)
                            - ybar))

    __call__ = value

    def gradient(self, image: ImageData, subset: int = -1, out=None):
        ybar = self._ybar(image.as_array())
        r = np.where(self.y > 0, self.y / np.maximum(ybar, 1e-30), 0.0) - 1.0
        if subset >= 0:
            r = np.where(self.am._mask(subset, self.num_subsets), r, 0.0)
        g = self.am.backward(AcquisitionData(r[None]))
        if out is None:
            return g
        out.fill(g)
        return None

    def get_subset_sensitivity(self, subset: int) -> ImageData:
        ones = np.where(self.am._mask(subset, self.num_subsets), 1.0, 0.0)
        return self.am.backward(AcquisitionData(ones[None]))
