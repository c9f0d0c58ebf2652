"""File formats: STIR Interfile images and projection data, NIfTI images, PETRIC case folders.

Importing this package imports numpy only; nibabel is imported by the NIfTI functions when
they are called.
"""

# The public names are listed once, in each format module's ``__all__``, and re-exported here.
from . import interfile as _interfile
from . import nifti as _nifti
from . import petric as _petric
from .interfile import *  # noqa: F403
from .nifti import *  # noqa: F403
from .petric import *  # noqa: F403

__all__ = [*_interfile.__all__, *_nifti.__all__, *_petric.__all__]
