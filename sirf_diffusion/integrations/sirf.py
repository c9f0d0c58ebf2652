r"""SIRF (``sirf.STIR``) physics under every sampler, and a drop-in SIRF reconstructor.

SIRF is imported lazily: nothing here imports it at module import; the functions that need it
raise an :class:`ImportError` naming the install route (:mod:`sirf_diffusion.toolkits`).  The
classes only *call* the SIRF objects they are given (duck typing), so they also run on any object
with SIRF's methods.

Two routes lead from a SIRF script to the package's samplers:

:class:`SIRFPhysics` (projections)
    A set-up ``sirf.STIR.AcquisitionModel`` ``y = S (G P x + a) + b`` becomes the package's
    physics contract ``ybar = m * (G P x) + b'`` (:class:`~sirf_diffusion.physics.base.PETPhysics`):
    the linear part ``S G P`` is SIRF's ``get_linear_acquisition_model()`` (SIRF's ``direct``/
    ``adjoint`` refuse affine models), the additive term ``b' = S a + b`` its
    ``get_constant_term()``.  Subset ``k`` of ``K`` uses SIRF's partial projections
    ``forward(x, subset_num=k, num_subsets=K)`` / ``backward(...)`` with ``(k, K)`` taken from
    the :class:`~sirf_diffusion.physics.base.ViewSubset` given, and STIR's own view sets
    (``v % K == k`` plus the views related by the projector's symmetries, found once per ``K``:
    :mod:`.subsets`), so that subset gradients are those of SIRF's objective functions.
    :func:`sirf_likelihood` pairs it with SIRF ``AcquisitionData`` into the package's
    :class:`~sirf_diffusion.likelihood.PoissonLogLikelihood`: PET-LiSch, PET-DDS and DPS then
    run on STIR's projectors unchanged.

:class:`ObjectiveFunctionLikelihood` (gradients only)
    A set-up SIRF ``ObjectiveFunction`` (e.g. ``make_Poisson_loglikelihood``) used through
    ``value``, ``gradient(x, subset)`` and ``get_subset_sensitivity(subset)``: it implements
    the :class:`~sirf_diffusion.likelihood.Likelihood` protocol, enough for MLEM/OSEM, MAP-EM,
    PET-LiSch and PET-DDS, since every EM-preconditioned step ``u + u / s_k * grad L_k(u)``
    needs only those.  SIRF exposes no acquisition model of an objective, so it is not a
    :class:`~sirf_diffusion.likelihood.ProjectingLikelihood`: DPS (which differentiates the
    Poisson misfit through projections) needs :class:`SIRFPhysics`.  A prior set on the
    objective is part of its value and gradient.

:class:`DiffusionReconstructor`
    SIRF's iterative-reconstructor surface (``set_objective_function``, ``set_num_subsets``,
    ``set_up``, ``set_current_estimate``, ``process``, ``get_output``) running PET-LiSch,
    PET-DDS, DPS, PET-DEFT or the trained FBSEM-net (``'fbsem'``), so that replacing
    ``OSMAPOSLReconstructor`` in a SIRF script is a two-line change (the constructor and,
    optionally, the number of generative steps).

SIRF conventions handled here: ``ImageData`` is ``(z, y, x)`` float32; ``AcquisitionData``
arrays are ``(TOF bin, sinogram, view, tangential)`` (one non-TOF bin is required; segments in
STIR's order 0, +1, -1, +2, -2, ... as the package's sinograms); methods with ``out=`` fill
``out`` and return ``None``; ``get_uniform_copy`` defaults to 0 for acquisition data; arrays
are read with the zero-copy ``asarray()`` where SIRF offers it.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch

from ..io.petric import case_headers
from ..likelihood import (
    CountsProjections,
    Likelihood,
    PoissonLogLikelihood,
    ProjectionCounter,
    check_prompts,
)
from ..physics.base import (
    PETPhysics,
    Subset,
    ViewSubset,
    as_view_subset,
    check_num_subsets,
    partition,
)
from ..samplers.defaults import METHOD_DEFAULTS
from ..toolkits import INSTALL_HINTS, require_toolkit
from .containers import _read_array, float32_tensor, float32_values, to_torch
from .subsets import ToolkitSubsets

__all__ = ["SIRF_INSTALL_HINT", "require_sirf", "SIRFPhysics", "sirf_likelihood",
           "ObjectiveFunctionLikelihood", "DiffusionReconstructor", "acquisition_to_torch",
           "fill_acquisition", "sirf_case_likelihood"]

SIRF_INSTALL_HINT = INSTALL_HINTS["sirf"]


def require_sirf() -> Any:
    """Import and return ``sirf.STIR``, or raise an ImportError naming the install route."""
    return require_toolkit("sirf")


# ----------------------------------------------------------------------------- conversions
def acquisition_to_torch(acq: Any, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """SIRF ``AcquisitionData`` (or STIR ``ProjData``) values as ``[sinogram, view, tangential]``.

    Raises
    ------
    NotImplementedError
        For TOF data (more than one TOF bin).
    """
    arr = _read_array(acq, "container") if hasattr(acq, "get_uniform_copy") else acq.as_array()
    arr = np.asarray(arr)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise NotImplementedError(f"TOF acquisition data ({arr.shape[0]} TOF bins) are not "
                                      "supported; use non-TOF (or TOF-mashed) data")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"acquisition data have shape {arr.shape}, expected "
                         "(TOF bin, sinogram, view, tangential) or (sinogram, view, tangential)")
    return float32_tensor(arr, dtype=dtype, device=device)


def fill_acquisition(acq: Any, values: torch.Tensor | np.ndarray) -> Any:
    """Write ``[sinogram, view, tangential]`` values into SIRF ``AcquisitionData`` ``acq``
    (its own 4D shape), and return ``acq``."""
    v = float32_values(values)
    shape = tuple(acq.shape) if hasattr(acq, "shape") else tuple(acq.as_array().shape)
    if int(np.prod(shape)) != v.size:
        raise ValueError(f"cannot fill acquisition data of shape {shape} with {v.shape} values")
    acq.fill(v.reshape(shape))
    return acq


def _image_shape_and_voxels(image: Any) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    dims = tuple(int(d) for d in image.dimensions())
    if len(dims) != 3:
        raise ValueError(f"SIRF images are (z, y, x); got dimensions {dims}")
    vox = tuple(float(v) for v in image.voxel_sizes())
    return dims, vox  # type: ignore[return-value]


def _fill_image(template: Any, values: torch.Tensor) -> Any:
    img = template.get_uniform_copy(0.0)
    img.fill(float32_values(values))
    return img


def _image_to_torch(image: Any, like: torch.Tensor) -> torch.Tensor:
    return float32_tensor(_read_array(image, "container"), dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- physics
class SIRFPhysics(ToolkitSubsets, PETPhysics):
    """A SIRF ``AcquisitionModel`` as a :class:`~sirf_diffusion.physics.base.PETPhysics`.

    Parameters
    ----------
    acquisition_model
        A ``sirf.STIR.AcquisitionModel`` (ray tracing matrix, Parallelproj...) with its
        acquisition sensitivity model, additive and background terms; set up here when
        ``acquisition_template`` and ``image_template`` are given, else it must be set up.
    acquisition_template, image_template
        SIRF ``AcquisitionData`` / ``ImageData`` defining the geometry (default: those the model
        was set up with).
    num_subsets
        Number of view subsets of the partition that integer subset indices refer to (STIR's
        subsets: :mod:`.subsets`); any :class:`~sirf_diffusion.physics.base.ViewSubset` works.

    Notes
    -----
    Tensors are converted to float32 SIRF containers one batch element at a time; results come
    back in the input's dtype and device.  The additive term is read once, at construction:
    build a new object after changing the model's terms.
    """

    def __init__(self, acquisition_model: Any, acquisition_template: Any = None,
                 image_template: Any = None, *, num_subsets: int = 1) -> None:
        if acquisition_template is not None and image_template is not None:
            acquisition_model.set_up(acquisition_template, image_template)
        acq = acquisition_template if acquisition_template is not None \
            else getattr(acquisition_model, "acq_templ", None)
        img = image_template if image_template is not None \
            else getattr(acquisition_model, "img_templ", None)
        if acq is None or img is None:
            raise ValueError("the SIRF acquisition model is not set up: call "
                             "acquisition_model.set_up(acq_data, image) or pass "
                             "acquisition_template and image_template")
        self.acquisition_model = acquisition_model
        self.linear_model = acquisition_model.get_linear_acquisition_model()
        self._acq_template = acq.get_uniform_copy(0.0)
        self._img_template = img.get_uniform_copy(0.0)
        self.image_shape, self.voxel_size_mm = _image_shape_and_voxels(img)
        b = acquisition_to_torch(acquisition_model.get_constant_term())
        self.data_shape = tuple(int(n) for n in b.shape)  # type: ignore[assignment]
        self._additive = b if bool((b != 0).any()) else None
        if self._additive is not None:
            if not bool(torch.isfinite(b).all()) or bool((b < 0).any()):
                raise ValueError("the SIRF model's constant term S a + b has negative or "
                                 "non-finite values")
        self._subset_sets = {}
        super().__init__(num_subsets)

    @classmethod
    def from_acquisition_model(cls, acquisition_model: Any, **kwargs: Any) -> "SIRFPhysics":
        """The physics of an already set-up SIRF acquisition model."""
        return cls(acquisition_model, **kwargs)

    @property
    def additive_term(self) -> torch.Tensor | None:
        return self._additive

    def _partial_forward_of_ones(self, subset: int, num_subsets: int) -> torch.Tensor:
        ones = self._img_template.get_uniform_copy(1.0)
        return acquisition_to_torch(self.linear_model.forward(ones, subset_num=subset,
                                                              num_subsets=num_subsets))

    # -------------------------------------------------------------- projections
    def _toolkit_forward(self, x: torch.Tensor, k: int, K: int,
                         views: torch.Tensor | None) -> torch.Tensor:
        out = []
        for xb in x:
            ad = self.linear_model.forward(_fill_image(self._img_template, xb),
                                           subset_num=k, num_subsets=K)
            y = acquisition_to_torch(ad, dtype=x.dtype, device=x.device)
            out.append(y if views is None else y.index_select(1, views.to(x.device)))
        return torch.stack(out)

    def _toolkit_adjoint(self, y: torch.Tensor, k: int, K: int,
                         views: torch.Tensor | None) -> torch.Tensor:
        out = []
        for yb in y:
            full = self._full_data(yb, views)
            ad = fill_acquisition(self._acq_template.get_uniform_copy(0.0), full)
            img = self.linear_model.backward(ad, subset_num=k, num_subsets=K)
            out.append(_image_to_torch(img, y))
        return torch.stack(out)

    # -------------------------------------------------------------- containers
    def image_to_sirf(self, x: torch.Tensor) -> Any:
        """A SIRF ``ImageData`` of this geometry holding ``x`` (``(z, y, x)``)."""
        if tuple(x.shape[-3:]) != tuple(self.image_shape) or \
                x.numel() != int(np.prod(self.image_shape)):
            raise ValueError(f"image has shape {tuple(x.shape)}, expected {self.image_shape}")
        return _fill_image(self._img_template, x.reshape(self.image_shape))

    def __repr__(self) -> str:
        return (f"SIRFPhysics({type(self.acquisition_model).__name__}, image {self.image_shape}, "
                f"data {self.data_shape}, {self.num_subsets} subsets)")


def sirf_likelihood(acquisition_model: Any, acquisition_data: Any, image_template: Any = None,
                    *, num_subsets: int = 1, device: torch.device | str = "cpu",
                    ybar_floor: float = 1e-8) -> PoissonLogLikelihood:
    """The package's Poisson log-likelihood of SIRF ``acquisition_data`` on SIRF physics.

    The value and gradient are those of SIRF's ``make_Poisson_loglikelihood`` with the same
    acquisition model (tested to 1e-4 relative, subsets included).  ``image_template`` sets up
    the model when given; otherwise the model must be set up.
    """
    phys = SIRFPhysics(acquisition_model, acquisition_data if image_template is not None else None,
                       image_template, num_subsets=num_subsets)
    y = acquisition_to_torch(acquisition_data, device=device)
    if tuple(y.shape) != tuple(phys.data_shape):
        raise ValueError(f"acquisition data have shape {tuple(y.shape)}, but the acquisition "
                         f"model projects to {phys.data_shape}: mismatched geometry")
    return PoissonLogLikelihood(phys, y, ybar_floor=ybar_floor)


# ----------------------------------------------------------------------------- objective route
class ObjectiveFunctionLikelihood(CountsProjections):
    """A set-up SIRF ``ObjectiveFunction`` as a :class:`~sirf_diffusion.likelihood.Likelihood`.

    Parameters
    ----------
    objective
        E.g. ``sirf.STIR.make_Poisson_loglikelihood(acq_data)`` with its acquisition model.
    image_template
        A SIRF ``ImageData`` of the reconstruction geometry (the objective is set up on it).
    num_subsets
        The partition that integer subset indices refer to (SIRF's ``set_num_subsets``).
    num_views
        The data's number of views, if known (only checks subset counts).

    Notes
    -----
    ``value`` is the objective's value (SIRF maximises it: the Poisson log-likelihood minus any
    prior set on it), ``gradient(x, k)`` its subset gradient, ``sensitivity(k)`` its subset
    sensitivity; ``em_update`` is ``x + x / s_k * grad_k``, which for the Poisson likelihood is
    the (OS)EM update exactly.  A subset is a
    :class:`~sirf_diffusion.physics.base.ViewSubset` ``(k, K)`` (STIR's subset ``k`` of ``K``);
    SIRF's objective holds one ``K`` at a time, so it is set up again whenever a subset of
    another ``K`` is used (subset sensitivities are cached per ``(k, K)``).
    :meth:`uniform_image` starts from the objective's own scale (see there).  The measured data
    stay inside SIRF: this likelihood has no projections (no ``data``, ``physics`` or ``ybar``).
    """

    def __init__(self, objective: Any, image_template: Any, *, num_subsets: int = 1,
                 num_views: int | None = None) -> None:
        shape, vox = _image_shape_and_voxels(image_template)
        self.objective = objective
        self._img_template = image_template.get_uniform_copy(0.0)
        self._image_shape = shape
        self._voxel_size_mm = vox
        self.num_views = None if num_views is None else int(num_views)
        self.num_subsets = check_num_subsets(num_subsets, self.num_views)
        self.projections = ProjectionCounter()
        self._sens: dict[tuple[int, int], torch.Tensor] = {}
        self._objective_subsets: int | None = None
        self._ensure_subsets(self.num_subsets)

    # ------------------------------------------------------------------ Likelihood protocol
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        return self._voxel_size_mm

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # SIRF images are float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def subsets(self, num_subsets: int) -> tuple[ViewSubset, ...]:
        """STIR's ``K`` subsets (checked against ``num_views`` when known)."""
        return partition(num_subsets, self.num_views)

    def _resolve(self, subset: Subset) -> ViewSubset | None:
        return as_view_subset(subset, self.num_subsets, self.num_views)

    def _ensure_subsets(self, K: int) -> None:
        """Set SIRF's objective up for ``K`` subsets (SIRF's own state, kept consistent here)."""
        if self._objective_subsets != K:
            self.objective.set_num_subsets(int(K))
            self.objective.set_up(self._img_template)
            self._objective_subsets = K

    def _sirf_index(self, sub: ViewSubset | None) -> int:
        """SIRF's subset number of ``sub`` (``-1``: all data), with the objective set up."""
        if sub is None:
            return -1
        self._ensure_subsets(sub.num_subsets)
        return sub.index

    def _each(self, x: torch.Tensor, fn: Callable[[Any], Any]) -> list[Any]:
        if tuple(x.shape[-3:]) != tuple(self.image_shape):
            raise ValueError(f"image has shape {tuple(x.shape)}, expected (..., "
                             f"{', '.join(map(str, self.image_shape))})")
        xb = x.reshape(-1, *self.image_shape)
        return [fn(_fill_image(self._img_template, xi)) for xi in xb]

    def value(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        if self._resolve(subset) is not None:
            raise NotImplementedError("SIRF objectives give the value over all data only")
        self.projections.add(forward=1.0)
        vals = self._each(x, lambda img: float(self.objective.value(img)))
        return torch.tensor(vals, dtype=x.dtype, device=x.device).reshape(x.shape[:-3])

    def gradient(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        sub = self._resolve(subset)
        idx = self._sirf_index(sub)
        cost = 1.0 if sub is None else sub.cost
        self.projections.add(forward=cost, adjoint=cost)
        grads = self._each(x, lambda img: self.objective.gradient(img, idx))
        return torch.stack([_image_to_torch(g, x) for g in grads]).reshape(x.shape)

    def value_and_gradient(self, x: torch.Tensor, subset: Subset = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gradient(x, subset)
        if self._resolve(subset) is None:
            v = self.value(x)  # SIRF evaluates it separately: one more forward projection
        else:
            v = torch.full(x.shape[:-3], float("nan"), dtype=x.dtype, device=x.device)
        return v, g

    def sensitivity(self, subset: Subset = None, like: torch.Tensor | None = None) -> torch.Tensor:
        sub = self._resolve(subset)
        key = (0, 1) if sub is None else (sub.index, sub.num_subsets)
        if key not in self._sens:
            if sub is None and self.num_subsets != 1:
                # the full sensitivity is the sum of those of the objective's current subsets
                total = None
                for part in self.subsets(self.num_subsets):
                    s = self.sensitivity(part)
                    total = s.clone() if total is None else total + s
                self._sens[key] = total  # type: ignore[assignment]
            else:
                self._ensure_subsets(key[1])
                s = self.objective.get_subset_sensitivity(key[0])
                self._sens[key] = torch.from_numpy(
                    np.array(_read_array(s, "container"), dtype=np.float32))
        s = self._sens[key]
        return s if like is None else s.to(dtype=like.dtype, device=like.device)

    def em_update(self, x: torch.Tensor, subset: Subset = None) -> torch.Tensor:
        sens = self.sensitivity(subset, like=x)
        g = self.gradient(x, subset)
        pos = sens > 0
        return torch.where(pos, torch.clamp(x + x * g / torch.where(pos, sens, 1.0), min=0),
                           torch.zeros_like(x))

    def uniform_image(self) -> torch.Tensor:
        """A uniform start ``c`` with the data's global scale, from gradients only.

        The EM update of a uniform image ``c 1`` restricted to uniform images is
        ``c <- c (1 + <1, grad L(c 1)> / <1, s>)``; without background it gives the net-count
        scale ``sum(y) / sum(s)`` in one step; three steps are taken from ``c = 1``.
        """
        sens = self.sensitivity(None)
        total = float(sens.sum())
        if not total > 0:
            raise ValueError("the sensitivity image is zero everywhere: the scanner sees no voxel")
        c = 1.0
        ones = torch.ones(self.image_shape, dtype=torch.float32)
        for _ in range(3):
            g = self.gradient(c * ones)
            c = max(c * (1.0 + float(g.sum()) / total), 1e-12)
        return torch.full(self.image_shape, c, dtype=torch.float32)


# ----------------------------------------------------------------------------- reconstructor
class DiffusionReconstructor:
    """PET-LiSch / PET-DDS / DPS / PET-DEFT / FBSEM-net with SIRF's iterative-reconstructor API.

    A SIRF script's ::

        recon = pet.OSMAPOSLReconstructor()
        recon.set_num_subiterations(24)

    becomes ::

        recon = DiffusionReconstructor("lisch", num_mlem_iterations=20)
        recon.set_num_subiterations(50)          # generative steps

    and the rest (``set_objective_function``, ``set_num_subsets``, ``set_up``,
    ``set_current_estimate``, ``process``, ``get_output``) is unchanged.

    Parameters
    ----------
    method
        ``'lisch'`` (default), ``'dds'``, ``'dps'`` (DPS needs :meth:`set_acquisition_model`
        and :meth:`set_acquisition_data` instead of an objective function), ``'deft'`` or
        ``'fbsem'`` (FBSEM-net, :mod:`sirf_diffusion.recon.fbsem`: no diffusion prior; its
        only option is ``fbsem_model``).
    prior
        A denoiser ``D(x, sigma)``, a model folder, or ``None`` for the shipped prior (a volume
        with more than one slice uses :class:`~sirf_diffusion.diffusion.PerpendicularPrior3D`
        of the orientations found).  Must be ``None`` for ``'fbsem'``.
    num_steps
        Number of generative steps (default: the method's in
        :data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`; ``set_num_subiterations``
        sets it too).  For ``'fbsem'`` the unrolled updates, ``N x K`` of the network (the
        default; another number is refused at :meth:`set_up`).
    seed
        Seed of the sampler's random numbers.
    progress
        Show progress bars.
    **options
        Passed to :func:`sirf_diffusion.samplers.methods.reconstruct` (``num_mlem_iterations``,
        ``beta``, ``num_epochs``, ``axial_penalty``, ``step_size``, ``num_samples``, ``eta``...);
        for ``'fbsem'`` only ``fbsem_model``: a model folder, a ``train-fbsem`` run folder or
        ``None`` for the shipped network (loaded by the constructor, so a missing or corrupt
        model fails there).

    Notes
    -----
    ``set_num_subsets(K)``: PET-DDS uses ``K`` subsets for its EM steps; PET-LiSch ignores it
    (its steps use all data, as in the paper); without it PET-DDS takes the default of
    :data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`.  ``get_output()`` is the
    posterior mean (of ``num_samples`` chains, default from the same table) as an ``ImageData``
    like the current estimate; the full :class:`~sirf_diffusion.samplers.methods.ReconResult`
    is :attr:`result`.

    FBSEM-net (``'fbsem'``) runs the ``N`` iterations of ``K`` subsets its network was trained
    with: ``set_num_subsets`` and ``set_num_subiterations`` may only repeat them (``K`` and
    ``N K``; another value is refused at :meth:`set_up`, the network is not trained for it);
    :attr:`result` is its :class:`~sirf_diffusion.recon.fbsem.FBSEMResult` (with the
    applicability warnings, also issued as :class:`UserWarning`), :attr:`denoiser` stays
    ``None``.  On an objective function the network's data scale comes from gradients
    (:meth:`ObjectiveFunctionLikelihood.uniform_image`), so with a background term it differs
    from the net-count scale the network was trained with (a :class:`UserWarning` says so):
    prefer :meth:`set_acquisition_model` and :meth:`set_acquisition_data` for FBSEM-net.

    ``set_up(image)`` also resolves the prior into :attr:`denoiser`, so that a missing or
    unusable prior folder fails there, before any projection: for an image of more than one
    plane a :class:`~sirf_diffusion.diffusion.PerpendicularPrior3D` of every orientation
    (``xy``, ``yz``, ``xz``) the folder holds (:func:`~sirf_diffusion.diffusion.load_denoiser`).
    """

    def __init__(self, method: str = "lisch", prior: Any = None, *, num_steps: int | None = None,
                 seed: int = 0, progress: bool = True, **options: Any) -> None:
        from ..samplers.run import resolve_options

        #: The FBSEM-net and its ``config.json`` (``'fbsem'`` only).
        self.fbsem_model: tuple[Any, dict[str, Any] | None] | None = None
        if method == "fbsem":
            self.fbsem_model = _load_fbsem_option(prior, options)
            net = self.fbsem_model[0]
            self.num_steps = int(num_steps) if num_steps is not None else \
                net.config.num_iterations * net.config.num_subsets
        else:
            resolve_options(method, dict(options, num_steps=num_steps))  # method, option names
            self.num_steps = int(num_steps) if num_steps is not None else \
                int(METHOD_DEFAULTS[method]["num_steps"])
        self.method = method
        self.prior = prior
        self.seed = int(seed)
        self.progress = bool(progress)
        self.options = dict(options)
        self._objective: Any = None
        self._acq_model: Any = None
        self._acq_data: Any = None
        self._num_subsets: int | None = None  # None: the method's default
        self._template: Any = None
        self._estimate: Any = None
        self._likelihood: Likelihood | None = None
        self.result: Any = None
        #: The denoiser the reconstruction runs with (resolved by :meth:`set_up`).
        self.denoiser: Any = None
        self._callback: Callable[[dict[str, Any]], None] | None = None

    # SIRF's setters
    def set_objective_function(self, objective: Any) -> None:
        """The SIRF objective (e.g. ``make_Poisson_loglikelihood``) to reconstruct with."""
        self._objective = objective

    def get_objective_function(self) -> Any:
        return self._objective

    def set_acquisition_model(self, acquisition_model: Any) -> None:
        """Alternative to an objective: a SIRF acquisition model (needed for DPS)."""
        self._acq_model = acquisition_model

    def set_acquisition_data(self, acquisition_data: Any) -> None:
        self._acq_data = acquisition_data

    def set_num_subsets(self, num_subsets: int) -> None:
        if int(num_subsets) < 1:
            raise ValueError("num_subsets must be >= 1")
        self._num_subsets = int(num_subsets)

    def get_num_subsets(self) -> int:
        if self._num_subsets is not None:
            return self._num_subsets
        if self.fbsem_model is not None:
            return int(self.fbsem_model[0].config.num_subsets)
        return int(METHOD_DEFAULTS[self.method].get("num_subsets", 1))

    def set_num_subiterations(self, num_subiterations: int) -> None:
        """Number of generative steps (each step is one data-consistent update)."""
        if int(num_subiterations) < 1:
            raise ValueError("the number of generative steps must be >= 1")
        self.num_steps = int(num_subiterations)

    def get_num_subiterations(self) -> int:
        return self.num_steps

    def set_callback(self, callback: Callable[[dict[str, Any]], None] | None) -> None:
        """Called after every generative step with the sampler's dict (may raise
        ``StopIteration`` to stop early)."""
        self._callback = callback

    def set_up(self, image: Any) -> None:
        """Prepare the likelihood on the geometry of ``image`` (a SIRF ``ImageData``) and
        resolve the prior (:attr:`denoiser`; class docstring)."""
        self._template = image
        if self.fbsem_model is not None:
            _check_fbsem_unrolling(self.fbsem_model[0].config, self._num_subsets, self.num_steps)
        num_subsets = self.get_num_subsets() if self.fbsem_model is not None \
            else self._num_subsets or 1
        if self._acq_model is not None and self._acq_data is not None:
            self._likelihood = sirf_likelihood(self._acq_model, self._acq_data, image,
                                               num_subsets=num_subsets)
        elif self._objective is not None:
            if self.method == "dps":
                raise ValueError("DPS needs projections: call set_acquisition_model and "
                                 "set_acquisition_data instead of set_objective_function")
            self._likelihood = ObjectiveFunctionLikelihood(self._objective, image,
                                                           num_subsets=num_subsets)
            if self.fbsem_model is not None:
                import warnings

                warnings.warn(_FBSEM_OBJECTIVE_SCALE, UserWarning, stacklevel=2)
        else:
            raise ValueError("call set_objective_function (or set_acquisition_model and "
                             "set_acquisition_data) before set_up")
        if self.fbsem_model is None:
            self.denoiser = self._denoiser(int(self._likelihood.image_shape[0]))

    def set_current_estimate(self, image: Any) -> None:
        """The image whose geometry and type the output takes (its values are not used: the
        samplers start from noise and from MLEM/OSEM of the data)."""
        self._estimate = image.clone() if hasattr(image, "clone") else image

    def get_current_estimate(self) -> Any:
        if self._estimate is None:
            raise RuntimeError("current estimate not set")
        return self._estimate.clone() if hasattr(self._estimate, "clone") else self._estimate

    def _denoiser(self, nz: int) -> Any:
        if callable(self.prior) and not isinstance(self.prior, (str, os.PathLike)):
            return self.prior
        from ..diffusion.loading import load_denoiser

        return load_denoiser(self.prior, nz)

    def process(self) -> None:
        """Run the reconstruction; the result replaces the current estimate."""
        from ..samplers.methods import reconstruct

        if self._likelihood is None:
            raise RuntimeError("call set_up(image) before process()")
        if self._estimate is None:
            raise RuntimeError("current estimate not set: call set_current_estimate(image)")
        lik = self._likelihood
        if self.fbsem_model is not None:
            from ..recon.fbsem import fbsem_reconstruct

            net, meta = self.fbsem_model
            self.result = fbsem_reconstruct(lik, net, meta=meta, progress=self.progress,
                                            callback=self._callback)
            mean = self.result.image.reshape(lik.image_shape)
        else:
            opts = dict(self.options)
            if self.method == "dds":
                opts.setdefault("num_subsets", self._num_subsets)
            g = torch.Generator().manual_seed(self.seed)
            self.result = reconstruct(self.method, lik, self.denoiser,
                                      num_steps=self.num_steps, generator=g,
                                      progress=self.progress, callback=self._callback, **opts)
            mean = self.result.mean.reshape(lik.image_shape)
        _, restore = to_torch(self._estimate)
        self._estimate = restore(mean)

    def get_output(self) -> Any:
        """The reconstructed image, of the type of the current estimate."""
        if self.result is None:
            raise RuntimeError("no reconstruction yet: call process()")
        return self.get_current_estimate()


_FBSEM_OBJECTIVE_SCALE = (
    "FBSEM-net on a SIRF objective function: the network's data scale (its input "
    "normalisation, initial image and count level) is taken from the objective's gradients, "
    "the uniform image of best likelihood, not the net counts the network was trained with; "
    "with a background term it differs (18 % lower on a simulated mMR slice, 5 % in the "
    "image): for the network's own scale call set_acquisition_model and set_acquisition_data "
    "instead of set_objective_function")


def _load_fbsem_option(prior: Any, options: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """The FBSEM-net of ``DiffusionReconstructor('fbsem', fbsem_model=...)``, loaded."""
    from ..recon.fbsem import FBSEMNet, load_fbsem

    other = sorted(set(options) - {"fbsem_model"})
    if other:
        raise TypeError(f"option(s) {', '.join(other)} do not apply to method 'fbsem' (its only "
                        "option is fbsem_model)")
    if prior is not None:
        raise ValueError("method 'fbsem' uses no diffusion prior: give its network as "
                         "fbsem_model=DIR (or nothing, for the shipped one), not prior")
    model = options.get("fbsem_model")
    if isinstance(model, FBSEMNet):
        return model, None
    return load_fbsem(model)


def _check_fbsem_unrolling(config: Any, num_subsets: int | None, num_steps: int) -> None:
    """Refuse a subset count or number of updates other than the network's ``K`` and ``N K``."""
    K, NK = config.num_subsets, config.num_iterations * config.num_subsets
    if num_subsets is not None and num_subsets != K:
        raise ValueError(f"set_num_subsets({num_subsets}): this FBSEM-net unrolls the {K} subsets "
                         "it was trained with; leave the number of subsets unset (or set "
                         f"{K})")
    if num_steps != NK:
        raise ValueError(f"set_num_subiterations({num_steps}) / num_steps: this FBSEM-net unrolls "
                         f"the {config.num_iterations} x {K} = {NK} updates it was trained "
                         f"with; leave it unset (or set {NK})")


# ----------------------------------------------------------------------------- PETRIC cases
def sirf_case_likelihood(folder: str | os.PathLike[str], *, psf_fwhm_mm: Any = None,
                         projector: str = "ray-tracing", num_subsets: int = 1,
                         device: torch.device | str = "cpu") -> PoissonLogLikelihood:
    """The likelihood of a PETRIC-layout folder on SIRF's physics.

    ``prompts.hs``, ``mult_factors.hs`` (``S``) and ``additive_term.hs`` (``a``, so
    ``ybar = S (G x + a)`` as PETRIC defines it) are read by SIRF; the image geometry is that of
    ``OSEM_image.hv`` (else ``PETRIC/reference_image.hv``).  ``projector``: ``'ray-tracing'``
    (STIR's ``ProjMatrixByBinUsingRayTracing``) or ``'parallelproj'`` (when SIRF has it).
    ``psf_fwhm_mm``: optional image-space Gaussian (one FWHM or ``(transaxial, axial)``),
    SIRF's ``SeparableGaussianImageFilter`` with the FWHMs of
    :func:`~sirf_diffusion.physics.psf.psf_fwhms_zyx` (axial 0 on a single-plane image), so the
    blur is the embedded physics' one.
    """
    pet = require_sirf()
    paths, template_path = case_headers(folder)
    prompts = pet.AcquisitionData(str(paths["prompts"]))
    mult = pet.AcquisitionData(str(paths["mult_factors"]))
    additive = pet.AcquisitionData(str(paths["additive_term"]))
    image = pet.ImageData(str(template_path))
    check_prompts(acquisition_to_torch(prompts))
    if projector == "parallelproj":
        if not hasattr(pet, "AcquisitionModelUsingParallelproj"):
            raise ImportError("this SIRF has no Parallelproj projector; use "
                              "projector='ray-tracing'")
        am = pet.AcquisitionModelUsingParallelproj()
    elif projector == "ray-tracing":
        am = pet.AcquisitionModelUsingRayTracingMatrix()
    else:
        raise ValueError(f"projector must be 'ray-tracing' or 'parallelproj', got {projector!r}")
    # the embedded PSF's convention (physics.psf): STIR's filter, axial FWHM 0 on one plane
    from ..physics.psf import psf_fwhms_zyx

    fwhms = psf_fwhms_zyx(psf_fwhm_mm, int(image.dimensions()[0]))
    if fwhms is not None:
        blur = pet.SeparableGaussianImageFilter()
        blur.set_fwhms(fwhms)
        am.set_image_data_processor(blur)
    am.set_acquisition_sensitivity(pet.AcquisitionSensitivityModel(mult))
    am.set_additive_term(additive)
    return sirf_likelihood(am, prompts, image, num_subsets=num_subsets, device=device)
