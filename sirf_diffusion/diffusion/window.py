"""Denoise on a window around the object when the field of view is much larger than the prior's.

The UNet's GroupNorm statistics and self-attention are taken over the whole slice, so a slice
that is mostly empty background (a brain in SIRF's 285 x 285 mMR grid, or in PETRIC's
181 x 181) is not what the prior was trained on (brains filling 112 x 112 slices): its
estimate inside the head degrades.  Measured with the shipped prior (``docs/prior_boundary/``):
on a held-out brain slice embedded in larger noisy grids, the relative error of ``D`` inside
the head at sigma = 0.5 is 0.090 at 112 x 112, 0.093 at 128, 0.129 at 184 and 0.135 at 288; in
PET-LiSch (20 steps, one chain, 2.5 counts/mm^3, subject 0, NRMSE inside the head; OSEM 0.267)
it is 0.228 / 0.252 / 0.268 on 127 / 181 / 285 grids, and 0.221 / 0.228 / 0.224 on a 112 x 112
window around the head.

:class:`WindowedDenoiser` therefore evaluates the denoiser on an in-plane window that holds
the object (:func:`object_window`: the bounding box of a support mask plus a margin, at least
the prior's training field of view, centred on the object) and returns **zero activity**
outside it, the Tweedie estimate of a region without activity: the same assumption as the
padding of :mod:`.padding`.  The window is fixed for a reconstruction (the same for every call
and every slice), so the denoiser stays deterministic.
"""

from __future__ import annotations

import math

import torch

from .denoiser import Denoiser, DenoiserWrapper

__all__ = ["Window", "drop_specks", "object_window", "WindowedDenoiser"]

#: ``(top, left, height, width)`` of an in-plane window, in image voxels.
Window = tuple[int, int, int, int]


def drop_specks(support: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """``support`` (a boolean mask ``[y, x]`` or ``[z, y, x]``) without its specks: the
    connected parts (voxels touching by a face, an edge or a corner) smaller than ``fraction``
    of the largest part.

    The support of a noisy reconstruction (voxels above a fraction of its maximum) holds the
    object and, on a large grid after many EM iterations, isolated background voxels whose
    noise crosses the threshold; one of them, anywhere on the grid, would stretch the bounding
    box of :func:`object_window` (docs/projector.md, Run D: 224 x 248 voxels of a 285 x 285
    grid instead of 112 x 112).  A support without specks is returned unchanged.
    """
    from scipy import ndimage  # a dependency; imported here to keep the module light

    if support.dtype != torch.bool or support.ndim not in (2, 3):
        raise ValueError(f"support must be a boolean mask [y, x] or [z, y, x], got "
                         f"{support.dtype} {tuple(support.shape)}")
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    mask = support.cpu().numpy()
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim,
                                                                                    mask.ndim))
    if count <= 1:
        return support
    sizes = ndimage.sum_labels(mask, labels, index=range(1, count + 1))
    keep = sizes >= fraction * sizes.max()
    kept = torch.from_numpy(keep[labels - 1] & mask)
    return kept.to(support.device)


def object_window(support: torch.Tensor, min_size: tuple[int, int], *, margin: int = 4,
                  multiple: int = 8) -> Window | None:
    """The in-plane window holding ``support`` (``[y, x]`` or ``[z, y, x]`` boolean mask).

    The window is the support's bounding box (over all slices) grown by ``margin`` voxels on
    each side and to at least ``min_size`` ``(h, w)``, rounded up to a multiple of
    ``multiple`` (no padding needed), centred on the box and shifted to lie in the grid.
    Returns ``None`` when that window would cover the whole grid.
    """
    if support.dtype != torch.bool or support.ndim not in (2, 3):
        raise ValueError(f"support must be a boolean mask [y, x] or [z, y, x], got "
                         f"{support.dtype} {tuple(support.shape)}")
    mask = support.reshape(-1, *support.shape[-2:]).any(0)
    if not bool(mask.any()):
        raise ValueError("the support mask is empty: no object to denoise around")
    H, W = mask.shape
    window = []
    for axis, (n, least) in enumerate(zip((H, W), min_size)):
        idx = mask.any(1 - axis).nonzero()[:, 0]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        size = max(int(least), hi - lo + 2 * margin)
        size = min(n, multiple * math.ceil(size / multiple))
        start = min(max(0, round((lo + hi - size) / 2)), n - size)
        window.append((start, size))
    (top, h), (left, w) = window
    if h == H and w == W:
        return None
    return top, left, h, w


class WindowedDenoiser(DenoiserWrapper):
    """``D(x, sigma)`` of ``denoiser`` on the in-plane ``window`` of ``x``, zero activity
    outside (module docstring).

    Parameters
    ----------
    denoiser
        The prior's denoiser on ``[B, 1, y, x]`` or ``[B, 1, z, y, x]`` (all slices kept).
    window
        ``(top, left, height, width)`` in image voxels (:func:`object_window`).
    """

    def __init__(self, denoiser: Denoiser, window: Window) -> None:
        super().__init__(denoiser)
        top, left, h, w = (int(v) for v in window)
        if min(top, left) < 0 or min(h, w) < 1:
            raise ValueError(f"window (top, left, height, width) must be non-negative with a "
                             f"positive size, got {window}")
        self.window: Window = (top, left, h, w)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        top, left, h, w = self.window
        if x.shape[-2] < top + h or x.shape[-1] < left + w:
            raise ValueError(f"window {self.window} does not fit the in-plane grid "
                             f"{tuple(x.shape[-2:])}")
        out = torch.zeros_like(x)
        out[..., top:top + h, left:left + w] = self.denoiser(
            x[..., top:top + h, left:left + w], sigma)
        return out
