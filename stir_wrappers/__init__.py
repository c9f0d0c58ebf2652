"""Adapters around STIR's Python bindings (``import stir``), imported lazily.

:class:`STIRPhysics` puts a STIR projector pair (``ProjMatrixByBinUsingRayTracing``, or
Parallelproj's when STIR has it) under the package's physics contract, so every sampler runs on
STIR's projections; :func:`projdata_to_torch` / :func:`fill_projdata` and
:func:`image_to_torch` / :func:`torch_to_image` move ``ProjData`` and images to and from torch;
:func:`multiplicative_factors` turns a STIR ``BinNormalisation`` into the multiplicative term and
:func:`scatter_estimate` runs STIR's ``ScatterEstimation``.  Nothing here imports ``stir`` at
import time.
"""

from .physics import (
    STIR_INSTALL_HINT,
    STIRPhysics,
    fill_projdata,
    image_to_torch,
    multiplicative_factors,
    projdata_to_torch,
    require_stir,
    scatter_estimate,
    stir_case_physics,
    torch_to_image,
)

__all__ = ["STIR_INSTALL_HINT", "require_stir", "STIRPhysics", "projdata_to_torch",
           "fill_projdata", "image_to_torch", "torch_to_image", "multiplicative_factors",
           "scatter_estimate", "stir_case_physics"]
