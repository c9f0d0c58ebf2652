"""sirf-diffusion: diffusion-model (score-based) priors for PET reconstruction.

Physics comes from STIR/SIRF when installed, or from the embedded PyTorch backend; the package
supplies learned priors, diffusion samplers and their training.  ``import sirf_diffusion`` needs
only torch and numpy: SIRF, STIR, CIL, matplotlib and nilearn are imported lazily by the code that
uses them.
"""

from __future__ import annotations

from . import metrics
from ._version import __version__
from .data import BrainPhantom, brain_phantom, subject_seeds, subject_split
from .diffusion import (
    IntensityNormalisation,
    PerpendicularPrior3D,
    ScoreModel,
    load_model,
    load_prior,
    save_model,
)
from .io import Case, read_case, read_image, read_sinogram, write_case, write_image, write_sinogram
from .likelihood import PoissonLogLikelihood
from .physics import (
    AcquisitionModel,
    DenseMatrixPhysics,
    ImageGeometry,
    PETPhysics,
    Scanner,
    SinogramGeometry,
    get_scanner,
)
from .recon import QuadraticPrior, RelativeDifferencePrior, bsrem, map_em, mlem, osem
from .samplers import reverse_diffusion

__all__ = [
    "__version__",
    "metrics",
    # physics
    "PETPhysics", "DenseMatrixPhysics", "AcquisitionModel", "Scanner", "SinogramGeometry",
    "ImageGeometry", "get_scanner",
    # likelihood and classical reconstruction
    "PoissonLogLikelihood", "mlem", "osem", "map_em", "bsrem", "RelativeDifferencePrior",
    "QuadraticPrior",
    # data and files
    "brain_phantom", "BrainPhantom", "subject_seeds", "subject_split",
    "read_image", "write_image", "read_sinogram", "write_sinogram", "Case", "read_case",
    "write_case",
    # priors and samplers
    "ScoreModel", "load_model", "save_model", "load_prior", "PerpendicularPrior3D",
    "IntensityNormalisation", "reverse_diffusion",
]
