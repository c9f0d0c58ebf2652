"""Deprecated: the commands moved to :mod:`sirf_diffusion.commands`, the library helpers to
their layers.

Every name this module had still resolves, with a ``DeprecationWarning`` naming its new place:

==========================================  =================================================
old name                                    new place
==========================================  =================================================
``load_slice_prior``, ``load_denoiser``     :mod:`sirf_diffusion.diffusion.loading`
``image_metrics``                           :mod:`sirf_diffusion.metrics`
``write_json``                              :mod:`sirf_diffusion.io.atomic`
``DPS_DEFAULT_ZETA``                        ``METHOD_DEFAULTS['dps']['step_size']``
``load_case``, ``case_physics``             :mod:`sirf_diffusion.commands.case`
``reconstruct_classical``,                  :mod:`sirf_diffusion.commands.reconstruct`
``run_diffusion_method``
``cmd_simulate`` ... ``cmd_sample``         ``sirf_diffusion.commands.<command>.run``
==========================================  =================================================
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__: list[str] = []

#: old name -> (module, attribute)
_MOVED: dict[str, tuple[str, str]] = {
    "load_slice_prior": ("sirf_diffusion.diffusion.loading", "load_slice_prior"),
    "load_denoiser": ("sirf_diffusion.diffusion.loading", "load_denoiser"),
    "_default_prior_dir": ("sirf_diffusion.diffusion.loading", "_default_prior_dir"),
    "image_metrics": ("sirf_diffusion.metrics", "image_metrics"),
    "write_json": ("sirf_diffusion.io.atomic", "write_json"),
    "load_case": ("sirf_diffusion.commands.case", "load_case"),
    "case_physics": ("sirf_diffusion.commands.case", "case_physics"),
    "_default_subsets": ("sirf_diffusion.commands.case", "default_subsets"),
    "reconstruct_classical": ("sirf_diffusion.commands.reconstruct", "reconstruct_classical"),
    "run_diffusion_method": ("sirf_diffusion.commands.reconstruct", "run_diffusion_method"),
    **{f"cmd_{c}": (f"sirf_diffusion.commands.{c}", "run")
       for c in ("simulate", "reconstruct", "demo", "train", "sample")},
}


def __getattr__(name: str) -> Any:
    """The moved names, with a ``DeprecationWarning`` naming the new place."""
    if name == "DPS_DEFAULT_ZETA":
        from .samplers.defaults import METHOD_DEFAULTS

        warnings.warn("sirf_diffusion.workflows.DPS_DEFAULT_ZETA is deprecated: use "
                      "sirf_diffusion.samplers.defaults.METHOD_DEFAULTS['dps']['step_size']",
                      DeprecationWarning, stacklevel=2)
        return float(METHOD_DEFAULTS["dps"]["step_size"])
    if name in _MOVED:
        module, attr = _MOVED[name]
        warnings.warn(f"sirf_diffusion.workflows.{name} is deprecated: use {module}.{attr}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
