"""Samplers over the denoiser contract: the generative step, the PET reconstruction methods.

* :mod:`.loop`: :class:`DiffusionStepper` (the one generative step; the denoiser contract and
  its conditional / adapting extensions) and :func:`reverse_diffusion`;
* :mod:`.lisch`, :mod:`.dds`, :mod:`.dps`: the data-consistency rules (:mod:`.em_steps` their
  shared EM steps);
* :mod:`.run`: :func:`prepare` (one table of methods, one factory each) and
  :class:`DiffusionRun`; :mod:`.methods`: :func:`reconstruct`; :mod:`.defaults`: the defaults;
* :mod:`.steer`: steerable conditional diffusion (``steer=True``: LoRA adapters fitted to the
  data during sampling, a :class:`DenoiserAdaptation`);
* :mod:`.unconditional`: :func:`sample` and :func:`sample_grid_png` (no data consistency).
"""

from .loop import (
    ConditionalDenoiser,
    DataConsistency,
    DenoiserAdaptation,
    DenoiserContext,
    DiffusionStepper,
    StepContext,
    ddim_noise_levels,
    reverse_diffusion,
)
from .methods import reconstruct
from .result import ReconResult
from .run import METHODS, DiffusionRun, prepare
from .steer import SteeringAdaptation, steer_denoiser
from .unconditional import sample, sample_grid_png

__all__ = ["DataConsistency", "StepContext", "DenoiserContext", "ConditionalDenoiser",
           "DenoiserAdaptation", "DiffusionStepper", "ddim_noise_levels", "reverse_diffusion",
           "prepare", "DiffusionRun", "METHODS", "reconstruct", "ReconResult", "sample",
           "sample_grid_png", "SteeringAdaptation", "steer_denoiser"]
