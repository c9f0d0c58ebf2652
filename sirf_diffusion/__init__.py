"""sirf-diffusion: diffusion-model (score-based) priors for PET reconstruction.

Physics comes from STIR/SIRF when installed, or from the embedded PyTorch backend; the package
supplies learned priors, diffusion samplers and their training.  ``import sirf_diffusion`` needs
only torch and numpy: SIRF, STIR, CIL, matplotlib and nilearn are imported lazily by the code that
uses them.
"""

from __future__ import annotations

from ._version import __version__
from .likelihood import PoissonLogLikelihood
from .physics.base import DenseMatrixPhysics, PETPhysics
from .physics.geometry import ImageGeometry, Scanner, SinogramGeometry, get_scanner

__all__ = [
    "__version__",
    "PETPhysics",
    "DenseMatrixPhysics",
    "PoissonLogLikelihood",
    "Scanner",
    "SinogramGeometry",
    "ImageGeometry",
    "get_scanner",
]
