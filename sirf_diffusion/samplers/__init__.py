"""Samplers over the denoiser contract: the reverse-diffusion loop and PET reconstruction rules."""

from .loop import DataConsistency, StepContext, ddim_noise_levels, reverse_diffusion

__all__ = ["DataConsistency", "StepContext", "ddim_noise_levels", "reverse_diffusion"]
