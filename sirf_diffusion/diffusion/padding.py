"""Any in-plane grid at the prior boundary: pad to the network's size multiple, crop back.

A UNet with ``L`` resolution levels needs ``H, W`` divisible by ``2**(L-1)`` (8 for the
shipped prior), while real scanner grids are odd (STIR's ray tracer refuses even ones; SIRF's
mMR default is 285 x 285 x 127).  The denoiser therefore evaluates the network on the grid
padded *centred* to the next multiple and returns the crop to the input grid:

.. math::

    D(x, \\sigma) = C\\big(D_{\\mathrm{net}}(P_\\sigma x, \\sigma)\\big),

with :math:`C` the crop and :math:`P_\\sigma` the padding.  The padded voxels lie outside the
field of view, where the normalised image is **zero: no activity**.  The iterate a denoiser
sees is a VE iterate :math:`x = x_0 + \\sigma\\epsilon`, so an image with zero activity
there is, at noise level :math:`\\sigma`, the noise itself: :math:`P_\\sigma` fills the border
with :math:`0 + \\sigma n`, where :math:`n` is a *fixed* standard-normal field (seeded by
:data:`PADDING_SEED`, one field per padded grid shared by every batch element), so
:math:`D` stays deterministic and independent of batch composition or chunking.

Why not plain zero or reflect padding of ``x``: a noiseless zero border is an event of
probability zero at high :math:`\\sigma`, and the network, whose self-attention sees the whole
slice, reacts to it inside the head.  Measured with the shipped xy prior on two held-out
brain slices (128 x 128, the 121 x 121 centre cropped and padded back; relative RMS
difference of :math:`D` inside the head from :math:`D` on the full grid; next to it the change
of :math:`D` under another draw of the noise, for scale; script and table:
``docs/prior_boundary/``):

==========  ==========  ==========  ============  ==============  ==========================
sigma       zero        reflect     replicate     zero + noise    another noise draw of x
==========  ==========  ==========  ============  ==============  ==========================
0.1         4.7e-03     2.9e-04     7.1e-04       1.5e-04         3.9e-02
2           1.1e-01     1.0e-02     2.6e-02       4.8e-03         1.7e-01
10          5.6e-01     5.5e-02     1.3e-01       2.4e-02         2.3e-01
80          4.0e+00     4.1e-01     9.1e-01       1.6e-01         7.1e-01
==========  ==========  ==========  ============  ==============  ==========================

Zero activity plus noise is the padding of the diffusion model's own forward process and the
closest to the full-grid result at every noise level (1/1.5 to 1/2.6 of reflect's error, 1/20
of plain zeros'); it matches training, where slices are centre zero-padded to the training
grid (:class:`~.datasets.SliceDataset`) and then noised.  A grid that is already a multiple is
passed through unchanged (bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["PADDING_SEED", "centred_padding", "padding_noise", "pad_iterate",
           "denoise_padded"]

#: Seed of the fixed noise field in the padded border (see module docstring).
PADDING_SEED = 2024_0511


def centred_padding(size: int, multiple: int) -> tuple[int, int]:
    """``(before, after)`` padding of one axis of ``size`` to the next multiple of ``multiple``
    (the extra voxel of an odd padding goes after)."""
    if size < 1 or multiple < 1:
        raise ValueError(f"size and multiple must be positive, got {size} and {multiple}")
    total = -size % multiple
    return total // 2, total - total // 2


def padding_noise(height: int, width: int, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed standard-normal field ``n`` ``[height, width]`` of the padded border."""
    g = torch.Generator().manual_seed(PADDING_SEED)
    return torch.randn(height, width, generator=g).to(device=device, dtype=dtype)


def pad_iterate(x: torch.Tensor, sigma: torch.Tensor, multiple: int
                ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x [B, C, H, W]`` centred to multiples of ``multiple`` with zero activity at noise
    levels ``sigma [B]`` (module docstring); returns the padded tensor and the ``(top, left)``
    offset of ``x`` in it."""
    if x.ndim != 4:
        raise ValueError(f"expected slices [B, C, H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    (top, bottom), (left, right) = centred_padding(h, multiple), centred_padding(w, multiple)
    if top == bottom == left == right == 0:
        return x, (0, 0)
    H, W = h + top + bottom, w + left + right
    border = torch.ones(H, W, dtype=torch.bool, device=x.device)
    border[top:top + h, left:left + w] = False
    noise = padding_noise(H, W, device=x.device, dtype=x.dtype) * border
    s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
    return F.pad(x, (left, right, top, bottom)) + s * noise, (top, left)


def denoise_padded(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   x: torch.Tensor, sigma: torch.Tensor, multiple: int) -> torch.Tensor:
    """``C(denoise(P_sigma x, sigma))`` for slices ``x [B, C, H, W]`` of any ``H, W`` and noise
    levels ``sigma [B]`` (:func:`~.adapters.batch_sigma`)."""
    xp, (top, left) = pad_iterate(x, sigma, multiple)
    if xp is x:
        return denoise(x, sigma)
    out = denoise(xp, sigma)
    return out[..., top:top + x.shape[-2], left:left + x.shape[-1]]
