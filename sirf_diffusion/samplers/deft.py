"""PET-DEFT sampling pieces: the model's conditions of use and the conditioned denoiser.

PET-DEFT (Webber et al., MICCAI 2025, arXiv 2506.24034; DEFT, Denker et al., NeurIPS 2024)
needs no data-consistency rule: the data enter through the h-transform network inside the
denoiser (:class:`~sirf_diffusion.diffusion.htransform.DEFTDenoiser`), which the stepper calls
with the likelihood and normalisation of the run.  :func:`~.run.prepare` assembles it
(``method='deft'``) from the pieces here:

* :func:`resolve_deft_model`: the ``deft_model`` option (a folder, a loaded
  :class:`~sirf_diffusion.diffusion.deftio.DEFTModel`, or ``None`` for the shipped one);
* :func:`check_deft_data`: refuses an image grid or sinogram other than the model's training
  geometry (``ValueError``) and warns when the data's count level lies outside its dose range;
* :func:`deft_denoiser`: refuses a prior other than the one the h-network was trained against
  and wraps it;
* :class:`NoDataConsistency`: the identity rule (``x0' = x0``).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..diffusion.deftio import DEFTModel, load_deft_model
from ..diffusion.htransform import DEFTDenoiser, weights_fingerprint
from ..diffusion.normalisation import support_mask, well_sampled
from .loop import StepContext

__all__ = ["NoDataConsistency", "shipped_deft_model_dir", "resolve_deft_model",
           "estimate_dose", "check_deft_data", "deft_denoiser", "DOSE_TOLERANCE"]

#: Data whose estimated count level is outside ``[low / DOSE_TOLERANCE, high * DOSE_TOLERANCE]``
#: of the model's training dose range get a warning (the estimate is rough: about 10-20 %).
DOSE_TOLERANCE = 1.25


class NoDataConsistency:
    """``x0' = x0``: the data act through the conditional denoiser, not through a rule."""

    def __call__(self, x0: torch.Tensor, context: StepContext) -> torch.Tensor:
        return x0


def shipped_deft_model_dir() -> Path:
    """``sirf_diffusion/models/deft``: the h-network shipped for the shipped ``xy`` prior."""
    return Path(__file__).resolve().parents[1] / "models" / "deft"


def resolve_deft_model(model: DEFTModel | str | os.PathLike[str] | None,
                       precision: str = "auto") -> DEFTModel:
    """The DEFT model of the ``deft_model`` option (``None``: the shipped one)."""
    if isinstance(model, DEFTModel):
        return model
    folder = shipped_deft_model_dir() if model is None else Path(model)
    if model is None and not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no DEFT model is shipped with this installation; "
                                "train one with `sirf-diffusion train-deft` and pass its model "
                                "folder (deft_model=..., --deft-model)")
    return load_deft_model(folder, precision=precision)


def estimate_dose(likelihood: Any, image: torch.Tensor) -> float | None:
    """Count level (counts/mm^3) of the data: net trues ``sum(y) - sum(b)`` over the emission
    volume, the support of ``image`` (an initial reconstruction) times the voxel volume; ``None``
    when the likelihood has no data or additive term to read."""
    data = getattr(likelihood, "data", None)
    physics = getattr(likelihood, "physics", None)
    if data is None or physics is None:
        return None
    b = getattr(physics, "additive_term", None)
    trues = float(data.sum()) - (float(b.sum()) if b is not None else 0.0)
    eligible = well_sampled(likelihood.sensitivity(None, like=image))
    voxels = int(support_mask(image.reshape(likelihood.image_shape), eligible=eligible).sum())
    volume = voxels * math.prod(likelihood.voxel_size_mm)
    return trues / volume if volume > 0 else None


def check_deft_data(model: DEFTModel, likelihood: Any, image: torch.Tensor | None) -> float | None:
    """Refuse data on another geometry than the model's; warn outside its dose range.

    Returns the estimated count level (:func:`estimate_dose`; ``None`` without an image).

    Raises
    ------
    ValueError
        The image grid (shape, voxel size) or the sinogram shape differs from the model's.
    """
    geo = model.geometry
    shape = [int(v) for v in likelihood.image_shape]
    voxel = [float(v) for v in likelihood.voxel_size_mm]
    where = f" ({model.path})" if model.path is not None else ""
    if shape != list(geo["image_shape"]) or any(
            abs(a - b) > 1e-3 * b for a, b in zip(voxel, geo["voxel_size_mm"])):
        raise ValueError(f"the DEFT model{where} was trained for {geo.get('scanner')} images of "
                         f"{geo['image_shape']} voxels of {geo['voxel_size_mm']} mm, not "
                         f"{shape} voxels of {[round(v, 5) for v in voxel]} mm: train one for "
                         "this geometry with `sirf-diffusion train-deft`")
    data_shape = getattr(getattr(likelihood, "physics", None), "data_shape", None)
    if data_shape is not None and list(map(int, data_shape)) != list(geo["data_shape"]):
        raise ValueError(f"the DEFT model{where} was trained on sinograms of "
                         f"{geo['data_shape']} bins, not {list(map(int, data_shape))}")
    if image is None:
        return None
    dose = estimate_dose(likelihood, image)
    lo, hi = model.dose_range
    if dose is not None and not lo / DOSE_TOLERANCE <= dose <= hi * DOSE_TOLERANCE:
        warnings.warn(f"the data's count level (about {dose:.3g} counts/mm^3) is outside the "
                      f"DEFT model's training range {lo:g}-{hi:g} counts/mm^3{where}: expect "
                      "a worse reconstruction than inside it", stacklevel=3)
    return dose


def deft_denoiser(model: DEFTModel, prior: Any) -> DEFTDenoiser:
    """``prior`` conditioned by the h-network of ``model``; refuses a prior other than the
    one the h-network was trained against (its weights' fingerprint)."""
    if not isinstance(prior, torch.nn.Module) or \
            weights_fingerprint(prior) != model.prior_fingerprint:
        where = f" ({model.path})" if model.path is not None else ""
        raise ValueError(f"the DEFT model{where} was trained against another prior than the one "
                         "given (its weights differ): use the prior it was trained with (the "
                         "shipped xy prior for the shipped DEFT model) or retrain it with "
                         "`sirf-diffusion train-deft --prior`")
    hnet = model.hnet
    p = next(prior.parameters(), None)
    if p is not None:
        hnet.to(p.device)
    return DEFTDenoiser(prior, hnet)
