"""High-level diffusion-model PET reconstruction: :func:`reconstruct` in one call.

``reconstruct`` = :func:`~.run.prepare` (initial reconstruction, normalisation, rule, noise
levels: one factory per method in the one table :data:`~.run.METHODS`) + stepping the
:class:`~.run.DiffusionRun` to its end + summarising it (:class:`~.result.ReconResult`).  The
maths lives in the rules (:mod:`.lisch`, :mod:`.dds`, :mod:`.dps`) and the step in
:class:`~.loop.DiffusionStepper`; the defaults in :mod:`.defaults`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..diffusion.denoiser import Denoiser
from ..diffusion.normalisation import IntensityNormalisation
from ..likelihood import Likelihood
from .result import ReconResult
from .run import Method, default_sigmas, prepare

__all__ = ["Method", "ReconResult", "reconstruct", "default_sigmas"]


def reconstruct(method: Method, likelihood: Likelihood, denoiser: Denoiser,
                normalisation: IntensityNormalisation | None = None, *,
                callback: Callable[[dict[str, Any]], None] | None = None,
                progress: bool = True, **options: Any) -> ReconResult:
    """Reconstruct PET data with a diffusion prior (module docstring).

    Every option left out (or ``None``) takes its default from
    :data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`.

    Parameters
    ----------
    method
        ``'lisch'`` (PET-LiSch), ``'dds'`` (PET-DDS) or ``'dps'`` (DPS).
    likelihood
        Log-likelihood of the measured data (a :class:`~sirf_diffusion.likelihood.Likelihood`;
        DPS needs a :class:`~sirf_diffusion.likelihood.ProjectingLikelihood`).
    denoiser
        ``D(x, sigma) -> x0_hat`` on ``[n, 1, y, x]`` (images with one slice) or
        ``[n, 1, z, y, x]`` (volumes: a 3D prior such as ``PerpendicularPrior3D``; a slice model
        for DDS-3D is ``PerpendicularPrior3D({'xy': model})`` plus ``axial_penalty``).
    normalisation
        Intensity normalisation; ``None``: fitted on the initial reconstruction.
    callback
        Called after every step with the stepper's dict plus the rule's keys; may raise
        ``StopIteration``.
    progress
        Show progress bars.
    **options
        Common to every method:

        ``num_steps``, ``sigmas``
            Number of generative steps or the noise levels themselves.
        ``eta``
            DDIM stochasticity in ``[0, 1]`` (0: deterministic given the initial noise).
        ``num_samples``
            Number of posterior samples, drawn as one batch.
        ``generator``
            Source of all randomness (initial noise and stochastic re-noising).
        ``support_mask``
            Support over which the scale is the mean activity (default: above 5 % of the
            maximum of the well-sampled voxels); also the object around which a windowed
            prior denoises.
        ``prior_window``
            Denoise on a window around the object, zero activity outside: ``None`` (default)
            when the in-plane field of view is more than 1.25 times the prior's (real scanner
            grids), ``True`` always, ``False`` never (:mod:`.run`, step 4).
        ``dtype``
            Dtype of the diffusion iterates (the denoiser's; default float32).

        PET-LiSch (``'lisch'``): ``num_mlem_iterations`` (``K``, the data-fit knob, like the
        iteration number of MLEM), ``alpha`` (ascent step size, 1: MLEM steps),
        ``max_likelihood_steps`` (cap per generative step).

        PET-DDS (``'dds'``): ``beta`` (anchor weight in physical units, a tensor gives one value
        per step; 0 is the paper's "OSEM" variant), ``num_subsets`` (view subsets),
        ``num_epochs`` / ``num_subiterations`` (ascent length per step, default one epoch),
        ``axial_penalty`` (weight of an axial relative difference prior, ``gamma = 2``) or any
        other ``penalty`` object, ``init_subsets`` / ``init_epochs`` (initial OSEM).

        DPS (``'dps'``): ``step_size`` (``zeta``), ``step_normalisation`` (``'misfit'``: divide
        by the KL misfit, or ``'none'``), ``init_subsets`` / ``init_epochs``.

    Returns
    -------
    ReconResult
    """
    t0 = time.perf_counter()
    run = prepare(method, likelihood, denoiser, normalisation, progress=progress, **options)
    run.run(callback, progress=progress)
    return run.result(wall_time_s=time.perf_counter() - t0)
