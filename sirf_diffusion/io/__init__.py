"""File formats: STIR Interfile images and projection data, NIfTI images, PETRIC case folders.

Importing this package imports numpy only; nibabel is imported by the NIfTI functions when
they are called.
"""

from .interfile import (
    InterfileError,
    InterfileHeader,
    read_header,
    read_image,
    read_sinogram,
    standardise_key,
    write_image,
    write_sinogram,
)
from .nifti import nifti_affine, read_nifti, write_nifti
from .petric import Case, additive_to_background, background_to_additive, read_case, write_case

__all__ = [
    "InterfileError",
    "InterfileHeader",
    "standardise_key",
    "read_header",
    "read_image",
    "write_image",
    "read_sinogram",
    "write_sinogram",
    "nifti_affine",
    "read_nifti",
    "write_nifti",
    "Case",
    "read_case",
    "write_case",
    "additive_to_background",
    "background_to_additive",
]
