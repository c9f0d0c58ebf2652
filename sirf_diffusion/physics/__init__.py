"""PET physics: the backend contract, the embedded PyTorch backend and its corrections."""

from .base import DenseMatrixPhysics, PETPhysics, adjointness_test, operator_norm
from .geometry import SCANNERS, ImageGeometry, Scanner, Segment, SinogramGeometry, get_scanner

__all__ = [
    "PETPhysics", "DenseMatrixPhysics", "adjointness_test", "operator_norm",
    "Scanner", "SCANNERS", "get_scanner", "Segment", "SinogramGeometry", "ImageGeometry",
]
