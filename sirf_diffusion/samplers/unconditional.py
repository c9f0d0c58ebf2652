"""Unconditional sampling from a prior: the reverse-diffusion loop with no data consistency.

:func:`sample` chooses a noise-level sequence
(:func:`~sirf_diffusion.diffusion.sampling.sampling_sigmas`) and runs
:func:`~.loop.reverse_diffusion` with ``data_consistency=None``: DDIM (``eta = 0``) to ancestral
DDPM (``eta = 1``) in the VE parametrisation.  It is the quickest check that a trained prior has
learnt plausible slices (:func:`sample_grid_png`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.model import ScoreModel
from ..diffusion.sampling import ScheduleName, sampling_sigmas
from .loop import reverse_diffusion

__all__ = ["sample", "sample_grid_png"]


def sample(denoiser: Denoiser, shape: tuple[int, ...], num_steps: int = 100, *, eta: float = 0.0,
           schedule: ScheduleName | torch.Tensor = "vp", generator: torch.Generator | None = None,
           progress: bool = False, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unconditional samples of ``shape`` in the prior's normalised space.

    Parameters
    ----------
    denoiser
        ``D(x, sigma)``; when it is a :class:`~sirf_diffusion.diffusion.model.ScoreModel`, its
        own VP schedule sets the noise levels.
    shape
        ``[B, 1, H, W]`` (slice models) or ``[B, 1, Z, Y, X]`` (3D priors).
    num_steps, eta, schedule
        Number of denoiser evaluations, DDIM stochasticity, noise levels (:func:`sampling_sigmas`).
    generator
        Source of all randomness.
    """
    vp = denoiser.schedule if isinstance(denoiser, ScoreModel) else None
    if device is None and isinstance(denoiser, torch.nn.Module):
        p = next(denoiser.parameters(), None)
        device = p.device if p is not None else None
    sigmas = sampling_sigmas(num_steps, schedule, vp)
    with torch.no_grad():
        return reverse_diffusion(denoiser, sigmas, shape=tuple(shape), eta=eta, generator=generator,
                                 progress=progress, dtype=dtype, device=device)


def sample_grid_png(model_or_dir: ScoreModel | str | os.PathLike[str],
                    out_png: str | os.PathLike[str], n: int = 16, num_steps: int = 100,
                    generator: torch.Generator | None = None, eta: float = 0.0,
                    schedule: ScheduleName = "vp", progress: bool = False) -> Path:
    """Draw ``n`` unconditional slices and save them as a grid image; returns the PNG path.

    ``model_or_dir`` is a :class:`~sirf_diffusion.diffusion.model.ScoreModel` or a directory
    for :func:`~sirf_diffusion.diffusion.modelio.load_model`.  Slices have the model's
    ``image_size``; each panel is shown with a shared grey scale from 0 to the 99.5th
    percentile of all samples.  ``progress`` shows a tqdm bar over the sampling steps.
    """
    from ..plotting import save_slice_grid

    if isinstance(model_or_dir, ScoreModel):
        model = model_or_dir
    else:
        from ..diffusion.modelio import load_model
        model = load_model(model_or_dir)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    h, w = model.config.image_size
    x = sample(model.eval(), (n, 1, h, w), num_steps, eta=eta, schedule=schedule,
               generator=generator, progress=progress).float().cpu()[:, 0]
    return save_slice_grid(x, out_png, f"{n} samples, {model.config.orientation}, "
                                       f"{num_steps} steps, eta={eta}")
