"""Adapters around STIR's Python bindings (``import stir``), imported lazily.

Reserved for the toolkit-integration work: projector pairs built from STIR's
``ProjMatrixByBinUsingRayTracing``, ``ProjDataInMemory`` <-> torch conversion and hooks to
STIR's scatter estimation.  Nothing here imports ``stir`` at import time.
"""

__all__: list[str] = []
