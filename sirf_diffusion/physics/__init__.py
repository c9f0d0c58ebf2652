"""PET physics: the backend contract, the embedded PyTorch backend and its corrections."""

from .attenuation import attenuation_factors
from .base import DenseMatrixPhysics, PETPhysics, adjointness_test, operator_norm
from .corrections import (
    normalisation_from_efficiencies,
    random_crystal_efficiencies,
    randoms_from_singles,
    scatter_like,
    uniform_randoms,
)
from .geometry import SCANNERS, ImageGeometry, Scanner, Segment, SinogramGeometry, get_scanner
from .model import AcquisitionModel
from .noise import poisson_noise
from .projector import RayTracingProjector
from .psf import GaussianPSF

__all__ = [
    "PETPhysics", "DenseMatrixPhysics", "adjointness_test", "operator_norm",
    "Scanner", "SCANNERS", "get_scanner", "Segment", "SinogramGeometry", "ImageGeometry",
    "RayTracingProjector", "GaussianPSF", "AcquisitionModel", "attenuation_factors",
    "normalisation_from_efficiencies", "random_crystal_efficiencies", "uniform_randoms",
    "randoms_from_singles", "scatter_like", "poisson_noise",
]
