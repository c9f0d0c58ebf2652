"""The one generative step every sampler and reconstruction method runs: :class:`DiffusionStepper`.

At each generative step ``i`` with noise levels ``sigma_i > sigma_{i+1}``:

1. Tweedie estimate ``x0 = D(x_i, sigma_i)`` (the denoiser contract below);
2. noise estimate ``eps = (x_i - x0) / sigma_i`` (from the *unconditioned* estimate, or from a
   separate ``noise_denoiser``);
3. data consistency ``x0' = DC(x0, context)``: a pluggable rule (PET-LiSch, PET-DDS, DPS...),
   identity for unconditional sampling;
4. optional adaptation of the denoiser, ``adapt(context)``, seen from the next step on;
5. DDIM re-noise (Song et al. 2021, Eq. 12, written in the variance-exploding parametrisation
   ``x = x0 + sigma * eps``):

.. math::

    x_{i+1} = x_0' + \\sqrt{\\sigma_{i+1}^2 - c_i^2}\\, \\hat\\epsilon + c_i z, \\qquad
    c_i = \\eta\\, \\sigma_{i+1} \\sqrt{1 - \\sigma_{i+1}^2 / \\sigma_i^2}

``eta = 0`` is deterministic DDIM, ``eta = 1`` the ancestral (DDPM) sampler: ``c_i^2`` is then
the variance ``sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2`` of the DDPM posterior
``q(x_{i+1} | x_i, x_0)`` and the deterministic part its mean.  With a final ``sigma_N = 0`` the
output is the last data-consistent estimate ``x0'``.

:class:`DiffusionStepper` holds the state (iterate, step index, noise levels, ``eta``, generator,
last data-consistent estimate) and takes one step per :meth:`~DiffusionStepper.step`;
:func:`reverse_diffusion` is a short loop over it, and every front end (``reconstruct``, the CIL
``Algorithm`` classes, the SIRF reconstructor) drives the same object.

Denoiser contract
-----------------
``D(x, sigma) -> x0_hat`` (:class:`~sirf_diffusion.diffusion.denoiser.Denoiser`) is the plain
contract and all that the shipped priors need.  Two extensions serve the methods to come:

* **A denoiser that changes during sampling** (steerable conditional diffusion, which fits LoRA
  weights between steps): pass ``adapt``, a :class:`DenoiserAdaptation` called after data
  consistency with the step's :class:`StepContext` (iterate, estimates, noise levels, the
  denoiser).  Whatever it changes in the denoiser (its weights) is seen from the next step on.
  Such methods re-noise with the *unadapted* network's noise estimate: pass that network as
  ``noise_denoiser`` and ``eps`` of step 2 comes from it (one extra network evaluation per step).
* **A denoiser that takes extra conditioning** (PET-DEFT's h-transform, which sees the iterate,
  the Tweedie estimate and the gradient of the Poisson log-likelihood): a
  :class:`ConditionalDenoiser` ``D(x, sigma, context)`` with an ``unconditional_denoiser``.  The
  stepper calls it with a :class:`DenoiserContext` giving ``x_t``, ``sigma``, the step, the
  unconditional estimate (evaluated once, on demand, and counted), and the likelihood and
  intensity normalisation the stepper was given (to form ``grad L`` of the estimate in physical
  units).  Its output is the step's ``x0``; ``eps`` follows from it.

Every network evaluation (the step's, the unconditional one of a context, the noise
denoiser's, and those a rule makes through ``context.denoiser``) is counted in
:attr:`DiffusionStepper.num_network_evaluations`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from ..diffusion.denoiser import Denoiser
from ..diffusion.normalisation import IntensityNormalisation

__all__ = ["StepContext", "DataConsistency", "DenoiserContext", "ConditionalDenoiser",
           "DenoiserAdaptation", "DiffusionStepper", "reverse_diffusion", "step_to_end",
           "ddim_noise_levels"]


@dataclass
class StepContext:
    """What a data-consistency rule (and an adaptation) may look at during step ``step``.

    Attributes
    ----------
    step, num_steps
        Index of the generative step (0 = noisiest) and their number.
    sigma, sigma_next
        Noise levels of this and the next step (0-dim tensors).
    x
        The noisy iterate ``x_i`` the estimate was computed from.
    denoiser
        ``D(x, sigma)`` of this step, for rules that differentiate through it (DPS); its calls
        are counted.
    info
        A dict the rule fills with what callbacks should see (``pll``,
        ``n_likelihood_evaluations``...).
    denoised, denoised_dc
        The Tweedie estimate ``x0`` and, once the rule has run, ``x0'`` (for adaptations).
    """

    step: int
    num_steps: int
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    x: torch.Tensor
    denoiser: Denoiser
    info: dict[str, Any] = field(default_factory=dict)
    denoised: torch.Tensor | None = None
    denoised_dc: torch.Tensor | None = None


class DataConsistency(Protocol):
    """A rule ``x0' = DC(x0, context)`` applied to the Tweedie estimate at each step."""

    def __call__(self, x0: torch.Tensor, context: StepContext) -> torch.Tensor: ...


@dataclass
class DenoiserContext:
    """What a :class:`ConditionalDenoiser` sees at one step (module docstring).

    Attributes
    ----------
    x, sigma
        The iterate ``x_t`` and its noise levels ``[B]``.
    step, num_steps
        The generative step and their number.
    likelihood, normalisation
        Those the stepper was given (``None`` when not): ``normalisation.from_prior`` maps an
        estimate to physical units, where ``likelihood.gradient`` applies.
    """

    x: torch.Tensor
    sigma: torch.Tensor
    step: int
    num_steps: int
    unconditional_denoiser: Denoiser | None = None
    likelihood: Any = None
    normalisation: IntensityNormalisation | None = None
    _count: Callable[[], None] | None = field(default=None, repr=False)
    _unconditional: torch.Tensor | None = field(default=None, init=False, repr=False)

    def unconditional(self) -> torch.Tensor:
        """The unconditional Tweedie estimate ``D_0(x_t, sigma)`` (no gradient; evaluated once)."""
        if self._unconditional is None:
            if self.unconditional_denoiser is None:
                raise RuntimeError("this conditional denoiser has no unconditional_denoiser")
            if self._count is not None:
                self._count()
            with torch.no_grad():
                self._unconditional = self.unconditional_denoiser(self.x, self.sigma)
        return self._unconditional


@runtime_checkable
class ConditionalDenoiser(Protocol):
    """``D(x, sigma, context) -> x0_hat`` refining an unconditional denoiser (module docstring)."""

    unconditional_denoiser: Denoiser | None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor,
                 context: DenoiserContext) -> torch.Tensor: ...


class DenoiserAdaptation(Protocol):
    """``adapt(context)``: changes the denoiser after data consistency (module docstring)."""

    def __call__(self, context: StepContext) -> None: ...


def ddim_noise_levels(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(deterministic, stochastic)`` noise scales of the DDIM update (see module docstring)."""
    if sigma_next <= 0:
        z = torch.zeros_like(sigma)
        return z, z
    c = eta * sigma_next * torch.sqrt(torch.clamp(1 - sigma_next**2 / sigma**2, min=0.0))
    c = torch.minimum(c, sigma_next)
    return torch.sqrt(torch.clamp(sigma_next**2 - c**2, min=0.0)), c


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` as a 1D tensor of at least 2 non-negative, strictly decreasing levels."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1D tensor with at least 2 noise levels")
    if not bool((sigmas[1:] < sigmas[:-1]).all()) or bool((sigmas < 0).any()):
        raise ValueError("sigmas must be non-negative and strictly decreasing")
    return sigmas


class DiffusionStepper:
    """The reverse diffusion, one generative step per :meth:`step` (module docstring).

    Parameters
    ----------
    denoiser
        ``D(x, sigma) -> x0_hat``, or a :class:`ConditionalDenoiser`.
    sigmas
        Strictly decreasing noise levels, usually ending with 0 (``N + 1`` values, ``N`` steps).
    shape, x_init
        Start from ``sigmas[0] * z`` with ``z ~ N(0, I)`` of ``shape``, or from ``x_init``.
    eta
        DDIM stochasticity in [0, 1].
    data_consistency
        Optional rule applied to each Tweedie estimate (see :class:`DataConsistency`).
    generator
        Source of all randomness (initial noise and stochastic re-noising).
    dtype, device
        Of the iterate started from noise.
    adapt
        Optional :class:`DenoiserAdaptation`, called after data consistency.
    noise_denoiser
        Optional denoiser whose estimate gives the re-noising ``eps`` (default: the step's).
    likelihood, normalisation
        Given to a :class:`ConditionalDenoiser` through its :class:`DenoiserContext`.

    Attributes
    ----------
    x
        The current iterate ``x_i`` (prior space).
    denoised_dc
        The last data-consistent Tweedie estimate ``x0'`` (``None`` before the first step).
    step_index, num_steps
        Steps taken and their total.
    num_network_evaluations
        Denoiser calls so far (each on the whole batch).
    """

    def __init__(self, denoiser: Denoiser | ConditionalDenoiser, sigmas: torch.Tensor, *,
                 shape: tuple[int, ...] | None = None, x_init: torch.Tensor | None = None,
                 eta: float = 0.0, data_consistency: DataConsistency | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None,
                 adapt: DenoiserAdaptation | None = None,
                 noise_denoiser: Denoiser | None = None, likelihood: Any = None,
                 normalisation: IntensityNormalisation | None = None) -> None:
        sigmas = check_sigmas(sigmas)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as D(x, sigma)")
        if noise_denoiser is not None and not callable(noise_denoiser):
            raise TypeError("noise_denoiser must be callable as D(x, sigma)")
        if adapt is not None and not callable(adapt):
            raise TypeError("adapt must be callable as adapt(context)")
        if x_init is None:
            if shape is None:
                raise ValueError("give either shape or x_init")
            x = torch.randn(shape, generator=generator, dtype=dtype, device="cpu")
            x = (x * sigmas[0].to(dtype)).to(device or "cpu")
        else:
            x = x_init.clone()
        self.denoiser = denoiser
        self._conditional = isinstance(denoiser, ConditionalDenoiser)
        self.sigmas = sigmas.to(device=x.device, dtype=x.dtype)
        self.eta = float(eta)
        self.data_consistency = data_consistency
        self.generator = generator
        self.adapt = adapt
        self.noise_denoiser = noise_denoiser
        self.likelihood = likelihood
        self.normalisation = normalisation
        self.x = x
        self.denoised_dc: torch.Tensor | None = None
        self.num_steps = len(sigmas) - 1
        self.step_index = 0
        self.num_network_evaluations = 0

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    def _count(self) -> None:
        self.num_network_evaluations += 1

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        """One counted evaluation of the step's denoiser (with a context when conditional)."""
        self._count()
        if self._conditional:
            ctx = DenoiserContext(x, sigma, step, self.num_steps,
                                  self.denoiser.unconditional_denoiser,  # type: ignore[union-attr]
                                  self.likelihood, self.normalisation, self._count)
            return self.denoiser(x, sigma, ctx)  # type: ignore[call-arg]
        return self.denoiser(x, sigma)

    def step(self) -> dict[str, Any]:
        """Take generative step ``step_index``; returns the callback dictionary: ``i``,
        ``sigma``, ``sigma_next``, ``x`` (the new iterate), ``denoised`` (raw estimate),
        ``denoised_dc`` (after data consistency), plus every key the rule put in
        ``context.info``.

        Raises ``StopIteration`` when every step has been taken.
        """
        if self.done:
            raise StopIteration
        i, x = self.step_index, self.x
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sigma_b = sigma.expand(x.shape[0])
        # 1. Tweedie estimate
        with torch.no_grad():
            x0 = self._denoise(x, sigma_b, i)
        # 2. noise estimate (unconditioned, or from the noise denoiser)
        if self.noise_denoiser is None:
            eps = (x - x0) / sigma
        else:
            self._count()
            with torch.no_grad():
                eps = (x - self.noise_denoiser(x, sigma_b)) / sigma
        # 3. data consistency
        ctx = StepContext(i, self.num_steps, sigma, sigma_next, x,
                          lambda xx, ss: self._denoise(xx, ss, i), denoised=x0)
        x0_dc = self.data_consistency(x0, ctx) if self.data_consistency is not None else x0
        ctx.denoised_dc = x0_dc
        # 4. adaptation of the denoiser, seen from the next step on
        if self.adapt is not None:
            self.adapt(ctx)
        # 5. DDIM re-noise
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


def reverse_diffusion(
    denoiser: Denoiser | ConditionalDenoiser,
    sigmas: torch.Tensor,
    *,
    shape: tuple[int, ...] | None = None,
    x_init: torch.Tensor | None = None,
    eta: float = 0.0,
    data_consistency: DataConsistency | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Run the reverse diffusion from ``sigmas[0]`` down to ``sigmas[-1]``.

    A loop over :class:`DiffusionStepper` (whose parameters these are).

    Parameters
    ----------
    callback
        Called after every step with the dict of :meth:`DiffusionStepper.step`.  Raising
        ``StopIteration`` ends the loop early and returns the last data-consistent estimate.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    torch.Tensor
        The final sample (``x0'`` of the last step when ``sigmas[-1] == 0``).
    """
    stepper = DiffusionStepper(denoiser, sigmas, shape=shape, x_init=x_init, eta=eta,
                               data_consistency=data_consistency, generator=generator,
                               dtype=dtype, device=device)
    if step_to_end(stepper.step, stepper.num_steps, callback, progress):
        assert stepper.denoised_dc is not None
        return stepper.denoised_dc
    return stepper.result()


def step_to_end(step: Callable[[], dict[str, Any]], num_steps: int,
                callback: Callable[[dict[str, Any]], None] | None, progress: bool) -> bool:
    """Call ``step()`` ``num_steps`` times (tqdm bar), passing each dict to ``callback``;
    returns whether the callback ended the loop early (by raising ``StopIteration``)."""
    for _ in tqdm(range(num_steps), disable=not progress, desc="reverse diffusion", leave=False):
        info = step()
        if callback is not None:
            try:
                callback(info)
            except StopIteration:
                return True
    return False
