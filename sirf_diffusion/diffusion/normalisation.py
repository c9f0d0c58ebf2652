"""Explicit, invertible intensity normalisation at the prior boundary.

PET activity has a physical scale that the Poisson likelihood depends on, while a score network
is trained on images of unit-order intensity.  Every crossing between the two is done by
:class:`IntensityNormalisation`, never hidden inside samplers:

.. math::

    x_{\\mathrm{prior}} = x_{\\mathrm{image}} / s, \\qquad
    x_{\\mathrm{image}} = s \\, x_{\\mathrm{prior}}

with ``s`` the mean activity over the object support (training: of the reference image;
reconstruction: of a short MLEM/OSEM image of the data, as in Singh et al. 2024 and
Webber et al. 2025).  The same object also converts the array layout: images ``[B, z, y, x]``
become prior tensors ``[B, 1, y, x]`` when ``z == 1`` (2D slice priors) and ``[B, 1, z, y, x]``
otherwise (3D priors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["IntensityNormalisation", "support_mask", "support_mean", "well_sampled"]


def support_mask(image: torch.Tensor, threshold: float = 0.05, *,
                 eligible: torch.Tensor | None = None) -> torch.Tensor:
    """The support of ``image`` ``[..., z, y, x]``: the voxels above ``threshold * max`` of each
    image, the maximum and the support taken over the ``eligible`` voxels only (default: all;
    reconstructions pass :func:`well_sampled` voxels: those at the rim of the field of view
    with a tiny sensitivity take arbitrary EM values, and one of them would otherwise set the
    maximum).  Returns a boolean tensor of ``image``'s shape."""
    flat = image.reshape(*image.shape[:-3], -1)
    ok = torch.ones_like(flat, dtype=torch.bool) if eligible is None else \
        eligible.reshape(*eligible.shape[:-3], -1).to(torch.bool).expand_as(flat)
    top = torch.where(ok, flat, torch.zeros_like(flat)).amax(dim=-1, keepdim=True)
    return (ok & (flat > threshold * top.clamp(min=0))).reshape(image.shape)


def support_mean(image: torch.Tensor, mask: torch.Tensor | None = None,
                 threshold: float = 0.05, *, eligible: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Mean of ``image`` over its support, per leading batch element.

    The support is ``mask`` when given, else :func:`support_mask` (``threshold``,
    ``eligible``).  Returns a tensor of shape ``image.shape[:-3]``.
    """
    flat = image.reshape(*image.shape[:-3], -1)
    if mask is None:
        m = support_mask(image, threshold, eligible=eligible).reshape(flat.shape)
    else:
        m = mask.reshape(*mask.shape[:-3], -1).to(torch.bool).expand_as(flat)
    count = m.sum(dim=-1)
    if (count == 0).any():
        raise ValueError("the support used for intensity normalisation is empty "
                         "(an all-zero or negative image?)")
    return (flat * m).sum(dim=-1) / count


def well_sampled(sensitivity: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Voxels whose sensitivity is at least ``fraction`` of the largest: those an EM
    reconstruction determines (the others, at the rim of the field of view, can take any value)."""
    return sensitivity > fraction * sensitivity.amax()


@dataclass
class IntensityNormalisation:
    """``x_prior = x_image / scale`` with the layout change described in the module docstring.

    Parameters
    ----------
    scale
        Positive scale ``s`` (a float, or a tensor broadcastable over the batch: shape ``[B]``).
    """

    scale: float | torch.Tensor = 1.0

    def __post_init__(self) -> None:
        s = torch.as_tensor(self.scale)
        if not torch.isfinite(s).all() or (s <= 0).any():
            raise ValueError(f"normalisation scale must be finite and > 0, got {self.scale}")

    @classmethod
    def fit(cls, image: torch.Tensor, mask: torch.Tensor | None = None,
            threshold: float = 0.05) -> "IntensityNormalisation":
        """Scale = mean activity over the support of ``image`` ([..., z, y, x])."""
        return cls(support_mean(image, mask, threshold))

    def _scale_like(self, x: torch.Tensor, ndim_core: int) -> torch.Tensor:
        s = torch.as_tensor(self.scale, dtype=x.dtype, device=x.device)
        return s.reshape(*s.shape, *([1] * ndim_core))

    def to_prior(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, z, y, x]`` image -> prior tensor ``[B, 1, y, x]`` (z == 1) or
        ``[B, 1, z, y, x]``."""
        if image.ndim != 4:
            raise ValueError("expected an image batch [B, z, y, x], got shape "
                             f"{tuple(image.shape)}")
        x = image / self._scale_like(image, 3)
        return x if image.shape[1] == 1 else x.unsqueeze(1)

    def from_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_prior`: prior tensor -> ``[B, z, y, x]`` image."""
        if x.ndim == 4 and x.shape[1] == 1:
            img = x
        elif x.ndim == 5 and x.shape[1] == 1:
            img = x[:, 0]
        else:
            raise ValueError("expected a prior tensor [B, 1, y, x] or [B, 1, z, y, x], got "
                             f"{tuple(x.shape)}")
        return img * self._scale_like(img, 3)

    def to_dict(self) -> dict:
        s = self.scale
        return {"kind": "divide_by_scale",
                "scale": s.tolist() if isinstance(s, torch.Tensor) else float(s)}
