"""Score-based priors: the denoiser contract, schedules, adapters, slice models and 3D priors.

``D(x, sigma) -> x0_hat`` (:mod:`.denoiser`) is the only thing samplers see; :mod:`.schedules`
maps VP times to VE noise levels, :mod:`.adapters` turns eps/v/score networks into denoisers,
:class:`ScoreModel` (:mod:`.model`) is the trainable slice prior, :mod:`.modelio` saves and
loads it without executing code, :class:`PerpendicularPrior3D` combines slice models into a 3D
denoiser and :mod:`.sampling` draws unconditional samples; :mod:`.lora` adds low-rank
adapters to a model without changing its weights.  At the prior boundary the models
take any in-plane size (:mod:`.padding`), :func:`check_prior_grid` / :func:`fit_prior_to_grid`
(:mod:`.grid`) check an image grid against the prior's training voxel size before any work, and
:class:`ResampledDenoiser` (:mod:`.resampling`) denoises on the prior's voxel size and
:class:`WindowedDenoiser` (:mod:`.window`) on a window around the object.
"""

from __future__ import annotations

from .adapters import EpsDenoiser, ScoreDenoiser, VDenoiser
from .denoiser import Denoiser, score_from_denoiser
from .grid import FIELD_OF_VIEW_RATIO, VOXEL_SIZE_TOLERANCE, check_prior_grid, fit_prior_to_grid
from .loading import load_denoiser, load_slice_prior
from .lora import LoRA, inject_lora, load_lora
from .model import ORIENTATIONS, ScoreModel, ScoreModelConfig
from .modelio import load_model, load_prior, save_model, save_prior
from .normalisation import IntensityNormalisation
from .prior3d import PerpendicularPrior3D, from_slices, to_slices
from .resampling import ResampledDenoiser
from .sampling import sampling_sigmas
from .schedules import (
                        ContinuousVP,
                        DiscreteVP,
                        ddpm_sigmas,
                        karras_sigmas,
                        schedule_from_dict,
                        vp_sigmas,
)
from .unet import UNet, UNetConfig
from .window import WindowedDenoiser, object_window

__all__ = [
    "Denoiser", "score_from_denoiser", "IntensityNormalisation",
    "ContinuousVP", "DiscreteVP", "schedule_from_dict", "vp_sigmas", "ddpm_sigmas",
    "karras_sigmas",
    "EpsDenoiser", "VDenoiser", "ScoreDenoiser",
    "UNet", "UNetConfig", "ScoreModel", "ScoreModelConfig", "ORIENTATIONS",
    "save_model", "load_model", "save_prior", "load_prior", "load_slice_prior", "load_denoiser",
    "PerpendicularPrior3D", "to_slices", "from_slices",
    "check_prior_grid", "fit_prior_to_grid", "ResampledDenoiser", "WindowedDenoiser",
    "object_window", "VOXEL_SIZE_TOLERANCE", "FIELD_OF_VIEW_RATIO",
    "sampling_sigmas", "LoRA", "inject_lora", "load_lora",
]


def __getattr__(name: str) -> object:
    """Deprecated aliases: ``sample`` and ``sample_grid_png`` moved to
    :mod:`sirf_diffusion.samplers.unconditional` (they run the reverse-diffusion loop)."""
    if name in ("sample", "sample_grid_png"):
        from . import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
