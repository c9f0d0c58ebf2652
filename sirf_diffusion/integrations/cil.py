r"""CIL protocols for diffusion priors: a ``Function`` and step-by-step ``Algorithm`` classes.

CIL (the Core Imaging Library, https://github.com/TomographicImaging/CIL, version >= 24) is
imported lazily: ``import sirf_diffusion.integrations`` never imports it.  The CIL classes are
built on first access of their names (module ``__getattr__``), so::

    from sirf_diffusion.integrations.cil import DiffusionPriorFunction   # imports cil here

raises an :class:`ImportError` naming the install route when CIL is missing.

``DiffusionPriorFunction``
    A CIL ``Function`` ``f(u) = R(u)`` around :class:`~.prior.DiffusionPrior` (the penalty to
    *minimise* together with e.g. a ``KullbackLeibler`` data term): ``__call__``,
    ``gradient(x, out=None)`` and ``proximal(x, tau, out=None)`` follow CIL's convention (with
    ``out`` the result is written into ``out``, which is also returned).  ``proximal`` is the
    Tweedie approximation documented in :mod:`.prior` (exact for Gaussian priors).

``LikelihoodScheduledDiffusion`` and ``DecomposedDiffusion``
    PET-LiSch (Webber et al., IEEE TMI 2025) and PET-DDS (Singh et al., MELBA 2024) as CIL
    ``Algorithm`` subclasses that run the reverse diffusion of
    :func:`sirf_diffusion.samplers.loop.reverse_diffusion` *one generative step per*
    ``update()``, with the data-consistency rules of :mod:`sirf_diffusion.samplers.lisch` and
    :mod:`sirf_diffusion.samplers.dds`, so that ``run(iterations, callbacks=[...])``, CIL
    callbacks and ``StopIteration`` work as for any CIL algorithm.  They reproduce
    :func:`sirf_diffusion.samplers.methods.reconstruct` exactly (same noise levels, same random
    numbers).  ``update()`` raises ``StopIteration`` once every step has been taken, which ends
    ``run`` early.  Per CIL's convention the algorithms *minimise*: the recorded objective is
    the negative Poisson log-likelihood :math:`-L(\hat u)` of the current data-consistent
    estimate (the diffusion prior has no tractable value), and at iteration 0 that of the
    initial MLEM/OSEM image.  ``solution`` / ``get_output()`` is the current estimate in physical
    units (clipped at 0; the mean over chains when ``num_samples > 1``) as an object of the kind
    of ``template`` (CIL or SIRF ``ImageData``, STIR image, numpy array or torch tensor; default
    a torch tensor ``(z, y, x)``).

``PETPhysicsOperator``
    The linear part ``m * G P`` of any physics backend as a CIL ``LinearOperator``
    (``direct``/``adjoint`` with ``out=``), for CIL's own solvers with e.g.
    ``KullbackLeibler(b=prompts, eta=additive)``.

The toolkit-independent machinery (:class:`DiffusionStepper`, :func:`prepare_diffusion_sampling`)
is usable and tested without CIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.normalisation import IntensityNormalisation, support_mean, well_sampled
from ..likelihood import PoissonLogLikelihood
from ..samplers.loop import DataConsistency, StepContext, ddim_noise_levels
from .containers import Restore, to_torch
from .prior import DiffusionPrior

# the last three are built on first access (module ``__getattr__``; importing them needs CIL)
__all__ = ["DiffusionStepper", "DiffusionRun", "prepare_diffusion_sampling", "require_cil",
           "DiffusionPriorFunction", "LikelihoodScheduledDiffusion",  # noqa: F822
           "DecomposedDiffusion", "PETPhysicsOperator"]  # noqa: F822

_CIL_NAMES = ("DiffusionPriorFunction", "LikelihoodScheduledDiffusion", "DecomposedDiffusion",
              "PETPhysicsOperator")

CIL_INSTALL_HINT = ("CIL is not installed: `conda install -c conda-forge -c ccpi cil`, "
                    "or build it with the SIRF SuperBuild (https://github.com/SyneRBI/SIRF-SuperBuild)")


def require_cil() -> Any:
    """Import and return the ``cil`` package, or raise an ImportError with the install route."""
    try:
        import cil  # noqa: F401
        from cil.optimisation.algorithms import Algorithm  # noqa: F401
        from cil.optimisation.functions import Function  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{CIL_INSTALL_HINT} ({e})") from e
    return cil


# ============================================================================ toolkit-free part
class DiffusionStepper:
    """:func:`~sirf_diffusion.samplers.loop.reverse_diffusion`, one generative step per call.

    Same validation, the same arithmetic and the same order of random draws as the loop, so
    that stepping to the end gives bit for bit the loop's result.

    Parameters
    ----------
    denoiser, sigmas, shape, x_init, eta, data_consistency, generator, dtype, device
        As :func:`~sirf_diffusion.samplers.loop.reverse_diffusion`.

    Attributes
    ----------
    x
        The current iterate ``x_i`` (prior space).
    denoised_dc
        The last data-consistent Tweedie estimate ``x0'`` (``None`` before the first step).
    step_index, num_steps
        Steps taken and their total.
    """

    def __init__(self, denoiser: Denoiser, sigmas: torch.Tensor, *,
                 shape: tuple[int, ...] | None = None, x_init: torch.Tensor | None = None,
                 eta: float = 0.0, data_consistency: DataConsistency | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        sigmas = torch.as_tensor(sigmas)
        if sigmas.ndim != 1 or len(sigmas) < 2:
            raise ValueError("sigmas must be a 1D tensor with at least 2 noise levels")
        if not bool((sigmas[1:] < sigmas[:-1]).all()) or bool((sigmas < 0).any()):
            raise ValueError("sigmas must be non-negative and strictly decreasing")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as D(x, sigma)")
        if x_init is None:
            if shape is None:
                raise ValueError("give either shape or x_init")
            x = torch.randn(shape, generator=generator, dtype=dtype, device="cpu")
            x = (x * sigmas[0].to(dtype)).to(device or "cpu")
        else:
            x = x_init.clone()
        self.denoiser = denoiser
        self.sigmas = sigmas.to(device=x.device, dtype=x.dtype)
        self.eta = float(eta)
        self.data_consistency = data_consistency
        self.generator = generator
        self.x = x
        self.denoised_dc: torch.Tensor | None = None
        self.num_steps = len(sigmas) - 1
        self.step_index = 0

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    def step(self) -> dict[str, Any]:
        """Take generative step ``step_index``; returns the loop's callback dictionary.

        Raises ``StopIteration`` when every step has been taken.
        """
        if self.done:
            raise StopIteration
        i, x = self.step_index, self.x
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        with torch.no_grad():
            x0 = self.denoiser(x, sigma.expand(x.shape[0]))
        eps = (x - x0) / sigma
        ctx = StepContext(i, self.num_steps, sigma, sigma_next, x, self.denoiser)
        x0_dc = self.data_consistency(x0, ctx) if self.data_consistency is not None else x0
        det, sto = ddim_noise_levels(sigma, sigma_next, self.eta)
        x = x0_dc + det * eps
        if sto > 0:
            z = torch.randn(x.shape, generator=self.generator, dtype=x.dtype,
                            device="cpu").to(x.device)
            x = x + sto * z
        self.x, self.denoised_dc = x, x0_dc
        self.step_index += 1
        return {"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": x0,
                "denoised_dc": x0_dc, **ctx.info}

    def result(self) -> torch.Tensor:
        """What the loop returns at this point: after the last step ``x`` (``sigma_N > 0``) or
        ``x0'`` (``sigma_N = 0``); before it (an early stop) the last ``x0'``."""
        if self.denoised_dc is None:
            raise RuntimeError("no generative step has been taken yet")
        if self.done and self.sigmas[-1] > 0:
            return self.x
        return self.denoised_dc


@dataclass
class DiffusionRun:
    """A reconstruction prepared by :func:`prepare_diffusion_sampling`, to be stepped.

    Attributes
    ----------
    method, likelihood, stepper, normalisation, sigmas, config
        As :class:`~sirf_diffusion.samplers.methods.ReconResult` and :class:`DiffusionStepper`.
    init_image
        The MLEM/OSEM image that fitted the normalisation (``None`` when one was given).
    init_pll
        Its Poisson log-likelihood (``nan`` without an initial image).
    num_init_evaluations
        Forward projections spent on it.
    """

    method: str
    likelihood: PoissonLogLikelihood
    stepper: DiffusionStepper
    normalisation: IntensityNormalisation
    sigmas: torch.Tensor
    init_image: torch.Tensor | None
    init_pll: float
    num_init_evaluations: float
    config: dict[str, Any] = field(default_factory=dict)

    def samples(self) -> torch.Tensor | None:
        """Current samples ``[n, z, y, x]`` in physical units, clipped at 0 (``None`` before the
        first step); after the last step identical to ``reconstruct(...).sample``."""
        if self.stepper.denoised_dc is None:
            return None
        return torch.clamp(self.normalisation.from_prior(self.stepper.result().detach()), min=0)

    def estimate(self) -> torch.Tensor:
        """Mean of :meth:`samples` ``[z, y, x]``; before the first step the initial image (zeros
        when there is none)."""
        s = self.samples()
        if s is not None:
            return s.mean(0)
        if self.init_image is not None:
            return self.init_image.reshape(self.likelihood.physics.image_shape)
        return torch.zeros(self.likelihood.physics.image_shape, dtype=self.likelihood.data.dtype)


def _default_sigmas(denoiser: Denoiser, num_steps: int | None,
                    sigmas: torch.Tensor | None) -> torch.Tensor:
    from ..samplers.methods import default_sigmas

    if sigmas is None:
        return default_sigmas(denoiser, 100 if num_steps is None else num_steps)
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1D tensor of at least 2 noise levels")
    if num_steps is not None and num_steps != sigmas.numel() - 1:
        raise ValueError(f"num_steps={num_steps} but sigmas gives {sigmas.numel() - 1} steps")
    return sigmas


def prepare_diffusion_sampling(
    method: Literal["lisch", "dds", "dps"],
    likelihood: PoissonLogLikelihood,
    denoiser: Denoiser,
    normalisation: IntensityNormalisation | None = None,
    *,
    num_steps: int | None = None,
    sigmas: torch.Tensor | None = None,
    eta: float = 0.0,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    support_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    **options: Any,
) -> DiffusionRun:
    """Steps 1-2 of :func:`~sirf_diffusion.samplers.methods.reconstruct` and a stepper for step 3.

    The arguments and ``options`` (per method: ``num_mlem_iterations``, ``alpha``,
    ``max_likelihood_steps`` for ``lisch``; ``beta``, ``num_subsets``, ``num_epochs``,
    ``num_subiterations``, ``axial_penalty``, ``penalty``, ``init_subsets``, ``init_epochs`` for
    ``dds``; ``step_size``, ``step_normalisation``, ``init_subsets``, ``init_epochs`` for
    ``dps``) mean what they mean there, with the same defaults, so that stepping the returned
    run to its end gives exactly ``reconstruct(...)``'s samples for the same generator.
    """
    from ..recon.priors import RelativeDifferencePrior
    from ..samplers.dds import AnchoredEMDC
    from ..samplers.dps import PoissonDPSDC
    from ..samplers.em_steps import check_positive_int
    from ..samplers.lisch import LikelihoodScheduleDC, mlem_likelihood_schedule

    allowed = {"lisch": ("num_mlem_iterations", "alpha", "max_likelihood_steps"),
               "dds": ("beta", "num_subsets", "num_epochs", "num_subiterations", "axial_penalty",
                       "penalty", "init_subsets", "init_epochs"),
               "dps": ("step_size", "step_normalisation", "init_subsets", "init_epochs")}
    if method not in allowed:
        raise ValueError(f"method must be one of {tuple(allowed)}, got {method!r}")
    wrong = sorted(set(k for k, v in options.items() if v is not None) - set(allowed[method]))
    if wrong:
        raise ValueError(f"option(s) {', '.join(wrong)} do not apply to method {method!r} "
                         f"(it takes {', '.join(allowed[method])})")
    opt = {k: v for k, v in options.items() if v is not None}
    if not isinstance(likelihood, PoissonLogLikelihood):
        raise TypeError("likelihood must be a sirf_diffusion PoissonLogLikelihood, got "
                        f"{type(likelihood).__name__}")
    if not callable(denoiser):
        raise TypeError("denoiser must be callable as D(x, sigma)")
    num_samples = check_positive_int(num_samples, "num_samples")
    sigmas = _default_sigmas(denoiser, num_steps, sigmas)
    n_steps = sigmas.numel() - 1
    phys = likelihood.physics
    config: dict[str, Any] = {"method": method, "num_steps": n_steps, "eta": float(eta),
                              "num_samples": num_samples, "sigma_max": float(sigmas[0]),
                              "sigma_min": float(sigmas[-2])}

    # 1. initial reconstruction -> intensity scale (and the PET-LiSch likelihood schedule)
    init_image: torch.Tensor | None = None
    init_pll = math.nan
    init_cost = 0.0
    if method == "lisch":
        K = opt.get("num_mlem_iterations", 20)
        sched = mlem_likelihood_schedule(likelihood, K, n_steps, progress=progress)
        init_image, init_cost, init_pll = sched.image, sched.num_forward, sched.pll[-1]
        config.update(num_mlem_iterations=K, mlem_pll=sched.pll)
    elif normalisation is None:
        from ..recon.em import osem

        ns = check_positive_int(opt.get("init_subsets", 1), "init_subsets")
        ne = check_positive_int(opt.get("init_epochs", 10), "init_epochs")
        fwd0 = likelihood.num_forward
        init_image = osem(likelihood, None, num_subsets=ns, num_epochs=ne, progress=progress)
        init_cost = likelihood.num_forward - fwd0
        init_pll = float(likelihood.value(init_image).reshape(-1)[0])
        config.update(init_subsets=ns, init_epochs=ne)
    if normalisation is None:
        assert init_image is not None
        eligible = well_sampled(likelihood.sensitivity(None, like=init_image))
        normalisation = IntensityNormalisation(
            float(support_mean(init_image[None], None if support_mask is None
                               else support_mask[None], eligible=eligible[None])[0]))
    config["normalisation"] = normalisation.to_dict()

    # 2. the data-consistency rule
    rule: DataConsistency
    if method == "lisch":
        rule = LikelihoodScheduleDC(likelihood, normalisation, sched.targets,
                                    alpha=opt.get("alpha", 1.0),
                                    max_likelihood_steps=opt.get("max_likelihood_steps", 20))
        config.update(alpha=rule.alpha, max_likelihood_steps=rule.max_likelihood_steps)
    elif method == "dds":
        penalty = opt.get("penalty")
        axial = opt.get("axial_penalty")
        if axial is not None and penalty is not None:
            raise ValueError("give at most one of axial_penalty and penalty")
        if axial is not None:
            penalty = RelativeDifferencePrior(float(axial), gamma=2.0, neighbourhood="axial",
                                              voxel_size_mm=phys.voxel_size_mm)
        rule = AnchoredEMDC(likelihood, normalisation, opt.get("beta", 0.0),
                            num_subsets=opt.get("num_subsets", 1),
                            num_epochs=opt.get("num_epochs"),
                            num_subiterations=opt.get("num_subiterations"), penalty=penalty)
        config.update(beta=rule.beta.tolist() if isinstance(rule.beta, torch.Tensor)
                      else rule.beta, num_subsets=rule.num_subsets, axial_penalty=axial)
    else:
        if opt.get("step_size") is None:
            raise ValueError("method 'dps' needs step_size (zeta)")
        rule = PoissonDPSDC(likelihood, normalisation, opt["step_size"],
                            opt.get("step_normalisation", "misfit"))
        config.update(step_size=rule.step_size, step_normalisation=rule.step_normalisation)

    # 3. the stepper (num_samples chains in one batch), started as reconstruct starts its loop
    shape = tuple(normalisation.to_prior(
        torch.zeros(num_samples, *phys.image_shape, dtype=dtype)).shape)
    stepper = DiffusionStepper(denoiser, sigmas, shape=shape, eta=eta, data_consistency=rule,
                               generator=generator, dtype=dtype, device=likelihood.data.device)
    return DiffusionRun(method, likelihood, stepper, normalisation, sigmas, init_image, init_pll,
                        float(init_cost), config)


# ============================================================================ CIL classes
_CLASSES: dict[str, type] = {}


def _output_converter(template: Any, image_shape: tuple[int, ...]
                      ) -> Callable[[torch.Tensor], Any]:
    """``tensor [z, y, x] -> object of template's kind`` (torch tensor when no template)."""
    if template is None:
        return lambda t: t.detach().clone()
    t, restore = to_torch(template)
    shape = tuple(t.shape)
    n = math.prod(image_shape)
    if math.prod(shape) != n or tuple(s for s in shape if s != 1) != \
            tuple(s for s in image_shape if s != 1):
        raise ValueError(f"template has shape {shape} but the reconstruction's image shape is "
                         f"{tuple(image_shape)} (z, y, x)")
    r: Restore = restore
    return lambda u: r(u.reshape(shape))


def _build_cil_classes() -> dict[str, type]:
    """Define the CIL subclasses (imports CIL); cached."""
    if _CLASSES:
        return _CLASSES
    require_cil()
    from cil.optimisation.algorithms import Algorithm
    from cil.optimisation.functions import Function

    class DiffusionPriorFunction(Function):
        """CIL ``Function`` ``f(u) = R(u)`` of a :class:`~.prior.DiffusionPrior`.

        Parameters
        ----------
        prior
            A ``DiffusionPrior``, or a denoiser from which one is built with ``prior_kwargs``
            (``sigma``, ``penalisation_factor``, ``normalisation``, ``value_mode``...).

        Notes
        -----
        ``gradient`` is the Tweedie score gradient :math:`-\\beta (D(u/s,\\sigma) - u/s) /
        (s\\sigma^2)`; ``__call__`` the surrogate value of the prior's ``value_mode``;
        ``proximal(x, tau)`` the MMSE (Tweedie) approximation
        :math:`s[y + \\lambda/\\eta^2 (D(y, \\eta) - y)]`, ``y = x/s``,
        ``lambda = tau beta / s^2``, ``eta^2 = sigma^2 + lambda`` (exact for Gaussian priors).
        With ``out`` given the result is written into ``out`` and ``out`` is returned.
        """

        def __init__(self, prior: DiffusionPrior | Denoiser, **prior_kwargs: Any) -> None:
            if isinstance(prior, DiffusionPrior):
                if prior_kwargs:
                    raise TypeError("prior_kwargs only apply when a denoiser is given")
                self.prior = prior
            else:
                self.prior = DiffusionPrior(prior, **prior_kwargs)
            super().__init__(L=None)

        def set_up(self, image: Any, mask: Any = None, **kwargs: Any) -> "DiffusionPriorFunction":
            """Fit the intensity scale on ``image`` (see ``DiffusionPrior.set_up``)."""
            self.prior.set_up(image, mask, **kwargs)
            return self

        def __call__(self, x: Any) -> float:
            v = self.prior.get_value(x)
            return float(v) if not hasattr(v, "shape") or v.ndim == 0 else v

        def gradient(self, x: Any, out: Any = None) -> Any:
            return self.prior.get_gradient(x, out=out)

        def proximal(self, x: Any, tau: float, out: Any = None) -> Any:
            return self.prior.proximal(x, tau, out=out)

    class _DiffusionAlgorithm(Algorithm):
        """Shared implementation (see the module docstring)."""

        _method: str = ""

        def __init__(self, likelihood: PoissonLogLikelihood, denoiser: Denoiser, *,
                     template: Any = None, update_objective_interval: int = 1,
                     **options: Any) -> None:
            super().__init__(update_objective_interval=update_objective_interval)
            self.set_up(likelihood, denoiser, template=template, **options)

        def set_up(self, likelihood: PoissonLogLikelihood, denoiser: Denoiser, *,
                   template: Any = None, **options: Any) -> None:
            """Initial reconstruction, normalisation, rule and noise levels (no step yet)."""
            self.run_state = prepare_diffusion_sampling(self._method, likelihood, denoiser,
                                                        **options)
            self._to_output = _output_converter(template,
                                                tuple(likelihood.physics.image_shape))
            self.step_info: dict[str, Any] = {}
            self.x = self._to_output(self.run_state.estimate())
            self.configured = True

        @property
        def num_steps(self) -> int:
            """Number of generative steps (``run`` stops by itself after them)."""
            return self.run_state.stepper.num_steps

        @property
        def samples(self) -> torch.Tensor | None:
            """Current samples ``[n, z, y, x]`` (physical units, torch)."""
            return self.run_state.samples()

        @property
        def normalisation(self) -> IntensityNormalisation:
            return self.run_state.normalisation

        def update(self) -> None:
            """One generative step; ``StopIteration`` after the last one."""
            if self.run_state.stepper.done:
                raise StopIteration
            self.step_info = self.run_state.stepper.step()
            self.x = self._to_output(self.run_state.estimate())

        def update_objective(self) -> None:
            """Append :math:`-L(\\hat u)`, the negative PLL of the current estimate (mean over
            chains), taken from the rule when it recorded it."""
            if self.run_state.stepper.step_index == 0:
                value = -self.run_state.init_pll
            else:
                pll = self.step_info.get("pll")
                if pll is None:
                    samples = self.run_state.samples()
                    pll = self.run_state.likelihood.value(samples).reshape(-1).tolist()
                value = -sum(float(p) for p in pll) / len(pll)
            self.loss.append(value)

        def should_stop(self) -> bool:  # CIL 24.0-24.2 check this before each iteration
            base = getattr(super(), "should_stop", None)
            return self.run_state.stepper.done or (bool(base()) if base is not None else False)

    class LikelihoodScheduledDiffusion(_DiffusionAlgorithm):
        """PET-LiSch (Webber et al., IEEE TMI 2025, arXiv:2412.04339) as a CIL ``Algorithm``.

        Parameters
        ----------
        likelihood
            :class:`~sirf_diffusion.likelihood.PoissonLogLikelihood` of the data.
        denoiser
            ``D(x, sigma)`` (2D slice model for one-slice images, 3D prior for volumes).
        template
            Image whose kind the solution takes (CIL/SIRF ``ImageData``, STIR image, numpy,
            torch; default: torch tensor).
        update_objective_interval
            CIL's; the objective is the negative PLL (module docstring).
        **options
            ``num_steps``, ``sigmas``, ``eta``, ``num_samples``, ``generator``,
            ``num_mlem_iterations``, ``alpha``, ``max_likelihood_steps``, ``support_mask``,
            ``dtype``, ``progress``, as :func:`~sirf_diffusion.samplers.methods.reconstruct`.
        """

        _method = "lisch"

    class DecomposedDiffusion(_DiffusionAlgorithm):
        """PET-DDS (Singh et al., MELBA 2024; Chung et al., ICLR 2024) as a CIL ``Algorithm``.

        Parameters are those of :class:`LikelihoodScheduledDiffusion`, with the PET-DDS
        options ``normalisation``, ``beta``, ``num_subsets``, ``num_epochs``,
        ``num_subiterations``, ``axial_penalty``, ``penalty``, ``init_subsets``, ``init_epochs``
        in place of the PET-LiSch ones.
        """

        _method = "dds"

    from cil.framework import ImageGeometry
    from cil.optimisation.operators import LinearOperator

    class PETPhysicsOperator(LinearOperator):
        """The linear part ``m * G P`` of a package physics model as a CIL ``LinearOperator``.

        Parameters
        ----------
        physics
            Any :class:`~sirf_diffusion.physics.base.PETPhysics` (embedded, SIRF, STIR).
        domain_geometry, range_geometry
            CIL geometries (anything with ``allocate``) of images ``(z, y, x)`` and sinograms
            ``(sinogram, view, tangential)``; default: CIL ``ImageGeometry`` objects of those
            shapes (voxel sizes in mm for the image; CIL drops axes of size 1).
        subset
            Project the views of this subset only (``None``: all views).

        Notes
        -----
        ``direct(x, out=None)`` / ``adjoint(y, out=None)`` follow CIL: with ``out`` the result
        is written into ``out``, which is returned.  The affine term ``b`` is not part of the
        operator: give it to CIL's ``KullbackLeibler(b=prompts, eta=b)``.
        """

        def __init__(self, physics: Any, domain_geometry: Any = None, range_geometry: Any = None,
                     subset: int | None = None) -> None:
            nz, ny, nx = physics.image_shape
            vz, vy, vx = physics.voxel_size_mm
            if domain_geometry is None:
                domain_geometry = ImageGeometry(voxel_num_x=nx, voxel_num_y=ny, voxel_num_z=nz,
                                                voxel_size_x=vx, voxel_size_y=vy,
                                                voxel_size_z=vz)
            ns, nv, nt = physics.data_shape
            if subset is not None:
                nv = len(physics.subset_views(subset))
            if range_geometry is None:
                range_geometry = ImageGeometry(voxel_num_x=nt, voxel_num_y=nv, voxel_num_z=ns)
            self.physics = physics
            self.subset = subset
            self._data_shape = (ns, nv, nt)
            super().__init__(domain_geometry=domain_geometry, range_geometry=range_geometry)

        @staticmethod
        def _values(x: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
            t, _ = to_torch(x)
            if t.numel() != math.prod(shape):
                raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {shape}")
            return t.reshape(shape)

        @staticmethod
        def _write(values: torch.Tensor, geometry: Any, out: Any) -> Any:
            if out is None:
                out = geometry.allocate(0)
            out.fill(values.detach().cpu().numpy().astype("float32").reshape(out.shape))
            return out

        def direct(self, x: Any, out: Any = None) -> Any:
            u = self._values(x, tuple(self.physics.image_shape), "image")
            y = self.physics.forward_linear(u, self.subset)
            return self._write(y, self.range_geometry(), out)

        def adjoint(self, x: Any, out: Any = None) -> Any:
            y = self._values(x, self._data_shape, "sinogram")
            u = self.physics.adjoint(y, self.subset)
            return self._write(u, self.domain_geometry(), out)

    for cls in (DiffusionPriorFunction, LikelihoodScheduledDiffusion, DecomposedDiffusion,
                _DiffusionAlgorithm, PETPhysicsOperator):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    _CLASSES.update(DiffusionPriorFunction=DiffusionPriorFunction,
                    LikelihoodScheduledDiffusion=LikelihoodScheduledDiffusion,
                    DecomposedDiffusion=DecomposedDiffusion,
                    PETPhysicsOperator=PETPhysicsOperator)
    return _CLASSES


def __getattr__(name: str) -> Any:
    if name in _CIL_NAMES:
        return _build_cil_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_CIL_NAMES))
