"""Read and write images as NIfTI-1 with a correct affine (nibabel, imported lazily).

Mapping between the package's ``[z, y, x]`` arrays and NIfTI world (RAS+) coordinates
--------------------------------------------------------------------------------------
Voxel ``[iz, iy, ix]`` of an :class:`~sirf_diffusion.physics.geometry.ImageGeometry` sits at
STIR coordinates (mm, image centred as STIR's projector places it)

.. math::

    x = v_x (i_x - \\lfloor n_x/2 \\rfloor),\\quad y = v_y (i_y - \\lfloor n_y/2 \\rfloor),\\quad
    z = v_z \\big(i_z - (n_z - 1)/2\\big).

STIR (``get_LPS_coordinates_for_indices``, no patient position set; README section 1.1) maps
``+x -> L``, ``+y -> P``, ``+z -> -S`` (towards the feet), so in RAS+

.. math::

    (R, A, S) = (-x, -y, -z).

The NIfTI data array is stored with voxel axes ``(i, j, k) = (ix, iy, iz)`` (the transpose of
the package array) and the affine

.. math::

    A = \\begin{pmatrix} -v_x & 0 & 0 & v_x \\lfloor n_x/2 \\rfloor \\\\
                         0 & -v_y & 0 & v_y \\lfloor n_y/2 \\rfloor \\\\
                         0 & 0 & -v_z & v_z (n_z - 1)/2 \\\\ 0 & 0 & 0 & 1 \\end{pmatrix},

i.e. orientation code ``LPI`` (``sform_code = qform_code = 1``, scanner-anatomical).  Reading
reorients any axis-aligned NIfTI to ``LPI`` (flips/permutations only, no resampling) and
transposes to ``[z, y, x]``; the translation is not kept (package images are centred), and
oblique affines are refused.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..physics.geometry import ImageGeometry
from .atomic import atomic_write_bytes

__all__ = ["nifti_affine", "write_nifti", "read_nifti"]

PathLike = str | os.PathLike


def _nib():
    try:
        import nibabel
    except ImportError as err:  # pragma: no cover - nibabel is a dependency
        raise ImportError("NIfTI I/O needs nibabel: pip install nibabel") from err
    return nibabel


def nifti_affine(geometry: ImageGeometry) -> np.ndarray:
    """The 4x4 voxel ``(ix, iy, iz)`` -> RAS+ (mm) affine of a package image (see module doc)."""
    nz, ny, nx = geometry.shape
    vz, vy, vx = geometry.voxel_size_mm
    a = np.diag([-vx, -vy, -vz, 1.0])
    a[:3, 3] = [vx * (nx // 2), vy * (ny // 2), vz * (nz - 1) / 2]
    return a


def write_nifti(path: PathLike, array, geometry: ImageGeometry) -> Path:
    """Write a ``[z, y, x]`` image (numpy or torch) as float32 NIfTI-1 (``.nii``/``.nii.gz``)."""
    nib = _nib()
    p = Path(path)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI file name {p} must end in .nii or .nii.gz")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"cannot write {p}: folder {p.parent} does not exist")
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    geometry.check_image_shape(arr.shape)
    if arr.ndim != 3:
        raise ValueError(f"image has shape {arr.shape}, expected {geometry.shape} (z, y, x)")
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    data = np.ascontiguousarray(arr.astype(np.float32).transpose(2, 1, 0))
    affine = nifti_affine(geometry)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    data = img.to_bytes()
    if p.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(p, data)
    return p


def read_nifti(path: PathLike, *,
               oblique_tolerance: float = 1e-4) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 3D NIfTI image into the package's ``[z, y, x]`` (``LPI``) layout.

    Parameters
    ----------
    path
        ``.nii`` / ``.nii.gz`` file (a 4D file with one volume is accepted).
    oblique_tolerance
        Largest allowed off-axis component of the normalised affine columns.

    Returns
    -------
    array, geometry
        float32 array ``[z, y, x]`` (scaling ``scl_slope``/``scl_inter`` applied) and its voxel
        sizes.
    """
    nib = _nib()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {p}")
    try:
        img = nib.load(str(p))
    except Exception as err:  # nibabel raises several types for corrupt files
        raise ValueError(f"cannot read NIfTI file {p}: {err}") from err
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise ValueError(f"{p}: expected a 3D image, got shape {shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    lin = affine[:3, :3]
    sizes = np.sqrt((lin ** 2).sum(axis=0))
    if not (sizes > 0).all():
        raise ValueError(f"{p}: singular affine {lin.tolist()}")
    cols = lin / sizes
    off_axis = np.sort(np.abs(cols), axis=0)[:2]
    if off_axis.max() > oblique_tolerance:
        raise ValueError(f"{p}: oblique affine (off-axis components up to {off_axis.max():.3g}); "
                         "resample to an axis-aligned grid first")
    orient = nib.orientations
    ornt = orient.io_orientation(affine)
    transform = orient.ornt_transform(ornt, orient.axcodes2ornt(("L", "P", "I")))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    data = orient.apply_orientation(data, transform)
    new_sizes = np.empty(3)
    for axis in range(3):
        new_sizes[int(transform[axis, 0])] = sizes[axis]
    if not np.isfinite(data).all():
        raise ValueError(f"{p}: image contains NaN or infinite values")
    arr = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)
    return arr, ImageGeometry(arr.shape, (new_sizes[2], new_sizes[1], new_sizes[0]))
