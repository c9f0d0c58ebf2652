"""Attenuation correction factors from a mu-map, as STIR's ``BinNormalisationFromAttenuationImage``.

.. math::

    a_i = \\exp\\Big(-\\int_{\\mathrm{LOR}_i} \\mu \\,\\mathrm{d}l\\Big)
        = \\exp\\big(-\\tfrac{v_x}{10} (G \\mu)_i\\big)

with ``mu`` in cm^-1, ``G`` the ray-tracing projector (whose line integrals are in units of the x
voxel size ``v_x``, mm), so that ``v_x / 10 * G mu`` is the line integral in cm x cm^-1.  Rays that
miss the object get ``a_i = 1``.  SIRF's ``AcquisitionSensitivityModel(mu, acq_model)`` multiplies
sinograms by these factors.
"""

from __future__ import annotations

import torch

from .geometry import ImageGeometry, SinogramGeometry, check_finite_non_negative
from .projector import RayTracingProjector, projector_for

__all__ = ["attenuation_factors", "line_integrals_cm"]


def _check_mu(mu_map_per_cm: torch.Tensor, image_geometry: ImageGeometry) -> None:
    if not isinstance(mu_map_per_cm, torch.Tensor) or not mu_map_per_cm.is_floating_point():
        raise TypeError("mu map must be a floating-point torch.Tensor (cm^-1)")
    image_geometry.check_image_shape(tuple(mu_map_per_cm.shape), "mu map")
    check_finite_non_negative(mu_map_per_cm, "mu map",
                              "attenuation coefficients (cm^-1) must be >= 0")
    if float(mu_map_per_cm.max()) > 5.0:
        raise ValueError(f"mu map maximum {float(mu_map_per_cm.max()):.4g} is implausible for "
                         "cm^-1 (water is 0.096 cm^-1 at 511 keV); was it given in mm^-1 or HU?")


def line_integrals_cm(mu_map_per_cm: torch.Tensor, image_geometry: ImageGeometry,
                      sinogram_geometry: SinogramGeometry, *, num_rays: int = 1,
                      restrict_to_cylindrical_fov: bool = True,
                      projector: RayTracingProjector | None = None) -> torch.Tensor:
    """``int mu dl`` (dimensionless) for every bin, ``[..., sinogram, view, tangential]``.

    Parameters
    ----------
    mu_map_per_cm
        Linear attenuation coefficients at 511 keV, cm^-1, shape ``[..., z, y, x]``.
    image_geometry, sinogram_geometry
        Grids of the mu-map and of the sinograms.
    num_rays, restrict_to_cylindrical_fov
        Projector settings (ignored when ``projector`` is given).
    projector
        An existing projector with the same geometries, to reuse its cached matrices.
    """
    _check_mu(mu_map_per_cm, image_geometry)
    projector = projector_for(sinogram_geometry, image_geometry, num_rays=num_rays,
                              restrict_to_cylindrical_fov=restrict_to_cylindrical_fov,
                              projector=projector, what="mu map / sinogram geometries")
    vx_cm = image_geometry.voxel_size_mm[2] / 10.0
    return projector.forward(mu_map_per_cm) * vx_cm


def attenuation_factors(mu_map_per_cm: torch.Tensor, image_geometry: ImageGeometry,
                        sinogram_geometry: SinogramGeometry, num_rays: int = 1, *,
                        restrict_to_cylindrical_fov: bool = True,
                        projector: RayTracingProjector | None = None) -> torch.Tensor:
    """Attenuation factors ``exp(-int mu dl)`` in ``(0, 1]`` (see module docstring).

    Use them as the multiplicative term of
    :class:`~sirf_diffusion.physics.model.AcquisitionModel` (times any normalisation).
    """
    return torch.exp(-line_integrals_cm(
        mu_map_per_cm, image_geometry, sinogram_geometry, num_rays=num_rays,
        restrict_to_cylindrical_fov=restrict_to_cylindrical_fov, projector=projector))
