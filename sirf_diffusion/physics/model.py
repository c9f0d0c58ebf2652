"""The embedded PyTorch acquisition model, SIRF's ``AcquisitionModelUsingRayTracingMatrix``.

.. math::

    \\bar y = m \\odot (G P x) + b

with ``P`` an optional Gaussian image-space PSF (:mod:`.psf`), ``G`` the STIR-compatible
ray-tracing projector (:mod:`.projector`), ``m`` multiplicative factors (attenuation
(:mod:`.attenuation`) times normalisation) and ``b`` the additive background (randoms + scatter).
The adjoint of the linear part is ``P^T G^T (m \\odot y)``.  Subsets are STIR's view subsets
(``v % num_subsets == k``), inherited from :class:`~sirf_diffusion.physics.base.PETPhysics`.
"""

from __future__ import annotations

import copy

import torch

from .base import PETPhysics
from .geometry import ImageGeometry, SinogramGeometry
from .projector import RayTracingProjector, projector_for
from .psf import GaussianPSF

__all__ = ["AcquisitionModel"]


def _check_sinogram_term(t: torch.Tensor | None, geom: SinogramGeometry,
                         name: str) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor or None")
    if tuple(t.shape) != geom.shape:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}, but the sinogram geometry (span {geom.span}, "
            f"max ring difference {geom.max_ring_difference}, {geom.num_views} views, "
            f"{geom.num_tangential} tangential bins) has shape {geom.shape} = "
            "(sinogram, view, tangential)")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (t < 0).any():
        raise ValueError(f"{name} contains negative values (min {float(t.min()):.4g})")
    return t


class AcquisitionModel(PETPhysics):
    """PET acquisition model ``ybar = m * (G P x) + b`` with the embedded projector.

    Parameters
    ----------
    sinogram_geometry, image_geometry
        Sinogram layout and voxel grid.
    multiplicative
        ``m`` of shape ``sinogram_geometry.shape`` (e.g. attenuation x normalisation), or
        ``None`` for ones.
    additive
        ``b`` of shape ``sinogram_geometry.shape`` (randoms + scatter), or ``None`` for zero.
    psf_fwhm_mm
        Gaussian image-space PSF (STIR's ``SeparableGaussianImageFilter``): one FWHM for all
        axes, ``(transaxial, axial)``, or ``None`` / ``0``.  In-plane only on a single-plane
        image (:mod:`.psf`).
    num_rays, restrict_to_cylindrical_fov
        Projector settings (STIR ``num_tangential_LORs``, ``restrict_to_cylindrical_FOV``).
    num_subsets
        Number of view subsets.
    projector
        An existing :class:`RayTracingProjector` for these geometries (shares its cached
        matrices); ``num_rays`` / ``restrict_to_cylindrical_fov`` are then taken from it.

    Examples
    --------
    >>> geom = SinogramGeometry.two_d("mMR")                          # doctest: +SKIP
    >>> img = ImageGeometry((1, 128, 128), (4.0625, 2.08626, 2.08626))
    >>> model = AcquisitionModel(geom, img, psf_fwhm_mm=4.5, num_subsets=4)
    >>> ybar = model.forward(x, subset=0)
    """

    def __init__(self, sinogram_geometry: SinogramGeometry, image_geometry: ImageGeometry, *,
                 multiplicative: torch.Tensor | None = None,
                 additive: torch.Tensor | None = None,
                 psf_fwhm_mm: float | tuple[float, float] | None = None,
                 num_rays: int = 1, restrict_to_cylindrical_fov: bool = True,
                 num_subsets: int = 1, projector: RayTracingProjector | None = None) -> None:
        self.projector = projector_for(
            sinogram_geometry, image_geometry, num_rays=num_rays,
            restrict_to_cylindrical_fov=restrict_to_cylindrical_fov, projector=projector,
            what="acquisition model's sinogram / image geometries")
        self.sinogram_geometry = sinogram_geometry
        self.image_geometry = image_geometry
        self.image_shape = image_geometry.shape
        self.voxel_size_mm = image_geometry.voxel_size_mm
        self.data_shape = sinogram_geometry.shape
        self.psf: GaussianPSF | None = GaussianPSF.from_fwhm(image_geometry, psf_fwhm_mm)
        self._m = _check_sinogram_term(multiplicative, sinogram_geometry, "multiplicative term")
        self._b = _check_sinogram_term(additive, sinogram_geometry, "additive term")
        super().__init__(num_subsets)

    # ------------------------------------------------------------ terms
    @property
    def multiplicative_term(self) -> torch.Tensor | None:
        """``m`` over all views (``None`` means ones)."""
        return self._m

    @property
    def additive_term(self) -> torch.Tensor | None:
        """``b`` over all views (``None`` means zero)."""
        return self._b

    def with_additive(self, additive: torch.Tensor | None) -> "AcquisitionModel":
        """A copy with another ``b``, sharing the projector and its cached matrices."""
        new = copy.copy(self)
        new._b = _check_sinogram_term(additive, self.sinogram_geometry, "additive term")
        new._sens_cache = dict(self._sens_cache)     # sensitivities do not depend on b
        return new

    def with_multiplicative(self, multiplicative: torch.Tensor | None) -> "AcquisitionModel":
        """A copy with another ``m``, sharing the projector and its cached matrices."""
        new = copy.copy(self)
        new._m = _check_sinogram_term(multiplicative, self.sinogram_geometry, "multiplicative term")
        new._sens_cache = {}
        return new

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "AcquisitionModel":
        """A copy with ``m`` and ``b`` moved to ``device`` / ``dtype`` (matrices follow inputs)."""
        new = copy.copy(self)
        new._m = None if self._m is None else self._m.to(device=device, dtype=dtype)
        new._b = None if self._b is None else self._b.to(device=device, dtype=dtype)
        new._sens_cache = {}
        return new

    def _m_views(self, like: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor | None:
        if self._m is None:
            return None
        m = self._m.to(device=like.device, dtype=like.dtype)
        return m if views is None else m.index_select(1, views.to(m.device))

    # ------------------------------------------------------------ PETPhysics
    def _forward_linear(self, x: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        if self.psf is not None:
            x = self.psf.forward(x)
        y = self.projector.forward(x, None if views is None else views.cpu())
        m = self._m_views(y, views)
        return y if m is None else y * m

    def _adjoint(self, y: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        m = self._m_views(y, views)
        if m is not None:
            y = y * m
        x = self.projector.adjoint(y, None if views is None else views.cpu())
        return x if self.psf is None else self.psf.adjoint(x)

    def __repr__(self) -> str:
        g = self.sinogram_geometry
        psf = None if self.psf is None else self.psf.fwhms_zyx_mm
        return (f"AcquisitionModel(scanner={g.scanner.name!r}, data_shape={self.data_shape}, "
                f"image_shape={self.image_shape}, num_rays={self.projector.num_rays}, "
                f"psf_fwhm_zyx_mm={psf}, "
                f"multiplicative={self._m is not None}, additive={self._b is not None}, "
                f"num_subsets={self.num_subsets})")
