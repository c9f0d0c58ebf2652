"""A minimal stand-in for CIL's ``Algorithm`` / ``Function`` / ``LinearOperator`` /
``ImageGeometry`` protocol, for the non-toolkit tests of :mod:`sirf_diffusion.integrations.cil`.

The ``fake_cil`` fixture (``conftest.py``) installs :data:`MODULES` into ``sys.modules``.  The
behaviour follows CIL's own (``Wrappers/Python/cil/optimisation/algorithms/Algorithm.py``,
``functions/Function.py``, ``operators/Operator.py``; CIL >= 24), not its code:

* ``Algorithm(update_objective_interval=1)``: ``iteration`` starts at -1; ``__next__`` records
  the objective of the initial point first (``iteration`` -1 -> 0, no ``update``), then calls
  ``update()``, increments ``iteration`` and records the objective every
  ``update_objective_interval`` iterations (``iterations`` lists where); ``run(iterations,
  callbacks=None, verbose=1)`` runs up to ``iterations`` more (one more when the initial
  objective is still due), calling every callback with the algorithm after each step;
  ``StopIteration`` from ``update`` or a callback ends ``run``; ``loss`` / ``objective``,
  ``get_output()`` / ``solution`` (``self.x``); ``set_up``, ``update`` and
  ``update_objective`` are for subclasses; ``configured`` must be set by ``set_up``;
* ``Function(L=None)`` with ``__call__``, ``gradient(x, out=None)``, ``proximal(x, tau, out=None)``;
* ``LinearOperator(domain_geometry, range_geometry=None)`` with ``domain_geometry()``,
  ``range_geometry()``, ``is_linear()``, ``direct`` / ``adjoint``;
* ``ImageGeometry(voxel_num_x, voxel_num_y, voxel_num_z=0, voxel_size_x=1, ...)`` whose
  ``allocate(value=0)`` gives an ``ImageData`` (``as_array`` returns the buffer itself, ``fill``,
  ``clone``, ``shape``, ``geometry``); axes of one voxel are dropped, as CIL does.
"""

from __future__ import annotations

import types

import numpy as np


# ----------------------------------------------------------------------------- framework
class ImageData:
    def __init__(self, array: np.ndarray, geometry: "ImageGeometry | None" = None) -> None:
        self.array = np.asarray(array, dtype=np.float32)
        self.geometry = geometry

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def as_array(self) -> np.ndarray:
        return self.array

    def fill(self, value) -> None:
        if isinstance(value, ImageData):
            value = value.array
        np.copyto(self.array, np.asarray(value, dtype=np.float32).reshape(self.array.shape)
                  if np.ndim(value) else value)

    def clone(self) -> "ImageData":
        return ImageData(self.array.copy(), self.geometry)


class ImageGeometry:
    def __init__(self, voxel_num_x: int = 0, voxel_num_y: int = 0, voxel_num_z: int = 0,
                 voxel_size_x: float = 1.0, voxel_size_y: float = 1.0,
                 voxel_size_z: float = 1.0) -> None:
        self.voxel_num = (int(voxel_num_z), int(voxel_num_y), int(voxel_num_x))
        self.voxel_size = (float(voxel_size_z), float(voxel_size_y), float(voxel_size_x))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(n for n in self.voxel_num if n > 1)

    def allocate(self, value: float = 0.0) -> ImageData:
        return ImageData(np.full(self.shape, value, dtype=np.float32), self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageGeometry) and (self.voxel_num, self.voxel_size) == \
            (other.voxel_num, other.voxel_size)


# ----------------------------------------------------------------------------- optimisation
class Algorithm:
    def __init__(self, update_objective_interval: int = 1) -> None:
        self.iteration = -1
        self.configured = False
        self.update_objective_interval = update_objective_interval
        self._loss: list = []
        self._iterations: list[int] = []

    def set_up(self, *args, **kwargs):
        raise NotImplementedError

    def update(self) -> None:
        raise NotImplementedError

    def update_objective(self) -> None:
        raise NotImplementedError

    @property
    def loss(self) -> list:
        return self._loss

    objective = loss

    @property
    def iterations(self) -> list[int]:
        return self._iterations

    def get_output(self):
        return self.x

    @property
    def solution(self):
        return self.get_output()

    def __iter__(self) -> "Algorithm":
        return self

    def __next__(self) -> int:
        interval = self.update_objective_interval
        if self.iteration == -1 and interval > 0:
            self._iterations.append(-1)
            self.update_objective()
            self.iteration = 0
            return self.iteration
        if not self.configured:
            raise ValueError("Algorithm not configured correctly. Please run set_up.")
        self.update()
        self.iteration += 1
        if interval > 0 and self.iteration % interval == 0:
            self._iterations.append(self.iteration)
            self.update_objective()
        return self.iteration

    def run(self, iterations: int | None = None, callbacks=None, verbose: int = 1) -> None:
        if iterations is None:
            raise ValueError("`run()` missing number of `iterations`")
        callbacks = [] if callbacks is None else callbacks
        if self.iteration == -1 and self.update_objective_interval > 0:
            iterations += 1
        for _ in range(iterations):
            try:
                next(self)
                for cb in callbacks:
                    cb(self)
            except StopIteration:
                break


class Function:
    def __init__(self, L: float | None = None) -> None:
        self._L = L

    def __call__(self, x):
        raise NotImplementedError

    def gradient(self, x, out=None):
        raise NotImplementedError

    def proximal(self, x, tau, out=None):
        raise NotImplementedError


class LinearOperator:
    def __init__(self, domain_geometry, **kwargs) -> None:
        self._domain_geometry = domain_geometry
        self._range_geometry = kwargs.get("range_geometry")

    def domain_geometry(self):
        return self._domain_geometry

    def range_geometry(self):
        return self._range_geometry

    def is_linear(self) -> bool:
        return True

    def direct(self, x, out=None):
        raise NotImplementedError

    def adjoint(self, x, out=None):
        raise NotImplementedError


class Callback:
    def __init__(self, verbose: int = 1) -> None:
        self.verbose = verbose

    def __call__(self, algorithm) -> None:
        pass


# ----------------------------------------------------------------------------- modules
def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


_callbacks = _module("cil.optimisation.utilities.callbacks", Callback=Callback)
_utilities = _module("cil.optimisation.utilities", callbacks=_callbacks)
_algorithms = _module("cil.optimisation.algorithms", Algorithm=Algorithm)
_functions = _module("cil.optimisation.functions", Function=Function)
_operators = _module("cil.optimisation.operators", LinearOperator=LinearOperator)
_optimisation = _module("cil.optimisation", algorithms=_algorithms, functions=_functions,
                        operators=_operators, utilities=_utilities)
_framework = _module("cil.framework", ImageGeometry=ImageGeometry, ImageData=ImageData)

#: ``sys.modules`` entries of the stand-in.
MODULES: dict[str, types.ModuleType] = {
    "cil": _module("cil", framework=_framework, optimisation=_optimisation, __fake__=True),
    "cil.framework": _framework,
    "cil.optimisation": _optimisation,
    "cil.optimisation.algorithms": _algorithms,
    "cil.optimisation.functions": _functions,
    "cil.optimisation.operators": _operators,
    "cil.optimisation.utilities": _utilities,
    "cil.optimisation.utilities.callbacks": _callbacks,
}
