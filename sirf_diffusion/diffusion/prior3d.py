"""3D denoising from 2D slice models along perpendicular orientations.

A volume ``v [Z, Y, X]`` (STIR's ``[z, y, x]`` order) is cut into 2D slices in three ways:

============  ===================  ==========================  ==========================
orientation   slices (batch over)  slice shape ``[h, w]``       tensor
============  ===================  ==========================  ==========================
``'xy'``      axial, over ``z``    ``[Y, X]``                   ``[Z, 1, Y, X]``
``'yz'``      sagittal, over ``x`` ``[Z, Y]``                   ``[X, 1, Z, Y]``
``'xz'``      coronal, over ``y``  ``[Z, X]``                   ``[Y, 1, Z, X]``
============  ===================  ==========================  ==========================

(:func:`to_slices` / :func:`from_slices`; training data for each orientation must be cut with the
same functions).  :class:`PerpendicularPrior3D` applies each orientation's 2D denoiser to every
slice of that orientation and averages the available estimates:

.. math::

    D_{3D}(x, \\sigma) = \\frac{1}{|\\mathcal O|} \\sum_{o \\in \\mathcal O}
    P_o^{-1}\\big(D_o(P_o x, \\sigma)\\big),

a combination of perpendicular 2D priors.  Webber et al. 2025 (PET-LiSch, IEEE TMI,
arXiv:2412.04339) integrate perpendicular pre-trained 2D score models to remove the slice
inconsistency of axial-only priors in fully 3D PET; Lee et al. 2023 (TPDM, CVPR) alternate two
perpendicular priors between steps.  Here the estimates are averaged at every call; by
Tweedie's formula the score of the average is the average of the orientation scores, i.e. the
score of the normalised geometric mean :math:`\\prod_o p_{o,\\sigma}^{1/|\\mathcal O|}` (a
product of experts).  A method that prefers alternation can build one single-orientation prior
per orientation and switch between them.  Slices are denoised in chunks of ``chunk_size`` to
bound memory; chunking does not change the result.  When a gradient flows through the prior
(DPS differentiates the data misfit through the denoiser) each chunk is recomputed in the
backward pass instead of keeping its activations (:func:`torch.utils.checkpoint.checkpoint`), so
memory stays bounded by ``chunk_size`` there too, for one extra network pass per chunk.

Any volume size works: slices whose sides are not a multiple of a
:class:`~.model.ScoreModel`'s UNet (e.g. the 127 planes of a ``yz`` or ``xz`` slice of a
181 x 181 x 127 PETRIC image) are padded with zero activity outside the field of view and
cropped back by the model itself (:mod:`.padding`), with the same padding for every slice.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .adapters import batch_sigma
from .denoiser import Denoiser

__all__ = ["to_slices", "from_slices", "PerpendicularPrior3D"]

# permutation of [B, Z, Y, X] that puts the slice axis second and the slice plane last
_PERM: dict[str, tuple[int, int, int, int]] = {"xy": (0, 1, 2, 3), "yz": (0, 3, 1, 2),
                                               "xz": (0, 2, 1, 3)}


def _inverse(p: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(p)
    for i, j in enumerate(p):
        inv[j] = i
    return tuple(inv)


def _check_orientation(orientation: str) -> None:
    if orientation not in _PERM:
        raise ValueError(f"unknown orientation {orientation!r}; expected one of {tuple(_PERM)}")


def to_slices(volume: torch.Tensor, orientation: str) -> torch.Tensor:
    """``[B, 1, Z, Y, X]`` (or ``[Z, Y, X]``) -> slices ``[B*n, 1, h, w]`` (table in module doc)."""
    _check_orientation(orientation)
    v = volume
    if v.ndim == 3:
        v = v[None, None]
    if v.ndim != 5 or v.shape[1] != 1:
        raise ValueError("expected a volume [B, 1, Z, Y, X] or [Z, Y, X], "
                         f"got {tuple(volume.shape)}")
    s = v[:, 0].permute(_PERM[orientation])
    return s.reshape(-1, 1, *s.shape[2:])


def from_slices(slices: torch.Tensor, orientation: str, batch: int = 1) -> torch.Tensor:
    """Inverse of :func:`to_slices`: ``[B*n, 1, h, w]`` -> ``[B, 1, Z, Y, X]``."""
    _check_orientation(orientation)
    if slices.ndim != 4 or slices.shape[1] != 1 or slices.shape[0] % batch:
        raise ValueError(f"expected slices [B*n, 1, h, w] with B={batch}, "
                         f"got {tuple(slices.shape)}")
    s = slices.reshape(batch, -1, *slices.shape[2:])
    return s.permute(_inverse(_PERM[orientation])).unsqueeze(1)


class PerpendicularPrior3D:
    """Denoiser contract on volumes ``[B, 1, Z, Y, X]`` from 2D slice denoisers.

    Parameters
    ----------
    models
        ``{orientation: denoiser}`` with orientations among ``'xy'``, ``'yz'``, ``'xz'`` (at
        least one); each denoiser follows ``D(x [N, 1, h, w], sigma [N]) -> x0_hat``.
    chunk_size
        Number of slices passed to a 2D denoiser at once.
    """

    def __init__(self, models: dict[str, Denoiser], chunk_size: int = 16) -> None:
        if not models:
            raise ValueError("PerpendicularPrior3D needs at least one orientation model")
        for o, m in models.items():
            _check_orientation(o)
            if not callable(m):
                raise TypeError(f"the model for orientation {o!r} is not callable")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.models = dict(models)
        self.chunk_size = chunk_size

    @property
    def orientations(self) -> tuple[str, ...]:
        return tuple(self.models)

    def denoise_orientation(self, orientation: str, x: torch.Tensor, sigma: torch.Tensor
                            ) -> torch.Tensor:
        """``P_o^{-1} D_o(P_o x, sigma)`` for one orientation, in chunks of slices (recomputed
        in the backward pass when a gradient is recorded: module docstring)."""
        slices = to_slices(x, orientation)
        n = slices.shape[0] // x.shape[0]
        s = batch_sigma(x, sigma).repeat_interleave(n)
        D = self.models[orientation]
        chunks = [(slices[i:i + self.chunk_size], s[i:i + self.chunk_size])
                  for i in range(0, slices.shape[0], self.chunk_size)]
        if torch.is_grad_enabled() and slices.requires_grad and len(chunks) > 1:
            out = [checkpoint(D, xs, ss, use_reentrant=False) for xs, ss in chunks]
        else:
            out = [D(xs, ss) for xs, ss in chunks]
        return from_slices(torch.cat(out), orientation, batch=x.shape[0])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Average of the orientation estimates (module docstring)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"PerpendicularPrior3D expects x of shape [B, 1, Z, Y, X], "
                             f"got {tuple(x.shape)}")
        est = [self.denoise_orientation(o, x, sigma) for o in self.models]
        return est[0] if len(est) == 1 else torch.stack(est).mean(0)
