"""Can this prior denoise this image grid?  The up-front check and the fitting of a prior to a grid.

Any in-plane size runs (the models pad and crop, :mod:`.padding`), but some combinations cannot
run at all and others run at the wrong anatomical scale:

* a slice (2D) model cannot denoise a volume of several slices, and a
  :class:`~.prior3d.PerpendicularPrior3D` needs a volume: :class:`ValueError`;
* a prior learns anatomy at its training voxel size, recorded by :func:`~.training.train` in
  the model's ``config.json`` (``model.training_data.voxel_size_mm``, ``(vz, vy, vx)``; the
  shipped prior: the simulated brains' mMR grid ``(2.03125, 2.08626, 2.08626)`` mm, 112 x 112
  slices).  When the image voxel size differs from it by more than :data:`VOXEL_SIZE_TOLERANCE`
  (10 %) along an axis the prior's slices span, a brain looks larger or smaller to the prior
  than any brain it was trained on: a warning, with the remedy ``resample=True``
  (:class:`~.resampling.ResampledDenoiser`);
* an in-plane field of view more than :data:`FIELD_OF_VIEW_RATIO` times the prior's training
  field of view (112 x 112 slices of 2.08626 mm: 234 mm for the shipped prior) is mostly
  background, which degrades the prior's estimate inside the object (:mod:`.window`): a
  warning, with the remedy ``support=`` (a mask of the object), which denoises on a window
  around it (:class:`~.window.WindowedDenoiser`).

:func:`check_prior_grid` does the check without running anything, so a command line can call
it before expensive work; :func:`fit_prior_to_grid` applies it: raises, resamples on request,
and issues the remaining messages as :func:`warnings.warn`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .denoiser import Denoiser, DenoiserWrapper
from .model import ScoreModelConfig
from .prior3d import PerpendicularPrior3D
from .resampling import ResampledDenoiser, as_voxel_size
from .window import WindowedDenoiser, object_window

__all__ = ["VOXEL_SIZE_TOLERANCE", "FIELD_OF_VIEW_RATIO", "slice_models", "training_voxel_size",
           "prior_voxel_size", "field_of_view_ratio", "check_prior_grid", "fit_prior_to_grid"]

#: Largest relative difference between image and training voxel sizes used without a warning.
VOXEL_SIZE_TOLERANCE = 0.10
#: Largest ratio of the image's in-plane field of view to the prior's used without a warning
#: or a window (128 x 128 simulated cases: 1.14).
FIELD_OF_VIEW_RATIO = 1.25
#: Axes of ``(z, y, x)`` spanned by the slices of each orientation.
_PLANE_AXES = {"xy": (1, 2), "yz": (0, 1), "xz": (0, 2)}
_AXIS_NAMES = "zyx"


def _chain(denoiser: Denoiser) -> list[Any]:
    """``denoiser`` and the denoisers it wraps (:class:`~.denoiser.DenoiserWrapper`), outermost
    first."""
    out = [denoiser]
    while isinstance(out[-1], DenoiserWrapper):
        out.append(out[-1].denoiser)
    return out


def slice_models(denoiser: Denoiser) -> dict[str, Any]:
    """``{orientation: slice model}`` behind ``denoiser`` (a :class:`~.model.ScoreModel` or a
    :class:`~.prior3d.PerpendicularPrior3D`, possibly inside resampling / window wrappers);
    empty for other denoisers."""
    denoiser = _chain(denoiser)[-1]
    if isinstance(denoiser, PerpendicularPrior3D):
        return dict(denoiser.models)
    config = getattr(denoiser, "config", None)
    if isinstance(config, ScoreModelConfig):
        return {config.orientation: denoiser}
    return {}


def training_voxel_size(model: Any) -> tuple[float, float, float] | None:
    """``(vz, vy, vx)`` the slice model was trained at (its config's ``training_data``), or
    ``None`` when not recorded."""
    config = getattr(model, "config", None)
    data = getattr(config, "training_data", None)
    v = data.get("voxel_size_mm") if isinstance(data, dict) else None
    try:
        return as_voxel_size(v, "voxel_size_mm") if v is not None else None
    except ValueError:
        return None


def prior_voxel_size(denoiser: Denoiser) -> tuple[float, float, float] | None:
    """The training voxel size of the prior's slice models (``None`` when none records it).

    Raises
    ------
    ValueError
        The orientations were trained at different voxel sizes (no single grid to resample to).
    """
    sizes = {o: v for o, m in slice_models(denoiser).items()
             if (v := training_voxel_size(m)) is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the prior's orientations were trained at different voxel sizes "
                         f"{_fmt_by_orientation(sizes)}; there is no single grid to resample to")
    return next(iter(sizes.values()), None)


def _fmt(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{a:g}" for a in v) + ")"


def _fmt_by_orientation(sizes: dict[str, tuple[float, float, float]]) -> str:
    return ", ".join(f"{o}: {_fmt(v)} mm" for o, v in sizes.items())


def _shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        s = tuple(int(n) for n in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (z, y, x), got {image_shape!r}") from None
    if len(s) != 3 or min(s) < 1:
        raise ValueError(f"image_shape must be three positive sizes (z, y, x), "
                         f"got {image_shape!r}")
    return s  # type: ignore[return-value]


def check_prior_grid(denoiser: Denoiser, image_shape: Sequence[int],
                     voxel_size_mm: Sequence[float], *,
                     tolerance: float = VOXEL_SIZE_TOLERANCE,
                     field_of_view: bool = True) -> list[str]:
    """Check, without running the network, that ``denoiser`` can denoise images of
    ``image_shape`` ``(z, y, x)`` with voxels of ``voxel_size_mm`` ``(vz, vy, vx)``.

    ``field_of_view=False`` leaves out the field-of-view message (for callers that window the
    prior themselves, as :func:`~sirf_diffusion.samplers.run.prepare` does).

    Returns
    -------
    list[str]
        Warnings, one sentence each (empty when the grid is fine): the image voxel size differs
        from a slice model's training voxel size by more than ``tolerance`` along an axis its
        slices span (none when ``denoiser`` already resamples to that voxel size), an in-plane
        field of view more than :data:`FIELD_OF_VIEW_RATIO` times the xy model's training field
        of view (none when ``denoiser`` is windowed), a model that records no training voxel
        size, an axial image denoised by a non-axial slice model.

    Raises
    ------
    ValueError
        For what cannot run: a bad ``image_shape`` / ``voxel_size_mm``, a slice (2D) model for
        a volume of several slices, a perpendicular (3D) prior for a single slice.
    """
    shape = _shape(image_shape)
    voxel = as_voxel_size(voxel_size_mm, "voxel_size_mm")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    models = slice_models(denoiser)
    chain = _chain(denoiser)
    base = chain[-1]
    if isinstance(base, PerpendicularPrior3D) and shape[0] == 1:
        raise ValueError(f"a perpendicular (3D) prior denoises volumes, but the image "
                         f"{shape} has a single slice: use its xy slice model")
    if not isinstance(base, PerpendicularPrior3D) and models and shape[0] > 1:
        raise ValueError(f"a slice (2D) prior cannot denoise a volume of {shape[0]} slices "
                         f"{shape}: wrap it in PerpendicularPrior3D (a prior folder with "
                         "xy/yz/xz models)")
    messages = []
    image_voxel = voxel
    for wrapper in chain:
        if isinstance(wrapper, ResampledDenoiser):  # the grid the prior sees
            voxel = tuple(wrapper.prior_voxel_size_mm[a] if a in wrapper.axes else voxel[a]
                          for a in range(3))
    windowed = any(isinstance(w, WindowedDenoiser) for w in chain)
    for o, model in models.items():
        if shape[0] == 1 and o != "xy":
            messages.append(f"the {o} slice model denoises an axial image: it was trained on "
                            f"{o} slices")
        trained = training_voxel_size(model)
        if trained is None:
            messages.append(f"the {o} prior records no training voxel size, so the image voxel "
                            f"size {_fmt(voxel)} mm cannot be checked against it")
            continue
        axes = [a for a in _PLANE_AXES[o] if shape[0] > 1 or a > 0]
        rel = {a: abs(voxel[a] - trained[a]) / trained[a] for a in axes}
        off = [a for a in axes if rel[a] > tolerance]
        if off:
            worst = max(rel[a] for a in off)
            messages.append(
                f"the image voxel size {_fmt(voxel)} mm differs from the voxel size "
                f"{_fmt(trained)} mm the {o} prior was trained on by {worst:.0%} along "
                f"{'/'.join(_AXIS_NAMES[a] for a in off)} (more than {tolerance:.0%}): the "
                "prior sees anatomy at the wrong scale; resample to the prior's voxel size at "
                "the prior boundary (resample=True) or use a prior trained at this voxel size")
        if o == "xy" and not windowed and field_of_view:
            image_fov = (shape[1] * image_voxel[1], shape[2] * image_voxel[2])
            prior_fov = _training_fov(model, trained)
            ratio = max(a / b for a, b in zip(image_fov, prior_fov))
            if ratio > FIELD_OF_VIEW_RATIO:
                messages.append(
                    f"the image field of view {image_fov[0]:.0f} x {image_fov[1]:.0f} mm is "
                    f"{ratio:.1f} times the {prior_fov[0]:.0f} x {prior_fov[1]:.0f} mm of the "
                    "prior's training slices: mostly background, which degrades the prior's "
                    "estimate inside the object; pass support= (a mask of the object) to "
                    "denoise on a window around it")
    return messages


def field_of_view_ratio(denoiser: Denoiser, image_shape: Sequence[int],
                        voxel_size_mm: Sequence[float]) -> float | None:
    """In-plane field of view of the image over that of the xy model's training slices (the
    larger of the two axes); ``None`` when the denoiser has no xy model recording its training
    voxel size, or is already windowed."""
    if any(isinstance(w, WindowedDenoiser) for w in _chain(denoiser)):
        return None
    model = slice_models(denoiser).get("xy")
    trained = None if model is None else training_voxel_size(model)
    if trained is None:
        return None
    shape = _shape(image_shape)
    voxel = as_voxel_size(voxel_size_mm, "voxel_size_mm")
    prior_fov = _training_fov(model, trained)
    return max(shape[1] * voxel[1] / prior_fov[0], shape[2] * voxel[2] / prior_fov[1])


def _training_fov(model: Any, trained: tuple[float, float, float]) -> tuple[float, float]:
    """In-plane field of view (mm) of an xy model's training slices."""
    h, w = model.config.image_size
    return h * trained[1], w * trained[2]


def _min_window(denoiser: Denoiser, voxel: tuple[float, float, float]) -> tuple[int, int]:
    """Smallest window ``(h, w)`` (image voxels) covering the training field of view of every
    slice model along ``y`` and ``x``."""
    least = [1, 1]
    for o, model in slice_models(denoiser).items():
        trained = training_voxel_size(model) or voxel
        size = dict(zip(_PLANE_AXES[o], model.config.image_size))
        for i, axis in enumerate((1, 2)):
            if axis in size:
                need = math.ceil(size[axis] * trained[axis] / voxel[axis] - 1e-6)
                least[i] = max(least[i], need)
    return least[0], least[1]


def fit_prior_to_grid(denoiser: Denoiser, image_shape: Sequence[int],
                      voxel_size_mm: Sequence[float], *, resample: bool = False,
                      support: torch.Tensor | None = None,
                      tolerance: float = VOXEL_SIZE_TOLERANCE, warn: bool = True) -> Denoiser:
    """The denoiser to use for images of ``image_shape`` / ``voxel_size_mm``.

    Parameters
    ----------
    denoiser
        The prior (a :class:`~.model.ScoreModel` or :class:`~.prior3d.PerpendicularPrior3D`).
    image_shape, voxel_size_mm
        ``(z, y, x)`` and ``(vz, vy, vx)`` mm of the images to reconstruct.
    resample
        Denoise on the prior's training voxel size
        (:class:`~.resampling.ResampledDenoiser`, value-preserving).
    support
        Boolean mask ``[z, y, x]`` (or ``[y, x]``) of the object, e.g. the voxels of an OSEM
        image above a fraction of its maximum inside the well-sampled field of view: when the
        field of view is larger than the prior's, denoise on a window around it
        (:class:`~.window.WindowedDenoiser`, zero activity outside).
    tolerance
        Relative voxel-size difference tolerated without a warning.
    warn
        Issue the messages (``False``: the caller reports them, e.g. the command line).

    The messages of :func:`check_prior_grid` for the returned denoiser are issued as
    :func:`warnings.warn`.

    Raises
    ------
    ValueError
        What :func:`check_prior_grid` raises; ``resample`` for a prior that records no training
        voxel size; a ``support`` whose in-plane shape is not the image's.
    """
    check_prior_grid(denoiser, image_shape, voxel_size_mm, tolerance=tolerance)  # raises first
    if resample:
        target = prior_voxel_size(denoiser)
        if target is None:
            raise ValueError("cannot resample to the prior's voxel size: the prior records no "
                             "training voxel size (model.training_data.voxel_size_mm in its "
                             "config.json)")
        axes = sorted({a for o in slice_models(denoiser) for a in _PLANE_AXES[o]})
        denoiser = ResampledDenoiser(denoiser, voxel_size_mm, target, axes=axes)
    if support is not None:
        shape = _shape(image_shape)
        if tuple(support.shape[-2:]) != shape[1:]:
            raise ValueError(f"support of shape {tuple(support.shape)} does not match the "
                             f"image {shape}")
        voxel = as_voxel_size(voxel_size_mm, "voxel_size_mm")
        window = object_window(support, _min_window(denoiser, voxel))
        if window is not None:
            denoiser = WindowedDenoiser(denoiser, window)
    if warn:
        for message in check_prior_grid(denoiser, image_shape, voxel_size_mm,
                                        tolerance=tolerance):
            warnings.warn(message, stacklevel=2)
    return denoiser
