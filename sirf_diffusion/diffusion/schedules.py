"""Noise schedules: variance-preserving (VP) processes seen through the variance-exploding lens.

A VP process (Ho et al. 2020; Song et al. 2021, "Score-based generative modeling through
stochastic differential equations", ICLR) perturbs data as

.. math::

    x^{\\mathrm{VP}}_t = \\sqrt{\\bar\\alpha(t)}\\, x_0 + \\sqrt{1 - \\bar\\alpha(t)}\\, \\epsilon .

Dividing by :math:`\\sqrt{\\bar\\alpha(t)}` gives the variance-exploding (VE) form of the
denoiser contract (:mod:`sirf_diffusion.diffusion.denoiser`),

.. math::

    x = x_0 + \\sigma\\, \\epsilon, \\qquad \\sigma(t) = \\sqrt{1/\\bar\\alpha(t) - 1},
    \\qquad x^{\\mathrm{VP}} = x / \\sqrt{1 + \\sigma^2},

so every VP schedule is described by the monotone map :math:`t \\mapsto \\sigma(t)` and its
inverse.  Two schedules are provided:

* :class:`ContinuousVP` — the VP-SDE with linear :math:`\\beta(t)` (Song et al. 2021, Eq. 11 and
  Eq. 33), :math:`\\log \\bar\\alpha(t) = -\\beta_{\\min} t - \\tfrac12 (\\beta_{\\max} -
  \\beta_{\\min}) t^2`, ``t`` in ``[0, 1]``; the PET papers (Singh et al. 2024, Webber et al. 2025)
  use ``beta_min = 0.1, beta_max = 20``.
* :class:`DiscreteVP` — the DDPM chain (Ho et al. 2020) with ``T`` betas,
  :math:`\\bar\\alpha_k = \\prod_{j \\le k} (1 - \\beta_j)`, ``t`` the (fractional) step index
  in ``[0, T - 1]``; its inverse interpolates ``log sigma`` linearly between steps.

Sampling noise-level sequences (strictly decreasing, with a final 0 appended, as expected by
:func:`sirf_diffusion.samplers.loop.reverse_diffusion`) come from :func:`vp_sigmas` (uniform in
``t``), :func:`ddpm_sigmas` (DDIM's uniformly strided timesteps, Song, Meng & Ermon 2021) and
:func:`karras_sigmas` (Karras et al. 2022, Eq. 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "VPSchedule",
    "ContinuousVP",
    "DiscreteVP",
    "schedule_from_dict",
    "vp_sigmas",
    "ddpm_sigmas",
    "karras_sigmas",
]


@runtime_checkable
class VPSchedule(Protocol):
    """A variance-preserving schedule: ``alpha_bar(t)``, ``sigma(t)`` and ``t_of_sigma``."""

    t_min: float
    t_max: float

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor: ...

    def sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def to_dict(self) -> dict[str, Any]: ...


def _float_tensor(v: torch.Tensor | float) -> torch.Tensor:
    t = torch.as_tensor(v)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


@dataclass(frozen=True)
class ContinuousVP:
    """VP-SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)``, ``t`` in ``[0, 1]``.

    .. math::

        \\log \\bar\\alpha(t) = -\\beta_{\\min} t - \\tfrac12 (\\beta_{\\max} - \\beta_{\\min}) t^2,
        \\qquad \\sigma(t) = \\sqrt{e^{-\\log\\bar\\alpha(t)} - 1}

    (Song et al. 2021, Eq. 33).  The inverse solves the quadratic
    :math:`\\tfrac12 \\Delta\\beta\\, t^2 + \\beta_{\\min} t - \\log(1 + \\sigma^2) = 0` in the
    cancellation-free form :math:`t = 2L / (\\beta_{\\min} + \\sqrt{\\beta_{\\min}^2 + 2
    \\Delta\\beta L})` with :math:`L = \\log(1 + \\sigma^2)`.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = field(default=0.0, init=False)
    t_max: float = field(default=1.0, init=False)

    def __post_init__(self) -> None:
        if not (self.beta_min > 0 and self.beta_max > self.beta_min):
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={self.beta_min}, "
                             f"beta_max={self.beta_max}")

    def log_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        t = _float_tensor(t)
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """:math:`\\bar\\alpha(t)`."""
        return torch.exp(self.log_alpha_bar(t))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """VE-equivalent noise level :math:`\\sigma(t) = \\sqrt{1/\\bar\\alpha(t) - 1}`."""
        return torch.sqrt(torch.expm1(-self.log_alpha_bar(t)))

    def t_of_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Inverse of :meth:`sigma` (extrapolates beyond ``t = 1`` for larger ``sigma``)."""
        sigma = _float_tensor(sigma)
        L = torch.log1p(sigma**2)
        d = self.beta_max - self.beta_min
        return 2 * L / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * L))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "vp_continuous", "beta_min": self.beta_min, "beta_max": self.beta_max}


@dataclass(frozen=True)
class DiscreteVP:
    """Discrete DDPM chain with betas ``beta_0..beta_{T-1}`` (Ho et al. 2020).

    ``t`` is the step index, ``alpha_bar(k) = prod_{j<=k} (1 - beta_j)``; fractional ``t``
    interpolates ``log sigma`` linearly between neighbouring steps (as k-diffusion's
    ``DiscreteSchedule``), which makes :meth:`t_of_sigma` an exact inverse on ``[0, T - 1]``
    (clamped outside it).
    """

    betas: tuple[float, ...]
    t_min: float = field(default=0.0, init=False)
    t_max: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        b = torch.tensor(self.betas, dtype=torch.float64)
        if b.ndim != 1 or len(b) < 2 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a sequence of at least 2 values in (0, 1)")
        object.__setattr__(self, "t_max", float(len(b) - 1))

    @classmethod
    def linear(cls, num_train_steps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> "DiscreteVP":
        """Linear betas from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4)."""
        b = torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)
        return cls(tuple(b.tolist()))

    @property
    def num_train_steps(self) -> int:
        return len(self.betas)

    @cached_property
    def _log_sigma_table(self) -> torch.Tensor:
        ab = torch.cumprod(1 - torch.tensor(self.betas, dtype=torch.float64), 0)
        return 0.5 * torch.log(1 / ab - 1)

    def _log_sigmas(self, like: torch.Tensor) -> torch.Tensor:
        return self._log_sigma_table.to(device=like.device, dtype=like.dtype)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """``sigma`` at (fractional) step ``t`` (``log sigma`` interpolated linearly)."""
        t = _float_tensor(t)
        ls = self._log_sigmas(t)
        tc = t.clamp(0, self.t_max)
        lo = tc.floor().long().clamp(max=len(ls) - 2)
        w = tc - lo.to(t.dtype)
        return torch.exp((1 - w) * ls[lo] + w * ls[lo + 1])

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """:math:`\\bar\\alpha = 1 / (1 + \\sigma^2)` (the cumulative product at integer ``t``)."""
        return 1 / (1 + self.sigma(t) ** 2)

    def t_of_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Inverse of :meth:`sigma`, clamped to ``[0, T - 1]``."""
        sigma = _float_tensor(sigma)
        ls = self._log_sigmas(sigma)
        lsig = torch.log(sigma.clamp(min=torch.finfo(sigma.dtype).tiny))
        hi = torch.searchsorted(ls, lsig.reshape(-1).contiguous()).reshape(sigma.shape)
        hi = hi.clamp(1, len(ls) - 1)
        lo = hi - 1
        w = ((lsig - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return lo.to(sigma.dtype) + w

    def to_dict(self) -> dict[str, Any]:
        b = self.betas
        lin = torch.linspace(b[0], b[-1], len(b), dtype=torch.float64)
        if torch.allclose(torch.tensor(b, dtype=torch.float64), lin, rtol=0, atol=1e-12):
            return {"kind": "ddpm_linear", "num_train_steps": len(b), "beta_start": b[0],
                    "beta_end": b[-1]}
        return {"kind": "ddpm", "betas": list(b)}


def schedule_from_dict(d: dict[str, Any]) -> ContinuousVP | DiscreteVP:
    """Rebuild a schedule from its :meth:`to_dict` description (as stored in ``config.json``)."""
    kind = d.get("kind")
    if kind == "vp_continuous":
        return ContinuousVP(float(d["beta_min"]), float(d["beta_max"]))
    if kind == "ddpm_linear":
        return DiscreteVP.linear(int(d["num_train_steps"]), float(d["beta_start"]),
                                 float(d["beta_end"]))
    if kind == "ddpm":
        return DiscreteVP(tuple(float(v) for v in d["betas"]))
    raise ValueError(f"unknown schedule kind {kind!r}; expected 'vp_continuous', 'ddpm_linear' "
                     "or 'ddpm'")


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


def vp_sigmas(num_steps: int, t_min: float | None = None, t_max: float | None = None,
              schedule: ContinuousVP | DiscreteVP | None = None,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``num_steps`` noise levels uniform in ``t`` from ``t_max`` down to ``t_min``, then 0.

    ``sigma_i = sigma(t_max - i (t_max - t_min) / (num_steps - 1))`` — the discretisation of the
    PET score-based papers (Singh et al. 2024; Webber et al. 2025).  ``t_min`` and ``t_max`` are
    in the schedule's units; defaults: ``[1e-3, 1]`` for :class:`ContinuousVP` (the default
    schedule), ``[0, T - 1]`` for :class:`DiscreteVP`.
    """
    _check_steps(num_steps)
    schedule = schedule or ContinuousVP()
    if t_max is None:
        t_max = schedule.t_max
    if t_min is None:
        t_min = 1e-3 if isinstance(schedule, ContinuousVP) else 0.0
    if not t_max > t_min >= 0:
        raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if num_steps == 1:
        t = torch.tensor([t_max], dtype=dtype)
    else:
        t = torch.linspace(t_max, t_min, num_steps, dtype=dtype)
    return _append_zero(schedule.sigma(t))


def ddpm_sigmas(num_steps: int, schedule: DiscreteVP | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """DDIM's uniformly strided timesteps ``k = 0, c, 2c, ...``, ``c = T // num_steps``, as sigmas.

    (Song, Meng & Ermon 2021, Sec. 4.2/App. D.2 "linear" skip.)  Returned noisiest first, with a
    final 0 appended.
    """
    _check_steps(num_steps)
    schedule = schedule or DiscreteVP.linear()
    T = schedule.num_train_steps
    if num_steps > T:
        raise ValueError(f"num_steps={num_steps} exceeds the {T} training steps of the schedule")
    k = torch.arange(num_steps, dtype=dtype) * (T // num_steps)
    return _append_zero(schedule.sigma(k.flip(0)))


def karras_sigmas(num_steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
                  rho: float = 7.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Karras et al. 2022, Eq. 5: ``(s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``.

    Defaults span the default VP-SDE: ``sigma_max = sigma(1)`` and ``sigma_min = sigma(1e-3)`` of
    :class:`ContinuousVP` (about 152 and 0.0105).  A final 0 is appended.
    """
    _check_steps(num_steps)
    vp = ContinuousVP()
    smin = float(vp.sigma(1e-3)) if sigma_min is None else float(sigma_min)
    smax = float(vp.sigma(1.0)) if sigma_max is None else float(sigma_max)
    if not (0 < smin < smax and math.isfinite(smax)):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {smin}, {smax}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    r = torch.linspace(0, 1, num_steps, dtype=dtype)
    s = (smax ** (1 / rho) + r * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return _append_zero(s)
