"""MR (T1) registration of one subject to another, and warping of images with the result.

Personalised priors (Webber et al., "Personalized MR-informed diffusion models for 3D PET image
reconstruction", IEEE TRPMS 2025, arXiv:2506.03804) register every training subject's MR to the
target subject's MR and warp the training subject's PET with the same transform.  This module
does the registration with SimpleITK (an optional dependency, imported on first use; install
with ``pip install "sirf-diffusion[personalise]"``), in three kinds:

``"none"``
    the identity (the moving image resampled as it is);
``"affine"``
    a 12 (3D) or 6 (2D) parameter affine map ``A``, initialised by the images' centres of mass,
    fitted by gradient descent on the mean squared T1 difference over a three-level pyramid;
``"bspline"``
    ``A`` followed by a cubic B-spline free-form deformation ``B`` (control points every
    ``bspline_spacing_mm``) fitted by L-BFGS-B on the same metric: ``T(p) = A(B(p))``;
``"demons"``
    ``A`` followed by a diffeomorphic demons displacement ``u`` (Vercauteren et al.,
    NeuroImage 45:S61-S72, 2009) between the fixed T1 and the affinely resampled moving T1:
    ``T(p) = A(p + u(p))``.

Images are arrays ``[z, y, x]`` on one grid with voxel sizes ``(vz, vy, vx)`` in mm; a grid with
one plane is registered in 2D (the transaxial plane).  ``T`` maps points of the *fixed*
(target) grid to the *moving* subject, so a moving image ``m`` is brought onto the target as
``m(T(p))`` (:meth:`Registration.warp`).  Every metric is evaluated on all voxels (no random
sampling), so a registration is a deterministic function of its inputs and settings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

__all__ = ["RegistrationKind", "REGISTRATION_KINDS", "Registration", "register_t1", "dice",
           "require_simpleitk"]

RegistrationKind = Literal["none", "affine", "bspline", "demons"]
REGISTRATION_KINDS: tuple[str, ...] = get_args(RegistrationKind)


def require_simpleitk() -> Any:
    """``import SimpleITK`` with an install hint when it is missing."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ImportError("MR registration needs SimpleITK: pip install "
                          "'sirf-diffusion[personalise]' (or pip install SimpleITK)") from None
    return sitk


def _check_pair(fixed: np.ndarray, moving: np.ndarray,
                voxel_size_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray, tuple]:
    f = np.asarray(fixed, dtype=np.float32)
    m = np.asarray(moving, dtype=np.float32)
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"fixed and moving images must both be [z, y, x] of one shape, got "
                         f"{f.shape} and {m.shape}")
    vox = tuple(float(v) for v in voxel_size_mm)
    if len(vox) != 3 or not all(np.isfinite(v) and v > 0 for v in vox):
        raise ValueError(f"voxel_size_mm must be three positive numbers (vz, vy, vx), got "
                         f"{voxel_size_mm!r}")
    for name, a in (("fixed", f), ("moving", m)):
        if not np.isfinite(a).all():
            raise ValueError(f"the {name} T1 image has NaN or infinite values")
        if not a.max() > a.min():
            raise ValueError(f"the {name} T1 image is constant: nothing to register")
    return f, m, vox


def _to_sitk(sitk: Any, a: np.ndarray, vox: tuple[float, float, float]) -> Any:
    """``[z, y, x]`` array -> SimpleITK image (2D when there is one plane), origin 0."""
    if a.shape[0] == 1:
        img = sitk.GetImageFromArray(np.ascontiguousarray(a[0], dtype=np.float32))
        img.SetSpacing((vox[2], vox[1]))
    else:
        img = sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=np.float32))
        img.SetSpacing((vox[2], vox[1], vox[0]))
    return img


def _from_sitk(sitk: Any, img: Any, shape: tuple[int, ...]) -> np.ndarray:
    return sitk.GetArrayFromImage(img).astype(np.float32).reshape(shape)


@dataclass
class Registration:
    """A fitted map ``T`` from the fixed (target) grid to a moving subject.

    Attributes
    ----------
    kind
        ``"none"``, ``"affine"``, ``"bspline"`` or ``"demons"``.
    shape, voxel_size_mm
        The grid both images live on.
    transform
        The SimpleITK transform (``None`` for ``"none"``).
    time_s
        Wall time of the fit.
    metric
        Mean squared T1 difference after warping (the quantity fitted).
    """

    kind: str
    shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    transform: Any = None
    time_s: float = 0.0
    metric: float = float("nan")
    info: dict[str, Any] = field(default_factory=dict)

    def warp(self, image: np.ndarray, *, interpolation: Literal["linear", "nearest"] = "linear"
             ) -> np.ndarray:
        """``image(T(p))`` on the fixed grid: a moving-subject image brought onto the target.

        Points mapped outside the moving grid get 0.  ``"nearest"`` keeps label and mask values.
        """
        a = np.asarray(image, dtype=np.float32)
        if a.shape != self.shape:
            raise ValueError(f"image has shape {a.shape}; the registration is on {self.shape}")
        if self.transform is None:
            return a.copy()
        if interpolation not in ("linear", "nearest"):
            raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
        sitk = require_simpleitk()
        img = _to_sitk(sitk, a, self.voxel_size_mm)
        method = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
        out = sitk.Resample(img, img, self.transform, method, 0.0, sitk.sitkFloat32)
        return _from_sitk(sitk, out, self.shape)


def _affine(sitk: Any, fixed: Any, moving: Any, iterations: int, threads: int) -> Any:
    dim = fixed.GetDimension()
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(dim),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(threads)
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=iterations,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    return reg.Execute(fixed, moving)


def _bspline(sitk: Any, fixed: Any, moving: Any, affine: Any, spacing_mm: float,
             iterations: int, threads: int) -> Any:
    extent = [n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(e / spacing_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(threads)
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-6, numberOfIterations=iterations,
                             maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=
                             4 * iterations)
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetMovingInitialTransform(affine)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    composite = sitk.CompositeTransform(affine)
    composite.AddTransform(bspline)  # applied first: T(p) = A(B(p))
    return composite


def _demons(sitk: Any, fixed: Any, moving: Any, affine: Any, sigma_mm: float,
            iterations: int, threads: int) -> Any:
    moved = sitk.Resample(moving, fixed, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfThreads(threads)
    demons.SetNumberOfIterations(iterations)
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(sigma_mm / float(np.mean(fixed.GetSpacing())))
    # a multi-resolution start (half resolution, then full) avoids local minima of large shifts
    field_img = None
    for shrink in (2, 1):
        f = sitk.Shrink(fixed, [shrink] * fixed.GetDimension()) if shrink > 1 else fixed
        m = sitk.Shrink(moved, [shrink] * fixed.GetDimension()) if shrink > 1 else moved
        if field_img is not None:
            field_img = sitk.Resample(field_img, f, sitk.Transform(), sitk.sitkLinear, 0.0,
                                      field_img.GetPixelID())
            field_img = demons.Execute(f, m, field_img)
        else:
            field_img = demons.Execute(f, m)
    field_img = sitk.Cast(field_img, sitk.sitkVectorFloat64)
    displacement = sitk.DisplacementFieldTransform(field_img)
    composite = sitk.CompositeTransform(affine)
    composite.AddTransform(displacement)  # applied first: T(p) = A(p + u(p))
    return composite


def register_t1(fixed: np.ndarray, moving: np.ndarray, voxel_size_mm: Sequence[float], *,
                kind: RegistrationKind = "demons", affine_iterations: int = 200,
                deformable_iterations: int = 50, bspline_spacing_mm: float = 20.0,
                demons_sigma_mm: float = 3.0, threads: int = 1) -> Registration:
    """Register the ``moving`` subject's T1 to the ``fixed`` (target) T1.

    Parameters
    ----------
    fixed, moving
        T1 images ``[z, y, x]`` on one grid (one plane: 2D registration).
    voxel_size_mm
        ``(vz, vy, vx)``.
    kind
        ``"none"``, ``"affine"``, ``"bspline"`` or ``"demons"`` (module docstring).
    affine_iterations, deformable_iterations
        Iteration limits of the affine fit (per pyramid level) and of the deformable fit (per
        level: B-spline L-BFGS-B iterations, or demons iterations).
    bspline_spacing_mm, demons_sigma_mm
        B-spline control-point spacing; Gaussian smoothing of the demons field (mm).
    threads
        Threads SimpleITK may use (results do not depend on it beyond float rounding).

    Returns
    -------
    Registration
        ``warp`` brings the moving subject's images onto the fixed grid.
    """
    if kind not in REGISTRATION_KINDS:
        raise ValueError(f"registration kind must be one of {REGISTRATION_KINDS}, got {kind!r}")
    for name, v in (("affine_iterations", affine_iterations),
                    ("deformable_iterations", deformable_iterations), ("threads", threads)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    for name, v in (("bspline_spacing_mm", bspline_spacing_mm),
                    ("demons_sigma_mm", demons_sigma_mm)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be > 0, got {v!r}")
    f, m, vox = _check_pair(fixed, moving, voxel_size_mm)
    shape = tuple(int(n) for n in f.shape)
    t0 = time.perf_counter()
    transform = None
    if kind != "none":
        sitk = require_simpleitk()
        fi, mi = _to_sitk(sitk, f, vox), _to_sitk(sitk, m, vox)
        transform = _affine(sitk, fi, mi, affine_iterations, threads)
        if kind == "bspline":
            transform = _bspline(sitk, fi, mi, transform, bspline_spacing_mm,
                                 deformable_iterations, threads)
        elif kind == "demons":
            transform = _demons(sitk, fi, mi, transform, demons_sigma_mm,
                                deformable_iterations, threads)
    result = Registration(kind, shape, vox, transform)  # type: ignore[arg-type]
    result.time_s = time.perf_counter() - t0
    result.metric = float(np.mean((result.warp(m) - f) ** 2))
    return result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of two boolean masks (1 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
