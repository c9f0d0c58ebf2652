"""Classical PET reconstruction on any physics backend: MLEM/OSEM and convergent MAP methods.

* :mod:`.em`: MLEM and OSEM with STIR's conventions (initial image 1, view subsets in order).
* :mod:`.priors`: STIR's relative difference and quadratic priors (26 / transaxial / axial).
* :mod:`.map`: MAP-EM (De Pierro's modified EM) and BSREM, maximising ``L(x) - R(x)``.
* :mod:`.bowsher`: Bowsher's MR-selected neighbours as pair weights of those priors.
"""

from __future__ import annotations

from .bowsher import bowsher_prior, bowsher_weights
from .em import ReconHistory, em_step, initial_image, mlem, osem
from .map import bsrem, map_em, map_objective
from .priors import (
                     Neighbourhood,
                     NeighbourhoodPrior,
                     QuadraticPrior,
                     RelativeDifferencePrior,
                     neighbourhood_offsets,
)

__all__ = [
    "ReconHistory", "mlem", "osem", "em_step", "initial_image",
    "map_em", "bsrem", "map_objective",
    "Neighbourhood", "NeighbourhoodPrior", "RelativeDifferencePrior", "QuadraticPrior",
    "neighbourhood_offsets", "bowsher_prior", "bowsher_weights",
]
