r"""CIL protocols for diffusion priors: a ``Function``, step-by-step ``Algorithm`` classes and the
physics as a ``LinearOperator``.

Importing this module imports CIL (the Core Imaging Library,
https://github.com/TomographicImaging/CIL, version >= 24); without it the import raises an
:class:`ImportError` naming the install route.  ``import sirf_diffusion.integrations`` does not
import it: ``from sirf_diffusion.integrations import DiffusionPriorFunction`` resolves the name
(and imports CIL) on first access.

``DiffusionPriorFunction``
    A CIL ``Function`` ``f(u) = R(u)`` around :class:`~.prior.DiffusionPrior` (the penalty to
    *minimise* together with e.g. a ``KullbackLeibler`` data term): ``__call__``,
    ``gradient(x, out=None)`` and ``proximal(x, tau, out=None)`` follow CIL's convention (with
    ``out`` the result is written into ``out``, which is also returned).  ``proximal`` is the
    Tweedie approximation documented in :mod:`.prior` (exact for Gaussian priors).

``LikelihoodScheduledDiffusion``, ``DecomposedDiffusion`` and ``DiffusionPosteriorSampling``
    PET-LiSch (Webber et al., IEEE TMI 2025), PET-DDS (Singh et al., MELBA 2024) and DPS (Chung et
    al., ICLR 2023) as CIL ``Algorithm`` subclasses.  ``set_up`` is
    :func:`sirf_diffusion.samplers.run.prepare` and each ``update()`` is one
    :meth:`~sirf_diffusion.samplers.run.DiffusionRun.step` of the same
    :class:`~sirf_diffusion.samplers.loop.DiffusionStepper` that
    :func:`sirf_diffusion.samplers.methods.reconstruct` steps, so the results are
    ``reconstruct``'s bit for bit (same noise levels, same random numbers), and
    ``run(iterations, callbacks=[...])``, CIL callbacks and ``StopIteration`` work as for any CIL
    algorithm.  ``update()`` raises ``StopIteration`` once every step has been taken, which ends
    ``run`` early.  Per CIL's convention the algorithms *minimise*: the recorded objective is the
    negative Poisson log-likelihood :math:`-L(\hat u)` of the current data-consistent estimate
    (the diffusion prior has no tractable value), and at iteration 0 that of the initial
    MLEM/OSEM image.  ``solution`` / ``get_output()`` is the current estimate in physical units
    (clipped at 0; the mean over chains when ``num_samples > 1``) as an object of the kind of
    ``template`` (CIL or SIRF ``ImageData``, STIR image, numpy array or torch tensor; default a
    torch tensor ``(z, y, x)``).

``FBSEMNetAlgorithm``
    FBSEM-net (Mehranian & Reader, IEEE TRPMS 2021), the supervised unrolled baseline, as a CIL
    ``Algorithm``: one unrolled update (OSEM sub-iteration, CNN regulariser, fusion) per
    ``update()``, equal to :func:`sirf_diffusion.recon.fbsem.fbsem_reconstruct` bit for bit;
    the objective and ``solution`` follow the same conventions.

``PETPhysicsOperator``
    The linear part ``m * G P`` of any physics backend as a CIL ``LinearOperator``
    (``direct``/``adjoint`` with ``out=``), for CIL's own solvers with e.g.
    ``KullbackLeibler(b=prompts, eta=additive)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch

from ..toolkits import INSTALL_HINTS, require_toolkit

require_toolkit("cil")  # without CIL: an ImportError naming the install route

from cil.framework import ImageGeometry  # noqa: E402
from cil.optimisation.algorithms import Algorithm  # noqa: E402
from cil.optimisation.functions import Function  # noqa: E402
from cil.optimisation.operators import LinearOperator  # noqa: E402

from ..diffusion.denoiser import Denoiser  # noqa: E402
from ..diffusion.normalisation import IntensityNormalisation  # noqa: E402
from ..likelihood import Likelihood  # noqa: E402
from ..physics.base import Subset  # noqa: E402
from ..samplers.loop import DiffusionStepper  # noqa: E402, F401  (moved: importable from here)
from ..samplers.run import DiffusionRun, prepare  # noqa: E402
from .containers import Restore, to_torch  # noqa: E402
from .prior import DiffusionPrior  # noqa: E402

__all__ = ["DiffusionPriorFunction", "LikelihoodScheduledDiffusion", "DecomposedDiffusion",
           "DiffusionPosteriorSampling", "PETDEFT", "FBSEMNetAlgorithm", "PETPhysicsOperator",
           "require_cil",
           "CIL_INSTALL_HINT"]

CIL_INSTALL_HINT = INSTALL_HINTS["cil"]


def require_cil() -> Any:
    """Import and return the ``cil`` package, or raise an ImportError with the install route."""
    return require_toolkit("cil")


def prepare_diffusion_sampling(method: str, likelihood: Likelihood, denoiser: Denoiser,
                               normalisation: IntensityNormalisation | None = None,
                               **options: Any) -> DiffusionRun:
    """Deprecated: :func:`sirf_diffusion.samplers.run.prepare` (same arguments)."""
    warnings.warn("sirf_diffusion.integrations.cil.prepare_diffusion_sampling is deprecated: use "
                  "sirf_diffusion.samplers.run.prepare", DeprecationWarning, stacklevel=2)
    return prepare(method, likelihood, denoiser, normalisation, **options)  # type: ignore[arg-type]


def _output_converter(template: Any, image_shape: tuple[int, ...]
                      ) -> Callable[[torch.Tensor], Any]:
    """``tensor [z, y, x] -> object of template's kind`` (torch tensor when no template)."""
    if template is None:
        return lambda t: t.detach().clone()
    t, restore = to_torch(template)
    shape = tuple(t.shape)
    n = math.prod(image_shape)
    if math.prod(shape) != n or tuple(s for s in shape if s != 1) != \
            tuple(s for s in image_shape if s != 1):
        raise ValueError(f"template has shape {shape} but the reconstruction's image shape is "
                         f"{tuple(image_shape)} (z, y, x)")
    r: Restore = restore
    return lambda u: r(u.reshape(shape))


# ============================================================================ Function
class DiffusionPriorFunction(Function):
    r"""CIL ``Function`` ``f(u) = R(u)`` of a :class:`~.prior.DiffusionPrior`.

    Parameters
    ----------
    prior
        A ``DiffusionPrior``, or a denoiser from which one is built with ``prior_kwargs``
        (``sigma``, ``penalisation_factor``, ``normalisation``, ``value_mode``...).

    Notes
    -----
    ``gradient`` is the Tweedie score gradient :math:`-\beta (D(u/s,\sigma) - u/s) /
    (s\sigma^2)`; ``__call__`` the surrogate value of the prior's ``value_mode``;
    ``proximal(x, tau)`` the MMSE (Tweedie) approximation
    :math:`s[y + \lambda/\eta^2 (D(y, \eta) - y)]`, ``y = x/s``,
    ``lambda = tau beta / s^2``, ``eta^2 = sigma^2 + lambda`` (exact for Gaussian priors).
    With ``out`` given the result is written into ``out`` and ``out`` is returned.
    """

    def __init__(self, prior: DiffusionPrior | Denoiser, **prior_kwargs: Any) -> None:
        if isinstance(prior, DiffusionPrior):
            if prior_kwargs:
                raise TypeError("prior_kwargs only apply when a denoiser is given")
            self.prior = prior
        else:
            self.prior = DiffusionPrior(prior, **prior_kwargs)
        super().__init__(L=None)

    def set_up(self, image: Any, mask: Any = None, **kwargs: Any) -> "DiffusionPriorFunction":
        """Fit the intensity scale on ``image`` (see ``DiffusionPrior.set_up``)."""
        self.prior.set_up(image, mask, **kwargs)
        return self

    def __call__(self, x: Any) -> float:
        v = self.prior.get_value(x)
        return float(v) if not hasattr(v, "shape") or v.ndim == 0 else v

    def gradient(self, x: Any, out: Any = None) -> Any:
        return self.prior.get_gradient(x, out=out)

    def proximal(self, x: Any, tau: float, out: Any = None) -> Any:
        return self.prior.proximal(x, tau, out=out)


# ============================================================================ Algorithms
class _DiffusionAlgorithm(Algorithm):
    """A prepared diffusion reconstruction stepped by CIL (module docstring).

    Parameters
    ----------
    likelihood
        A :class:`~sirf_diffusion.likelihood.Likelihood` of the data (DPS: a
        :class:`~sirf_diffusion.likelihood.ProjectingLikelihood`).
    denoiser
        ``D(x, sigma)`` (2D slice model for one-slice images, 3D prior for volumes).
    template
        Image whose kind the solution takes (CIL/SIRF ``ImageData``, STIR image, numpy,
        torch; default: torch tensor).
    update_objective_interval
        CIL's; the objective is the negative PLL (module docstring).
    **options
        ``normalisation`` and the options of
        :func:`~sirf_diffusion.samplers.methods.reconstruct` for the method (defaults from
        :data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`).
    """

    _method: str = ""

    def __init__(self, likelihood: Likelihood, denoiser: Denoiser, *, template: Any = None,
                 update_objective_interval: int = 1, **options: Any) -> None:
        super().__init__(update_objective_interval=update_objective_interval)
        self.set_up(likelihood, denoiser, template=template, **options)

    def set_up(self, likelihood: Likelihood, denoiser: Denoiser, *, template: Any = None,
               normalisation: IntensityNormalisation | None = None, **options: Any) -> None:
        """Initial reconstruction, normalisation, rule and noise levels (no step yet)."""
        self.run_state = prepare(self._method, likelihood, denoiser,  # type: ignore[arg-type]
                                 normalisation, **options)
        self._to_output = _output_converter(template, tuple(likelihood.image_shape))
        self.step_info: dict[str, Any] = {}
        self.x = self._to_output(self.run_state.estimate())
        self.configured = True

    @property
    def num_steps(self) -> int:
        """Number of generative steps (``run`` stops by itself after them)."""
        return self.run_state.stepper.num_steps

    @property
    def samples(self) -> torch.Tensor | None:
        """Current samples ``[n, z, y, x]`` (physical units, torch)."""
        return self.run_state.samples()

    @property
    def normalisation(self) -> IntensityNormalisation:
        return self.run_state.normalisation

    def update(self) -> None:
        """One generative step; ``StopIteration`` after the last one."""
        if self.run_state.done:
            raise StopIteration
        self.step_info = self.run_state.step()
        self.x = self._to_output(self.run_state.estimate())

    def update_objective(self) -> None:
        """Append :math:`-L(\\hat u)`, the negative PLL of the current estimate (mean over
        chains), taken from the rule when it recorded it."""
        if self.run_state.stepper.step_index == 0:
            value = -self.run_state.init_pll
        else:
            pll = self.step_info.get("pll")
            if pll is None:
                samples = self.run_state.samples()
                pll = self.run_state.likelihood.value(samples).reshape(-1).tolist()
            value = -sum(float(p) for p in pll) / len(pll)
        self.loss.append(value)

    def should_stop(self) -> bool:  # CIL 24.0-24.2 check this before each iteration
        base = getattr(super(), "should_stop", None)
        return self.run_state.done or (bool(base()) if base is not None else False)

    def result(self) -> Any:
        """The :class:`~sirf_diffusion.samplers.result.ReconResult` of the steps so far."""
        return self.run_state.result()


class LikelihoodScheduledDiffusion(_DiffusionAlgorithm):
    """PET-LiSch (Webber et al., IEEE TMI 2025, arXiv:2412.04339) as a CIL ``Algorithm``.

    Parameters as :class:`_DiffusionAlgorithm`; the PET-LiSch options are
    ``num_mlem_iterations``, ``alpha`` and ``max_likelihood_steps``.
    """

    _method = "lisch"


class DecomposedDiffusion(_DiffusionAlgorithm):
    """PET-DDS (Singh et al., MELBA 2024; Chung et al., ICLR 2024) as a CIL ``Algorithm``.

    Parameters as :class:`_DiffusionAlgorithm`; the PET-DDS options are ``beta``,
    ``num_subsets``, ``num_epochs``, ``num_subiterations``, ``axial_penalty``, ``penalty``,
    ``init_subsets`` and ``init_epochs``.
    """

    _method = "dds"


class DiffusionPosteriorSampling(_DiffusionAlgorithm):
    """DPS for PET (Chung et al., ICLR 2023; Singh et al., MELBA 2024) as a CIL ``Algorithm``.

    Parameters as :class:`_DiffusionAlgorithm` (the likelihood must have projections); the DPS
    options are ``step_size``, ``step_normalisation``, ``init_subsets`` and ``init_epochs``.
    """

    _method = "dps"


class PETDEFT(_DiffusionAlgorithm):
    """PET-DEFT (Webber et al., MICCAI 2025, arXiv 2506.24034) as a CIL ``Algorithm``.

    Parameters as :class:`_DiffusionAlgorithm` (``denoiser``: the prior the h-network was
    trained against); the PET-DEFT option is ``deft_model`` (a model folder, a loaded
    ``DEFTModel`` or ``None`` for the shipped one).
    """

    _method = "deft"


class FBSEMNetAlgorithm(Algorithm):
    r"""FBSEM-net (Mehranian & Reader, IEEE TRPMS 2021) as a CIL ``Algorithm``.

    Each ``update()`` is one unrolled update of the trained network (an OSEM step on one view
    subset, the CNN regulariser, their closed-form fusion: :mod:`sirf_diffusion.recon.fbsem`),
    a step of the same :class:`~sirf_diffusion.recon.fbsem.FBSEMRun` that
    :func:`~sirf_diffusion.recon.fbsem.fbsem_reconstruct` drives, so after all ``N x K``
    updates ``solution`` is ``fbsem_reconstruct``'s image bit for bit; ``update()`` then raises
    ``StopIteration``, which ends ``run``.  Per CIL's convention the recorded objective is the
    negative Poisson log-likelihood :math:`-L(x)` of the current image (at iteration 0 that of
    the initial uniform image; one forward projection each, outside the run's own count: raise
    ``update_objective_interval`` to save them).

    Parameters
    ----------
    likelihood
        Any :class:`~sirf_diffusion.likelihood.Likelihood` of the data (embedded, SIRF or STIR
        physics, a SIRF objective function).
    model
        An FBSEM-net model folder (or ``train-fbsem`` run folder), a loaded
        :class:`~sirf_diffusion.recon.fbsem.FBSEMNet` or ``None`` for the shipped one.
    meta
        The ``config.json`` contents of a loaded ``model``, to check the data against.
    template
        Image whose kind the solution takes (CIL/SIRF ``ImageData``, STIR image, numpy, torch;
        default: torch tensor ``(z, y, x)``).
    update_objective_interval
        CIL's.
    warn
        Issue the model's applicability warnings (another grid, a count level outside its
        training range) as :class:`UserWarning`; they are kept in :attr:`warnings` either way.
    """

    def __init__(self, likelihood: Likelihood, model: Any = None, *,
                 meta: dict[str, Any] | None = None, template: Any = None,
                 update_objective_interval: int = 1, warn: bool = True) -> None:
        super().__init__(update_objective_interval=update_objective_interval)
        self.set_up(likelihood, model, meta=meta, template=template, warn=warn)

    def set_up(self, likelihood: Likelihood, model: Any = None, *,
               meta: dict[str, Any] | None = None, template: Any = None,
               warn: bool = True) -> None:
        """Load and check the model, plan the updates (no update yet)."""
        from ..recon.fbsem import FBSEMRun

        self._to_output = _output_converter(template, tuple(likelihood.image_shape))
        self.run_state = FBSEMRun(likelihood, model, meta=meta, warn=warn)
        self.step_info: dict[str, Any] = {}
        self.x = self._to_output(self.run_state.x)
        self.configured = True

    @property
    def num_steps(self) -> int:
        """``N x K`` unrolled updates (``run`` stops by itself after them)."""
        return self.run_state.num_updates

    @property
    def warnings(self) -> list[str]:
        """The model's applicability warnings for these data."""
        return list(self.run_state.warnings)

    def update(self) -> None:
        """One unrolled update; ``StopIteration`` after the last one."""
        self.step_info = self.run_state.step()
        self.x = self._to_output(self.run_state.x)

    def update_objective(self) -> None:
        """Append :math:`-L(x)`, the negative Poisson log-likelihood of the current image."""
        with torch.no_grad():
            value = self.run_state.likelihood.value(self.run_state.x)
        self.loss.append(-float(value.reshape(-1).sum()))

    def should_stop(self) -> bool:  # CIL 24.0-24.2 check this before each iteration
        base = getattr(super(), "should_stop", None)
        return self.run_state.done or (bool(base()) if base is not None else False)

    def result(self) -> Any:
        """The :class:`~sirf_diffusion.recon.fbsem.FBSEMResult` of the updates so far."""
        return self.run_state.result()


# ============================================================================ LinearOperator
class PETPhysicsOperator(LinearOperator):
    """The linear part ``m * G P`` of a package physics model as a CIL ``LinearOperator``.

    Parameters
    ----------
    physics
        Any :class:`~sirf_diffusion.physics.base.PETPhysics` (embedded, SIRF, STIR).
    domain_geometry, range_geometry
        CIL geometries (anything with ``allocate``) of images ``(z, y, x)`` and sinograms
        ``(sinogram, view, tangential)``; default: CIL ``ImageGeometry`` objects of those
        shapes (voxel sizes in mm for the image; CIL drops axes of size 1).
    subset
        Project the views of this subset only (a
        :class:`~sirf_diffusion.physics.base.ViewSubset`, an index into the physics' partition,
        or ``None``: all views).

    Notes
    -----
    ``direct(x, out=None)`` / ``adjoint(y, out=None)`` follow CIL: with ``out`` the result
    is written into ``out``, which is returned.  The affine term ``b`` is not part of the
    operator: give it to CIL's ``KullbackLeibler(b=prompts, eta=b)``.
    """

    def __init__(self, physics: Any, domain_geometry: Any = None, range_geometry: Any = None,
                 subset: Subset = None) -> None:
        nz, ny, nx = physics.image_shape
        vz, vy, vx = physics.voxel_size_mm
        if domain_geometry is None:
            domain_geometry = ImageGeometry(voxel_num_x=nx, voxel_num_y=ny, voxel_num_z=nz,
                                            voxel_size_x=vx, voxel_size_y=vy, voxel_size_z=vz)
        ns, nv, nt = physics.data_shape
        views = physics.subset_views(subset)
        if views is not None:
            nv = len(views)
        if range_geometry is None:
            range_geometry = ImageGeometry(voxel_num_x=nt, voxel_num_y=nv, voxel_num_z=ns)
        self.physics = physics
        self.subset = physics.resolve_subset(subset)
        self._data_shape = (ns, nv, nt)
        super().__init__(domain_geometry=domain_geometry, range_geometry=range_geometry)

    @staticmethod
    def _values(x: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
        t, _ = to_torch(x)
        if t.numel() != math.prod(shape):
            raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {shape}")
        return t.reshape(shape)

    @staticmethod
    def _write(values: torch.Tensor, geometry: Any, out: Any) -> Any:
        if out is None:
            out = geometry.allocate(0)
        out.fill(values.detach().cpu().numpy().astype("float32").reshape(out.shape))
        return out

    def direct(self, x: Any, out: Any = None) -> Any:
        u = self._values(x, tuple(self.physics.image_shape), "image")
        y = self.physics.forward_linear(u, self.subset)
        return self._write(y, self.range_geometry(), out)

    def adjoint(self, x: Any, out: Any = None) -> Any:
        y = self._values(x, self._data_shape, "sinogram")
        u = self.physics.adjoint(y, self.subset)
        return self._write(u, self.domain_geometry(), out)
