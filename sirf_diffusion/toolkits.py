"""The one import guard for the optional toolkits (CIL, SIRF, STIR).

None of them is on PyPI, and ``import sirf_diffusion`` never imports them: the code that needs one
calls :func:`require_toolkit`, which imports it or raises an :class:`ImportError` naming the
install route (conda-forge, or the SIRF SuperBuild, which builds all three).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

__all__ = ["Toolkit", "INSTALL_HINTS", "require_toolkit"]

Toolkit = Literal["cil", "sirf", "stir"]

_SUPERBUILD = "https://github.com/SyneRBI/SIRF-SuperBuild"

#: Why the toolkit is missing and how to install it, per toolkit.
INSTALL_HINTS: dict[str, str] = {
    "cil": ("CIL is not installed: `conda install -c conda-forge -c ccpi cil`, "
            f"or build it with the SIRF SuperBuild ({_SUPERBUILD})"),
    "sirf": ("SIRF is not installed (it is not on PyPI): `conda install -c conda-forge sirf`, "
             f"or build it with the SIRF SuperBuild ({_SUPERBUILD})"),
    "stir": ("STIR's Python bindings are not installed (STIR is not on PyPI): "
             "`conda install -c conda-forge stir`, or build STIR with BUILD_SWIG_PYTHON=ON "
             f"(the SIRF SuperBuild does: {_SUPERBUILD})"),
}

#: The modules whose import proves the toolkit usable; the first is returned.
_MODULES: dict[str, tuple[str, ...]] = {
    "cil": ("cil", "cil.framework", "cil.optimisation.algorithms", "cil.optimisation.functions",
            "cil.optimisation.operators"),
    "sirf": ("sirf.STIR",),
    "stir": ("stir",),
}


def require_toolkit(name: Toolkit) -> ModuleType:
    """Import toolkit ``name`` (``'cil'``, ``'sirf'`` -> ``sirf.STIR``, ``'stir'``) and return
    its module, or raise an ImportError with the install route (and the original error)."""
    if name not in _MODULES:
        raise ValueError(f"toolkit must be one of {tuple(_MODULES)}, got {name!r}")
    try:
        modules = [importlib.import_module(m) for m in _MODULES[name]]
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINTS[name]} ({e})") from e
    return modules[0]
