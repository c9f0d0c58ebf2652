"""``ScoreModel``: a slice score network with its schedule, presented as a denoiser.

The network is trained on variance-preserving inputs by denoising score matching
(Vincent 2011; Ho et al. 2020, Eq. 14 — the "simple" loss; Song et al. 2021, Eq. 7):

.. math::

    \\mathcal L(\\theta) = \\mathbb E_{t \\sim U(t_{\\min}, t_{\\max}),\\, x_0,\\, \\epsilon}
    \\big\\| f_\\theta(\\sqrt{\\bar\\alpha(t)} x_0 + \\sqrt{1-\\bar\\alpha(t)}\\, \\epsilon,\\ t)
    - y(x_0, \\epsilon, t) \\big\\|^2

with target ``y = eps`` (``parametrisation='eps'``, as the PET papers: Singh et al. 2024,
Webber et al. 2025), ``v`` or the VP score.  At sampling time the same network is seen through
the denoiser contract ``D(x, sigma) -> x0_hat`` by the adapter maps of
:mod:`sirf_diffusion.diffusion.adapters`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .._version import __version__
from ..io.config import dataclass_from_dict
from .adapters import ADAPTERS, Parametrisation, batch_sigma, vp_inputs
from .padding import denoise_padded
from .precision import Precision, check_precision, network_autocast, resolve_precision
from .recipe import LossRecipe
from .schedules import ContinuousVP, DiscreteVP, schedule_from_dict
from .unet import UNet, UNetConfig

__all__ = ["Orientation", "ORIENTATIONS", "ScoreModelConfig", "ScoreModel"]

Orientation = Literal["xy", "yz", "xz"]
#: The three slice orientations of a 3D volume ``[Z, Y, X]`` (see :mod:`.prior3d`).
ORIENTATIONS: tuple[str, ...] = ("xy", "yz", "xz")


@dataclass
class ScoreModelConfig:
    """Everything needed to rebuild a :class:`ScoreModel` and to know what it was trained on.

    Attributes
    ----------
    unet
        Network architecture.
    parametrisation
        What the network predicts: ``'eps'`` (default), ``'v'`` or ``'score'``.
    schedule
        Schedule description (:func:`~.schedules.schedule_from_dict`); default VP-SDE
        ``beta_min = 0.1, beta_max = 20``.  The UNet always sees ``t / t_max`` (``[0, 1]``).
    t_min
        Training times are drawn from ``U(t_min, t_max)`` of the schedule (continuous VP);
        discrete schedules draw integer steps from ``[0, T)``.
    orientation
        Slice orientation the model was trained on (``'xy'`` axial, ``'yz'`` sagittal, ``'xz'``
        coronal).
    image_size
        ``(h, w)`` of the training slices.
    normalisation, training_data
        Free descriptions (JSON-serialisable dicts) of the intensity normalisation and of the
        training data set.
    package_version
        sirf-diffusion version that created the model.
    """

    unet: UNetConfig = field(default_factory=UNetConfig)
    parametrisation: Parametrisation = "eps"
    schedule: dict[str, Any] = field(default_factory=lambda: ContinuousVP().to_dict())
    t_min: float = 1e-3
    orientation: Orientation = "xy"
    image_size: tuple[int, int] = (112, 112)
    normalisation: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    package_version: str = __version__

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            self.unet = UNetConfig.from_dict(self.unet)
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        if self.parametrisation not in ADAPTERS:
            raise ValueError(f"parametrisation must be one of {sorted(ADAPTERS)}, "
                             f"got {self.parametrisation!r}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (h, w), got {self.image_size}")
        m = self.unet.size_multiple
        if self.image_size[0] % m or self.image_size[1] % m:
            raise ValueError(f"image_size {self.image_size} is not divisible by {m} as the UNet "
                             "requires")
        schedule_from_dict(self.schedule)  # validates
        if not 0 <= self.t_min < 1:
            raise ValueError(f"t_min must be in [0, 1), got {self.t_min}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreModelConfig":
        return dataclass_from_dict(cls, d)


class ScoreModel(nn.Module):
    """A :class:`~.unet.UNet` with its VP schedule; ``forward(x, sigma) -> x0_hat``.

    Parameters
    ----------
    config
        :class:`ScoreModelConfig` (default: the compact shipped architecture).
    channels_last
        Memory format of the UNet's activations and weights: ``True`` channels-last, ``False``
        contiguous, ``None`` (default) channels-last exactly when the network runs in bfloat16
        in evaluation mode (where it pays on CPUs with AVX512-BF16/AMX; see
        ``benchmarks/bench_denoiser.py``).
    compile
        Run the UNet through ``torch.compile`` (the parameters and the state-dict names are
        unchanged, so saving and loading are unaffected).  Off by default.
    precision
        ``'auto'`` (default): bfloat16 autocast for the network where the hardware runs it
        natively, float32 elsewhere; ``'fp32'`` or ``'bf16'`` to force one
        (:mod:`.precision`).  Only the network is affected: its output is cast back to the
        iterate's dtype before the adapter map, so everything outside the UNet keeps its
        precision.  May be changed at any time (``model.precision = 'fp32'``).
    """

    def __init__(self, config: ScoreModelConfig | None = None, channels_last: bool | None = None,
                 compile: bool = False, precision: Precision = "auto") -> None:
        super().__init__()
        self.config = config or ScoreModelConfig()
        self.schedule: ContinuousVP | DiscreteVP = schedule_from_dict(self.config.schedule)
        self.unet = UNet(self.config.unet)
        self._adapter = ADAPTERS[self.config.parametrisation]
        self.channels_last = channels_last
        self.precision = precision
        # stored outside the module registry so that state_dict names stay "unet.*"
        self.__dict__["_compiled_unet"] = torch.compile(self.unet) if compile else None

    @property
    def precision(self) -> str:
        """``'auto'``, ``'fp32'`` or ``'bf16'`` (see the class docstring)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)

    def network_dtype(self) -> torch.dtype:
        """The dtype the UNet runs in now: ``torch.bfloat16`` or ``torch.float32``."""
        return resolve_precision(self._precision, _device_of(self.unet))

    def _memory_format(self, dtype: torch.dtype) -> torch.memory_format:
        use = self.channels_last
        if use is None:
            use = dtype == torch.bfloat16 and not self.training
        return torch.channels_last if use else torch.contiguous_format

    def _net(self, x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet sees ``t / t_max`` in ``[0, 1]`` for every schedule (DDPM steps included).

        Runs under the model's precision (:meth:`network_dtype`) and returns the iterate's
        dtype.  The input enters in the weights' dtype (autocast leaves float64 alone, so a
        float64 iterate would otherwise meet bfloat16 or float32 weights).
        """
        t = t / self.schedule.t_max
        compiled = self.__dict__["_compiled_unet"]  # no `or`: compiled modules refuse bool()
        net = compiled if compiled is not None else self.unet
        weights_format = self.__dict__.get("_weights_format", torch.contiguous_format)
        if _functorch_active():
            # Inside torch.func transforms (the jvp of Hessian-vector products) the network
            # runs float32 and contiguous: PyTorch's (2.13) forward-mode derivatives fail under
            # CPU bfloat16 autocast (a convolution after GroupNorm) and for channels-last
            # GroupNorm, and changing the weights' memory format inside a transform crashes,
            # so channels-last weights are passed as contiguous copies.
            dtype, fmt = torch.float32, torch.contiguous_format
            if weights_format is not fmt:
                weights = {k: v.clone(memory_format=torch.contiguous_format)
                           for k, v in self.unet.state_dict(keep_vars=True).items()}
                net = lambda x, tt: torch.func.functional_call(self.unet, weights, (x, tt))  # noqa: E731
        else:
            dtype = self.network_dtype()
            fmt = self._memory_format(dtype)
            if weights_format is not fmt:
                self.unet.to(memory_format=fmt)
                self.__dict__["_weights_format"] = fmt
        w = next(self.unet.parameters())
        x_in = x_vp.to(dtype=w.dtype, memory_format=fmt)
        with network_autocast(dtype, x_vp.device):
            out = net(x_in, t)
        return out.to(x_vp.dtype).contiguous()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Tweedie estimate ``x0_hat = D(x, sigma)`` for VE iterates ``x = x0 + sigma * eps``.

        ``x``: ``[B, 1, H, W]`` in the normalised space, any ``H, W``: a grid that is not a
        multiple of the UNet's :attr:`~.unet.UNetConfig.size_multiple` is padded with zero
        activity (at the iterate's noise level) outside the field of view and the result
        cropped back (:mod:`.padding`); ``sigma``: scalar or ``[B]``.
        """
        return denoise_padded(self._denoise, x, batch_sigma(x, sigma),
                              self.config.unet.size_multiple)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s, x_vp, t = vp_inputs(x, sigma, self.schedule)
        return self._adapter.to_x0(x, s, self._net(x_vp, t))

    def sample_t(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """Training times ``[batch]`` on the generator's device (see :class:`ScoreModelConfig`)."""
        dev = generator.device if generator is not None else torch.device("cpu")
        if isinstance(self.schedule, DiscreteVP):
            n = self.schedule.num_train_steps
            return torch.randint(0, n, (batch,), generator=generator, device=dev).float()
        lo, hi = self.config.t_min, self.schedule.t_max
        return lo + (hi - lo) * torch.rand(batch, generator=generator, device=dev)

    def training_loss(self, x0: torch.Tensor, generator: torch.Generator | None = None,
                      recipe: LossRecipe | None = None) -> torch.Tensor:
        """Denoising score-matching loss (module docstring) on a batch ``x0 [B, C, H, W]``.

        All randomness (``t`` and ``eps``) is drawn from ``generator``, so the same generator
        state gives the same loss.  ``recipe`` (:class:`~.recipe.LossRecipe`, default the plain
        loss) chooses the distribution of ``t`` and the per-sample weights.  Returns a scalar:
        the (weighted) mean squared error over all pixels, in float32 whatever the network's
        precision.
        """
        if x0.ndim != 4 or x0.shape[1] != self.config.unet.in_channels:
            raise ValueError(f"training_loss expects x0 of shape [B, {self.config.unet.in_channels}"
                             f", H, W] in the normalised space, got {tuple(x0.shape)}")
        recipe = recipe or LossRecipe()
        if recipe.time_sampling != "uniform_t" and isinstance(self.schedule, DiscreteVP):
            raise ValueError("time_sampling other than 'uniform_t' needs a continuous schedule")
        # 1. t ~ U(t_min, t_max) (or the recipe's law), eps ~ N(0, I) — from the generator only
        t = self.sample_t(x0.shape[0], generator).to(device=x0.device, dtype=x0.dtype)
        dev = generator.device if generator is not None else torch.device("cpu")
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
        t = recipe.sample_t(t, self.schedule, self.config.t_min, generator)
        # 2. alpha_bar(t) and x_t = sqrt(ab) x0 + sqrt(1 - ab) eps   (Ho et al. 2020, Eq. 4)
        ab = self.schedule.alpha_bar(t).reshape(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        # 3. regress the parametrisation's target (eps, v or score), optionally weighted
        target = self._adapter.target(x0, eps, ab)
        err = (self._net(x_t, t) - target) ** 2
        w = recipe.weights(ab, self.config.parametrisation)
        return torch.mean(err) if w is None else torch.mean(w * err)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _functorch_active() -> bool:
    """Whether a :mod:`torch.func` transform (``jvp``, ``vmap``, ``grad``) is running."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
