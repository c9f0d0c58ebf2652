"""Availability of the external toolkits (SIRF, STIR, CIL) for tests, checked lazily.

Tests that need a toolkit call :func:`require` (in the test or in a fixture): the test is
*skipped* when the toolkit cannot be imported, unless the environment variable
``SIRF_DIFFUSION_REQUIRE_TOOLKITS=1`` is set (CI with the toolkits installed), in which case it
*fails*, so that a broken installation cannot pass as a skip.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import pytest

__all__ = ["REQUIRE_ENV", "TOOLKITS", "toolkits_required", "available", "require", "import_error"]

#: Environment variable that turns "toolkit missing" skips into failures.
REQUIRE_ENV = "SIRF_DIFFUSION_REQUIRE_TOOLKITS"

#: Toolkit name -> (module to import, install route shown in the skip/failure message).
TOOLKITS: dict[str, tuple[str, str]] = {
    "cil": ("cil.optimisation.algorithms",
            "conda install -c conda-forge -c ccpi cil (or the SIRF SuperBuild)"),
    "sirf": ("sirf.STIR", "conda install -c conda-forge sirf (or the SIRF SuperBuild)"),
    "stir": ("stir", "conda install -c conda-forge stir (or the SIRF SuperBuild)"),
}


def toolkits_required() -> bool:
    """Whether ``SIRF_DIFFUSION_REQUIRE_TOOLKITS`` asks for missing toolkits to fail tests."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def import_error(name: str) -> str | None:
    """``None`` when toolkit ``name`` imports, else the reason (cached)."""
    if name not in TOOLKITS:
        raise KeyError(f"unknown toolkit {name!r}; known: {tuple(TOOLKITS)}")
    try:
        importlib.import_module(TOOLKITS[name][0])
    except Exception as e:  # ImportError, or a broken binary installation
        return f"{type(e).__name__}: {e}"
    return None


def available(name: str) -> bool:
    """Whether toolkit ``name`` (``'cil'``, ``'sirf'``, ``'stir'``) can be imported."""
    return import_error(name) is None


def require(name: str) -> ModuleType:
    """Import toolkit ``name`` for a test: skip when missing, or fail when
    ``SIRF_DIFFUSION_REQUIRE_TOOLKITS=1``."""
    err = import_error(name)
    if err is not None:
        msg = f"{name} not importable ({err}); install: {TOOLKITS[name][1]}"
        if toolkits_required():
            pytest.fail(f"{REQUIRE_ENV}=1 but {msg}", pytrace=False)
        pytest.skip(msg)
    return importlib.import_module(TOOLKITS[name][0].split(".")[0])
