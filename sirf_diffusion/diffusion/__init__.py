"""Score-based priors: the denoiser contract, schedules, adapters, slice models and 3D priors.

``D(x, sigma) -> x0_hat`` (:mod:`.denoiser`) is the only thing samplers see; :mod:`.schedules`
maps VP times to VE noise levels, :mod:`.adapters` turns eps/v/score networks into denoisers,
:class:`ScoreModel` (:mod:`.model`) is the trainable slice prior, :mod:`.modelio` saves and
loads it without executing code, :class:`PerpendicularPrior3D` combines slice models into a 3D
denoiser and :mod:`.sampling` draws unconditional samples.
"""

from __future__ import annotations

from .adapters import EpsDenoiser, ScoreDenoiser, VDenoiser
from .denoiser import Denoiser, score_from_denoiser
from .loading import load_denoiser, load_slice_prior
from .model import ORIENTATIONS, ScoreModel, ScoreModelConfig
from .modelio import load_model, load_prior, save_model, save_prior
from .normalisation import IntensityNormalisation
from .prior3d import PerpendicularPrior3D, from_slices, to_slices
from .sampling import sample, sample_grid_png, sampling_sigmas
from .schedules import (
                        ContinuousVP,
                        DiscreteVP,
                        ddpm_sigmas,
                        karras_sigmas,
                        schedule_from_dict,
                        vp_sigmas,
)
from .unet import UNet, UNetConfig

__all__ = [
    "Denoiser", "score_from_denoiser", "IntensityNormalisation",
    "ContinuousVP", "DiscreteVP", "schedule_from_dict", "vp_sigmas", "ddpm_sigmas",
    "karras_sigmas",
    "EpsDenoiser", "VDenoiser", "ScoreDenoiser",
    "UNet", "UNetConfig", "ScoreModel", "ScoreModelConfig", "ORIENTATIONS",
    "save_model", "load_model", "save_prior", "load_prior", "load_slice_prior", "load_denoiser",
    "PerpendicularPrior3D", "to_slices", "from_slices",
    "sample", "sample_grid_png", "sampling_sigmas",
]
