"""Toolkit integration: diffusion priors for SIRF/STIR/CIL scripts.

* :mod:`.containers`: numpy / torch / SIRF / CIL / STIR image conversions that give back the type
  they were given;
* :mod:`.prior`: :class:`DiffusionPrior`, a penalty with SIRF's ``Prior`` surface
  (``set_penalisation_factor``, ``set_up``, ``get_value``, ``get_gradient``) usable by the Python
  MAP algorithms of :mod:`sirf_diffusion.recon.map` and by SIRF/CIL scripts;
* :mod:`.cil`: CIL ``Function``, ``Operator`` and ``Algorithm`` classes
  (``DiffusionPriorFunction``, ``PETPhysicsOperator``, ``LikelihoodScheduledDiffusion``,
  ``DecomposedDiffusion``, ``DiffusionPosteriorSampling``, ``PETDEFT``, ``FBSEMNetAlgorithm``);
  importing it imports CIL;
* :mod:`.sirf`: SIRF physics (``SIRFPhysics``, ``sirf_likelihood``), SIRF objective functions
  (``ObjectiveFunctionLikelihood``) and the drop-in ``DiffusionReconstructor``.

Importing this package imports neither SIRF, STIR nor CIL: the CIL classes are resolved lazily
(``from sirf_diffusion.integrations import DiffusionPriorFunction`` imports CIL at that moment and
raises an ImportError with the install route when it is missing).
"""

from __future__ import annotations

from typing import Any

from ..toolkits import require_toolkit
from .containers import container_kind, like, to_numpy, to_torch
from .prior import DiffusionPrior

# The lazily resolved CIL classes are not in ``__all__``: ``import *`` must not need CIL.
__all__ = ["DiffusionPrior", "to_torch", "to_numpy", "like", "container_kind"]

_LAZY_CIL = ("DiffusionPriorFunction", "LikelihoodScheduledDiffusion", "DecomposedDiffusion",
             "DiffusionPosteriorSampling", "PETDEFT", "FBSEMNetAlgorithm", "PETPhysicsOperator")


def __getattr__(name: str) -> Any:
    if name in _LAZY_CIL:
        require_toolkit("cil")  # the ImportError names the install route
        from . import cil

        return getattr(cil, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY_CIL))
