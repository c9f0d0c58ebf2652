"""Training recipes: which noise levels the score-matching loss sees, and how it weights them.

The loss of :meth:`~.model.ScoreModel.training_loss` is

.. math::

    \\mathcal L = \\mathbb E_{\\sigma \\sim p(\\sigma)}\\, w(\\sigma)\\,
    \\big\\| f_\\theta(x_t, t) - y \\big\\|^2,\\qquad \\sigma = \\sigma(t),

with the parametrisation's target ``y`` (eps or v).  A :class:`LossRecipe` chooses

``time_sampling``
    ``'uniform_t'``: ``t ~ U(t_min, t_max)`` (Song et al. 2021; the PET papers).  With the VP-SDE
    only about a quarter of the draws have ``sigma < 1``.
    ``'lognormal'``: ``ln sigma ~ N(lognormal_mean, lognormal_std^2)`` (Karras et al. 2022, EDM,
    Sec. 5 "noise distribution"), mapped to ``t`` by the schedule and clipped to
    ``[t_min, t_max]``: concentrates training on the low and middle noise levels where the final
    sampling steps and the reconstructions' detail are decided.
    ``'mixture'``: each draw is ``'uniform_t'`` or ``'lognormal'`` with probability 1/2, so the
    high noise levels of the first sampling steps are still trained.
``weighting``
    ``'uniform'``: ``w = 1`` (the "simple" loss, Ho et al. 2020 Eq. 14).
    ``'min_snr'``: Min-SNR-gamma (Hang et al. 2023, Eq. 10): the equivalent ``x0`` weight is
    ``min(SNR, gamma)`` with ``SNR = 1 / sigma^2``, i.e. ``w = min(SNR, gamma) / SNR`` for eps
    targets and ``min(SNR, gamma) / (SNR + 1)`` for v targets.

The recipes compared at equal wall time are in docs/prior.md ("Training recipe").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["LossRecipe", "TIME_SAMPLINGS", "WEIGHTINGS"]

TIME_SAMPLINGS: tuple[str, ...] = ("uniform_t", "lognormal", "mixture")
WEIGHTINGS: tuple[str, ...] = ("uniform", "min_snr")


@dataclass(frozen=True)
class LossRecipe:
    """Noise-level distribution and loss weighting of score-matching training (module doc)."""

    time_sampling: str = "uniform_t"
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    lognormal_mean: float = -1.2
    lognormal_std: float = 1.2

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, "
                             f"got {self.time_sampling!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, "
                             f"got {self.weighting!r}")
        if not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")
        if not self.lognormal_std > 0:
            raise ValueError(f"lognormal_std must be > 0, got {self.lognormal_std}")

    @property
    def is_default(self) -> bool:
        """True for the plain recipe (uniform ``t``, unweighted), the models' own loss."""
        return self == LossRecipe()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sample_t(self, uniform_t: torch.Tensor, schedule: Any, t_min: float,
                 generator: torch.Generator | None) -> torch.Tensor:
        """Training times ``[B]`` from uniform draws ``uniform_t`` (``U(t_min, t_max)``).

        The extra draws (normal and coin) come from ``generator`` after ``uniform_t``'s, so a
        recipe is as reproducible as the plain loss.
        """
        if self.time_sampling == "uniform_t":
            return uniform_t
        dev = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(uniform_t.shape, generator=generator, device=dev,
                        dtype=torch.float64).to(uniform_t.device)
        sigma = torch.exp(self.lognormal_mean + self.lognormal_std * z)
        t = schedule.t_of_sigma(sigma).clamp(t_min, schedule.t_max).to(uniform_t.dtype)
        if self.time_sampling == "lognormal":
            return t
        coin = torch.rand(uniform_t.shape, generator=generator, device=dev).to(uniform_t.device)
        return torch.where(coin < 0.5, uniform_t, t)

    def weights(self, alpha_bar: torch.Tensor, parametrisation: str) -> torch.Tensor | None:
        """Per-sample loss weights ``w`` (shape of ``alpha_bar``), or None for ``w = 1``."""
        if self.weighting == "uniform":
            return None
        snr = alpha_bar / (1 - alpha_bar)
        capped = torch.clamp(snr, max=self.min_snr_gamma)
        if parametrisation == "eps":
            return capped / snr
        if parametrisation == "v":
            return capped / (snr + 1)
        raise ValueError(f"weighting 'min_snr' supports eps and v targets, not {parametrisation!r}")
