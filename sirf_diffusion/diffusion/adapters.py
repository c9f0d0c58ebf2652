"""Thin adapters: VP-trained epsilon-, v- or score-networks -> the VE denoiser contract.

A network ``net(x_vp, t)`` trained on variance-preserving inputs
:math:`x^{VP}_t = \\sqrt{\\bar\\alpha}\\, x_0 + \\sqrt{1-\\bar\\alpha}\\, \\epsilon` is evaluated
on a VE iterate :math:`x = x_0 + \\sigma \\epsilon` through (see
:mod:`sirf_diffusion.diffusion.schedules`)

.. math::

    t = t(\\sigma), \\qquad x^{VP} = c_{in} x, \\quad c_{in} = \\frac{1}{\\sqrt{1+\\sigma^2}}
    = \\sqrt{\\bar\\alpha}, \\qquad \\sqrt{1 - \\bar\\alpha} = \\sigma c_{in},

and its output is mapped to the Tweedie estimate :math:`\\hat x_0 = D(x, \\sigma)`:

* ``eps`` — predicts :math:`\\epsilon` (Ho et al. 2020):
  :math:`\\hat x_0 = x - \\sigma \\hat\\epsilon`;
* ``v`` — predicts :math:`v = \\sqrt{\\bar\\alpha}\\epsilon - \\sqrt{1-\\bar\\alpha} x_0`
  (Salimans & Ho 2022): :math:`\\hat x_0 = c_{in}^2 x - \\sigma c_{in} \\hat v`;
* ``score`` — predicts :math:`\\nabla_{x^{VP}} \\log p_t = -\\epsilon / \\sqrt{1-\\bar\\alpha}`
  (Song et al. 2021): :math:`\\hat x_0 = x + \\sigma^2 c_{in} \\hat s`

(cf. k-diffusion's ``get_scalings``; Karras et al. 2022, Table 1).  Each adapter class is an
``nn.Module`` wrapping any network; :class:`~sirf_diffusion.diffusion.model.ScoreModel` uses the
same static ``to_x0`` / ``target`` maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from .padding import denoise_padded
from .schedules import ContinuousVP, DiscreteVP

__all__ = ["Parametrisation", "vp_inputs", "batch_sigma", "EpsDenoiser", "VDenoiser",
           "ScoreDenoiser", "ADAPTERS"]

Parametrisation = Literal["eps", "v", "score"]
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_sigma(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``sigma`` (scalar, ``[1]`` or ``[B]``) as a ``[B]`` tensor with ``x``'s dtype and device."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    if s.numel() not in (1, x.shape[0]):
        raise ValueError(f"sigma with {s.numel()} values does not broadcast to the batch of "
                         f"{x.shape[0]}")
    return s.expand(x.shape[0])


def vp_inputs(x: torch.Tensor, sigma: torch.Tensor | float, schedule: ContinuousVP | DiscreteVP
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sigma [B,1,...], x_vp, t [B])`` for a VE iterate ``x`` at noise level ``sigma``."""
    s = batch_sigma(x, sigma)
    t = schedule.t_of_sigma(s)
    s = s.reshape(-1, *([1] * (x.ndim - 1)))
    return s, x * torch.rsqrt(1 + s**2), t


class _VPAdapter(nn.Module):
    """Common part: ``D(x, sigma) = to_x0(x, sigma, net(c_in x, t(sigma)))``.

    ``size_multiple``: the in-plane size multiple the network needs (default: the
    ``config.size_multiple`` of a :class:`~.unet.UNet`, else 1); slices of any other size are
    padded and cropped back as :mod:`.padding` describes.
    """

    def __init__(self, net: Network, schedule: ContinuousVP | DiscreteVP | None = None,
                 size_multiple: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule or ContinuousVP()
        if size_multiple is None:
            size_multiple = int(getattr(getattr(net, "config", None), "size_multiple", 1))
        if size_multiple < 1:
            raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
        self.size_multiple = size_multiple

    @staticmethod
    def to_x0(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if self.size_multiple > 1 and x.ndim == 4:
            return denoise_padded(self._denoise, x, batch_sigma(x, sigma), self.size_multiple)
        return self._denoise(x, sigma)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        s, x_vp, t = vp_inputs(x, sigma, self.schedule)
        return self.to_x0(x, s, self.net(x_vp, t))


class EpsDenoiser(_VPAdapter):
    """epsilon-prediction: :math:`\\hat x_0 = x - \\sigma \\hat\\epsilon`."""

    @staticmethod
    def to_x0(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return x - sigma * out

    @staticmethod
    def target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        return eps


class VDenoiser(_VPAdapter):
    """v-prediction: :math:`\\hat x_0 = x/(1+\\sigma^2) - \\sigma \\hat v / \\sqrt{1+\\sigma^2}`."""

    @staticmethod
    def to_x0(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        c_in = torch.rsqrt(1 + sigma**2)
        return c_in**2 * x - sigma * c_in * out

    @staticmethod
    def target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


class ScoreDenoiser(_VPAdapter):
    """VP score: :math:`\\hat x_0 = x + \\sigma^2 \\hat s / \\sqrt{1+\\sigma^2}`."""

    @staticmethod
    def to_x0(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return x + sigma**2 * torch.rsqrt(1 + sigma**2) * out

    @staticmethod
    def target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        return -eps / (1 - alpha_bar).sqrt()


#: Adapter class for each parametrisation.
ADAPTERS: dict[str, type[_VPAdapter]] = {"eps": EpsDenoiser, "v": VDenoiser,
                                          "score": ScoreDenoiser}
