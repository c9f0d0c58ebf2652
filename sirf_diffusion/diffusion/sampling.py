"""Noise levels of a reverse diffusion: :func:`sampling_sigmas` (from :mod:`.schedules`).

Unconditional sampling itself (``sample``, ``sample_grid_png``) runs the reverse-diffusion loop
and therefore lives with the samplers, in :mod:`sirf_diffusion.samplers.unconditional`; the
old names here still work, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

from typing import Literal

import torch

from .schedules import ContinuousVP, DiscreteVP, ddpm_sigmas, karras_sigmas, vp_sigmas

__all__ = ["ScheduleName", "sampling_sigmas"]

ScheduleName = Literal["vp", "ddpm", "karras"]


def sampling_sigmas(num_steps: int, schedule: ScheduleName | torch.Tensor = "vp",
                    vp: ContinuousVP | DiscreteVP | None = None) -> torch.Tensor:
    """Noise levels for ``num_steps`` steps (plus the final 0).

    ``'vp'``: uniform in ``t`` of the VP schedule ``vp`` (:func:`~.schedules.vp_sigmas`);
    ``'ddpm'``: DDIM-strided steps of a discrete schedule (:func:`~.schedules.ddpm_sigmas`);
    ``'karras'``: Karras et al. 2022 spacing spanning ``vp``'s range; a tensor is used as given.
    """
    if isinstance(schedule, torch.Tensor):
        return schedule
    vp = vp or ContinuousVP()
    if schedule == "vp":
        return vp_sigmas(num_steps, schedule=vp)
    if schedule == "ddpm":
        return ddpm_sigmas(num_steps, vp if isinstance(vp, DiscreteVP) else None)
    if schedule == "karras":
        lo, hi = (1e-3, 1.0) if isinstance(vp, ContinuousVP) else (0.0, vp.t_max)
        return karras_sigmas(num_steps, float(vp.sigma(lo)), float(vp.sigma(hi)))
    raise ValueError(f"schedule must be 'vp', 'ddpm', 'karras' or a tensor, got {schedule!r}")


_MOVED = ("sample", "sample_grid_png")


def __getattr__(name: str) -> object:
    """Deprecated aliases of the functions moved to :mod:`sirf_diffusion.samplers.unconditional`."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"sirf_diffusion.diffusion.sampling.{name} moved to "
                      f"sirf_diffusion.samplers.unconditional.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module("sirf_diffusion.samplers.unconditional"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
