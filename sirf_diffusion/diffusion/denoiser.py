"""The one denoiser contract every prior model presents to the samplers.

A denoiser is any callable ``D(x, sigma) -> x0_hat`` where ``x = x0 + sigma * eps`` lives in the
*normalised* intensity space of the prior (variance-exploding parametrisation, as in
k-diffusion / Karras et al. 2022), ``x`` has shape ``[B, C, H, W]`` (2D models) or
``[B, 1, Z, Y, X]`` (3D priors) and ``sigma`` is a tensor broadcastable to ``[B]``.
``x0_hat`` is the Tweedie (posterior-mean) estimate ``E[x0 | x]``; the score is
``(x0_hat - x) / sigma**2``.

Networks trained with other parametrisations (epsilon, v, score; variance-preserving inputs) are
wrapped by thin adapters in :mod:`sirf_diffusion.diffusion.adapters` so that samplers never see
the difference.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Denoiser", "DenoiserWrapper", "score_from_denoiser"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma) -> x0_hat`` (see module docstring)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def score_from_denoiser(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score ``grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (Tweedie's formula)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma
    return (denoiser(x, sigma) - x) / s**2


class DenoiserWrapper:
    """Base of the prior-boundary wrappers (resampling, windowing) around a denoiser.

    ``models`` lists the slice models behind the wrapped denoiser the way
    :class:`~sirf_diffusion.diffusion.prior3d.PerpendicularPrior3D` does, so that code reading a
    prior's schedule or parameters (samplers, integrations) sees through the wrapper.
    """

    def __init__(self, denoiser: Denoiser) -> None:
        if not callable(denoiser):
            raise TypeError(f"the denoiser must be callable, got {type(denoiser).__name__}")
        self.denoiser = denoiser

    @property
    def models(self) -> dict[str, Any]:
        inner = getattr(self.denoiser, "models", None)
        if isinstance(inner, dict):
            return inner
        config = getattr(self.denoiser, "config", None)
        return {str(getattr(config, "orientation", "xy")): self.denoiser}
