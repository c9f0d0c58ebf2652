"""High-level diffusion-model PET reconstruction: one call assembles rule + schedule + loop.

:func:`reconstruct` only *assembles* the pieces; the maths lives in the rules:

=========  ==========================================  =========================================
method     data-consistency rule                        paper
=========  ==========================================  =========================================
``lisch``  :class:`~.lisch.LikelihoodScheduleDC`        Webber et al., IEEE TMI 2025 (PET-LiSch)
``dds``    :class:`~.dds.AnchoredEMDC`                  Singh et al., MELBA 2024 (PET-DDS)
``dps``    :class:`~.dps.PoissonDPSDC`                  Singh et al. 2024 / Chung et al. 2023 (DPS)
=========  ==========================================  =========================================

Steps:

1. an initial reconstruction fits the intensity scale ``s`` of the
   :class:`~sirf_diffusion.diffusion.normalisation.IntensityNormalisation` (mean activity over
   the support), unless a normalisation is given: for ``lisch`` the ``K``-iteration MLEM run that
   also gives the likelihood schedule, otherwise OSEM (``init_subsets``, ``init_epochs``);
2. the noise levels come from the denoiser's own VP schedule when it has one (``ScoreModel``, or
   the models of a ``PerpendicularPrior3D``), else the default VP-SDE, uniform in ``t``
   (:func:`~sirf_diffusion.diffusion.sampling.sampling_sigmas`), or are given as ``sigmas``;
3. :func:`~.loop.reverse_diffusion` runs ``num_samples`` chains at once (batch dimension),
   starting from ``sigma_0 z``, with the rule and DDIM stochasticity ``eta``;
4. samples are mapped back to physical units (and clipped at 0) and summarised
   (:mod:`.posterior`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.normalisation import IntensityNormalisation, support_mean, well_sampled
from ..likelihood import PoissonLogLikelihood
from ..recon.priors import NeighbourhoodPrior, RelativeDifferencePrior
from .dds import AnchoredEMDC
from .dps import PoissonDPSDC, StepNormalisation
from .em_steps import check_positive_int
from .lisch import LikelihoodScheduleDC, mlem_likelihood_schedule
from .loop import DataConsistency, reverse_diffusion
from .posterior import PosteriorSummary, plot_posterior, save_posterior, summarise

__all__ = ["Method", "ReconResult", "reconstruct", "default_sigmas"]

Method = Literal["lisch", "dds", "dps"]

#: Options that belong to one method only (giving them to another one is an error).
_METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "lisch": ("num_mlem_iterations", "alpha", "max_likelihood_steps"),
    "dds": ("beta", "num_subsets", "num_epochs", "num_subiterations", "axial_penalty", "penalty"),
    "dps": ("step_size", "step_normalisation"),
}
_INIT_OPTIONS = ("init_subsets", "init_epochs")


@dataclass
class ReconResult:
    """Result of :func:`reconstruct`.

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
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        summ = self.summary(mask)
        save_posterior(summ, out / "posterior.npz", samples=self.sample)
        traj = {"pll": self.pll.numpy(), "likelihood_steps": self.likelihood_steps.numpy(),
                "sigmas": self.sigmas.detach().cpu().numpy()}
        if self.pll_target is not None:
            traj["pll_target"] = self.pll_target.numpy()
        np.savez_compressed(out / "trajectory.npz", **traj)
        meta = dict(self.config, num_network_evaluations=self.num_network_evaluations,
                    num_likelihood_evaluations=self.num_likelihood_evaluations,
                    num_init_evaluations=self.num_init_evaluations, wall_time_s=self.wall_time_s)
        (out / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if plot:
            plot_posterior(summ, out / "posterior.png", title=f"{self.method}")
        return out


class _CountingDenoiser:
    """Counts calls of the wrapped denoiser (network evaluations)."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(x, sigma)


def _schedule_of(denoiser: Denoiser) -> Any:
    """The VP schedule of a ``ScoreModel`` (or of the models of a ``PerpendicularPrior3D``)."""
    sched = getattr(denoiser, "schedule", None)
    if sched is not None:
        return sched
    for m in getattr(denoiser, "models", {}).values():
        if getattr(m, "schedule", None) is not None:
            return m.schedule
    return None


def default_sigmas(denoiser: Denoiser, num_steps: int) -> torch.Tensor:
    """``num_steps`` VP noise levels (plus 0) from the denoiser's own schedule if it has one."""
    from ..diffusion.sampling import sampling_sigmas

    return sampling_sigmas(check_positive_int(num_steps, "num_steps"), "vp", _schedule_of(denoiser))


def _check_options(method: str, given: dict[str, Any]) -> None:
    for other, names in _METHOD_OPTIONS.items():
        if other == method:
            continue
        wrong = [n for n in names if given.get(n) is not None]
        if wrong:
            raise ValueError(f"option(s) {', '.join(wrong)} belong to method {other!r}, "
                             f"not {method!r}")
    if method == "lisch":
        wrong = [n for n in _INIT_OPTIONS if given.get(n) is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: 'lisch' fits the normalisation on its "
                             "num_mlem_iterations MLEM run; initial OSEM options do not apply")


def reconstruct(
    method: Method,
    likelihood: PoissonLogLikelihood,
    denoiser: Denoiser,
    normalisation: IntensityNormalisation | None = None,
    *,
    num_steps: int | None = None,
    sigmas: torch.Tensor | None = None,
    eta: float = 0.0,
    num_samples: int = 1,
    num_mlem_iterations: int | None = None,
    alpha: float | None = None,
    max_likelihood_steps: int | None = None,
    beta: float | torch.Tensor | None = None,
    num_subsets: int | None = None,
    num_epochs: int | None = None,
    num_subiterations: int | None = None,
    axial_penalty: float | None = None,
    penalty: NeighbourhoodPrior | None = None,
    step_size: float | None = None,
    step_normalisation: StepNormalisation | None = None,
    init_subsets: int | None = None,
    init_epochs: int | None = None,
    support_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> ReconResult:
    """Reconstruct PET data with a diffusion prior (module docstring).

    Parameters
    ----------
    method
        ``'lisch'`` (PET-LiSch), ``'dds'`` (PET-DDS) or ``'dps'`` (DPS).
    likelihood
        Poisson log-likelihood of the measured data (physics + prompts).
    denoiser
        ``D(x, sigma) -> x0_hat`` on ``[n, 1, y, x]`` (images with one slice) or
        ``[n, 1, z, y, x]`` (volumes: a 3D prior such as ``PerpendicularPrior3D``; a slice model
        for DDS-3D is ``PerpendicularPrior3D({'xy': model})`` plus ``axial_penalty``).
    normalisation
        Intensity normalisation; ``None``: fitted on the initial reconstruction (step 1).
    num_steps, sigmas
        Number of generative steps (default 100) or the noise levels themselves.
    eta
        DDIM stochasticity in ``[0, 1]`` (0: deterministic given the initial noise).
    num_samples
        Number of posterior samples, drawn as one batch.
    num_mlem_iterations, alpha, max_likelihood_steps
        PET-LiSch: ``K`` (default 20), ascent step size (default 1: MLEM steps), cap on ascent
        steps per generative step (default 20).  ``K`` sets how closely the result fits the data,
        like the iteration number of MLEM; the defaults are starting points, not tuned values.
    beta, num_subsets, num_epochs, num_subiterations, axial_penalty, penalty
        PET-DDS: anchor weight in physical units (default 0, the paper's "OSEM" variant; a tensor
        gives one value per step), view subsets (default 1), ascent length per step (default one
        epoch), weight of an axial relative difference prior (``gamma = 2``, STIR conventions)
        or any other ``penalty`` object.
    step_size, step_normalisation
        DPS: ``zeta`` (required) and ``'misfit'`` (default, divide by the KL misfit) or ``'none'``.
    init_subsets, init_epochs
        Initial OSEM for ``dds``/``dps`` (default: 1 subset, 10 epochs, i.e. 10 MLEM iterations).
    support_mask
        Support over which the scale is the mean activity (default: above 5 % of the maximum).
    generator
        Source of all randomness (initial noise and stochastic re-noising).
    callback
        Called after every step with the loop's dict plus the rule's keys; may raise
        ``StopIteration``.
    progress
        Show progress bars.
    dtype
        Dtype of the diffusion iterates (the denoiser's).

    Returns
    -------
    ReconResult
    """
    t0 = time.perf_counter()
    if method not in _METHOD_OPTIONS:
        raise ValueError(f"method must be one of {tuple(_METHOD_OPTIONS)}, got {method!r}")
    if not isinstance(likelihood, PoissonLogLikelihood):
        raise TypeError("likelihood must be a PoissonLogLikelihood, got "
                        f"{type(likelihood).__name__}")
    if not callable(denoiser):
        raise TypeError("denoiser must be callable as D(x, sigma)")
    _check_options(method, dict(
        num_mlem_iterations=num_mlem_iterations, alpha=alpha,
        max_likelihood_steps=max_likelihood_steps, beta=beta, num_subsets=num_subsets,
        num_epochs=num_epochs, num_subiterations=num_subiterations, axial_penalty=axial_penalty,
        penalty=penalty, step_size=step_size, step_normalisation=step_normalisation,
        init_subsets=init_subsets, init_epochs=init_epochs))
    num_samples = check_positive_int(num_samples, "num_samples")
    if sigmas is None:
        sigmas = default_sigmas(denoiser, 100 if num_steps is None else num_steps)
    else:
        sigmas = torch.as_tensor(sigmas)
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError("sigmas must be a 1D tensor of at least 2 noise levels")
        if num_steps is not None and num_steps != sigmas.numel() - 1:
            raise ValueError(f"num_steps={num_steps} but sigmas gives {sigmas.numel() - 1} steps")
    n_steps = sigmas.numel() - 1
    phys = likelihood.physics
    data = likelihood.data
    config: dict[str, Any] = {"method": method, "num_steps": n_steps, "eta": float(eta),
                              "num_samples": num_samples,
                              "sigma_max": float(sigmas[0]), "sigma_min": float(sigmas[-2])}

    # 1. initial reconstruction -> intensity scale s (and, for PET-LiSch, the likelihood schedule)
    init_image: torch.Tensor | None = None
    init_cost = 0.0
    rule: DataConsistency
    if method == "lisch":
        K = 20 if num_mlem_iterations is None else num_mlem_iterations
        sched = mlem_likelihood_schedule(likelihood, K, n_steps, progress=progress)
        init_image, init_cost = sched.image, sched.num_forward
        config.update(num_mlem_iterations=K, mlem_pll=sched.pll)
    elif normalisation is None:
        from ..recon.em import osem

        ns = 1 if init_subsets is None else check_positive_int(init_subsets, "init_subsets")
        ne = 10 if init_epochs is None else check_positive_int(init_epochs, "init_epochs")
        fwd0 = likelihood.num_forward
        init_image = osem(likelihood, None, num_subsets=ns, num_epochs=ne, progress=progress)
        init_cost = likelihood.num_forward - fwd0
        config.update(init_subsets=ns, init_epochs=ne)
    if normalisation is None:
        assert init_image is not None
        eligible = well_sampled(likelihood.sensitivity(None, like=init_image))
        normalisation = IntensityNormalisation(
            float(support_mean(init_image[None], None if support_mask is None
                               else support_mask[None], eligible=eligible[None])[0]))
    config["normalisation"] = normalisation.to_dict()

    # 2. the data-consistency rule
    if method == "lisch":
        rule = LikelihoodScheduleDC(likelihood, normalisation, sched.targets,
                                    alpha=1.0 if alpha is None else alpha,
                                    max_likelihood_steps=20 if max_likelihood_steps is None
                                    else max_likelihood_steps)
        config.update(alpha=rule.alpha, max_likelihood_steps=rule.max_likelihood_steps)
    elif method == "dds":
        if axial_penalty is not None and penalty is not None:
            raise ValueError("give at most one of axial_penalty and penalty")
        if axial_penalty is not None:
            penalty = RelativeDifferencePrior(float(axial_penalty), gamma=2.0,
                                              neighbourhood="axial",
                                              voxel_size_mm=phys.voxel_size_mm)
        rule = AnchoredEMDC(likelihood, normalisation, 0.0 if beta is None else beta,
                            num_subsets=1 if num_subsets is None else num_subsets,
                            num_epochs=num_epochs, num_subiterations=num_subiterations,
                            penalty=penalty)
        config.update(beta=rule.beta.tolist() if isinstance(rule.beta, torch.Tensor)
                      else rule.beta, num_subsets=rule.num_subsets,
                      num_subiterations_per_step=rule._num_updates,
                      axial_penalty=axial_penalty,
                      penalty=None if penalty is None else type(penalty).__name__)
    else:
        if not getattr(likelihood, "has_projections", True):
            raise ValueError("method 'dps' differentiates the Poisson misfit through the "
                             "projector; this likelihood has no projections (build it from an "
                             "acquisition model, e.g. integrations.sirf.sirf_likelihood)")
        if step_size is None:
            raise ValueError("method 'dps' needs step_size (zeta); it depends on the data and the "
                             "prior and has no safe default")
        rule = PoissonDPSDC(likelihood, normalisation, step_size,
                            "misfit" if step_normalisation is None else step_normalisation)
        config.update(step_size=rule.step_size, step_normalisation=rule.step_normalisation)

    # 3. reverse diffusion with the rule, n chains in one batch
    counting = _CountingDenoiser(denoiser)
    shape = tuple(normalisation.to_prior(
        torch.zeros(num_samples, *phys.image_shape, dtype=dtype)).shape)
    plls: list[list[float]] = []
    steps_taken: list[list[float]] = []
    targets: list[float] = []
    evaluations = [0.0]

    def record(d: dict[str, Any]) -> None:
        p = d.get("pll")
        plls.append([float("nan")] * num_samples if p is None else [float(v) for v in p])
        ls = d.get("n_likelihood_steps", 0)
        steps_taken.append([float(v) for v in ls] if isinstance(ls, list)
                           else [float(ls)] * num_samples)
        if "pll_target" in d:
            targets.append(float(d["pll_target"]))
        evaluations[0] += float(d.get("n_likelihood_evaluations", 0.0))
        if callback is not None:
            callback(d)

    out = reverse_diffusion(counting, sigmas, shape=shape, eta=eta, data_consistency=rule,
                            generator=generator, callback=record, progress=progress, dtype=dtype,
                            device=data.device)

    # 4. physical units, clipped at 0, and the posterior summary
    sample = torch.clamp(normalisation.from_prior(out.detach()), min=0)
    summ = summarise(sample)
    return ReconResult(
        method=method, sample=sample, mean=summ.mean, std=summ.std,
        pll=torch.tensor(plls, dtype=torch.float64).reshape(-1, num_samples),
        pll_target=torch.tensor(targets, dtype=torch.float64) if method == "lisch" else None,
        likelihood_steps=torch.tensor(steps_taken).reshape(-1, num_samples),
        num_network_evaluations=counting.calls, num_likelihood_evaluations=evaluations[0],
        num_init_evaluations=float(init_cost), wall_time_s=time.perf_counter() - t0,
        normalisation=normalisation, init_image=init_image, sigmas=sigmas, config=config)
