"""Realistic PET data: brain phantoms from MNI152 anatomy, subject splits and count levels.

``import sirf_diffusion.data`` is cheap: nilearn, nibabel and the atlas are loaded on the first
phantom.
"""

from __future__ import annotations

from .phantoms import (
    COUNT_LEVELS_PER_MM3,
    DEFAULT_SHAPE,
    DEFAULT_VOXEL_SIZE_MM,
    TRACERS,
    BrainPhantom,
    Lesion,
    TissueContrast,
    brain_phantom,
    default_geometry,
    emission_volume_mm3,
    total_counts_for_level,
)
from .splits import check_split, subject_seeds, subject_split

__all__ = [
    "BrainPhantom",
    "Lesion",
    "TissueContrast",
    "TRACERS",
    "DEFAULT_SHAPE",
    "DEFAULT_VOXEL_SIZE_MM",
    "COUNT_LEVELS_PER_MM3",
    "brain_phantom",
    "default_geometry",
    "emission_volume_mm3",
    "total_counts_for_level",
    "subject_split",
    "subject_seeds",
    "check_split",
]
