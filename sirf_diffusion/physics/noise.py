"""Poisson noise for simulated PET data, with explicit random generators.

Measured prompts are Poisson distributed with mean ``ybar = m * (G x) + b`` (independent bins),
so ``E[y] = Var[y] = ybar``.  The count level of a simulation is set by scaling ``ybar`` to a
requested expected total before drawing.
"""

from __future__ import annotations

import math

import torch

__all__ = ["poisson_noise", "scale_to_counts", "noisy_realisation"]


def _check_mean(ybar: torch.Tensor, name: str = "ybar") -> None:
    if not isinstance(ybar, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ybar).__name__}")
    if not ybar.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {ybar.dtype}")
    if not torch.isfinite(ybar).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (ybar < 0).any():
        raise ValueError(f"{name} contains negative values (min {float(ybar.min()):.4g}); "
                         "a Poisson mean must be >= 0")


def poisson_noise(ybar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw ``y ~ Poisson(ybar)`` independently per bin.

    Parameters
    ----------
    ybar
        Expected counts (any shape, floating point, >= 0).
    generator
        A ``torch.Generator`` on the same device type as ``ybar`` (the same generator state
        gives the same realisation).

    Returns
    -------
    Tensor of integer-valued counts with the dtype and device of ``ybar``.
    """
    _check_mean(ybar)
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (explicit randomness)")
    if generator.device.type != ybar.device.type:
        raise ValueError(f"generator is on {generator.device} but ybar is on {ybar.device}")
    return torch.poisson(ybar, generator=generator)


def scale_to_counts(ybar: torch.Tensor, total_counts: float) -> tuple[torch.Tensor, float]:
    """Scale ``ybar`` so that its sum (the expected total count) is ``total_counts``.

    Returns
    -------
    scaled, factor
        ``factor * ybar`` and ``factor = total_counts / sum(ybar)``; apply the same factor to
        the image (or to ``m``) to keep the model consistent.
    """
    _check_mean(ybar)
    if not (total_counts > 0 and math.isfinite(total_counts)):
        raise ValueError(f"total_counts must be finite and > 0, got {total_counts}")
    total = float(ybar.sum())
    if total <= 0:
        raise ValueError("ybar sums to 0: cannot scale to a count level")
    factor = float(total_counts) / total
    return ybar * factor, factor


def noisy_realisation(ybar: torch.Tensor, total_counts: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Scale ``ybar`` to ``total_counts`` expected counts and draw Poisson data.

    Returns
    -------
    counts, factor
        The noisy data and the scale factor applied to ``ybar`` (see :func:`scale_to_counts`).
    """
    scaled, factor = scale_to_counts(ybar, total_counts)
    return poisson_noise(scaled, generator), factor
