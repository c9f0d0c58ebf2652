"""The result of a diffusion reconstruction: samples, posterior summary, trajectory, costs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion.normalisation import IntensityNormalisation
from ..io.atomic import atomic_write_bytes, make_dir, write_json
from .posterior import PosteriorSummary, plot_posterior, save_posterior, summarise

__all__ = ["ReconResult"]


@dataclass
class ReconResult:
    """Result of :func:`~.methods.reconstruct` (:meth:`.run.DiffusionRun.result`).

    Attributes
    ----------
    method
        ``'lisch'``, ``'dds'`` or ``'dps'``.
    sample
        ``[n, z, y, x]`` posterior samples in physical units (clipped at 0).
    mean, std
        Voxel-wise mean and standard deviation of the samples (``std = 0`` for one sample).
    pll
        ``[steps, n]`` full-data PLL after each generative step (NaN where not recorded).
    pll_target
        ``[steps]`` PET-LiSch targets (``None`` for other methods).
    likelihood_steps
        ``[steps, n]`` likelihood (ascent / subset) steps taken per generative step.
    num_network_evaluations
        Denoiser calls (each on the whole batch of ``n`` chains; DPS needs two per step).
    num_likelihood_evaluations
        Likelihood evaluations of the sampling, in full-data forward projections (each with its
        adjoint) of the batch; recording the PLL for DDS is not included.
    num_init_evaluations
        Forward projections spent by the initial MLEM/OSEM (full-data passes).
    wall_time_s
        Wall time of the whole call.
    normalisation
        The intensity normalisation used.
    init_image
        The initial MLEM/OSEM image (``None`` when a normalisation was given to ``dds``/``dps``).
    sigmas
        Noise levels of the loop.
    config
        The resolved configuration (to save beside outputs).
    """

    method: str
    sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    pll: torch.Tensor
    pll_target: torch.Tensor | None
    likelihood_steps: torch.Tensor
    num_network_evaluations: int
    num_likelihood_evaluations: float
    num_init_evaluations: float
    wall_time_s: float
    normalisation: IntensityNormalisation
    init_image: torch.Tensor | None
    sigmas: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self, mask: torch.Tensor | None = None) -> PosteriorSummary:
        """Mean, std and CoV images of the samples (:func:`~.posterior.summarise`)."""
        return summarise(self.sample, mask)

    def save(self, directory: str | os.PathLike[str], *, plot: bool = True,
             mask: torch.Tensor | None = None) -> Path:
        """Write ``posterior.npz`` (samples, mean, std, CoV), ``trajectory.npz`` (PLL, targets,
        likelihood steps, sigmas), ``config.json`` (resolved configuration and costs) and, with
        ``plot``, ``posterior.png`` into ``directory``; returns the directory."""
        out = make_dir(directory)
        summ = self.summary(mask)
        save_posterior(summ, out / "posterior.npz", samples=self.sample)
        traj = {"pll": self.pll.numpy(), "likelihood_steps": self.likelihood_steps.numpy(),
                "sigmas": self.sigmas.detach().cpu().numpy()}
        if self.pll_target is not None:
            traj["pll_target"] = self.pll_target.numpy()
        atomic_write_bytes(out / "trajectory.npz", lambda f: np.savez_compressed(f, **traj))
        meta = dict(self.config, num_network_evaluations=self.num_network_evaluations,
                    num_likelihood_evaluations=self.num_likelihood_evaluations,
                    num_init_evaluations=self.num_init_evaluations, wall_time_s=self.wall_time_s)
        write_json(out / "config.json", meta)
        if plot:
            plot_posterior(summ, out / "posterior.png", title=f"{self.method}")
        return out
