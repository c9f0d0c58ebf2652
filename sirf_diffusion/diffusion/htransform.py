"""PET-DEFT: a small h-transform network that conditions a frozen prior on the PET data.

DEFT (Denker et al., NeurIPS 2024, arXiv 2406.01781) writes the conditional noise estimate as
the frozen unconditional one plus a learned correction (their Eq. 9, the Doob h-transform):

.. math::

    \\epsilon(x_t, y, t) = \\epsilon_\\theta(x_t, t) + \\epsilon_h(x_t, \\hat x_0, g, t),
    \\qquad \\epsilon_h = \\mathrm{UNet}_\\phi([x_t, \\hat x_0, g], t) - s_\\phi(t)\\, g,

with :math:`\\hat x_0` the unconditional Tweedie estimate and :math:`g` a likelihood term at it;
PET-DEFT (Webber et al., MICCAI 2025, arXiv 2506.24034) uses the Poisson log-likelihood.  Here
(:func:`likelihood_feature`) ``g`` is evaluated at :math:`\\hat x_0^+ = \\max(\\hat x_0, 0)` in
physical units, ``x = s x_prior`` (:class:`~.normalisation.IntensityNormalisation`), and
brought back to the prior's normalised units, in one of two forms:

* ``'em'`` (default): the EM-preconditioned gradient, one MLEM step from :math:`\\hat x_0^+`,

  .. math:: g = \\big(x_{EM}(s \\hat x_0^+) - s \\hat x_0^+\\big) / s
            = \\frac{\\hat x_0^+}{A^T 1} \\odot \\nabla L(s \\hat x_0^+),

  an image-unit step whose size does not grow with the counts;
* ``'raw'``: the plain gradient in normalised units, :math:`g = s\\, \\nabla L(s \\hat x_0^+)`
  (DEFT's CT choice, the adjoint of the residual), which grows with the counts.

``docs/deft.md`` compares them.  The UNet's last convolution is zero-initialised (as every
:class:`~.unet.UNet`) and so is the last layer of :math:`s_\\phi`, so an untrained h-network
gives :math:`\\epsilon_h = 0` exactly and DEFT sampling *is* unconditional sampling.

By default (:class:`HNetConfig` ``output_scaling='edm'``) the correction is scaled by
:math:`\\kappa(\\sigma) = \\sigma_d / \\sqrt{\\sigma^2 + \\sigma_d^2}` (:func:`output_scale`,
EDM's output scaling, Karras et al. 2022) so that it stays bounded in the image at the top of
the schedule; ``'none'`` is DEFT's form above (docs/deft.md compares them).

In the stepper's variance-exploding parametrisation ``x = x0 + sigma * eps`` the conditional
Tweedie estimate follows from :math:`\\hat x_0 = x - \\sigma \\epsilon`:

.. math:: \\hat x_0^{DEFT} = \\hat x_0 - \\sigma\\, \\epsilon_h(c_{in} x, \\hat x_0, g, t(\\sigma))

(:class:`DEFTDenoiser`, a :class:`~sirf_diffusion.samplers.loop.ConditionalDenoiser`).
Non-negativity, exactly: the likelihood term sees :math:`\\max(\\hat x_0, 0)`; the iterates and
estimates are not clipped; the samples a reconstruction returns are clipped at 0 in physical
units (as every method's).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..io.config import dataclass_from_dict
from .adapters import vp_inputs
from .denoiser import Denoiser
from .normalisation import IntensityNormalisation
from .precision import check_precision, network_autocast, resolve_precision
from .schedules import ContinuousVP, DiscreteVP
from .unet import UNet, UNetConfig, timestep_embedding

__all__ = ["GradientFeature", "HNetConfig", "TimeScale", "HTransformNet", "output_scale",
           "likelihood_feature",
           "DEFTDenoiser", "weights_fingerprint", "fit_normalisation"]

GradientFeature = Literal["em", "raw"]
GRADIENT_FEATURES: tuple[str, ...] = ("em", "raw")
OutputScaling = Literal["edm", "none"]
OUTPUT_SCALINGS: tuple[str, ...] = ("edm", "none")


def _default_unet() -> UNetConfig:
    # 24.7 % of the shipped prior's 1.63 M parameters (its UNet at half the width, attention
    # only in the middle block)
    return UNetConfig(in_channels=3, out_channels=1, base_channels=16,
                      channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention_resolutions=(),
                      groupnorm_groups=8)


@dataclass
class HNetConfig:
    """Architecture of :class:`HTransformNet`.

    Attributes
    ----------
    unet
        The UNet; it sees 3 channels ``[x_t (VP-scaled), x0_hat, g]`` and predicts 1.
    gradient
        The likelihood feature ``g``: ``'em'`` or ``'raw'`` (module docstring).
    feature_gain
        ``g`` enters the network (both terms) multiplied by this constant, so that its typical
        size is of order 0.1-1 like the images': about 10 for ``'em'`` (EM steps of 0.1-1 %
        of the mean activity at the truth) and 0.1 for ``'raw'`` (0.5-2 at 0.5-10 counts/mm^3,
        mMR 2D); Adam moves weights by about ``lr`` per step, so a badly scaled input is learnt
        slowly.
    scale_channels
        Width of the time embedding and hidden layer of the scale ``s(t)``.
    output_scaling
        ``'none'``: DEFT's correction as published, ``eps_h = UNet - s(t) g``; ``'edm'``
        (default): ``eps_h = kappa(sigma) (UNet - s(t) g)`` with
        ``kappa = sigma_data / sqrt(sigma^2 + sigma_data^2)`` (:func:`output_scale`), so
        that the correction of the Tweedie estimate, ``sigma eps_h``, stays of the image's
        size at every noise level (EDM's output scaling, Karras et al. 2022, Table 1).
    sigma_data
        The ``sigma_data`` of ``'edm'`` in the prior's normalised units (images of support
        mean 1).
    """

    unet: UNetConfig = field(default_factory=_default_unet)
    gradient: GradientFeature = "em"
    feature_gain: float = 10.0
    scale_channels: int = 32
    output_scaling: OutputScaling = "edm"
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            self.unet = UNetConfig.from_dict(self.unet)
        if self.unet.in_channels != 3 or self.unet.out_channels != 1:
            raise ValueError("the h-network's UNet needs in_channels=3 ([x_t, x0, g]) and "
                             f"out_channels=1, got {self.unet.in_channels}, "
                             f"{self.unet.out_channels}")
        if self.gradient not in GRADIENT_FEATURES:
            raise ValueError(f"gradient must be one of {GRADIENT_FEATURES}, got {self.gradient!r}")
        if not float(self.feature_gain) > 0:
            raise ValueError(f"feature_gain must be > 0, got {self.feature_gain}")
        if int(self.scale_channels) < 2:
            raise ValueError(f"scale_channels must be >= 2, got {self.scale_channels}")
        if self.output_scaling not in OUTPUT_SCALINGS:
            raise ValueError(f"output_scaling must be one of {OUTPUT_SCALINGS}, got "
                             f"{self.output_scaling!r}")
        if not float(self.sigma_data) > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HNetConfig":
        return dataclass_from_dict(cls, d)


class TimeScale(nn.Module):
    """The learned scale ``s(t)`` of the likelihood term: sinusoidal features of ``1000 t``,
    a SiLU layer and a zero-initialised linear output (so ``s = 0`` before training)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.channels = int(channels)
        self.hidden = nn.Linear(self.channels, self.channels)
        self.out = nn.Linear(self.channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``s(t)`` ``[B]`` for ``t`` ``[B]`` in ``[0, 1]``."""
        emb = timestep_embedding(t * 1000.0, self.channels).to(self.out.weight.dtype)
        return self.out(F.silu(self.hidden(emb)))[:, 0]


class HTransformNet(nn.Module):
    """``eps_h = UNet([x_vp, x0, c g], t) - s(t) c g`` (module docstring; ``c`` the
    config's ``feature_gain``); ``t`` in ``[0, 1]``.

    Parameters
    ----------
    config
        :class:`HNetConfig`.
    precision
        ``'auto'``, ``'fp32'`` or ``'bf16'``: the UNet's autocast (:mod:`.precision`); the
        output is float32 (the input's dtype) and ``s(t) g`` is always computed in it.
    """

    def __init__(self, config: HNetConfig | None = None, precision: str = "auto") -> None:
        super().__init__()
        self.config = config or HNetConfig()
        self.unet = UNet(self.config.unet)
        self.scale = TimeScale(self.config.scale_channels)
        self.precision = check_precision(precision)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x_vp: torch.Tensor, x0: torch.Tensor, g: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        w = next(self.unet.parameters())
        dtype = resolve_precision(self.precision, w.device)
        g = g * self.config.feature_gain
        inp = torch.cat([x_vp, x0, g], dim=1).to(w.dtype)
        with network_autocast(dtype, w.device):
            u = self.unet(inp, t.to(w.dtype))
        s = self.scale(t.to(w.dtype)).to(x_vp.dtype)
        return u.to(x_vp.dtype) - s.reshape(-1, *([1] * (g.ndim - 1))) * g


def output_scale(config: HNetConfig, sigma: torch.Tensor) -> torch.Tensor:
    """``kappa(sigma)`` of ``eps_h = kappa (UNet - s g)`` (:class:`HNetConfig`), same shape.

    With ``'edm'`` the conditional Tweedie estimate is
    ``x0_DEFT = x0_hat - c_out(sigma) (UNet - s g)``, ``c_out = sigma kappa =
    sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``: EDM's output scaling (Karras et al.
    2022, Table 1).  ``kappa -> 1`` as ``sigma -> 0`` (DEFT's form), while at the top of the
    VP schedule (``sigma`` about 150) DEFT's form multiplies any error of the network by
    ``sigma`` in the image (measured with ``benchmarks/diagnose_deft.py``, docs/deft.md).
    """
    if config.output_scaling == "none":
        return torch.ones_like(sigma)
    sd = float(config.sigma_data)
    return sd * torch.rsqrt(sigma**2 + sd**2)


def likelihood_feature(likelihood: Any, normalisation: IntensityNormalisation,
                       x0: torch.Tensor, kind: GradientFeature = "em") -> torch.Tensor:
    """The likelihood term ``g`` at ``max(x0, 0)`` in the prior's units (module docstring).

    Parameters
    ----------
    likelihood
        A :class:`~sirf_diffusion.likelihood.Likelihood` (``gradient``, ``em_update``).
    normalisation
        Maps the prior tensor ``x0`` ``[B, 1, y, x]`` to physical units and back.
    x0
        Unconditional Tweedie estimates (prior space); a batch sees one likelihood.
    kind
        ``'em'``: ``(x_EM(x+) - x+) / s``; ``'raw'``: ``s grad L(x+)``.
    """
    x_img = torch.clamp(normalisation.from_prior(x0), min=0).to(likelihood.dtype)
    if kind == "em":
        step = likelihood.em_update(x_img) - x_img
    elif kind == "raw":
        s = normalisation.from_prior(torch.ones_like(x0)).to(x_img.dtype)
        step = likelihood.gradient(x_img) * s * s
    else:
        raise ValueError(f"kind must be one of {GRADIENT_FEATURES}, got {kind!r}")
    return normalisation.to_prior(step).to(x0.dtype)


class DEFTDenoiser:
    """``D(x, sigma, context)``: the frozen prior's estimate corrected by the h-network.

    A :class:`~sirf_diffusion.samplers.loop.ConditionalDenoiser`: the stepper gives it the
    likelihood and normalisation in its context; ``unconditional_denoiser`` is the prior,
    evaluated once per step through ``context.unconditional()``.

    Parameters
    ----------
    prior
        The frozen unconditional denoiser ``D(x, sigma)``.
    hnet
        The :class:`HTransformNet` (evaluated without gradient).
    schedule
        The prior's VP schedule (``sigma -> t``); default: ``prior.schedule``.
    """

    def __init__(self, prior: Denoiser, hnet: HTransformNet,
                 schedule: ContinuousVP | DiscreteVP | None = None) -> None:
        sched = schedule if schedule is not None else getattr(prior, "schedule", None)
        if sched is None:
            raise ValueError("DEFTDenoiser needs the prior's VP schedule: pass schedule= for a "
                             "prior without a .schedule")
        self.unconditional_denoiser = prior
        self.hnet = hnet
        self.schedule = sched

    def correction(self, x: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor,
                   g: torch.Tensor) -> torch.Tensor:
        """``eps_h`` for VE iterates ``x`` at ``sigma`` ``[B]`` (the h-network's inputs)."""
        s, x_vp, t = vp_inputs(x, sigma, self.schedule)
        kappa = output_scale(self.hnet.config, s.to(x.dtype))
        return kappa * self.hnet(x_vp, x0, g, t / self.schedule.t_max)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: Any) -> torch.Tensor:
        if context.likelihood is None or context.normalisation is None:
            raise ValueError("DEFT needs the likelihood and the intensity normalisation: run it "
                             "through samplers.run.prepare('deft', ...)")
        x0 = context.unconditional()
        g = likelihood_feature(context.likelihood, context.normalisation, x0,
                               self.hnet.config.gradient)
        with torch.no_grad():
            return self.estimate(x, sigma, x0, g)

    def estimate(self, x: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor,
                 g: torch.Tensor) -> torch.Tensor:
        """``x0_DEFT = x0 - sigma eps_h`` from the prior's estimate ``x0`` and the feature ``g``."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        return x0 - s * self.correction(x, sigma, x0, g)


def fit_normalisation(likelihood: Any, num_subsets: int, num_epochs: int,
                      support_mask: torch.Tensor | None = None
                      ) -> tuple[IntensityNormalisation, torch.Tensor, float]:
    """DEFT's intensity scale: the mean of an OSEM image (``num_subsets`` x ``num_epochs``) over
    its well-sampled support, as :func:`~sirf_diffusion.samplers.run.prepare` fits it for the
    other methods; training pairs and reconstructions use the same recipe (the model records
    it).  Returns ``(normalisation, OSEM image, forward projections spent)``."""
    from ..recon.em import osem
    from .normalisation import support_mean, well_sampled

    with likelihood.count_projections() as cost:
        image = osem(likelihood, None, num_subsets=int(num_subsets), num_epochs=int(num_epochs),
                     progress=False)
    eligible = well_sampled(likelihood.sensitivity(None, like=image))
    mask = None if support_mask is None else support_mask[None]
    scale = support_mean(image[None], mask, eligible=eligible[None])[0]
    return IntensityNormalisation(float(scale)), image, float(cost.forward)


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state (names, shapes, dtypes and float32 bytes, in order): a DEFT
    model records its prior's so that it is never paired with another prior."""
    h = hashlib.sha256()
    for name, v in module.state_dict().items():
        t = v.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
