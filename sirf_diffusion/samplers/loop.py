"""The one reverse-diffusion loop every sampler and reconstruction method runs on.

At each generative step ``i`` with noise levels ``sigma_i > sigma_{i+1}``:

1. Tweedie estimate ``x0 = D(x_i, sigma_i)`` (the denoiser contract);
2. noise estimate ``eps = (x_i - x0) / sigma_i`` (from the *unconditioned* estimate);
3. data consistency ``x0' = DC(x0, context)`` — a pluggable rule (PET-LiSch, PET-DDS, DPS...),
   identity for unconditional sampling;
4. DDIM re-noise (Song et al. 2021, Eq. 12, written in the variance-exploding parametrisation
   ``x = x0 + sigma * eps``):

.. math::

    x_{i+1} = x_0' + \\sqrt{\\sigma_{i+1}^2 - c_i^2}\\, \\hat\\epsilon + c_i z, \\qquad
    c_i = \\eta\\, \\sigma_{i+1} \\sqrt{1 - \\sigma_{i+1}^2 / \\sigma_i^2}

``eta = 0`` is deterministic DDIM, ``eta = 1`` the ancestral (DDPM) sampler.  With a final
``sigma_N = 0`` the output is the last data-consistent estimate ``x0'``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from ..diffusion.denoiser import Denoiser

__all__ = ["StepContext", "DataConsistency", "reverse_diffusion", "ddim_noise_levels"]


@dataclass
class StepContext:
    """What a data-consistency rule may look at during step ``step``.

    Attributes
    ----------
    step, num_steps
        Index of the generative step (0 = noisiest) and their number.
    sigma, sigma_next
        Noise levels of this and the next step (0-dim tensors).
    x
        The noisy iterate ``x_i`` the estimate was computed from.
    denoiser
        The denoiser, for rules that differentiate through it (DPS).
    info
        A dict the rule fills with what callbacks should see (``pll``,
        ``n_likelihood_evaluations``...).
    """

    step: int
    num_steps: int
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    x: torch.Tensor
    denoiser: Denoiser
    info: dict[str, Any] = field(default_factory=dict)


class DataConsistency(Protocol):
    """A rule ``x0' = DC(x0, context)`` applied to the Tweedie estimate at each step."""

    def __call__(self, x0: torch.Tensor, context: StepContext) -> torch.Tensor: ...


def ddim_noise_levels(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(deterministic, stochastic)`` noise scales of the DDIM update (see module docstring)."""
    if sigma_next <= 0:
        z = torch.zeros_like(sigma)
        return z, z
    c = eta * sigma_next * torch.sqrt(torch.clamp(1 - sigma_next**2 / sigma**2, min=0.0))
    c = torch.minimum(c, sigma_next)
    return torch.sqrt(torch.clamp(sigma_next**2 - c**2, min=0.0)), c


def reverse_diffusion(
    denoiser: Denoiser,
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

    Parameters
    ----------
    denoiser
        ``D(x, sigma) -> x0_hat``.
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
    callback
        Called after every step with a dict: ``i``, ``sigma``, ``sigma_next``, ``x`` (the new
        iterate), ``denoised`` (raw estimate), ``denoised_dc`` (after data consistency), plus
        every key the rule put in ``context.info``.  Raising ``StopIteration`` ends the loop
        early and returns the last data-consistent estimate.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    torch.Tensor
        The final sample (``x0'`` of the last step when ``sigmas[-1] == 0``).
    """
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1D tensor with at least 2 noise levels")
    if not bool((sigmas[1:] < sigmas[:-1]).all()) or bool((sigmas < 0).any()):
        raise ValueError("sigmas must be non-negative and strictly decreasing")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if x_init is None:
        if shape is None:
            raise ValueError("give either shape or x_init")
        x = torch.randn(shape, generator=generator, dtype=dtype, device="cpu")
        x = (x * sigmas[0].to(dtype)).to(device or "cpu")
    else:
        x = x_init.clone()
    sigmas = sigmas.to(device=x.device, dtype=x.dtype)
    n = len(sigmas) - 1
    x0_dc = x
    for i in tqdm(range(n), disable=not progress, desc="reverse diffusion", leave=False):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        with torch.no_grad():
            x0 = denoiser(x, sigma.expand(x.shape[0]))
        eps = (x - x0) / sigma
        ctx = StepContext(i, n, sigma, sigma_next, x, denoiser)
        x0_dc = data_consistency(x0, ctx) if data_consistency is not None else x0
        det, sto = ddim_noise_levels(sigma, sigma_next, eta)
        x = x0_dc + det * eps
        if sto > 0:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x = x + sto * z
        if callback is not None:
            try:
                callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x,
                          "denoised": x0, "denoised_dc": x0_dc, **ctx.info})
            except StopIteration:
                return x0_dc
    return x if sigmas[-1] > 0 else x0_dc
