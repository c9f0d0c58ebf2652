"""Loading trained priors: a slice model, or the denoiser an image of ``z`` slices needs.

A *prior folder* holds one model folder per slice orientation (``xy``, ``yz``, ``xz``; the
layout :func:`~.modelio.save_prior` writes and ``sirf-diffusion train`` exports); a *model
folder* holds one ``config.json`` + ``model.safetensors`` pair (:func:`~.modelio.save_model`).
Both loaders accept either; ``None`` means the prior shipped with the package
(:func:`sirf_diffusion.models.default_prior_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..models import default_prior_dir
from .model import ORIENTATIONS, ScoreModel
from .modelio import load_model
from .prior3d import PerpendicularPrior3D

__all__ = ["load_slice_prior", "load_denoiser"]


def _default_prior_dir(orientation: str = "xy") -> Path:
    """Model folder of ``orientation`` in the prior shipped with the package."""
    return default_prior_dir() / orientation


def load_slice_prior(model_dir: str | os.PathLike[str] | None = None,
                     orientation: str = "xy", precision: str = "auto") -> ScoreModel:
    """The 2D score model of ``orientation``, in evaluation mode.

    Parameters
    ----------
    model_dir
        A model folder, or a prior folder with one sub-folder per orientation; ``None``: the
        prior shipped with the package.
    orientation
        ``'xy'`` (axial slices), ``'yz'`` or ``'xz'``; used to pick the sub-folder of a prior
        folder.
    precision
        The network's run-time precision (:mod:`~.precision`): ``'auto'`` (bfloat16 where
        the hardware runs it natively), ``'fp32'`` or ``'bf16'``.

    Raises
    ------
    FileNotFoundError
        ``model_dir`` holds no model (the message says how to get one).
    ValueError
        ``orientation`` is unknown, or the model files are invalid (:func:`~.modelio.load_model`).
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    d = Path(model_dir) if model_dir is not None else _default_prior_dir(orientation)
    if (d / orientation / "config.json").is_file():
        d = d / orientation
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"no score model in {d}: train one with `sirf-diffusion train "
                                "--out DIR` or pass --model")
    return load_model(d, precision=precision).eval()


def load_denoiser(model_dir: str | os.PathLike[str] | None = None, num_slices: int = 1,
                  precision: str = "auto") -> ScoreModel | PerpendicularPrior3D:
    """The denoiser for images of ``num_slices`` axial slices.

    One slice: the ``xy`` slice model.  More: a :class:`~.prior3d.PerpendicularPrior3D` of every
    orientation found in ``model_dir`` (default: the shipped prior).  ``precision`` as for
    :func:`load_slice_prior`.

    Raises
    ------
    FileNotFoundError
        No model at all (3D) or no ``xy`` model (2D) in ``model_dir``.
    """
    if num_slices == 1:
        return load_slice_prior(model_dir, "xy", precision)
    models = {}
    for o in ORIENTATIONS:
        try:
            models[o] = load_slice_prior(model_dir, o, precision)
        except FileNotFoundError:
            continue
    if not models:
        where = model_dir if model_dir is not None else _default_prior_dir("xy").parent
        raise FileNotFoundError(f"no score model in {where} for a 3D reconstruction "
                                f"(expected sub-folders {', '.join(ORIENTATIONS)})")
    return PerpendicularPrior3D(models)
