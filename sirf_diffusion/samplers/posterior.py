"""Posterior summaries of diffusion reconstructions: mean, std and coefficient of variation.

Diffusion reconstructions draw samples from an (approximate) posterior; ``n`` samples are drawn
at once along the leading batch dimension (the physics accepts batches).  Their voxel-wise
summary is

.. math::

    \\bar x = \\frac1n \\sum_i x_i, \\qquad
    \\hat\\sigma = \\Big(\\frac{1}{n-1}\\sum_i (x_i - \\bar x)^2\\Big)^{1/2}, \\qquad
    \\mathrm{CoV} = \\hat\\sigma / \\bar x

with the CoV set to 0 outside the support (``mask``, or voxels where the mean exceeds
``threshold`` times its maximum), where it is meaningless.

The spread is that of the *sampler*: PET-DDS and DPS re-noise with the unconditioned noise
estimate and are not exact posterior samplers; on a linear-Gaussian problem where everything is
known (``tests/test_samplers.py``) DDS's sample variance is a fraction of the posterior variance
while its mean is close to the posterior mean.  Read the std/CoV images as relative uncertainty.

:func:`save_posterior` writes a
``.npz``; :func:`plot_posterior` a PNG (matplotlib imported lazily).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.atomic import atomic_write_bytes, make_dir

__all__ = ["PosteriorSummary", "summarise", "save_posterior", "plot_posterior"]


@dataclass
class PosteriorSummary:
    """Voxel-wise summary of ``num_samples`` posterior samples (module docstring).

    Attributes
    ----------
    mean, std, cov
        Images ``[z, y, x]`` (physical units for mean and std; CoV dimensionless).
    support
        Boolean image where the CoV is defined.
    num_samples
        ``n``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    cov: torch.Tensor
    support: torch.Tensor
    num_samples: int


def summarise(samples: torch.Tensor, mask: torch.Tensor | None = None, *,
              threshold: float = 0.05) -> PosteriorSummary:
    """Mean, standard deviation (``n - 1`` normalisation; 0 for one sample) and CoV of samples.

    Parameters
    ----------
    samples
        ``[n, z, y, x]`` (or ``[n, ...]``) samples in physical units.
    mask
        Optional support (shape of one sample) where the CoV is computed.
    threshold
        Without ``mask``: the support is ``mean > threshold * max(mean)``.
    """
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"samples must be a torch.Tensor, got {type(samples).__name__}")
    if samples.ndim < 2 or samples.shape[0] < 1:
        raise ValueError(f"samples must be [n, ...] with n >= 1, got shape {tuple(samples.shape)}")
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("samples contain NaN or infinite values")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    s = samples.detach()
    n = s.shape[0]
    mean = s.mean(0)
    std = s.std(0, correction=1) if n > 1 else torch.zeros_like(mean)
    if mask is not None:
        if tuple(mask.shape) != tuple(mean.shape):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(mean.shape)}")
        support = mask.to(torch.bool).to(mean.device)
    else:
        support = mean > threshold * torch.clamp(mean.max(), min=0)
    support = support & (mean > 0)
    cov = torch.where(support, std / torch.where(support, mean, torch.ones_like(mean)),
                      torch.zeros_like(mean))
    return PosteriorSummary(mean, std, cov, support, n)


def save_posterior(summary: PosteriorSummary, path: str | os.PathLike[str],
                   samples: torch.Tensor | None = None) -> Path:
    """Write ``mean``, ``std``, ``cov``, ``support``, ``num_samples`` (and ``samples``) to npz."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    make_dir(path.parent)
    arrays = {k: getattr(summary, k).detach().cpu().numpy()
              for k in ("mean", "std", "cov", "support")}
    arrays["num_samples"] = np.asarray(summary.num_samples)
    if samples is not None:
        arrays["samples"] = samples.detach().cpu().numpy()
    return atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))


def plot_posterior(summary: PosteriorSummary, path: str | os.PathLike[str], *,
                   slice_index: int | None = None, title: str | None = None) -> Path:
    """PNG of one transaxial slice (default: the middle one) of mean, std and CoV."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    mean = summary.mean.detach().cpu()
    if mean.ndim != 3:
        raise ValueError(f"plot_posterior needs [z, y, x] images, got shape {tuple(mean.shape)}")
    z = mean.shape[0] // 2 if slice_index is None else int(slice_index)
    if not 0 <= z < mean.shape[0]:
        raise ValueError(f"slice_index {slice_index} out of range for {mean.shape[0]} slices")
    panels = [("mean", mean[z]), ("std", summary.std.detach().cpu()[z]),
              ("CoV", summary.cov.detach().cpu()[z])]
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 3)
    for ax, (name, img) in zip(axes, panels):
        im = ax.imshow(img.numpy(), cmap="gray_r" if name != "CoV" else "magma")
        ax.set_title(f"{name} (slice {z}, n = {summary.num_samples})")
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    path = Path(path)
    make_dir(path.parent)
    return atomic_write_bytes(path, lambda f: fig.savefig(
        f, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight"))
