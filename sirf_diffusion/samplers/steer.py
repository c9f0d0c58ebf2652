"""Steerable conditional diffusion (SCD): the prior adapted to the measured data while sampling.

Barbano, Denker, Chung et al., arXiv 2308.14409 (public code: alexdenker/SteerableConditional
Diffusion); for PET coupled with PET-LiSch by Webber et al., IEEE MIC 2025, arXiv 2510.13441.
When a scan lies outside the prior's training domain (here: the FDG prior on amyloid scans) the
reverse diffusion pulls the image towards the training images.  SCD fits low-rank adapters
(:mod:`sirf_diffusion.diffusion.lora`) on the frozen score network to the measured data as the
sampling goes:

1. a **fresh adapter per reconstruction**: every :func:`~.run.prepare` with ``steer=True``
   deep-copies the denoiser (the caller's network and the shipped weights are never changed)
   and wraps the convolutions and linear layers of the copy's residual and attention blocks
   with rank-``steer_rank`` adapters, zero up-projections (the copy starts as the original).
   The batch of ``num_samples`` chains of one reconstruction shares the adapter, fitted to the
   sum of the chains' losses (the CT code's choice: one adapter per measured data set);
2. after the data consistency of the generative steps of :func:`steering_schedule` (the CT
   code's: every ``steer_steps``-th step counted back from the end, and the last few), ``K =
   steer_adam_steps`` Adam steps (learning rate ``steer_lr``, the optimiser's state carried
   over the whole reconstruction) on the adapter's parameters minimise the PET data misfit of
   the adapted network's Tweedie estimate of the step's iterate ``x_i``:

   .. math::

       \\ell(\\theta) = -L\\big(u_\\theta\\big), \\qquad
       u_\\theta = \\mathbb 1_{\\mathrm{FOV}}\\, s \\max(D_\\theta(x_i, \\sigma_i), 0),

   ``L`` the Poisson log-likelihood of the data (``ell`` is the Poisson negative
   log-likelihood, ``sum ybar - y log ybar``, up to a constant), ``s`` the intensity
   normalisation: the non-negative estimate in physical units that the data-consistency rules
   start from.  The gradient is ``-(du/dtheta)^T grad L(u)``: ``grad L`` comes from the
   likelihood object (one forward and one adjoint projection per Adam step, any physics:
   the embedded model, SIRF or STIR) and the rest from autograd through the network only;
3. the adapted network is used from the next generative step on; the re-noising uses the
   **unadapted** network's noise estimate (:class:`~.loop.DiffusionStepper`'s
   ``noise_denoiser``: one extra network evaluation per step), as the CT code does.

Why the Poisson NLL: it *is* the PET data misfit (the quantity MLEM and the data-consistency
rules ascend); the CT code's least squares ``||A x - y||^2`` weights every bin equally, which
for counts over-weights the hot bins and is undefined as a likelihood.  Why at the Tweedie
estimate and not after the data consistency: the CT code differentiates through a few
conjugate-gradient iterations of its linear data consistency (its README states the loss at the
Tweedie estimate); the PET rules (an EM ascent to a likelihood target for PET-LiSch, subset EM
for PET-DDS) are non-linear, have data-dependent stopping and run on toolkit projectors without
autograd, so the misfit is taken where the rule starts and the rule then makes the adapted
estimate data-consistent.  In this stepper the adaptation runs after the step's data
consistency (:class:`~.loop.DenoiserAdaptation`), so the fit at ``x_i`` is first used at
``x_{i+1}``; the schedule is shifted by one step accordingly (no fit after the final step).

Against fitting the data's noise (docs/steering.md section 5: the first fit, from pure noise,
already brings the estimate's Poisson deviance per bin from about 8 to 2): ``steer_weight_decay``
(AdamW: each Adam step shrinks the adapter towards zero, i.e. towards the prior),
``steer_layers='deepest'`` (adapters only at the UNet's coarsest resolution) and
``steer_discrepancy`` (Morozov: stop a fit once the deviance per bin reaches the noise level).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.grid import slice_models
from ..diffusion.lora import LoRA, inject_lora, lowest_resolution_layers
from ..diffusion.normalisation import IntensityNormalisation
from ..likelihood import Likelihood, saturated_log_likelihood
from ..physics.geometry import ImageGeometry
from ..physics.psf import GaussianPSF
from .defaults import STEER_LAYERS
from .em_steps import check_positive_float, check_positive_int, field_of_view
from .loop import StepContext

__all__ = ["STEER_OPTIONS", "LAST_ADAPTED_STEPS", "steering_schedule",
           "SteeringAdaptation", "Steering", "steer_denoiser"]

#: Options of the steerable variants (``steer`` switches them on).
STEER_OPTIONS: tuple[str, ...] = ("steer", "steer_rank", "steer_steps", "steer_adam_steps",
                                  "steer_lr", "steer_layers", "steer_weight_decay",
                                  "steer_discrepancy", "steer_smoothing_mm")
#: The CT code also adapts at each of its last four steps.
LAST_ADAPTED_STEPS = 4


def steering_schedule(num_steps: int, steps: int | Sequence[int]) -> tuple[int, ...]:
    """Generative steps after whose data consistency the adapter is fitted.

    ``steps`` an integer ``k``: the CT code's schedule (every ``k``-th step counted back from
    the end, and the last :data:`LAST_ADAPTED_STEPS`), shifted one step earlier because a fit is
    first used at the next step (module docstring): steps ``i < N - 1`` with
    ``(N - 2 - i) % k == 0`` or ``i >= N - 1 - LAST_ADAPTED_STEPS``.  ``steps`` a sequence: those
    step indices, each in ``[0, N - 1)``.
    """
    n = check_positive_int(num_steps, "num_steps")
    if isinstance(steps, int) and not isinstance(steps, bool):
        k = check_positive_int(steps, "steer_steps")
        sel = {i for i in range(n - 1) if (n - 2 - i) % k == 0}
        sel |= set(range(max(0, n - 1 - LAST_ADAPTED_STEPS), n - 1))
        return tuple(sorted(sel))
    try:
        sel_list = [int(i) for i in steps]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError("steer_steps must be an interval (positive integer) or a sequence of "
                         f"step indices, got {steps!r}") from None
    bad = [i for i in sel_list if not 0 <= i < n - 1]
    if bad or not sel_list:
        raise ValueError(f"steer_steps must be step indices in [0, {n - 1}) (no fit after the "
                         f"last of {n} steps), got {list(steps)!r}")  # type: ignore[arg-type]
    return tuple(sorted(set(sel_list)))


@dataclass
class SteeringAdaptation:
    """The :class:`~.loop.DenoiserAdaptation` of SCD (module docstring, step 2).

    Parameters
    ----------
    adapters
        The :class:`~sirf_diffusion.diffusion.lora.LoRA` of every slice model of the adapted
        denoiser (the one the stepper calls).
    likelihood, normalisation
        The data's log-likelihood and the prior's intensity normalisation.
    schedule
        Steps after which to fit (:func:`steering_schedule`).
    adam_steps, lr
        ``K`` Adam steps per fit and their learning rate.
    weight_decay
        Decoupled weight decay (AdamW; Loshchilov and Hutter, ICLR 2019): every Adam step also
        shrinks the adapter's weights by the factor ``1 - lr * weight_decay``, tying the
        adapted network to the prior (a fresh adapter is zero): the fit can keep only what the
        data keep asking for.  0: plain Adam (the CT code's).
    discrepancy
        Morozov's discrepancy principle for Poisson data (e.g. Bertero et al., Inverse Problems
        26, 2010): a fit stops before an Adam step once the Poisson deviance per bin of the
        chains' estimates, ``D = 2 (L_sat - L(u_theta)) / M`` averaged over the chains
        (``L_sat`` the log-likelihood at ``ybar = y``, ``M`` the number of bins), is at or
        below this value; its expectation for the true image is about 1 (0.5 log-likelihood
        per bin), so a smaller deviance means the adapter is fitting noise.  ``None``: every
        fit runs its ``adam_steps``.  Needs a likelihood with its data
        (:class:`~sirf_diffusion.likelihood.ProjectingLikelihood`).
    smoothing_mm
        ``None`` (default): the gradient of the Poisson NLL as it is.  A FWHM in mm: the
        likelihood's gradient ``grad L(u)`` is blurred by a Gaussian of that width (in plane
        and axially, zero padding; :class:`~sirf_diffusion.physics.psf.GaussianPSF`) before it
        is back-propagated through the network, i.e. the adapter descends along
        ``(du/dtheta)^T G grad L``, ``G`` symmetric positive semi-definite: a preconditioned
        step on the same NLL, which cannot see the data's misfit at scales finer than the
        blur.  Its fixed points have ``G grad L = 0``: the estimate explains the data's
        regional contrast, not its voxel noise.  On the amyloid scans it did not lower the
        NRMSE either (docs/steering.md section 6).
    fov_fraction
        Field of view of the loss, as the data-consistency rules'
        (:func:`~.em_steps.field_of_view`).

    Notes
    -----
    Adds to ``context.info``: ``steer_loss`` (the batch's NLL before each Adam step, up to a
    constant), with ``discrepancy`` also ``steer_deviance`` (the deviance per bin before each
    Adam step, the last one the value the fit stopped at) and its projections to
    ``n_likelihood_evaluations``; the fitting passes count as network evaluations
    (``context.denoiser``).
    """

    adapters: list[LoRA]
    likelihood: Likelihood
    normalisation: IntensityNormalisation
    schedule: tuple[int, ...]
    adam_steps: int
    lr: float
    weight_decay: float = 0.0
    discrepancy: float | None = None
    smoothing_mm: float | None = None
    fov_fraction: float = 0.01
    optimizer: torch.optim.Optimizer = field(init=False, repr=False)
    _blur: GaussianPSF | None = field(default=None, init=False, repr=False)
    _fov: torch.Tensor | None = field(default=None, init=False, repr=False)
    _saturated: float = field(default=0.0, init=False, repr=False)
    _num_bins: int = field(default=1, init=False, repr=False)

    def __post_init__(self) -> None:
        self.adam_steps = check_positive_int(self.adam_steps, "steer_adam_steps")
        self.lr = check_positive_float(self.lr, "steer_lr")
        self.weight_decay = check_positive_float(self.weight_decay, "steer_weight_decay",
                                                 allow_zero=True)
        params = [p for a in self.adapters for p in a.parameters()]
        if not params:
            raise ValueError("steering needs LoRA adapters on the denoiser")
        self.optimizer = (torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
                          if self.weight_decay > 0 else torch.optim.Adam(params, lr=self.lr))
        if self.smoothing_mm is not None:
            self.smoothing_mm = check_positive_float(self.smoothing_mm, "steer_smoothing_mm")
            grid = ImageGeometry(tuple(self.likelihood.image_shape),
                                 tuple(self.likelihood.voxel_size_mm))
            self._blur = GaussianPSF(grid, self.smoothing_mm, self.smoothing_mm)
        if self.discrepancy is not None:
            self.discrepancy = check_positive_float(self.discrepancy, "steer_discrepancy")
            y = getattr(self.likelihood, "data", None)
            if not isinstance(y, torch.Tensor):
                raise ValueError("steer_discrepancy needs a likelihood that holds its data (a "
                                 "ProjectingLikelihood such as PoissonLogLikelihood), got "
                                 f"{type(self.likelihood).__name__}")
            self._saturated = saturated_log_likelihood(y)
            self._num_bins = y.numel()

    def deviance_per_bin(self, pll: torch.Tensor) -> float:
        """``2 (L_sat - L) / M`` averaged over the chains (``discrepancy``'s measure)."""
        return float((2.0 * (self._saturated - pll.double()) / self._num_bins).mean())

    def misfit_backward(self, denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor
                        ) -> torch.Tensor:
        """The log-likelihoods ``L(u_theta^n)`` of the chains (module docstring), with the
        gradient of the batch's Poisson NLL ``-sum_n L(u_theta^n)`` accumulated into the
        adapters' ``.grad``."""
        with torch.enable_grad():
            u = self.normalisation.from_prior(torch.clamp(denoiser(x, sigma), min=0))
            if self._fov is None:
                fov = field_of_view(self.likelihood, u.detach(), self.fov_fraction)
                self._fov = torch.ones((), dtype=torch.bool) if fov is None else fov
            u = u * self._fov.to(u.device)
            value, grad = self.likelihood.value_and_gradient(u.detach())
            grad = grad.to(u.dtype)
            if self._blur is not None:
                grad = self._blur(grad)
            # d(-L)/dtheta = -(du/dtheta)^T grad L: autograd through the network only
            (-(grad * u).sum()).backward()
        return value.detach()

    def __call__(self, context: StepContext) -> None:
        if context.step not in self.schedule:
            return
        x = context.x.detach()
        sigma = context.sigma.expand(x.shape[0])
        losses, deviances = [], []
        with self.likelihood.count_projections() as cost:
            for _ in range(self.adam_steps):
                self.optimizer.zero_grad(set_to_none=True)
                pll = self.misfit_backward(context.denoiser, x, sigma)
                losses.append(-float(pll.sum()))
                if self.discrepancy is not None:
                    deviances.append(self.deviance_per_bin(pll))
                    if deviances[-1] <= self.discrepancy:
                        break   # Morozov: the estimate explains the data to the noise level
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        context.info["steer_loss"] = losses
        if self.discrepancy is not None:
            context.info["steer_deviance"] = deviances
        context.info["n_likelihood_evaluations"] = (
            float(context.info.get("n_likelihood_evaluations", 0.0)) + cost.forward)


@dataclass
class Steering:
    """What :func:`steer_denoiser` builds for the stepper.

    Attributes
    ----------
    denoiser
        The adapted copy (the stepper's denoiser).
    adaptation
        Its :class:`SteeringAdaptation` (the stepper's ``adapt``).
    noise_denoiser
        The original, unadapted denoiser (the stepper's ``noise_denoiser``).
    config
        The resolved steering options for the run's configuration.
    """

    denoiser: Denoiser
    adaptation: SteeringAdaptation
    noise_denoiser: Denoiser
    config: dict[str, Any]


def steer_denoiser(denoiser: Denoiser, likelihood: Likelihood,
                   normalisation: IntensityNormalisation, num_steps: int, *, rank: int,
                   steps: int | Sequence[int], adam_steps: int, lr: float,
                   layers: str = "all", weight_decay: float = 0.0,
                   discrepancy: float | None = None, smoothing_mm: float | None = None
                   ) -> Steering:
    """A fresh adapted copy of ``denoiser`` and its adaptation (module docstring, steps 1-2).

    ``rank``, ``steps``, ``adam_steps``, ``lr``, ``layers``, ``weight_decay``,
    ``discrepancy`` and ``smoothing_mm`` are the options ``steer_rank`` ...
    ``steer_smoothing_mm``
    (:data:`STEER_OPTIONS`; their defaults in :data:`~.defaults.METHOD_DEFAULTS`).
    ``layers``: ``'all'`` adapts every convolution and linear layer of the residual and
    attention blocks (the CT code's choice); ``'deepest'`` only those at the UNet's coarsest
    resolution (:func:`~sirf_diffusion.diffusion.lora.lowest_resolution_layers`: a regional
    contrast correction with less freedom to reproduce the data's voxel noise).

    Raises
    ------
    ValueError
        ``denoiser`` has no score network to adapt (a :class:`~sirf_diffusion.diffusion.model.
        ScoreModel` or a :class:`~sirf_diffusion.diffusion.prior3d.PerpendicularPrior3D`,
        possibly inside the prior-boundary wrappers), or a bad option.
    """
    if not slice_models(denoiser):
        raise ValueError("steer=True needs a ScoreModel-based prior (a slice model or a "
                         f"PerpendicularPrior3D) to adapt; got {type(denoiser).__name__}")
    rank = check_positive_int(rank, "steer_rank")
    if layers not in STEER_LAYERS:
        raise ValueError(f"steer_layers must be one of {STEER_LAYERS}, got {layers!r}")
    schedule = steering_schedule(num_steps, steps)
    adapted = copy.deepcopy(denoiser)
    # the adapters' random down-projections come from a fixed seed, not from the sampler's
    # generator, so a steered run starts from the same noise as the unsteered one
    g = torch.Generator(device="cpu").manual_seed(0)
    adapters = [inject_lora(m, rank, generator=g,
                            layers=lowest_resolution_layers(m) if layers == "deepest" else None)
                for m in slice_models(adapted).values()]
    adaptation = SteeringAdaptation(adapters, likelihood, normalisation, schedule, adam_steps, lr,
                                    weight_decay, discrepancy, smoothing_mm)
    config = {"steer": True, "steer_rank": rank, "steer_steps": list(schedule),
              "steer_adam_steps": adaptation.adam_steps, "steer_lr": adaptation.lr,
              "steer_layers": layers, "steer_weight_decay": adaptation.weight_decay,
              "steer_discrepancy": adaptation.discrepancy,
              "steer_smoothing_mm": adaptation.smoothing_mm,
              "steer_parameters": sum(a.num_parameters for a in adapters)}
    return Steering(adapted, adaptation, denoiser, config)
