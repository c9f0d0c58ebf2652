"""Paired training data for supervised reconstruction methods (PET-DEFT, FBSEM-net).

A *pair* is a ground-truth 2D activity slice ``x`` of a training (or validation) subject and a
noisy scan of it: prompts ``y ~ Poisson(m * (G P x) + b)`` with the full physics of
:func:`~sirf_diffusion.data.simulate.simulate_scan` (Gaussian PSF ``P``, the mMR ray tracer
``G``, attenuation of the subject's mu-map times a crystal-efficiency normalisation ``m``,
randoms plus a scatter-like background ``b``).  Pairs are generated on the fly and are a pure
function of their keys:

* ``(subject, plane offset)`` fixes the noise-free scan, simulated once at
  1 count/mm^3 (:func:`noise_free_scan`; the efficiencies are drawn from the subject seed);
* a dose ``d`` (counts/mm^3, Singh et al. 2024's scale) scales it: every term of
  ``ybar = m G P x + b`` and the image are linear in ``d`` (the trues, randoms and scatter of
  ``simulate_scan`` are fractions of ``d`` times the emission volume), so
  ``x_d = d x_1`` and ``ybar_d = d ybar_1``;
* a noise seed draws the Poisson realisation (:func:`draw_pair`).

:class:`PairedDataset` draws the keys of example ``k`` from ``(seed, k)`` alone (subject and
plane uniformly, dose log-uniformly over :attr:`PairConfig.dose_range`), so a training step's
batch never depends on what was drawn before (resumable runs).  Subjects come from the
``'train'`` or ``'val'`` split (:mod:`~sirf_diffusion.data.splits`); the ``'test'`` split is
refused, so test subjects are never seen in training.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..io.config import dataclass_from_dict
from ..physics.geometry import ImageGeometry, SinogramGeometry
from .simulate import SimulationConfig, simulate_scan
from .splits import check_split, subject_seeds

__all__ = ["PairConfig", "NoiseFreeScan", "PairedExample", "noise_free_scan", "draw_pair",
           "paired_example", "PairedDataset", "pair_projector", "image_geometry_2d",
           "default_plane_z_mm"]


@dataclass(frozen=True)
class PairConfig:
    """What the pairs are drawn from (saved with every model trained on them).

    Attributes
    ----------
    split, num_subjects, first_subject
        The subjects: ``subject_seeds(split, num_subjects, first_subject)``; ``split`` is
        ``'train'`` or ``'val'`` (``'test'`` is refused).
    dose_range
        ``(low, high)`` counts/mm^3; :class:`PairedDataset` draws doses log-uniformly in it.
    plane_offsets_mm
        Axial offsets of the 2D slices from the default plane (basal ganglia; multiples of the
        mMR ring spacing, 4.0625 mm, keep them on the 3D phantom's planes).
    tracer, scanner, image_shape, num_views, psf_fwhm_mm, randoms_fraction, scatter_fraction,
    efficiency_spread, lesions
        As :class:`~sirf_diffusion.data.simulate.SimulationConfig` (2D).
    """

    split: Literal["train", "val"] = "train"
    num_subjects: int = 32
    first_subject: int = 0
    dose_range: tuple[float, float] = (0.5, 10.0)
    plane_offsets_mm: tuple[float, ...] = (-16.25, -8.125, 0.0, 8.125, 16.25)
    tracer: str = "fdg"
    scanner: str = "mMR"
    image_shape: tuple[int, int] = (128, 128)
    num_views: int | None = None
    psf_fwhm_mm: float = 4.5
    randoms_fraction: float = 0.2
    scatter_fraction: float = 0.3
    efficiency_spread: float = 0.05
    lesions: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "dose_range", tuple(float(v) for v in self.dose_range))
        object.__setattr__(self, "plane_offsets_mm",
                           tuple(float(v) for v in self.plane_offsets_mm))
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        if self.split == "test":
            raise ValueError("PairConfig.split='test': test subjects are never used for "
                             "training or validation pairs")
        if self.split not in ("train", "val"):
            raise ValueError(f"PairConfig.split must be 'train' or 'val', got {self.split!r}")
        if int(self.num_subjects) < 1 or int(self.first_subject) < 0:
            raise ValueError("PairConfig.num_subjects must be >= 1 and first_subject >= 0")
        lo, hi = self.dose_range
        if len(self.dose_range) != 2 or not 0 < lo <= hi or not math.isfinite(hi):
            raise ValueError(f"PairConfig.dose_range must be (low, high) counts/mm^3 with "
                             f"0 < low <= high, got {self.dose_range}")
        if not self.plane_offsets_mm:
            raise ValueError("PairConfig.plane_offsets_mm must not be empty")

    def subjects(self) -> list[int]:
        """The subject seeds the pairs are drawn from."""
        return subject_seeds(self.split, int(self.num_subjects), int(self.first_subject))

    def simulation_config(self, subject: int, plane_offset_mm: float = 0.0,
                          dose: float = 1.0) -> SimulationConfig:
        """The 2D :class:`SimulationConfig` of one pair (noise seed: the subject's)."""
        return SimulationConfig(
            seed=int(subject), tracer=self.tracer, dims=2, counts_per_mm3=float(dose),  # type: ignore[arg-type]
            scanner=self.scanner, num_views=self.num_views, lesions=int(self.lesions),
            psf_fwhm_mm=float(self.psf_fwhm_mm), randoms_fraction=float(self.randoms_fraction),
            scatter_fraction=float(self.scatter_fraction),
            efficiency_spread=float(self.efficiency_spread), image_shape=self.image_shape,
            z_mm=default_plane_z_mm(self.scanner, self.image_shape) + float(plane_offset_mm))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PairConfig":
        return dataclass_from_dict(cls, d)


def image_geometry_2d(scanner: str = "mMR", image_shape: tuple[int, int] = (128, 128)
                      ) -> ImageGeometry:
    """The grid of a 2D :func:`simulate_scan` (one plane as thick as the ring spacing)."""
    from ..physics.geometry import get_scanner
    from .phantoms import DEFAULT_VOXEL_SIZE_MM, default_geometry

    vox = (get_scanner(scanner).ring_spacing_mm, *DEFAULT_VOXEL_SIZE_MM[1:])
    return default_geometry(2, (1, int(image_shape[0]), int(image_shape[1])), vox)


def default_plane_z_mm(scanner: str = "mMR", image_shape: tuple[int, int] = (128, 128)) -> float:
    """Axial position (mm) of the default 2D slice of :func:`simulate_scan` (basal ganglia)."""
    from .phantoms import _slice_z

    geometry = image_geometry_2d(scanner, image_shape)
    return float(_slice_z(2, geometry, geometry.shape, None, None)[0])


def pair_projector(config: PairConfig | None = None) -> Any:
    """A :class:`~sirf_diffusion.physics.projector.RayTracingProjector` for the pairs of
    ``config``: share it between pairs so its system matrix is built once."""
    from ..physics.projector import RayTracingProjector
    from .simulate import sinogram_geometry_for

    config = config or PairConfig()
    sim = config.simulation_config(config.subjects()[0])
    return RayTracingProjector(sinogram_geometry_for(sim, 1),
                               image_geometry_2d(config.scanner, config.image_shape))


@dataclass
class NoiseFreeScan:
    """A subject's 2D slice and its expected data at 1 count/mm^3 (the dose scales both)."""

    subject: int
    z_mm: float
    image: torch.Tensor
    ybar: torch.Tensor
    multiplicative: torch.Tensor
    additive: torch.Tensor
    sinogram_geometry: SinogramGeometry
    image_geometry: ImageGeometry
    psf_fwhm_mm: float
    masks: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PairedExample:
    """One pair: ground truth ``image`` ``[1, y, x]`` (activity at this dose) and its scan.

    ``prompts``, ``multiplicative`` and ``additive`` are the sinograms of
    ``y ~ Poisson(m * (G P image) + b)``; :meth:`acquisition_model` and :meth:`likelihood`
    rebuild the physics (pass the dataset's ``projector`` to reuse its matrices).
    """

    image: torch.Tensor
    prompts: torch.Tensor
    multiplicative: torch.Tensor
    additive: torch.Tensor
    sinogram_geometry: SinogramGeometry
    image_geometry: ImageGeometry
    psf_fwhm_mm: float
    subject: int
    z_mm: float
    dose: float
    noise_seed: int
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def acquisition_model(self, projector: Any = None, num_subsets: int = 1):
        """The embedded physics ``m * (G P x) + b`` of this pair."""
        from ..physics.model import AcquisitionModel

        return AcquisitionModel(self.sinogram_geometry, self.image_geometry,
                                multiplicative=self.multiplicative, additive=self.additive,
                                psf_fwhm_mm=self.psf_fwhm_mm or None, num_subsets=num_subsets,
                                projector=projector)

    def likelihood(self, projector: Any = None):
        """The :class:`~sirf_diffusion.likelihood.PoissonLogLikelihood` of the prompts."""
        from ..likelihood import PoissonLogLikelihood

        return PoissonLogLikelihood(self.acquisition_model(projector), self.prompts)


def noise_free_scan(subject: int, plane_offset_mm: float = 0.0, config: PairConfig | None = None,
                    *, projector: Any = None) -> NoiseFreeScan:
    """Simulate subject ``subject``'s slice at ``plane_offset_mm`` at 1 count/mm^3 (noise-free).

    Raises ``ValueError`` when the subject is not of ``config.split``.
    """
    from ..physics.model import AcquisitionModel

    config = config or PairConfig()
    check_split([int(subject)], config.split)
    projector = projector if projector is not None else pair_projector(config)
    scan = simulate_scan(config.simulation_config(subject, plane_offset_mm), progress=False,
                         projector=projector)
    model = AcquisitionModel(scan.sinogram_geometry, scan.image_geometry,
                             psf_fwhm_mm=scan.config.psf_fwhm_mm or None, projector=projector)
    ybar = scan.multiplicative * model.forward_linear(scan.reference) + scan.additive
    return NoiseFreeScan(int(subject), float(scan.config.z_mm), scan.reference, ybar,  # type: ignore[arg-type]
                         scan.multiplicative, scan.additive, scan.sinogram_geometry,
                         scan.image_geometry, float(config.psf_fwhm_mm), dict(scan.masks))


def draw_pair(scan: NoiseFreeScan, dose: float, noise_seed: int) -> PairedExample:
    """The pair of ``scan`` at ``dose`` counts/mm^3 with the Poisson noise of ``noise_seed``."""
    from ..physics.noise import poisson_noise

    if not dose > 0 or not math.isfinite(dose):
        raise ValueError(f"dose must be a positive number of counts/mm^3, got {dose}")
    g = torch.Generator().manual_seed(int(noise_seed))
    d = float(dose)
    return PairedExample(scan.image * d, poisson_noise(scan.ybar * d, g),
                         scan.multiplicative, scan.additive * d, scan.sinogram_geometry,
                         scan.image_geometry, scan.psf_fwhm_mm, scan.subject, scan.z_mm, d,
                         int(noise_seed), scan.masks)


def paired_example(subject: int, dose: float, *, plane_offset_mm: float = 0.0,
                   noise_seed: int = 0, config: PairConfig | None = None,
                   projector: Any = None) -> PairedExample:
    """One reproducible pair: :func:`noise_free_scan` then :func:`draw_pair`.

    Examples
    --------
    >>> pair = paired_example(2, 2.5, noise_seed=7)          # doctest: +SKIP
    >>> pair.likelihood().gradient(pair.image[None]).shape   # doctest: +SKIP
    torch.Size([1, 1, 128, 128])
    """
    return draw_pair(noise_free_scan(subject, plane_offset_mm, config, projector=projector),
                     dose, noise_seed)


class PairedDataset:
    """An endless, seeded stream of pairs (module docstring) with a cache of noise-free scans.

    Parameters
    ----------
    config
        The :class:`PairConfig`.
    seed
        Example ``k`` is a pure function of ``(seed, k)``.
    cache_size
        Noise-free scans kept in memory (about 1 MB each for the mMR 2D geometry); the first
        visit of a ``(subject, plane)`` simulates it (about 0.2 s with the shared projector).
    """

    def __init__(self, config: PairConfig | None = None, seed: int = 0,
                 cache_size: int = 256) -> None:
        self.config = config or PairConfig()
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.cache_size = int(cache_size)
        self.subjects = self.config.subjects()
        self.projector: Any = None
        self._cache: OrderedDict[tuple[int, float], NoiseFreeScan] = OrderedDict()

    def keys(self, index: int) -> tuple[int, float, float, int]:
        """``(subject, plane offset, dose, noise seed)`` of example ``index``."""
        if int(index) < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, int(index)])
        subject = self.subjects[int(rng.integers(len(self.subjects)))]
        offset = self.config.plane_offsets_mm[int(rng.integers(len(self.config.plane_offsets_mm)))]
        lo, hi = self.config.dose_range
        dose = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else lo
        return subject, offset, dose, int(rng.integers(2**62))

    def scan(self, subject: int, plane_offset_mm: float) -> NoiseFreeScan:
        """The (cached) noise-free scan of ``(subject, plane_offset_mm)``."""
        key = (int(subject), float(plane_offset_mm))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if self.projector is None:
            self.projector = pair_projector(self.config)
        scan = noise_free_scan(subject, plane_offset_mm, self.config, projector=self.projector)
        if self.cache_size > 0:
            self._cache[key] = scan
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return scan

    def example(self, index: int) -> PairedExample:
        """Pair number ``index``."""
        subject, offset, dose, noise_seed = self.keys(index)
        return draw_pair(self.scan(subject, offset), dose, noise_seed)

    def batch(self, step: int, batch_size: int) -> list[PairedExample]:
        """Examples ``step * batch_size ... (step + 1) * batch_size - 1``."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return [self.example(int(step) * int(batch_size) + k) for k in range(int(batch_size))]

    def describe(self) -> dict[str, Any]:
        """JSON-able description (config, seed, subjects) for model metadata."""
        return {"pairs": self.config.to_dict(), "seed": self.seed, "subjects": self.subjects,
                "dose_law": "log-uniform over dose_range (counts/mm^3)"}
