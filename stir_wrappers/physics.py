r"""STIR's projectors (``import stir``) under the package's physics contract.

:class:`STIRPhysics` is ``ybar = m * (G P x) + b`` with ``G`` a STIR projector pair, by default
``ProjectorByBinPairUsingProjMatrixByBin(ProjMatrixByBinUsingRayTracing)`` (the projector SIRF's
``AcquisitionModelUsingRayTracingMatrix`` uses), or Parallelproj's pair when STIR was built with
it.  ``P`` (an optional Gaussian PSF), ``m`` (attenuation x normalisation) and ``b`` (randoms +
scatter) are applied in torch, so STIR does only what it is validated for: the line integrals.
Subset ``k`` of ``K`` (a :class:`~sirf_diffusion.physics.base.ViewSubset`) uses STIR's partial
projections ``forward_project(data, image, k, K)`` / ``back_project(image, data, k, K)`` with
``(k, K)`` taken from the subset, and STIR's view sets (``v % K == k`` plus the views related by
the projector's symmetries; :mod:`sirf_diffusion.integrations.subsets`).

Conversions: :func:`projdata_to_torch` / :func:`fill_projdata` (``ProjData.as_array()`` is
``(TOF bin, sinogram, view, tangential)`` with segments in STIR's order 0, +1, -1, +2, -2 — the
package's sinogram layout), :func:`image_to_torch` / :func:`torch_to_image` (``(z, y, x)``).
:func:`multiplicative_factors` turns any STIR ``BinNormalisation`` (e.g. from a scanner's
normalisation file, or ``BinNormalisationFromAttenuationImage``) into ``m``;
:func:`scatter_estimate` runs STIR's ``ScatterEstimation`` from its parameter file.

``stir`` is imported lazily; without it the functions raise an :class:`ImportError` naming the
install route (:func:`sirf_diffusion.toolkits.require_toolkit`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sirf_diffusion.integrations.containers import float32_tensor, float32_values
from sirf_diffusion.integrations.sirf import acquisition_to_torch
from sirf_diffusion.integrations.subsets import ToolkitSubsets
from sirf_diffusion.io.petric import case_headers
from sirf_diffusion.physics.base import PETPhysics
from sirf_diffusion.toolkits import INSTALL_HINTS, require_toolkit

__all__ = ["STIR_INSTALL_HINT", "require_stir", "STIRPhysics", "projdata_to_torch",
           "fill_projdata", "image_to_torch", "torch_to_image", "multiplicative_factors",
           "scatter_estimate", "stir_case_physics"]

STIR_INSTALL_HINT = INSTALL_HINTS["stir"]


def require_stir() -> Any:
    """Import and return the ``stir`` module, or raise an ImportError naming the install route."""
    return require_toolkit("stir")


# ----------------------------------------------------------------------------- conversions
#: STIR ``ProjData`` as ``[sinogram, view, tangential]`` (non-TOF only):
#: :func:`sirf_diffusion.integrations.sirf.acquisition_to_torch`, which reads SIRF's
#: ``AcquisitionData`` and STIR's ``ProjData`` alike.
projdata_to_torch = acquisition_to_torch


def fill_projdata(projdata: Any, values: torch.Tensor | np.ndarray) -> Any:
    """Write ``[sinogram, view, tangential]`` values into STIR ``ProjData``; returns it."""
    v = float32_values(values)
    n = int(projdata.get_proj_data_info().size_all()) if hasattr(
        projdata.get_proj_data_info(), "size_all") else None
    if n is not None and n != v.size:
        raise ValueError(f"cannot fill projection data of {n} bins with {v.size} values")
    projdata.fill(v.flat)
    return projdata


def image_to_torch(image: Any, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """A STIR image (``FloatVoxelsOnCartesianGrid``) as a ``(z, y, x)`` tensor."""
    return float32_tensor(image.as_array(), dtype=dtype, device=device)


def torch_to_image(values: torch.Tensor | np.ndarray, template: Any) -> Any:
    """A new STIR image like ``template`` holding ``values`` (``(z, y, x)``)."""
    v = float32_values(values)
    shape = tuple(np.asarray(template.as_array()).shape)
    if tuple(v.shape) != shape:
        raise ValueError(f"image values of shape {tuple(v.shape)} do not fit the STIR image of "
                         f"shape {shape}")
    out = template.get_empty_copy()
    out.fill(v.flat)
    return out


def _voxel_sizes(image: Any) -> tuple[float, float, float]:
    g = image.get_grid_spacing()
    return (float(g[1]), float(g[2]), float(g[3]))


def multiplicative_factors(normalisation: Any, template: Any, *,
                           forward_projector: Any = None) -> torch.Tensor:
    """``m`` of a STIR ``BinNormalisation`` on the geometry of ``template`` (``ProjData``).

    STIR's model multiplies the projections by the normalisation's ``undo`` factors, so
    ``m = undo(1)``.  A normalisation that forward projects (``BinNormalisationFromAttenuationImage``)
    must be built with an explicit ``forward_projector`` and given it here too: STIR walks the
    data in that projector's symmetry groups (without them it aborts on mismatched related
    viewgrams).
    """
    stir = require_stir()
    ones = stir.ProjDataInMemory(template.get_exam_info(), template.get_proj_data_info())
    ones.fill(1.0)
    if not normalisation.set_up(template.get_exam_info(),
                                template.get_proj_data_info()).succeeded():
        raise RuntimeError("the STIR normalisation could not be set up for this geometry")
    if forward_projector is not None:
        normalisation.undo(ones, forward_projector.get_symmetries_used())
    else:
        normalisation.undo(ones)
    return projdata_to_torch(ones)


def scatter_estimate(parameter_file: str | os.PathLike[str]) -> torch.Tensor:
    """Run STIR's ``ScatterEstimation`` from its parameter file and return the scatter estimate
    (``[sinogram, view, tangential]``, the additive contribution of scatter in STIR's model)."""
    stir = require_stir()
    p = Path(parameter_file)
    if not p.is_file():
        raise FileNotFoundError(f"scatter estimation parameter file {p} does not exist")
    se = stir.ScatterEstimation(str(p))
    if not se.process_data().succeeded():
        raise RuntimeError(f"STIR's ScatterEstimation failed with {p}")
    return projdata_to_torch(se.get_output())


# ----------------------------------------------------------------------------- physics
class STIRPhysics(ToolkitSubsets, PETPhysics):
    """STIR projector pair as a :class:`~sirf_diffusion.physics.base.PETPhysics`.

    Parameters
    ----------
    template
        STIR ``ProjData`` giving the scanner and sinogram geometry.
    image_template
        STIR ``FloatVoxelsOnCartesianGrid`` giving the voxel grid.
    multiplicative, additive
        ``m`` and ``b`` as tensors ``[sinogram, view, tangential]`` or STIR ``ProjData``.
    projector
        ``'ray-tracing'`` (``ProjMatrixByBinUsingRayTracing``) or ``'parallelproj'``.
    num_tangential_lors, restrict_to_cylindrical_fov
        Settings of the ray-tracing matrix (STIR's ``num_tangential_LORs``,
        ``restrict_to_cylindrical_FOV``).
    psf_fwhm_mm
        Optional Gaussian image-space PSF (one FWHM or ``(transaxial, axial)``), applied in
        torch with the kernel of STIR's ``SeparableGaussianImageFilter``; in-plane only on a
        single-plane image (:mod:`sirf_diffusion.physics.psf`).
    num_subsets
        Number of view subsets of the partition that integer subset indices refer to (any
        :class:`~sirf_diffusion.physics.base.ViewSubset` works).
    """

    def __init__(self, template: Any, image_template: Any, *,
                 multiplicative: Any = None, additive: Any = None,
                 projector: str = "ray-tracing", num_tangential_lors: int = 1,
                 restrict_to_cylindrical_fov: bool = True,
                 psf_fwhm_mm: float | tuple[float, float] | None = None,
                 num_subsets: int = 1) -> None:
        stir = require_stir()
        self._stir = stir
        # STIR's getters return views into the objects: keep the objects alive
        self._template = template
        self._image_template = image_template
        self._exam_info = template.get_exam_info()
        self._pdi = template.get_proj_data_info()
        self._img_template = image_template.get_empty_copy()
        if projector == "ray-tracing":
            matrix = stir.ProjMatrixByBinUsingRayTracing()
            matrix.set_num_tangential_LORs(int(num_tangential_lors))
            matrix.set_restrict_to_cylindrical_FOV(bool(restrict_to_cylindrical_fov))
            pair = stir.ProjectorByBinPairUsingProjMatrixByBin(matrix)
        elif projector == "parallelproj":
            if not hasattr(stir, "ProjectorByBinPairUsingParallelproj"):
                raise ImportError("this STIR was built without Parallelproj; use "
                                  "projector='ray-tracing'")
            pair = stir.ProjectorByBinPairUsingParallelproj()
        else:
            raise ValueError(f"projector must be 'ray-tracing' or 'parallelproj', got {projector!r}")
        pair.set_up(self._pdi, self._img_template)
        self.projector_pair = pair
        self._fwd = pair.get_forward_projector()
        self._bck = pair.get_back_projector()
        self.image_shape = tuple(int(n) for n in np.asarray(image_template.as_array()).shape)
        self.voxel_size_mm = _voxel_sizes(image_template)
        probe = stir.ProjDataInMemory(self._exam_info, self._pdi)
        self.data_shape = tuple(projdata_to_torch(probe).shape)  # type: ignore[assignment]
        self._m = self._term(multiplicative, "multiplicative")
        self._b = self._term(additive, "additive")
        from sirf_diffusion.physics.geometry import ImageGeometry
        from sirf_diffusion.physics.psf import GaussianPSF

        # STIR's SeparableGaussianImageFilter, in torch; in-plane only on one plane
        self.psf = GaussianPSF.from_fwhm(ImageGeometry(self.image_shape, self.voxel_size_mm),
                                         psf_fwhm_mm)
        self._subset_sets = {}
        super().__init__(num_subsets)

    def _term(self, t: Any, name: str) -> torch.Tensor | None:
        if t is None:
            return None
        if not isinstance(t, torch.Tensor):
            t = projdata_to_torch(t)
        if tuple(t.shape) != tuple(self.data_shape):
            raise ValueError(f"{name} term has shape {tuple(t.shape)}, but the STIR geometry "
                             f"has {self.data_shape} (sinogram, view, tangential)")
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError(f"{name} term has negative or non-finite values")
        return t.to(torch.float32)

    @property
    def additive_term(self) -> torch.Tensor | None:
        return self._b

    @property
    def multiplicative_term(self) -> torch.Tensor | None:
        return self._m

    def _partial_forward_of_ones(self, subset: int, num_subsets: int) -> torch.Tensor:
        ones = self._img_template.get_empty_copy()
        ones.fill(1.0)
        return self._project(ones, subset, num_subsets)

    def _project(self, image: Any, k: int, K: int) -> torch.Tensor:
        out = self._stir.ProjDataInMemory(self._exam_info, self._pdi)
        self._fwd.forward_project(out, image, k, K)
        return projdata_to_torch(out)

    def _toolkit_forward(self, x: torch.Tensor, k: int, K: int,
                         views: torch.Tensor | None) -> torch.Tensor:
        if self.psf is not None:
            x = self.psf.forward(x)
        res = []
        for xb in x:
            y = self._project(torch_to_image(xb, self._img_template), k, K).to(x)
            if views is not None:
                y = y.index_select(1, views.to(x.device))
            res.append(y)
        y = torch.stack(res)
        if self._m is not None:
            m = self._m.to(y)
            y = y * (m if views is None else m.index_select(1, views.to(y.device)))
        return y

    def _toolkit_adjoint(self, y: torch.Tensor, k: int, K: int,
                         views: torch.Tensor | None) -> torch.Tensor:
        if self._m is not None:
            m = self._m.to(y)
            y = y * (m if views is None else m.index_select(1, views.to(y.device)))
        res = []
        for yb in y:
            full = self._full_data(yb, views)
            pd = fill_projdata(self._stir.ProjDataInMemory(self._exam_info, self._pdi), full)
            img = self._img_template.get_empty_copy()
            img.fill(0.0)
            self._bck.back_project(img, pd, k, K)
            res.append(image_to_torch(img).to(y))
        x = torch.stack(res)
        if self.psf is not None:
            x = self.psf.adjoint(x)
        return x

    def __repr__(self) -> str:
        return (f"STIRPhysics(image {self.image_shape}, data {self.data_shape}, "
                f"{self.num_subsets} subsets)")


def stir_case_physics(folder: str | os.PathLike[str], *, psf_fwhm_mm: Any = None,
                      projector: str = "ray-tracing", num_subsets: int = 1) -> STIRPhysics:
    """:class:`STIRPhysics` of a PETRIC-layout folder read by STIR: ``m`` from
    ``mult_factors.hs``, ``b = m * additive_term`` (PETRIC's ``ybar = m (G x + a)``), the voxel
    grid of ``OSEM_image.hv`` (else ``PETRIC/reference_image.hv``)."""
    stir = require_stir()
    files, tpl = case_headers(folder)
    prompts = stir.ProjData.read_from_file(str(files["prompts"]))
    mult = projdata_to_torch(stir.ProjData.read_from_file(str(files["mult_factors"])))
    add = projdata_to_torch(stir.ProjData.read_from_file(str(files["additive_term"])))
    image = stir.FloatVoxelsOnCartesianGrid.read_from_file(str(tpl))
    return STIRPhysics(prompts, image, multiplicative=mult, additive=mult * add,
                       projector=projector, psf_fwhm_mm=psf_fwhm_mm, num_subsets=num_subsets)
