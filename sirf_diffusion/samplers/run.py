"""Prepare a diffusion reconstruction: one table of methods, one small factory each, one run.

:func:`prepare` turns ``(method, likelihood, denoiser, options)`` into a :class:`DiffusionRun`
(rule, stepper, initial image, normalisation, noise levels, resolved configuration), which any
front end steps to its end: :func:`~.methods.reconstruct` (``prepare`` + :meth:`DiffusionRun.run`
+ :meth:`DiffusionRun.result`), the CIL ``Algorithm`` classes (one :meth:`DiffusionRun.step` per
``update()``) and the SIRF reconstructor.

=========  ==========================================  =========================================
method     data-consistency rule                        paper
=========  ==========================================  =========================================
``lisch``  :class:`~.lisch.LikelihoodScheduleDC`        Webber et al., IEEE TMI 2025 (PET-LiSch)
``dds``    :class:`~.dds.AnchoredEMDC`                  Singh et al., MELBA 2024 (PET-DDS)
``dps``    :class:`~.dps.PoissonDPSDC`                  Singh et al. 2024 / Chung et al. 2023 (DPS)
``deft``   none (an h-transformed denoiser, :mod:`.deft`)  Webber et al. 2025 (PET-DEFT)
=========  ==========================================  =========================================

Steps of :func:`prepare`:

1. an initial reconstruction fits the intensity scale ``s`` of the
   :class:`~sirf_diffusion.diffusion.normalisation.IntensityNormalisation` (mean activity over
   the well-sampled support), unless a normalisation is given: for ``lisch`` the ``K``-iteration
   MLEM run that also gives the likelihood schedule, otherwise OSEM (``init_subsets``,
   ``init_epochs``);
2. the method's factory builds its data-consistency rule;
3. the noise levels come from the denoiser's own VP schedule when it has one (``ScoreModel``, or
   the models of a ``PerpendicularPrior3D``), else the default VP-SDE, uniform in ``t``
   (:func:`~sirf_diffusion.diffusion.sampling.sampling_sigmas`), or are given as ``sigmas``;
4. when the image's in-plane field of view is more than
   :data:`~sirf_diffusion.diffusion.grid.FIELD_OF_VIEW_RATIO` times that of the prior's training
   slices (real scanner grids such as 181 x 181 or 285 x 285 voxels of about 2 mm), the prior
   denoises a window around the object (the support of the initial image, without its
   isolated noisy specks) and returns zero activity outside it
   (:class:`~sirf_diffusion.diffusion.window.WindowedDenoiser`): on the whole of such a grid
   the shipped prior is no better than OSEM (``docs/prior_boundary``).
   ``prior_window=True`` forces the window, ``False`` turns it off, ``None`` (default) decides
   by the field of view;
5. a :class:`~.loop.DiffusionStepper` starts ``num_samples`` chains at once (batch dimension)
   from ``sigma_0 z``.

Options (:data:`METHODS`): every method takes the common options ``num_steps``, ``sigmas``,
``eta``, ``num_samples``, ``generator``, ``support_mask``, ``prior_window``, ``dtype``,
``progress``; each method
its own.  ``None`` means "the default", and every default comes from
:data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`.  An option of another method, or an
unknown (misspelt) one, is an error naming the method and its options.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.grid import FIELD_OF_VIEW_RATIO, field_of_view_ratio, fit_prior_to_grid
from ..diffusion.normalisation import (
    IntensityNormalisation,
    support_mask,
    support_mean,
    well_sampled,
)
from ..diffusion.window import WindowedDenoiser, drop_specks
from ..likelihood import Likelihood
from .dds import AnchoredEMDC
from .defaults import METHOD_DEFAULTS
from .deft import NoDataConsistency, check_deft_data, deft_denoiser, resolve_deft_model
from .dps import PoissonDPSDC, require_projections
from .em_steps import check_positive_float, check_positive_int
from .lisch import LikelihoodScheduleDC, mlem_likelihood_schedule
from .loop import DataConsistency, DiffusionStepper, check_sigmas, step_to_end
from .posterior import summarise
from .result import ReconResult
from .steer import STEER_OPTIONS, steer_denoiser

__all__ = ["Method", "MethodSpec", "METHODS", "COMMON_OPTIONS", "DiffusionRun", "prepare",
           "resolve_options", "default_sigmas"]

Method = Literal["lisch", "dds", "dps", "deft"]

#: Options every method takes, with their defaults where ``METHOD_DEFAULTS`` has none.
COMMON_OPTIONS: Mapping[str, Any] = MappingProxyType({
    "num_steps": None, "sigmas": None, "eta": 0.0, "num_samples": 1, "generator": None,
    "support_mask": None, "prior_window": None, "dtype": torch.float32, "progress": False})


# ----------------------------------------------------------------------------- noise levels
def _schedule_of(denoiser: Denoiser) -> Any:
    """The VP schedule of a ``ScoreModel`` (or of the models of a ``PerpendicularPrior3D``)."""
    sched = getattr(denoiser, "schedule", None)
    if sched is not None:
        return sched
    for m in getattr(denoiser, "models", {}).values():
        if getattr(m, "schedule", None) is not None:
            return m.schedule
    return None


def default_sigmas(denoiser: Denoiser, num_steps: int, t_start: float | None = None
                   ) -> torch.Tensor:
    """``num_steps`` VP noise levels (plus 0) from the denoiser's own schedule if it has one,
    uniform in ``t`` from ``t_start`` (default: the schedule's end, ``t = 1``) to ``t_min``."""
    from ..diffusion.sampling import sampling_sigmas
    from ..diffusion.schedules import ContinuousVP, vp_sigmas

    n = check_positive_int(num_steps, "num_steps")
    if t_start is None:
        return sampling_sigmas(n, "vp", _schedule_of(denoiser))
    t_start = check_positive_float(t_start, "t_start")
    if not 1e-3 < t_start <= 1:
        raise ValueError(f"t_start must be in (0.001, 1], got {t_start}")
    sched = _schedule_of(denoiser) or ContinuousVP()
    if not isinstance(sched, ContinuousVP):
        raise ValueError("t_start needs a prior with a continuous VP schedule")
    return vp_sigmas(n, t_max=t_start * sched.t_max, schedule=sched)


def _noise_levels(denoiser: Denoiser, num_steps: int | None, sigmas: Any,
                  default_num_steps: int, t_start: float | None = None) -> torch.Tensor:
    if sigmas is None:
        return default_sigmas(denoiser, default_num_steps if num_steps is None else num_steps,
                              t_start)
    if t_start is not None:
        raise ValueError("give either sigmas or t_start, not both")
    sigmas = check_sigmas(torch.as_tensor(sigmas))  # before the initial reconstruction
    if num_steps is not None and num_steps != sigmas.numel() - 1:
        raise ValueError(f"num_steps={num_steps} but sigmas gives {sigmas.numel() - 1} steps")
    return sigmas


# ----------------------------------------------------------------------------- method factories
@dataclass
class _Parts:
    """What a method's factory builds: the rule and the initial reconstruction behind it."""

    rule: DataConsistency
    normalisation: IntensityNormalisation
    init_image: torch.Tensor | None
    init_cost: float
    init_pll: float | None
    config: dict[str, Any]
    pll_targets: torch.Tensor | None = None
    #: The method's own denoiser around the given prior (PET-DEFT's h-transform), or ``None``.
    wrap_denoiser: Callable[[Denoiser], Any] | None = None


def _fit_normalisation(likelihood: Likelihood, image: torch.Tensor,
                       support_mask: torch.Tensor | None) -> IntensityNormalisation:
    """Mean activity of ``image`` over its well-sampled support (module docstring, step 1)."""
    eligible = well_sampled(likelihood.sensitivity(None, like=image))
    mask = None if support_mask is None else support_mask[None]
    return IntensityNormalisation(float(support_mean(image[None], mask,
                                                     eligible=eligible[None])[0]))


def _initial_osem(likelihood: Likelihood, opt: dict[str, Any],
                  normalisation: IntensityNormalisation | None, progress: bool
                  ) -> tuple[torch.Tensor | None, float, dict[str, Any]]:
    """OSEM image, its cost and config of the normalisation fit (nothing when one is given)."""
    from ..recon.em import osem

    if normalisation is not None:
        return None, 0.0, {}
    ns = check_positive_int(opt["init_subsets"], "init_subsets")
    ne = check_positive_int(opt["init_epochs"], "init_epochs")
    with likelihood.count_projections() as cost:
        image = osem(likelihood, None, num_subsets=ns, num_epochs=ne, progress=progress)
    return image, cost.forward, {"init_subsets": ns, "init_epochs": ne}


def _prepare_lisch(likelihood: Likelihood, opt: dict[str, Any], num_steps: int,
                   normalisation: IntensityNormalisation | None, progress: bool) -> _Parts:
    """PET-LiSch: MLEM schedule (also the normalisation image) and the scheduled ascent."""
    K = opt["num_mlem_iterations"]
    sched = mlem_likelihood_schedule(likelihood, K, num_steps, progress=progress)
    norm = (normalisation if normalisation is not None
            else _fit_normalisation(likelihood, sched.image, opt["support_mask"]))
    rule = LikelihoodScheduleDC(likelihood, norm, sched.targets, alpha=opt["alpha"],
                                max_likelihood_steps=opt["max_likelihood_steps"])
    config = {"num_mlem_iterations": K, "mlem_pll": sched.pll, "alpha": rule.alpha,
              "max_likelihood_steps": rule.max_likelihood_steps}
    return _Parts(rule, norm, sched.image, sched.num_forward, sched.pll[-1], config,
                  sched.targets)


def _prepare_dds(likelihood: Likelihood, opt: dict[str, Any], num_steps: int,
                 normalisation: IntensityNormalisation | None, progress: bool) -> _Parts:
    """PET-DDS: OSEM normalisation and the anchored EM ascent (optional axial RDP)."""
    from ..recon.priors import RelativeDifferencePrior

    penalty, axial = opt["penalty"], opt["axial_penalty"]
    if axial is not None and penalty is not None:
        raise ValueError("give at most one of axial_penalty and penalty")
    image, cost, config = _initial_osem(likelihood, opt, normalisation, progress)
    norm = (normalisation if normalisation is not None
            else _fit_normalisation(likelihood, image, opt["support_mask"]))  # type: ignore[arg-type]
    if axial is not None:
        penalty = RelativeDifferencePrior(float(axial), gamma=2.0, neighbourhood="axial",
                                          voxel_size_mm=likelihood.voxel_size_mm)
    rule = AnchoredEMDC(likelihood, norm, opt["beta"], num_subsets=opt["num_subsets"],
                        num_epochs=opt["num_epochs"], num_subiterations=opt["num_subiterations"],
                        penalty=penalty)
    config.update(beta=rule.beta.tolist() if isinstance(rule.beta, torch.Tensor) else rule.beta,
                  num_subsets=rule.num_subsets, num_subiterations_per_step=rule._num_updates,
                  axial_penalty=axial, penalty=None if penalty is None else type(penalty).__name__)
    return _Parts(rule, norm, image, cost, None, config)


def _prepare_dps(likelihood: Likelihood, opt: dict[str, Any], num_steps: int,
                 normalisation: IntensityNormalisation | None, progress: bool) -> _Parts:
    """DPS: OSEM normalisation and the misfit gradient through the denoiser."""
    require_projections(likelihood, "dps")
    image, cost, config = _initial_osem(likelihood, opt, normalisation, progress)
    norm = (normalisation if normalisation is not None
            else _fit_normalisation(likelihood, image, opt["support_mask"]))  # type: ignore[arg-type]
    rule = PoissonDPSDC(likelihood, norm, opt["step_size"],  # type: ignore[arg-type]
                        opt["step_normalisation"])
    config.update(step_size=rule.step_size, step_normalisation=rule.step_normalisation)
    return _Parts(rule, norm, image, cost, None, config)


def _prior_window(denoiser: Denoiser, likelihood: Likelihood, image: torch.Tensor | None,
                  mask: torch.Tensor | None, option: bool | None) -> Denoiser:
    """The denoiser, windowed around the object when the field of view asks for it (step 4).

    The object is ``mask`` when given, else the support of the initial ``image`` (above 5 % of
    its maximum over the well-sampled voxels) without its specks (:func:`~sirf_diffusion.
    diffusion.window.drop_specks`: isolated noisy background voxels); without either there is
    no window.
    """
    if option is not None and not isinstance(option, bool):
        raise ValueError(f"prior_window must be True, False or None (auto), got {option!r}")
    if option is True and image is None and mask is None:
        raise ValueError("prior_window=True needs the object: give support_mask (with a given "
                         "normalisation there is no initial image to find it in)")
    if option is False or (image is None and mask is None):
        return denoiser
    ratio = field_of_view_ratio(denoiser, likelihood.image_shape, likelihood.voxel_size_mm)
    if option is None and (ratio is None or ratio <= FIELD_OF_VIEW_RATIO):
        return denoiser
    if mask is None:
        assert image is not None
        eligible = well_sampled(likelihood.sensitivity(None, like=image))
        mask = drop_specks(support_mask(image.reshape(likelihood.image_shape),
                                        eligible=eligible))
    return fit_prior_to_grid(denoiser, likelihood.image_shape, likelihood.voxel_size_mm,
                             support=mask.to(torch.bool), warn=False)


def _prepare_deft(likelihood: Likelihood, opt: dict[str, Any], num_steps: int,
                  normalisation: IntensityNormalisation | None, progress: bool) -> _Parts:
    """PET-DEFT: the model's OSEM normalisation, no rule, the h-transformed denoiser."""
    from ..diffusion.htransform import fit_normalisation

    model = resolve_deft_model(opt["deft_model"])
    check_deft_data(model, likelihood, None)  # the geometry, before any projection
    image, cost = None, 0.0
    if normalisation is None:
        normalisation, image, cost = fit_normalisation(
            likelihood, model.normalisation["init_subsets"], model.normalisation["init_epochs"],
            opt["support_mask"])
    dose = check_deft_data(model, likelihood, image)
    config = {"deft_model": None if model.path is None else str(model.path),
              "gradient": model.hnet.config.gradient, "t_start": opt["t_start"],
              "estimated_dose": dose,
              "dose_range": list(model.dose_range), **{
                  f"init_{k}": model.normalisation[f"init_{k}"] for k in ("subsets", "epochs")}}
    return _Parts(NoDataConsistency(), normalisation, image, cost, None, config,
                  wrap_denoiser=lambda prior: deft_denoiser(model, prior))


@dataclass(frozen=True)
class MethodSpec:
    """A diffusion reconstruction method: its own options and its factory."""

    name: str
    paper: str
    options: tuple[str, ...]
    factory: Callable[[Likelihood, dict[str, Any], int, IntensityNormalisation | None, bool],
                      _Parts]

    def defaults(self) -> dict[str, Any]:
        """Every option of the method with its default (``METHOD_DEFAULTS``, else built in)."""
        d: dict[str, Any] = dict(COMMON_OPTIONS)
        d.update((k, None) for k in self.options)
        d.update(METHOD_DEFAULTS[self.name])
        return d


#: The one table of diffusion reconstruction methods.
METHODS: Mapping[str, MethodSpec] = MappingProxyType({
    "lisch": MethodSpec("lisch", "Webber et al., IEEE TMI 2025 (arXiv 2412.04339)",
                        ("num_mlem_iterations", "alpha", "max_likelihood_steps",
                         *STEER_OPTIONS), _prepare_lisch),
    "dds": MethodSpec("dds", "Singh et al., MELBA 2024 (arXiv 2308.14190)",
                      ("beta", "num_subsets", "num_epochs", "num_subiterations", "axial_penalty",
                       "penalty", "init_subsets", "init_epochs", *STEER_OPTIONS), _prepare_dds),
    "dps": MethodSpec("dps", "Chung et al., ICLR 2023; Singh et al., MELBA 2024",
                      ("step_size", "step_normalisation", "init_subsets", "init_epochs"),
                      _prepare_dps),
    "deft": MethodSpec("deft", "Webber et al., MICCAI 2025 (arXiv 2506.24034); Denker et al., "
                       "NeurIPS 2024", ("deft_model", "t_start"), _prepare_deft),
})


def resolve_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of ``method`` with ``options`` (``None`` = default) over the defaults.

    Raises
    ------
    ValueError
        Unknown method, or an option that belongs to another method.
    TypeError
        An option no method knows (misspelt), with the closest names.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    spec = METHODS[method]
    own = (*COMMON_OPTIONS, *spec.options)
    known = set(COMMON_OPTIONS).union(*(m.options for m in METHODS.values()))
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        close = list(dict.fromkeys(c for k in unknown
                                   for c in difflib.get_close_matches(k, own, n=2)))
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for method {method!r}{hint}; "
                        f"it takes {', '.join(spec.options)} and {', '.join(COMMON_OPTIONS)}")
    wrong = [k for k, v in options.items() if v is not None and k not in own]
    if wrong:
        raise ValueError(f"option(s) {', '.join(wrong)} do not apply to method {method!r} "
                         f"(it takes {', '.join(spec.options)} and {', '.join(COMMON_OPTIONS)})")
    resolved = spec.defaults()
    resolved.update((k, v) for k, v in options.items() if v is not None)
    return resolved


# ----------------------------------------------------------------------------- the run
@dataclass
class DiffusionRun:
    """A prepared reconstruction (module docstring), to be stepped to its end.

    Attributes
    ----------
    method, likelihood, rule, stepper, normalisation, sigmas
        The pieces :func:`prepare` assembled.
    init_image
        The MLEM/OSEM image that fitted the normalisation (``None`` when one was given).
    num_init_evaluations
        Forward projections spent on it (full-data passes).
    config
        The resolved configuration.
    pll_targets
        PET-LiSch's per-step targets (``None`` for the other methods).
    stopped
        Whether a callback ended :meth:`run` early.
    """

    method: str
    likelihood: Likelihood
    rule: DataConsistency
    stepper: DiffusionStepper
    normalisation: IntensityNormalisation
    sigmas: torch.Tensor
    init_image: torch.Tensor | None
    num_init_evaluations: float
    config: dict[str, Any] = field(default_factory=dict)
    pll_targets: torch.Tensor | None = None
    stopped: bool = False
    _init_pll: float | None = field(default=None, repr=False)
    _pll: list[list[float]] = field(default_factory=list, init=False, repr=False)
    _steps: list[list[float]] = field(default_factory=list, init=False, repr=False)
    _targets: list[float] = field(default_factory=list, init=False, repr=False)
    _evaluations: float = field(default=0.0, init=False, repr=False)

    @property
    def num_samples(self) -> int:
        return int(self.config["num_samples"])

    @property
    def done(self) -> bool:
        return self.stepper.done

    @property
    def init_pll(self) -> float:
        """PLL of the initial image (computed once, on demand; ``nan`` without one)."""
        if self._init_pll is None:
            self._init_pll = math.nan if self.init_image is None else \
                float(self.likelihood.value(self.init_image).reshape(-1)[0])
        return self._init_pll

    def _record(self, info: dict[str, Any]) -> None:
        n = self.num_samples
        p = info.get("pll")
        self._pll.append([float("nan")] * n if p is None else [float(v) for v in p])
        ls = info.get("n_likelihood_steps", 0)
        self._steps.append([float(v) for v in ls] if isinstance(ls, list) else [float(ls)] * n)
        if "pll_target" in info:
            self._targets.append(float(info["pll_target"]))
        self._evaluations += float(info.get("n_likelihood_evaluations", 0.0))

    def step(self) -> dict[str, Any]:
        """One generative step (records its PLL and costs); the stepper's dict.

        Raises ``StopIteration`` once every step has been taken.
        """
        with self.likelihood.count_projections() as cost:
            info = self.stepper.step()
        if not info.get("n_likelihood_evaluations") and cost.forward > 0:
            # the rules report their own projections; those of a conditional denoiser (PET-DEFT's
            # likelihood feature) only the likelihood's counter sees
            info["n_likelihood_evaluations"] = cost.forward
        self._record(info)
        return info

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None, *,
            progress: bool = False) -> "DiffusionRun":
        """Step to the end; ``callback(info)`` after every step may raise ``StopIteration``."""
        remaining = self.stepper.num_steps - self.stepper.step_index
        self.stopped = step_to_end(self.step, remaining, callback, progress)
        return self

    def samples(self) -> torch.Tensor | None:
        """Current samples ``[n, z, y, x]`` in physical units, clipped at 0 (``None`` before the
        first step): after an early stop the last data-consistent estimate."""
        if self.stepper.denoised_dc is None:
            return None
        out = self.stepper.denoised_dc if self.stopped else self.stepper.result()
        return torch.clamp(self.normalisation.from_prior(out.detach()), min=0)

    def estimate(self) -> torch.Tensor:
        """Mean of :meth:`samples` ``[z, y, x]``; before the first step the initial image (zeros
        when there is none)."""
        s = self.samples()
        if s is not None:
            return s.mean(0)
        shape = tuple(self.likelihood.image_shape)
        if self.init_image is not None:
            return self.init_image.reshape(shape)
        return torch.zeros(shape, dtype=self.likelihood.dtype)

    def result(self, wall_time_s: float = math.nan) -> ReconResult:
        """The samples, their summary, the trajectory and the costs so far."""
        sample = self.samples()
        if sample is None:
            raise RuntimeError("no generative step has been taken yet")
        summ = summarise(sample)
        n = self.num_samples
        return ReconResult(
            method=self.method, sample=sample, mean=summ.mean, std=summ.std,
            pll=torch.tensor(self._pll, dtype=torch.float64).reshape(-1, n),
            pll_target=(None if self.pll_targets is None
                        else torch.tensor(self._targets, dtype=torch.float64)),
            likelihood_steps=torch.tensor(self._steps).reshape(-1, n),
            num_network_evaluations=self.stepper.num_network_evaluations,
            num_likelihood_evaluations=self._evaluations,
            num_init_evaluations=float(self.num_init_evaluations), wall_time_s=wall_time_s,
            normalisation=self.normalisation, init_image=self.init_image, sigmas=self.sigmas,
            config=self.config)


def prepare(method: Method, likelihood: Likelihood, denoiser: Denoiser,
            normalisation: IntensityNormalisation | None = None, **options: Any) -> DiffusionRun:
    """Assemble a diffusion reconstruction (module docstring), ready to be stepped.

    Parameters
    ----------
    method
        ``'lisch'``, ``'dds'``, ``'dps'`` or ``'deft'`` (:data:`METHODS`).
    likelihood
        A :class:`~sirf_diffusion.likelihood.Likelihood` of the measured data (DPS needs a
        :class:`~sirf_diffusion.likelihood.ProjectingLikelihood`).
    denoiser
        ``D(x, sigma) -> x0_hat`` on ``[n, 1, y, x]`` (images with one slice) or
        ``[n, 1, z, y, x]`` (volumes: a 3D prior such as ``PerpendicularPrior3D``).
    normalisation
        Intensity normalisation; ``None``: fitted on the initial reconstruction.
    **options
        See :func:`~.methods.reconstruct` and :data:`METHODS`; ``None`` means the default of
        :data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`.
    """
    given_steps = options.get("num_steps")
    opt = resolve_options(method, options)
    if "steer" in opt and not isinstance(opt["steer"], bool):
        raise ValueError(f"steer must be True or False, got {opt['steer']!r}")
    unused = [k for k in STEER_OPTIONS[1:] if options.get(k) is not None]
    if unused and not opt.get("steer"):
        raise ValueError(f"option(s) {', '.join(unused)} apply only with steer=True")
    if not isinstance(likelihood, Likelihood):
        raise TypeError("likelihood must implement sirf_diffusion.likelihood.Likelihood (e.g. a "
                        f"PoissonLogLikelihood), got {type(likelihood).__name__}")
    if not callable(denoiser):
        raise TypeError("denoiser must be callable as D(x, sigma)")
    num_samples = check_positive_int(opt["num_samples"], "num_samples")
    eta = check_positive_float(opt["eta"], "eta", allow_zero=True)
    if eta > 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    # t_start (PET-DEFT's) sets the levels unless explicit sigmas replace its default
    t_start = options.get("t_start") if opt["sigmas"] is not None else opt.get("t_start")
    sigmas = _noise_levels(denoiser, given_steps, opt["sigmas"], opt["num_steps"], t_start)
    n_steps = sigmas.numel() - 1
    spec = METHODS[method]
    parts = spec.factory(likelihood, opt, n_steps, normalisation, bool(opt["progress"]))
    norm = parts.normalisation
    config: dict[str, Any] = {"method": method, "num_steps": n_steps, "eta": eta,
                              "num_samples": num_samples, "sigma_max": float(sigmas[0]),
                              "sigma_min": float(sigmas[-2]), **parts.config,
                              "normalisation": norm.to_dict()}
    denoiser = _prior_window(denoiser, likelihood, parts.init_image, opt["support_mask"],
                             opt["prior_window"])
    config["prior_window"] = (list(denoiser.window) if isinstance(denoiser, WindowedDenoiser)
                              else None)
    if parts.wrap_denoiser is not None:
        denoiser = parts.wrap_denoiser(denoiser)
    adapt = noise_denoiser = None
    if opt.get("steer"):  # steerable conditional diffusion (.steer): a fresh adapter per run
        steering = steer_denoiser(denoiser, likelihood, norm, n_steps,
                                  **{k.removeprefix("steer_"): opt[k] for k in STEER_OPTIONS[1:]})
        denoiser, adapt, noise_denoiser = (steering.denoiser, steering.adaptation,
                                           steering.noise_denoiser)
        config.update(steering.config)
    dtype = opt["dtype"]
    shape = tuple(norm.to_prior(torch.zeros(num_samples, *likelihood.image_shape,
                                            dtype=dtype)).shape)
    stepper = DiffusionStepper(denoiser, sigmas, shape=shape, eta=eta, data_consistency=parts.rule,
                               generator=opt["generator"], dtype=dtype, device=likelihood.device,
                               likelihood=likelihood, normalisation=norm, adapt=adapt,
                               noise_denoiser=noise_denoiser)
    return DiffusionRun(method, likelihood, parts.rule, stepper, norm, sigmas, parts.init_image,
                        float(parts.init_cost), config, parts.pll_targets,
                        _init_pll=parts.init_pll)
