"""Image-space Gaussian point-spread function (resolution model ``P`` of ``ybar = m G P x + b``).

The PSF is a separable, shift-invariant Gaussian blur with full width at half maximum ``FWHM``
(mm) transaxially (x and y) and axially (z), ``sigma = FWHM / (2 sqrt(2 ln 2))``.  Each 1D kernel
integrates the Gaussian over the voxel (Alessio et al. 2006, IEEE TMI 25:828 use the same
image-space model; STIR's ``SeparableGaussianImageFilter`` samples it instead):

.. math::

    w_k \\propto \\Phi\\left(\\frac{(k + 1/2) h}{\\sigma}\\right)
               - \\Phi\\left(\\frac{(k - 1/2) h}{\\sigma}\\right),
    \\qquad |k| \\le \\lceil \\mathrm{truncate}\\,\\sigma / h \\rceil,

normalised to ``sum_k w_k = 1`` (counts are preserved away from the image edges).  With zero
padding at the edges and a symmetric kernel the blur matrix is symmetric, so ``P^T = P``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .geometry import ImageGeometry

__all__ = ["GaussianPSF", "gaussian_kernel_1d", "fwhm_to_sigma"]


def fwhm_to_sigma(fwhm: float) -> float:
    """``sigma = FWHM / (2 sqrt(2 ln 2))``."""
    return float(fwhm) / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def gaussian_kernel_1d(fwhm_mm: float, voxel_mm: float, *, truncate: float = 3.0,
                       dtype: torch.dtype = torch.float64,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Voxel-integrated, normalised 1D Gaussian kernel (odd length; ``[1.]`` for FWHM 0).

    Parameters
    ----------
    fwhm_mm
        Full width at half maximum (mm), ``>= 0``.
    voxel_mm
        Voxel size along this axis (mm), ``> 0``.
    truncate
        Half-width of the kernel in units of ``sigma``.
    """
    if not math.isfinite(fwhm_mm) or fwhm_mm < 0:
        raise ValueError(f"PSF FWHM must be finite and >= 0 mm, got {fwhm_mm}")
    if not voxel_mm > 0:
        raise ValueError(f"voxel size must be > 0 mm, got {voxel_mm}")
    if fwhm_mm == 0:
        return torch.ones(1, dtype=dtype, device=device)
    sigma = fwhm_to_sigma(fwhm_mm) / voxel_mm           # in voxels
    radius = max(1, int(math.ceil(truncate * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    cdf = lambda u: 0.5 * (1.0 + torch.erf(u / (sigma * math.sqrt(2.0))))  # noqa: E731
    w = cdf(k + 0.5) - cdf(k - 0.5)
    return (w / w.sum()).to(dtype=dtype, device=device)


class GaussianPSF:
    """Separable Gaussian image-space PSF on an image grid.

    Parameters
    ----------
    image_geometry
        The voxel grid (gives the voxel sizes).
    fwhm_transaxial_mm
        FWHM in x and y (mm).
    fwhm_axial_mm
        FWHM in z (mm); ``0`` for no axial blur.
    truncate
        Kernel half-width in units of sigma.

    Examples
    --------
    >>> psf = GaussianPSF(ImageGeometry((1, 64, 64), (2., 2., 2.)), 4.5)   # doctest: +SKIP
    >>> blurred = psf(image)                                                 # doctest: +SKIP
    """

    def __init__(self, image_geometry: ImageGeometry, fwhm_transaxial_mm: float,
                 fwhm_axial_mm: float = 0.0, *, truncate: float = 3.0) -> None:
        self.image_geometry = image_geometry
        self.fwhm_transaxial_mm = float(fwhm_transaxial_mm)
        self.fwhm_axial_mm = float(fwhm_axial_mm)
        self.truncate = float(truncate)
        vz, vy, vx = image_geometry.voxel_size_mm
        # validate now (raises on bad input); kernels are rebuilt per device/dtype on use
        self._kernels64 = (
            gaussian_kernel_1d(self.fwhm_axial_mm, vz, truncate=truncate),
            gaussian_kernel_1d(self.fwhm_transaxial_mm, vy, truncate=truncate),
            gaussian_kernel_1d(self.fwhm_transaxial_mm, vx, truncate=truncate),
        )

    @property
    def is_identity(self) -> bool:
        return all(len(k) == 1 for k in self._kernels64)

    def kernels(self, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
        """The (z, y, x) 1D kernels on ``device`` / ``dtype``."""
        return tuple(k.to(device=device, dtype=dtype) for k in self._kernels64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``P x`` for an image ``[..., z, y, x]`` (device and dtype follow ``x``)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("PSF input must be a floating-point torch.Tensor")
        shape = tuple(self.image_geometry.shape)
        if x.ndim < 3 or tuple(x.shape[-3:]) != shape:
            raise ValueError(f"image has shape {tuple(x.shape)}, expected (..., "
                             f"{', '.join(map(str, shape))}) for the PSF's image geometry")
        if self.is_identity:
            return x
        lead = x.shape[:-3]
        u = x.reshape(-1, 1, *shape)
        for axis, k in enumerate(self.kernels(x.device, x.dtype)):
            if len(k) == 1:
                continue
            view = [1, 1, 1, 1, 1]
            view[2 + axis] = len(k)
            pad = [0, 0, 0]
            pad[axis] = len(k) // 2
            u = F.conv3d(u, k.view(view), padding=tuple(pad))
        return u.reshape(*lead, *shape)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """``P^T x = P x`` (symmetric kernel, zero padding)."""
        return self.forward(x)

    __call__ = forward
