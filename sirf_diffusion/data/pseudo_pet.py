"""Target-specific training sets: training subjects warped onto a target's MR, and pseudo-PET.

Personalised priors (Webber et al., IEEE TRPMS 2025, arXiv:2506.03804, Sec. II-C) are trained on
images that look like the *target* subject's anatomy:

1. :func:`warp_training_subjects`: every training-split subject's T1 is registered to the
   target's T1 (:func:`~sirf_diffusion.data.registration.register_t1`) and its PET (the
   lesion-free phantom activity, on the target's grid) is warped with the same transform;
2. :func:`make_pseudo_pet`: pseudo-PET images are random convex combinations of random subsets
   of the warped PET images,

   .. math::  \\tilde x_m = \\sum_{i \\in S_m} w_{m,i}\\, x_i, \\qquad
              S_m \\subset \\{1..N\\},\\ |S_m| = k_m, \\qquad
              (w_{m,i})_{i \\in S_m} \\sim \\mathrm{Dirichlet}(\\alpha \\mathbf 1_{k_m}),

   with ``k_m`` uniform in ``subset_size`` and the subset uniform among the ``k_m``-subsets.
   Every draw comes from ``numpy.random.SeedSequence((seed, m))``, so image ``m`` is the same
   whatever the number of images asked for.

Only training-split seeds are accepted (:func:`~sirf_diffusion.data.splits.check_split`): a
personalised prior never sees a validation or test subject, the target included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..physics.geometry import ImageGeometry
from .registration import REGISTRATION_KINDS, RegistrationKind, dice, register_t1
from .splits import check_split

__all__ = ["WarpedSubjects", "warp_training_subjects", "PseudoPETSet", "make_pseudo_pet",
           "phantom_on_grid"]


def phantom_on_grid(seed: int, geometry: ImageGeometry, tracer: str) -> Any:
    """The lesion-free phantom of subject ``seed`` on ``geometry``: a single plane is the 2D
    slice the simulator makes for that grid (``sirf-diffusion simulate --dims 2``), more planes
    the 3D volume."""
    from .phantoms import brain_phantom

    dims = 2 if geometry.shape[0] == 1 else 3
    return brain_phantom(int(seed), tracer=tracer, dims=dims, shape=tuple(geometry.shape),
                         voxel_size_mm=tuple(geometry.voxel_size_mm))


@dataclass
class WarpedSubjects:
    """Training subjects brought onto the target's grid.

    Attributes
    ----------
    pet
        ``[N, z, y, x]`` warped PET (phantom activity, tracer units).
    seeds
        ``[N]`` subject seeds (training split).
    kind
        Registration kind used.
    time_s
        Registration wall time per subject (the fits only, not the phantoms).
    t1_mse
        Mean squared T1 difference to the target after warping, per subject.
    gm_dice
        Grey-matter Dice to the target after warping, per subject (``None`` without a target
        grey-matter mask).
    """

    pet: np.ndarray
    seeds: list[int]
    kind: str
    time_s: list[float]
    t1_mse: list[float]
    gm_dice: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals and means (recorded beside a personalised prior)."""
        out: dict[str, Any] = {"kind": self.kind, "num_subjects": len(self.seeds),
                               "seeds": list(self.seeds),
                               "registration_time_s": round(float(sum(self.time_s)), 3),
                               "mean_t1_mse": float(np.mean(self.t1_mse))}
        if self.gm_dice is not None:
            out["gm_dice"] = [round(float(d), 4) for d in self.gm_dice]
            out["mean_gm_dice"] = float(np.mean(self.gm_dice))
        return out


def warp_training_subjects(target_t1: np.ndarray, geometry: ImageGeometry, seeds: Sequence[int],
                           *, tracer: str, kind: RegistrationKind = "demons",
                           target_gm: np.ndarray | None = None,
                           progress: Callable[[int, int], None] | None = None,
                           **registration: Any) -> WarpedSubjects:
    """Register every subject's T1 to ``target_t1`` and warp its PET with the same transform.

    Parameters
    ----------
    target_t1
        The target's T1 ``[z, y, x]`` on ``geometry`` (a case's ``t1.hv``).
    geometry
        The target's image grid; the subjects are generated on it (:func:`phantom_on_grid`).
    seeds
        Training-split subject seeds (anything else raises ``ValueError``).
    tracer
        Tracer of the subjects' PET (the target's).
    kind
        ``"none"``, ``"affine"``, ``"bspline"`` or ``"demons"``.
    target_gm
        Optional boolean grey-matter mask of the target: the Dice of each warped subject's grey
        matter (its fraction warped linearly, thresholded at 1/2) is recorded.
    progress
        Called with ``(done, total)`` after each subject.
    registration
        Further keywords of :func:`~sirf_diffusion.data.registration.register_t1`.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("warp_training_subjects needs at least one subject seed")
    check_split(seeds, "train")
    if kind not in REGISTRATION_KINDS:
        raise ValueError(f"registration kind must be one of {REGISTRATION_KINDS}, got {kind!r}")
    t1 = np.asarray(target_t1, dtype=np.float32)
    geometry.check_image_shape(t1.shape, "target T1")
    pets, times, mses, dices = [], [], [], []
    for n, s in enumerate(seeds):
        ph = phantom_on_grid(s, geometry, tracer)
        reg = register_t1(t1, ph.t1, geometry.voxel_size_mm, kind=kind, **registration)
        pets.append(np.maximum(reg.warp(ph.activity), 0.0))
        times.append(reg.time_s)
        mses.append(reg.metric)
        if target_gm is not None:
            dices.append(dice(reg.warp(ph.fractions["gm"]) >= 0.5, target_gm))
        if progress is not None:
            progress(n + 1, len(seeds))
    return WarpedSubjects(np.stack(pets).astype(np.float32), seeds, kind, times, mses,
                          dices if target_gm is not None else None)


@dataclass
class PseudoPETSet:
    """Pseudo-PET images and how they were mixed.

    Attributes
    ----------
    images
        ``[M, z, y, x]`` pseudo-PET images.
    weights
        ``[M, N]`` mixing weights (rows sum to 1; 0 outside each image's subset).
    seed, subset_size, concentration
        The draw's settings.
    """

    images: np.ndarray
    weights: np.ndarray
    seed: int
    subset_size: tuple[int, int]
    concentration: float

    def describe(self) -> dict[str, Any]:
        return {"num_images": int(self.images.shape[0]),
                "num_subjects": int(self.weights.shape[1]), "seed": self.seed,
                "subset_size": list(self.subset_size), "concentration": self.concentration,
                "mixing": "Dirichlet(concentration) weights of a uniform random subset"}


def make_pseudo_pet(warped: np.ndarray, num_images: int, *, seed: int,
                    subset_size: tuple[int, int] | None = None,
                    concentration: float = 1.0) -> PseudoPETSet:
    """Random weighted averages of random subsets of ``warped`` (module docstring).

    Parameters
    ----------
    warped
        ``[N, ...]`` warped PET images (N >= 1).
    num_images
        ``M``, the number of pseudo-PET images.
    seed
        Seed of every draw (image ``m`` uses ``SeedSequence((seed, m))``).
    subset_size
        ``(k_min, k_max)`` with ``1 <= k_min <= k_max <= N``; default ``(min(2, N), N)``.
    concentration
        Dirichlet parameter ``alpha > 0`` (1: uniform on the simplex; large: near-equal
        weights; small: near one-hot).
    """
    x = np.asarray(warped, dtype=np.float32)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"warped must be [N, ...] with N >= 1, got shape {x.shape}")
    n = x.shape[0]
    if isinstance(num_images, bool) or int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    lo, hi = (min(2, n), n) if subset_size is None else (int(subset_size[0]),
                                                          int(subset_size[1]))
    if not 1 <= lo <= hi <= n:
        raise ValueError(f"subset_size must satisfy 1 <= k_min <= k_max <= {n} (the number of "
                         f"warped images), got {subset_size}")
    if not (np.isfinite(concentration) and concentration > 0):
        raise ValueError(f"concentration must be > 0, got {concentration!r}")
    weights = np.zeros((int(num_images), n), dtype=np.float64)
    for m in range(int(num_images)):
        rng = np.random.default_rng(np.random.SeedSequence((int(seed), m)))
        k = int(rng.integers(lo, hi + 1))
        subset = rng.choice(n, size=k, replace=False)
        weights[m, subset] = rng.dirichlet(np.full(k, float(concentration)))
    images = np.tensordot(weights, x.astype(np.float64), axes=(1, 0)).astype(np.float32)
    return PseudoPETSet(images, weights, int(seed), (lo, hi), float(concentration))
