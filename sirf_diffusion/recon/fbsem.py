"""FBSEM-net: unrolled forward-backward-splitting EM with a learned CNN regulariser.

Mehranian & Reader, "Model-based deep learning PET image reconstruction using forward-backward
splitting expectation-maximization", IEEE TRPMS 5(1):54-64, 2021.  Each of ``N`` iterations of
``K`` view subsets (subset ``k``, sensitivity ``s = A_k^T 1``) does

1. an OSEM update :math:`x^{EM} = \\frac{x}{s} A_k^T \\frac{y_k}{A_k x + b_k}`
   (:func:`~sirf_diffusion.recon.em.em_step`);
2. a learned regularisation :math:`x^R = c\\, \\mathrm{ReLU}(u + \\mathrm{CNN}(u))`,
   :math:`u = x / c`, a small residual CNN with the same weights in every iteration, on images
   normalised by the data's scale ``c`` (:func:`data_scale`);
3. the fusion of both: the per-voxel maximiser of the EM surrogate of the subset likelihood plus
   a quadratic coupling to :math:`x^R` (:func:`fusion_step`, the paper's equation (9)),

.. math::

    x^{+}_j = \\arg\\max_{z \\ge 0}\\; s_j x^{EM}_j \\log z - s_j z
              - \\frac{\\beta_j}{2} (z - x^R_j)^2
            = \\frac{2 x^{EM}_j}{1 - \\frac{\\beta_j}{s_j} x^R_j
              + \\sqrt{\\big(1 - \\frac{\\beta_j}{s_j} x^R_j\\big)^2
              + 4 \\frac{\\beta_j}{s_j} x^{EM}_j}} .

The weight :math:`\\beta` is learned.  The paper learns one scalar in the units of its training
data; here it is made independent of the count level and of the number of subsets so that one
network serves a dose range: with ``\\bar s`` the mean subset sensitivity over the field of view
and ``\\nu`` the data's net counts per voxel (:func:`counts_per_voxel`),

.. math::

    \\beta = r \\, \\frac{\\bar s}{c}, \\qquad
    r = \\exp(\\theta_0) \\Big(\\frac{\\nu_{ref}}{\\nu}\\Big)^{\\theta_1},

two learned scalars.  In the normalised image ``u`` the fusion balances
:math:`s (u^{EM}/u - 1)` against :math:`r \\bar s (u - u^R)`: ``theta_1 = 0`` keeps the balance
the same at every count level, ``theta_1 = 1`` is a prior of fixed strength in ``u`` (the data
weigh more as the counts grow); training chooses.  Non-negativity: the fusion's maximiser is
non-negative whenever ``x_EM >= 0`` (the quadratic ``beta z^2 + (s - beta x_R) z - s x_EM`` has
roots of opposite signs), and ``x_R`` is the ReLU of the residual output.

The network sees the data only through a :class:`~sirf_diffusion.likelihood.Likelihood`
(value and gradient per subset, sensitivities, the uniform start), so it runs on the embedded
physics, SIRF's objective functions or STIR's projectors alike, and it is differentiable end to
end on the embedded physics (the projector has an autograd rule), which training uses.

Model folders (:func:`save_fbsem`, :func:`load_fbsem`)::

    model_dir/model.safetensors   # weights (no pickle)
    model_dir/config.json         # format, network config, sha256, what it was trained on

``config.json``'s ``trained_on`` records the image grid, voxel size, sinogram shape, scanner and
the count range (counts/mm^3 and counts per voxel) of the training data;
:func:`check_applicability` refuses a different voxel size and warns on a different grid or a
count level outside the range.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..io.weights import CONFIG_FILE, WeightsFolder, check_tensor_fit
from ..likelihood import Likelihood
from .em import Callback, em_step, initial_image, run_iterations
from .map import _surrogate_maximiser

__all__ = ["FBSEMConfig", "FBSEMNet", "FBSEMPlan", "FBSEMRun", "FBSEMResult",
           "ResidualRegulariser", "fusion_step",
           "data_scale", "counts_per_voxel", "save_fbsem", "load_fbsem", "read_fbsem_config",
           "check_applicability", "fbsem_reconstruct", "default_fbsem_dir", "FORMAT"]

#: Format tag of an FBSEM-net model folder's ``config.json``.
FORMAT = "sirf-diffusion-fbsem/1"
_FOLDER = WeightsFolder(FORMAT, "FBSEM-net model", "not an FBSEM-net model config",
                        sections=("network", "trained_on"),
                        config_hint=" (train a model with `sirf-diffusion train-fbsem --out DIR`)")
#: Voxel sizes may differ from the training data's by this fraction before a model is refused.
VOXEL_TOLERANCE = 0.1
#: Count levels up to this fraction outside the training range pass without a warning.
COUNTS_TOLERANCE = 0.25


def default_fbsem_dir() -> Path:
    """Folder of the FBSEM-net shipped with the package (``sirf_diffusion/models/fbsem``)."""
    from ..models import default_prior_dir

    return default_prior_dir().parent / "fbsem"


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class FBSEMConfig:
    """Architecture and unrolling of an FBSEM-net (saved in the model's ``config.json``).

    Attributes
    ----------
    num_iterations, num_subsets
        Unrolled iterations ``N`` and view subsets ``K`` (the paper: 10 x 6).
    channels, depth, kernel_size
        The residual CNN: ``depth`` convolutions (``depth - 2`` hidden ones) of ``channels``
        feature maps (5 layers x 32 channels of 3 x 3: 28 353 parameters).
    reference_counts_per_voxel
        ``nu_ref`` of the weight ``beta`` (module docstring); set to the geometric centre of
        the training data's counts per voxel.
    """

    num_iterations: int = 10
    num_subsets: int = 4
    channels: int = 32
    depth: int = 5
    kernel_size: int = 3
    reference_counts_per_voxel: float = 1.0

    def __post_init__(self) -> None:
        for name in ("num_iterations", "num_subsets", "channels", "kernel_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FBSEMConfig.{name} must be a positive integer, got {v!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 2:
            raise ValueError(f"FBSEMConfig.depth must be an integer >= 2, got {self.depth!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"FBSEMConfig.kernel_size must be odd, got {self.kernel_size}")
        ref = self.reference_counts_per_voxel
        if not (isinstance(ref, (int, float)) and math.isfinite(ref) and ref > 0):
            raise ValueError("FBSEMConfig.reference_counts_per_voxel must be > 0, got "
                             f"{ref!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FBSEMConfig":
        if not isinstance(d, dict):
            raise ValueError(f"an FBSEM-net configuration must be a JSON object, got {d!r}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown FBSEM-net configuration keys {unknown}")
        return cls(**d)


# ----------------------------------------------------------------------------- the pieces
def fusion_step(x_em: torch.Tensor, x_reg: torch.Tensor, sens: torch.Tensor,
                beta: torch.Tensor | float) -> torch.Tensor:
    """FBSEM's fusion of an EM update and a regularised image (Mehranian & Reader 2021, eq. 9).

    The per-voxel maximiser of the EM surrogate of the subset log-likelihood plus a quadratic
    coupling to the regularised image,

    .. math::

        Q_j(z) = s_j x^{EM}_j \\log z - s_j z - \\frac{\\beta_j}{2} (z - x^R_j)^2 ,

    is the non-negative root of :math:`Q_j'(z) = 0`, i.e. of
    :math:`\\beta_j z^2 + (s_j - \\beta_j x^R_j) z - s_j x^{EM}_j = 0`:

    .. math::

        z_j = \\frac{2 x^{EM}_j}{1 - \\frac{\\beta_j}{s_j} x^R_j
              + \\sqrt{\\big(1 - \\frac{\\beta_j}{s_j} x^R_j\\big)^2
              + 4 \\frac{\\beta_j}{s_j} x^{EM}_j}}

    (computed without cancellation by MAP-EM's :func:`~sirf_diffusion.recon.map.map_em` root,
    whose surrogate is the same with ``grad R = -beta x_R`` at 0 and curvature ``beta``).
    ``Q_j`` is strictly concave for ``beta_j > 0``, so ``z_j`` is its unique maximiser on
    ``z >= 0``; ``beta -> 0`` gives ``x_EM``.  Voxels with ``s_j = 0`` are set to 0.
    Differentiable in every argument.

    Parameters
    ----------
    x_em, x_reg, sens
        EM update, regularised image and (subset) sensitivity, broadcastable.
    beta
        Coupling weight ``> 0`` (a scalar or a broadcastable tensor).
    """
    pos = sens > 0
    s = torch.where(pos, sens, torch.ones_like(sens))
    beta_t = torch.as_tensor(beta, dtype=s.dtype, device=s.device) * torch.ones_like(s)
    z = _surrogate_maximiser(s, s * x_em, -beta_t * x_reg, beta_t, torch.zeros_like(s))
    return torch.where(pos, z, torch.zeros_like(z))


def data_scale(likelihood: Likelihood) -> float:
    """``c``: the uniform image's value, net counts over the summed sensitivity
    (:meth:`~sirf_diffusion.likelihood.PoissonLogLikelihood.uniform_image`); the activity unit
    the network's images are normalised by and FBSEM's initial image."""
    return float(likelihood.uniform_image().reshape(-1)[0])


def counts_per_voxel(likelihood: Likelihood) -> float:
    """``nu``: net counts (prompts minus background) per voxel the scanner sees,
    ``c * sum(s) / #{s > 0}`` -- the count level FBSEM's ``beta`` adapts to and the model's
    training range is recorded in."""
    return _counts_per_voxel(likelihood, data_scale(likelihood))


def _counts_per_voxel(likelihood: Likelihood, scale: float) -> float:
    sens = likelihood.sensitivity(None)
    seen = int((sens > 0).sum())
    if seen == 0:
        raise ValueError("the sensitivity image is zero everywhere: the scanner sees no voxel")
    return scale * float(sens.sum()) / seen


class ResidualRegulariser(nn.Module):
    """FBSEM's CNN regulariser: :math:`u \\mapsto \\mathrm{ReLU}(u + f(u))` per axial plane.

    ``f``: ``depth`` convolutions with ReLUs between them (no normalisation layers, so the
    network is the same function in training and use); the last convolution starts at zero, so
    an untrained network is the identity on non-negative images.
    """

    def __init__(self, channels: int = 32, depth: int = 5, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        layers: list[nn.Module] = [nn.Conv2d(1, channels, kernel_size, padding=pad), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, kernel_size, padding=pad), nn.ReLU()]
        last = nn.Conv2d(channels, 1, kernel_size, padding=pad)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u``: ``[..., y, x]`` (every leading index a plane); same shape out."""
        planes = u.reshape(-1, 1, *u.shape[-2:])
        return torch.relu(planes + self.body(planes)).reshape(u.shape)


@dataclass
class FBSEMResult:
    """An FBSEM-net reconstruction and its cost."""

    image: torch.Tensor
    wall_time_s: float
    num_network_evaluations: int
    num_likelihood_evaluations: float
    beta_relative: float
    counts_per_voxel: float
    warnings: list[str]


class FBSEMNet(nn.Module):
    """FBSEM-net (module docstring): the unrolled reconstruction is :meth:`forward`.

    Parameters
    ----------
    config
        Architecture and unrolling.
    """

    def __init__(self, config: FBSEMConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else FBSEMConfig()
        c = self.config
        self.regulariser = ResidualRegulariser(c.channels, c.depth, c.kernel_size)
        #: ``theta_0``, ``theta_1`` of ``r = exp(theta_0) (nu_ref / nu)^theta_1``.
        self.log_beta = nn.Parameter(torch.zeros(()))
        self.beta_exponent = nn.Parameter(torch.full((), 0.5))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def relative_beta(self, nu: float) -> torch.Tensor:
        """``r = exp(theta_0) (nu_ref / nu)^theta_1`` at ``nu`` counts per voxel."""
        if not (math.isfinite(nu) and nu > 0):
            raise ValueError(f"counts per voxel must be > 0, got {nu}")
        ratio = math.log(self.config.reference_counts_per_voxel / nu)
        return torch.exp(self.log_beta + self.beta_exponent * ratio)

    def plan(self, likelihood: Likelihood, x0: torch.Tensor | None = None) -> "FBSEMPlan":
        """What the unrolled reconstruction of ``likelihood``'s data fixes before its first
        update: the data's scale ``c`` and count level ``nu``, the weight ``r``, the subsets and
        the initial image (``x0``, default the uniform image with the measured counts,
        :func:`data_scale`).  ``r`` keeps the autograd graph of the parameters."""
        uniform = likelihood.uniform_image()
        scale = float(uniform.reshape(-1)[0])
        if not scale > 0:
            raise ValueError("the data have no net counts above the background: FBSEM-net "
                             "has nothing to reconstruct")
        nu = _counts_per_voxel(likelihood, scale)
        x = uniform if x0 is None else initial_image(likelihood, x0)
        x = x.to(next(self.parameters()).dtype)
        return FBSEMPlan(scale=scale, counts_per_voxel=nu,
                         beta_relative=self.relative_beta(nu).to(x),
                         subsets=likelihood.subsets(self.config.num_subsets),
                         num_updates=self.config.num_iterations * self.config.num_subsets,
                         initial_image=x)

    def step(self, likelihood: Likelihood, plan: "FBSEMPlan", x: torch.Tensor,
             subset: Any) -> torch.Tensor:
        """One unrolled update of ``x`` on ``subset`` (module docstring: EM, regularise, fuse)."""
        x_em, _, _ = em_step(likelihood, x, subset)
        sens = likelihood.sensitivity(subset, like=x)
        mean_sens = sens[sens > 0].mean()
        x_reg = plan.scale * self.regulariser(x / plan.scale)
        beta = plan.beta_relative * mean_sens / plan.scale
        return fusion_step(x_em, x_reg, sens, beta)

    def forward(self, likelihood: Likelihood, x0: torch.Tensor | None = None, *,
                callback: Callback | None = None, progress: bool = False) -> torch.Tensor:
        """Run the ``N x K`` unrolled updates on ``likelihood``'s data; returns the image.

        ``x0``: initial image (default: the uniform image with the measured counts,
        :func:`data_scale`).  Differentiable in the network's parameters (and in ``x0``) when
        the likelihood's physics is.  ``callback`` as :func:`~sirf_diffusion.recon.em.osem`'s.
        """
        plan = self.plan(likelihood, x0)
        c = self.config
        x, _ = run_iterations(likelihood, plan.initial_image,
                              update=lambda z, sub: (self.step(likelihood, plan, z, sub), None),
                              objective=likelihood.value, num_updates=plan.num_updates,
                              subsets=plan.subsets, callback=callback, progress=progress,
                              record=False,
                              desc=f"FBSEM-net ({c.num_iterations} x {len(plan.subsets)})")
        return x


@dataclass
class FBSEMPlan:
    """What an FBSEM-net reconstruction fixes before its first update (:meth:`FBSEMNet.plan`).

    Attributes
    ----------
    scale, counts_per_voxel
        The data's scale ``c`` (:func:`data_scale`) and count level ``nu``
        (:func:`counts_per_voxel`).
    beta_relative
        ``r`` at ``nu`` (a 0-d tensor of the image's dtype).
    subsets, num_updates
        The ``K`` view subsets and the ``N K`` updates; update ``n`` (from 0) uses
        :meth:`subset`.
    initial_image
        The image the first update starts from.
    """

    scale: float
    counts_per_voxel: float
    beta_relative: torch.Tensor
    subsets: tuple[Any, ...]
    num_updates: int
    initial_image: torch.Tensor

    def subset(self, n: int) -> Any:
        """The subset of update ``n`` (0, 1, ...): ``subsets[n % K]``, ``None`` (all data) when
        ``K = 1`` (the order of :func:`~sirf_diffusion.recon.em.run_iterations`)."""
        return None if len(self.subsets) == 1 else self.subsets[n % len(self.subsets)]


class FBSEMRun:
    """An FBSEM-net reconstruction stepped one unrolled update at a time.

    What :func:`fbsem_reconstruct` and the CIL ``Algorithm``
    (:class:`sirf_diffusion.integrations.cil.FBSEMNetAlgorithm`) both drive, so that their
    images are equal bit for bit.  Construction checks the data against the model
    (:func:`check_applicability`: a ``ValueError`` for another voxel size; the warnings are kept
    in :attr:`warnings` and issued as :class:`UserWarning` when ``warn``) and computes the
    :class:`FBSEMPlan`; each :meth:`step` is one update (EM, regularise, fuse) without autograd.

    Parameters
    ----------
    likelihood
        Any :class:`~sirf_diffusion.likelihood.Likelihood` of the data.
    model
        A model folder (or a ``train-fbsem`` run folder), a loaded :class:`FBSEMNet`, or
        ``None`` for the shipped one.
    meta
        The ``config.json`` contents of a loaded ``model`` (what the data are checked against;
        ``None`` with a loaded network: not checked).
    x0
        Initial image (default: the uniform image with the measured counts).
    warn
        Issue the applicability warnings as :class:`UserWarning`.
    """

    def __init__(self, likelihood: Likelihood, model: str | os.PathLike[str] | FBSEMNet
                 | None = None, *, meta: dict[str, Any] | None = None,
                 x0: torch.Tensor | None = None, warn: bool = True) -> None:
        import warnings

        if isinstance(model, FBSEMNet):
            self.net, self.meta = model, meta
        else:
            self.net, self.meta = load_fbsem(model)
        self.likelihood = likelihood
        self.wall_time_s = 0.0
        t0 = time.perf_counter()
        with torch.no_grad(), likelihood.count_projections() as cost:
            self.plan = self.net.plan(likelihood, x0)
        self.num_likelihood_evaluations = cost.forward
        self.warnings = (check_applicability(self.meta, likelihood, self.plan.counts_per_voxel)
                         if self.meta is not None else [])
        if warn:
            for m in self.warnings:
                warnings.warn(m, UserWarning, stacklevel=2)
        self.x = self.plan.initial_image
        #: Updates done so far.
        self.index = 0
        self.wall_time_s = time.perf_counter() - t0

    @property
    def num_updates(self) -> int:
        """``N K``, the updates of a full reconstruction."""
        return self.plan.num_updates

    @property
    def done(self) -> bool:
        return self.index >= self.plan.num_updates

    def step(self) -> dict[str, Any]:
        """One unrolled update; returns ``{'iteration', 'epoch', 'subset', 'x'}``.

        Raises ``StopIteration`` when every update has been done.
        """
        if self.done:
            raise StopIteration
        t0 = time.perf_counter()
        subset = self.plan.subset(self.index)
        with torch.no_grad(), self.likelihood.count_projections() as cost:
            self.x = self.net.step(self.likelihood, self.plan, self.x, subset)
        self.index += 1
        self.num_likelihood_evaluations += cost.forward
        self.wall_time_s += time.perf_counter() - t0
        k = len(self.plan.subsets)
        return {"iteration": self.index, "epoch": self.index / k,
                "subset": None if k == 1 else (self.index - 1) % k, "x": self.x}

    def result(self) -> "FBSEMResult":
        """The :class:`FBSEMResult` of the updates so far."""
        return FBSEMResult(image=self.x, wall_time_s=self.wall_time_s,
                           num_network_evaluations=self.index,
                           num_likelihood_evaluations=self.num_likelihood_evaluations,
                           beta_relative=float(self.plan.beta_relative),
                           counts_per_voxel=self.plan.counts_per_voxel,
                           warnings=list(self.warnings))


# ----------------------------------------------------------------------------- model files
def save_fbsem(directory: str | os.PathLike[str], net: FBSEMNet,
               trained_on: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write ``net`` to ``directory`` (``model.safetensors`` then ``config.json``, atomically).

    ``trained_on``: what :func:`check_applicability` compares with (``image_shape``,
    ``voxel_size_mm``, ``data_shape``, ``scanner``, ``counts_per_mm3`` and
    ``counts_per_voxel`` as ``[min, max]``); ``extra``: free JSON metadata (training record).
    """
    missing = {"image_shape", "voxel_size_mm", "counts_per_voxel"} - set(trained_on)
    if missing:
        raise ValueError(f"trained_on lacks {sorted(missing)}")
    weights = _FOLDER.encode(net.state_dict())
    meta = {"format": FORMAT, "network": net.config.to_dict(),
            "weights": weights.record(num_parameters=net.num_parameters),
            "trained_on": trained_on,
            "saved_by": {"package": "sirf-diffusion", "version": __version__},
            "extra": extra or {}}
    return _FOLDER.save(directory, weights, meta)


def read_fbsem_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``config.json`` of an FBSEM-net folder (``FileNotFoundError`` /
    ``ValueError`` naming the file)."""
    return _FOLDER.read_config(directory)


def load_fbsem(directory: str | os.PathLike[str] | None = None,
               map_location: str | torch.device = "cpu") -> tuple[FBSEMNet, dict[str, Any]]:
    """Load an FBSEM-net folder (default: the shipped one) in eval mode, without executing code.

    ``directory`` may also be a ``train-fbsem`` run folder (its model is ``directory/model``).

    Returns the network and its ``config.json`` contents.

    Raises
    ------
    FileNotFoundError
        The folder, ``config.json`` or the weights file is missing.
    ValueError
        Invalid config, sha256 mismatch (corrupt or modified weights), unreadable safetensors,
        or tensors that do not fit the configured network.
    """
    directory = Path(directory) if directory is not None else default_fbsem_dir()
    if not (directory / CONFIG_FILE).exists() and (directory / "model" / CONFIG_FILE).is_file():
        directory = directory / "model"  # a train-fbsem run folder
    meta = read_fbsem_config(directory)
    cfg_path = directory / CONFIG_FILE
    try:
        config = FBSEMConfig.from_dict(meta["network"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: invalid FBSEM-net configuration ({e})") from None
    sd = _FOLDER.read_weights(directory, meta)
    net = FBSEMNet(config)
    check_tensor_fit(sd, net.state_dict(), _FOLDER.weights_path(directory, meta), cfg_path)
    net.load_state_dict(sd, strict=True)
    return net.to(map_location).eval(), meta


def check_applicability(meta: dict[str, Any], likelihood: Likelihood,
                        nu: float | None = None) -> list[str]:
    """Compare the data with what the model was trained on (``meta["trained_on"]``).

    Raises ``ValueError`` when the voxel size differs by more than :data:`VOXEL_TOLERANCE` (the
    CNN's filters are in voxels); returns warnings for a different image grid or a count level
    (net counts per voxel, :func:`counts_per_voxel`) more than :data:`COUNTS_TOLERANCE` outside
    the training range (whose ends are estimated from a few training pairs).
    """
    t = meta["trained_on"]
    out: list[str] = []
    vox, tvox = tuple(likelihood.voxel_size_mm), tuple(t["voxel_size_mm"])
    # the axial size does not matter to a network of single planes
    if any(abs(a - b) > VOXEL_TOLERANCE * b for a, b in zip(vox[1:], tvox[1:])):
        raise ValueError(f"this FBSEM-net was trained on voxels of {tvox[1]:g} x {tvox[2]:g} mm "
                         f"in-plane; the data have {vox[1]:g} x {vox[2]:g} mm (its filters are "
                         "in voxels): resample the data or train a model for this grid")
    shape = tuple(likelihood.image_shape)
    if list(shape[1:]) != list(t["image_shape"][1:]):
        out.append(f"this FBSEM-net was trained on {t['image_shape'][1]} x "
                   f"{t['image_shape'][2]} images; the data's are {shape[1]} x {shape[2]}")
    lo, hi = t["counts_per_voxel"]
    nu = counts_per_voxel(likelihood) if nu is None else nu
    if not lo / (1 + COUNTS_TOLERANCE) <= nu <= hi * (1 + COUNTS_TOLERANCE):
        doses = t.get("counts_per_mm3")
        dose = f" ({doses[0]:g}-{doses[1]:g} counts/mm^3)" if doses else ""
        out.append(f"the data have {nu:.3g} net counts per voxel, outside the {lo:.3g}-{hi:.3g} "
                   f"this FBSEM-net was trained on{dose}: expect a worse image")
    return out


def fbsem_reconstruct(likelihood: Likelihood, model: str | os.PathLike[str] | FBSEMNet
                      | None = None, *, meta: dict[str, Any] | None = None,
                      progress: bool = False, warn: bool = True,
                      callback: Callback | None = None) -> FBSEMResult:
    """Reconstruct with a trained FBSEM-net (default: the shipped one).

    ``model``: a model folder, a loaded :class:`FBSEMNet` (with its ``meta`` to check the data
    against) or ``None``.  The data are checked (:func:`check_applicability`: refused for a
    different voxel size, warnings for a grid or count level the model was not trained on,
    issued as :class:`UserWarning` when ``warn``).  ``callback`` is called after every update
    with :meth:`FBSEMRun.step`'s dict; ``StopIteration`` from it ends the reconstruction there.
    """
    from tqdm.auto import tqdm

    run = FBSEMRun(likelihood, model, meta=meta, warn=warn)
    c = run.net.config
    with tqdm(total=run.num_updates, disable=not progress, leave=False,
              desc=f"FBSEM-net ({c.num_iterations} x {len(run.plan.subsets)})") as bar:
        while not run.done:
            info = run.step()
            bar.update(1)
            if callback is not None:
                try:
                    callback(info)
                except StopIteration:
                    break
    return run.result()
