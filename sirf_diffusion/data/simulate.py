"""Simulation of realistic low-count PET brain scans as PETRIC-layout cases.

The forward model is the package's (and SIRF's) ``ybar = m * (G P x) + b``:

* ``x``: a :func:`~sirf_diffusion.data.phantoms.brain_phantom` activity, scaled so that the
  expected true counts ``sum(m * G P x)`` equal ``counts_per_mm3`` times the emission volume
  (Singh et al., MELBA 2024; Webber et al., IEEE TMI 2025);
* ``P``: a Gaussian scanner PSF; ``G``: the embedded ray tracer (STIR conventions);
* ``m``: attenuation factors of the phantom's mu-map times a crystal-efficiency normalisation;
* ``b``: randoms (uniform before detector efficiencies) plus a smooth scatter-like term, as
  fractions of the trues;
* ``y ~ Poisson(ybar)`` from an explicit generator.

The case folder stores the PSF and the simulation settings in ``simulation.json`` (PETRIC's
layout has no place for them), so the package's reconstruction uses the same resolution model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..io.atomic import write_json
from ..physics.geometry import ImageGeometry, SinogramGeometry, get_scanner

__all__ = ["SimulationConfig", "SimulatedScan", "simulate_scan", "write_simulated_case",
           "sinogram_geometry_for"]


@dataclass
class SimulationConfig:
    """Settings of :func:`simulate_scan` (all saved beside the case)."""

    seed: int = 0
    tracer: Literal["fdg", "amyloid"] = "fdg"
    dims: Literal[2, 3] = 2
    counts_per_mm3: float = 2.5
    scanner: str = "mMR"
    arc_corrected: bool = False
    num_views: int | None = None
    rings: int | None = None
    max_ring_difference: int | None = None
    span: int = 1
    lesions: int = 2
    psf_fwhm_mm: float = 4.5
    randoms_fraction: float = 0.2
    scatter_fraction: float = 0.3
    efficiency_spread: float = 0.05
    noise_seed: int | None = None
    image_shape: tuple[int, int] = (128, 128)
    num_planes: int | None = None
    #: 2D only: axial position of the slice (mm, as ``brain_phantom``'s ``z_mm``); ``None``:
    #: the default plane through the basal ganglia.
    z_mm: float | None = None


@dataclass
class SimulatedScan:
    """A simulated acquisition with its ground truth."""

    config: SimulationConfig
    prompts: torch.Tensor
    multiplicative: torch.Tensor
    additive: torch.Tensor
    reference: torch.Tensor
    sinogram_geometry: SinogramGeometry
    image_geometry: ImageGeometry
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    mu_map: np.ndarray | None = None
    t1: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: One label per lesion (``k + 1`` for ``info["lesions"][k]``, 0 elsewhere), or ``None``.
    lesion_labels: np.ndarray | None = None

    def acquisition_model(self, num_subsets: int = 1):
        """The embedded physics that generated the data (same PSF, factors and background)."""
        from ..physics.model import AcquisitionModel

        return AcquisitionModel(self.sinogram_geometry, self.image_geometry,
                                multiplicative=self.multiplicative, additive=self.additive,
                                psf_fwhm_mm=self.config.psf_fwhm_mm or None,
                                num_subsets=num_subsets)


def sinogram_geometry_for(config: SimulationConfig, num_planes: int) -> SinogramGeometry:
    """The scanner geometry of a simulation: one ring in 2D; in 3D enough rings for the volume."""
    scanner = get_scanner(config.scanner)
    views = config.num_views or scanner.num_detectors_per_ring // 2
    if config.dims == 2:
        return SinogramGeometry(scanner.with_rings(1), views, arc_corrected=config.arc_corrected)
    rings = config.rings or (num_planes + 1) // 2
    mrd = (config.max_ring_difference if config.max_ring_difference is not None
           else min(rings - 1, 4))
    return SinogramGeometry(scanner.with_rings(rings), views, arc_corrected=config.arc_corrected,
                            span=config.span, max_ring_difference=mrd)


def simulate_scan(config: SimulationConfig, *, progress: bool = True,
                  projector: Any = None) -> SimulatedScan:
    """Simulate a noisy PET scan of a brain phantom (see the module docstring).

    ``projector``: an existing :class:`~sirf_diffusion.physics.projector.RayTracingProjector`
    of the same geometries, whose cached matrices are then reused (many scans of one grid).
    """
    from ..physics.attenuation import attenuation_factors
    from ..physics.corrections import (
        normalisation_from_efficiencies,
        random_crystal_efficiencies,
        scatter_like,
        uniform_randoms,
    )
    from ..physics.model import AcquisitionModel
    from ..physics.noise import poisson_noise
    from .phantoms import DEFAULT_VOXEL_SIZE_MM, brain_phantom, total_counts_for_level

    if config.dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {config.dims}")
    if not config.counts_per_mm3 > 0:
        raise ValueError(f"counts_per_mm3 must be > 0, got {config.counts_per_mm3}")
    for name in ("randoms_fraction", "scatter_fraction"):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(config, name)}")
    scanner = get_scanner(config.scanner)
    ny, nx = config.image_shape
    if config.dims == 2:
        # one plane as thick as the ring spacing: the 2D LOR then sees it with weight 1 (STIR)
        shape = (1, ny, nx)
        vox = (scanner.ring_spacing_mm, DEFAULT_VOXEL_SIZE_MM[1], DEFAULT_VOXEL_SIZE_MM[2])
    else:
        # default: the 2 R - 1 planes that R rings image (span 1), else 96; a volume with more
        # planes than the rings see would have its counts put into the planes they see
        planes = config.num_planes or (2 * config.rings - 1 if config.rings else 96)
        shape = (planes, ny, nx)
        vox = (scanner.ring_spacing_mm / 2, DEFAULT_VOXEL_SIZE_MM[1], DEFAULT_VOXEL_SIZE_MM[2])
    if config.z_mm is not None and config.dims != 2:
        raise ValueError("z_mm selects the slice of a 2D simulation; use dims=2")
    phantom = brain_phantom(config.seed, tracer=config.tracer, dims=config.dims, shape=shape,
                            voxel_size_mm=vox, lesions=config.lesions, z_mm=config.z_mm)
    img_geom = phantom.geometry
    sino_geom = sinogram_geometry_for(config, img_geom.shape[0])

    g = torch.Generator().manual_seed(
        config.noise_seed if config.noise_seed is not None else config.seed)
    mu = torch.from_numpy(np.ascontiguousarray(phantom.mu_map, dtype=np.float32))
    model = AcquisitionModel(sino_geom, img_geom, psf_fwhm_mm=config.psf_fwhm_mm or None,
                             projector=projector)
    af = attenuation_factors(mu, img_geom, sino_geom, projector=model.projector)
    eff = random_crystal_efficiencies(sino_geom.scanner, generator=g,
                                      spread=config.efficiency_spread)
    norm = normalisation_from_efficiencies(eff, sino_geom)
    mult = (af * norm).to(torch.float32)
    # sinogram-sized temporaries are dropped as soon as they are used: on the full mMR in span
    # 1 each is 1.4 GiB, and holding them all took the simulation past 17 GiB
    del af

    activity = torch.from_numpy(np.ascontiguousarray(phantom.activity, dtype=np.float32))
    trues_unit = mult * model.forward_linear(activity)
    target = total_counts_for_level(config.counts_per_mm3, phantom.activity, img_geom)
    scale = target / float(trues_unit.sum())
    reference = activity * scale
    trues = trues_unit * scale
    del trues_unit
    randoms = uniform_randoms(sino_geom, config.randoms_fraction * target) * norm
    del norm
    scatter = (scatter_like(trues, sino_geom, scatter_fraction=config.scatter_fraction)
               if config.scatter_fraction > 0 else torch.zeros_like(trues))
    additive = (randoms + scatter).to(torch.float32)
    del randoms, scatter
    prompts = poisson_noise(trues + additive, g)

    masks = {k: v for k, v in phantom.masks.items() if v.any()}
    masks["whole_object"] = phantom.masks["head"]
    info = {"true_counts": float(trues.sum()), "prompt_counts": float(prompts.sum()),
            "emission_volume_mm3": target / config.counts_per_mm3, "activity_scale": scale,
            "split": phantom.split,
            "lesions": [{"centre_mm": list(map(float, les.centre_mm)),
                         "semi_axes_mm": list(map(float, les.semi_axes_mm)),
                         "contrast": float(les.contrast)} for les in phantom.lesions]}
    return SimulatedScan(config, prompts, mult, additive, reference, sino_geom, img_geom, masks,
                         phantom.mu_map, phantom.t1, info,
                         phantom.lesion_labels() if phantom.lesions else None)


def write_simulated_case(folder: str | Path, scan: SimulatedScan, *,
                         osem_image: torch.Tensor | None = None) -> Path:
    """Write ``scan`` as a PETRIC-layout case folder plus ``simulation.json``."""
    from ..io.petric import Case, write_case

    case = Case(
        prompts=scan.prompts.numpy(), multiplicative=scan.multiplicative.numpy(),
        additive=scan.additive.numpy(), sinogram_geometry=scan.sinogram_geometry,
        image_geometry=scan.image_geometry, reference=scan.reference.numpy(),
        osem=None if osem_image is None else osem_image.detach().cpu().numpy(),
        masks={k: v.astype(np.float32) for k, v in scan.masks.items()},
        extra={k: v for k, v in (("mu_map", scan.mu_map), ("t1", scan.t1)) if v is not None},
    )
    folder = write_case(folder, case)
    meta = {"simulation": asdict(scan.config), "info": scan.info,
            "psf_fwhm_mm": scan.config.psf_fwhm_mm}
    write_json(Path(folder) / "simulation.json", meta)
    return Path(folder)
