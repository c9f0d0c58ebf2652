r"""A diffusion-model prior with SIRF's ``Prior`` surface, for Python MAP algorithms.

:class:`DiffusionPrior` turns a denoiser ``D(x, sigma)`` (the contract of
:mod:`sirf_diffusion.diffusion.denoiser`) into a *penalty* in SIRF/STIR's convention: a function
``R(u)`` of the image ``u`` in physical units that MAP algorithms subtract from the Poisson
log-likelihood, ``Phi(u) = L(u) - R(u)``, scaled by the penalisation factor ``beta``.

The penalty and its gradient
----------------------------
Let ``s`` be the intensity scale of the
:class:`~sirf_diffusion.diffusion.normalisation.IntensityNormalisation` (``x = u / s`` is the
prior's normalised space, :meth:`DiffusionPrior.set_up` fits ``s`` on an OSEM/MLEM image), and
``p_sigma = p_data * N(0, sigma^2 I)`` the prior smoothed at the noise level ``sigma`` of the
diffusion model.  The penalty is the scaled negative log-density of the smoothed prior,

.. math::

    R(u) = -\beta \log p_\sigma(u / s) + \text{const},

and Tweedie's formula (Efron, JASA 106:1602-1614, 2011; Vincent, Neural Comput. 23:1661, 2011)
gives its gradient from one denoiser evaluation, without back-propagating through the network:

.. math::

    \nabla_x \log p_\sigma(x) = \frac{D(x, \sigma) - x}{\sigma^2}, \qquad
    \nabla_u R(u) = \frac{\partial x}{\partial u}^{\!T} \big(-\beta\,\nabla_x \log p_\sigma(x)\big)
                  = -\frac{\beta}{s}\,\frac{D(u/s, \sigma) - u/s}{\sigma^2}.

The chain rule through the normalisation contributes the factor ``1 / s`` (``x = u / s``); the
layout change of the normalisation (``[B, z, y, x]`` to the prior's ``[B, 1, y, x]`` or
``[B, 1, z, y, x]``) is a permutation of the voxels and is undone exactly.  ``beta`` therefore
weighs a dimensionless log-density against the log-likelihood, as for STIR's priors.  This is the
gradient used by plug-and-play Langevin / gradient methods with a fixed-noise-level denoiser
(Laumont et al., "Bayesian imaging using Plug & Play priors", SIAM J. Imaging Sci. 15(2), 2022,
Eq. 5-6; Kadkhodaie & Simoncelli, NeurIPS 2021).  With a volume and
:class:`~sirf_diffusion.diffusion.prior3d.PerpendicularPrior3D`, ``log p_sigma`` is that of the
product of experts of the slice orientations (see its docstring).

The value (``value_mode``)
--------------------------
``log p_sigma`` of a diffusion model is not tractable; :meth:`DiffusionPrior.get_value` returns
one of three documented surrogates ``E(x)`` (times ``beta``), with ``x = u / s``:

``"path"`` (default)
    The line integral of the negative score from the zero image,

    .. math:: E(x) = -\int_0^1 \langle x,\ \nabla\log p_\sigma(t x)\rangle\,dt
                   \approx -\sum_k w_k \langle x,\ \nabla\log p_\sigma(t_k x)\rangle,

    with ``num_quadrature`` Gauss-Legendre nodes on ``[0, 1]`` (one denoiser call each).  For an
    exact score field this *is* ``-log p_sigma(x) + log p_sigma(0)`` up to the quadrature error,
    so finite differences of the value match :meth:`~DiffusionPrior.get_gradient`; for a
    Gaussian prior ``N(mu, v)`` the integrand is linear in ``t`` and the value is exact with any
    number of nodes.  A trained network is only approximately a gradient field, so the match is
    approximate in general.
``"residual"``
    The denoising-residual energy :math:`E(x) = \|x - D(x, \sigma)\|^2 / (2\sigma^2)`
    (``= sigma^2 ||score||^2 / 2``): one denoiser call, zero exactly at the fixed points of the
    denoiser, useful to monitor convergence.  Its gradient is
    :math:`J_r^T r / \sigma^2` (``r = x - D``) and is **not** ``get_gradient``: even for a
    Gaussian prior it is ``sigma^2 / (v + sigma^2)`` times it.
``"red"``
    The RED energy :math:`E(x) = \langle x,\ x - D(x, \sigma)\rangle / (2\sigma^2)` (Romano,
    Elad & Milanfar, SIAM J. Imaging Sci. 10(4), 2017): one call; its gradient equals
    ``get_gradient`` only for locally homogeneous denoisers with a symmetric Jacobian (Reehorst &
    Schniter, IEEE TCI 5(1), 2019), e.g. a zero-mean Gaussian prior, where it is exact.

Only with ``"path"`` is the value consistent with the gradient (needed by line searches).

Hessian-vector products
-----------------------
Preconditioned algorithms call SIRF's ``Prior.multiply_with_Hessian(current, input)`` (and its
accumulating form).  Differentiating the gradient above along ``v``,

.. math::

    \nabla^2 R(u)\, v = -\frac{\beta}{s\,\sigma^2}\big(J_D(x)\, \tilde v - \tilde v\big),
    \qquad x = u / s, \quad \tilde v = v / s,

with :math:`J_D(x)\,\tilde v` a Jacobian-vector product through the denoiser (forward-mode
automatic differentiation, :func:`torch.func.jvp`: one pass, no gradients of the weights).

Proximal map
------------
:meth:`DiffusionPrior.proximal` approximates
:math:`\mathrm{prox}_{\tau R}(u) = \arg\min_z \tfrac12\|z - u\|^2 + \tau R(z)` by Tweedie
denoising.  In the normalised space the problem is a Gaussian denoising of ``y = u / s`` with
noise variance :math:`\lambda = \tau\beta / s^2` under the prior ``p_sigma``; its posterior mean
is, by Tweedie's formula at the total noise level :math:`\eta^2 = \sigma^2 + \lambda`,

.. math::

    z = s\,\Big[y + \frac{\lambda}{\eta^2}\big(D(y, \eta) - y\big)\Big].

This is the MMSE estimate in place of the MAP one (exact for Gaussian priors, where the two
coincide, and the usual plug-and-play substitution otherwise: Venkatakrishnan et al., GlobalSIP
2013; Zhu et al., DiffPIR, CVPR Workshops 2023).

Containers
----------
Every method accepts numpy arrays, torch tensors, SIRF/CIL images or STIR images of shape
``(z, y, x)`` (a 2D ``(y, x)`` array is one slice; torch/numpy may carry a leading batch
dimension) and returns the same type (:mod:`.containers`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import numpy as np
import torch

from ..diffusion.denoiser import Denoiser
from ..diffusion.normalisation import IntensityNormalisation, support_mean
from ..recon.priors import finite_non_negative
from .containers import ContainerKind, Restore, coerce_image, container_kind

__all__ = ["DiffusionPrior", "ValueMode", "gauss_legendre_01"]

ValueMode = Literal["path", "residual", "red"]
_VALUE_MODES = ("path", "residual", "red")


def gauss_legendre_01(n: int, dtype: torch.dtype = torch.float64
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on ``[0, 1]`` (exact for polynomials of degree 2n - 1)."""
    t, w = np.polynomial.legendre.leggauss(int(n))
    return (torch.as_tensor((t + 1) / 2, dtype=dtype), torch.as_tensor(w / 2, dtype=dtype))


def _first_parameter(module: Any) -> torch.Tensor | None:
    params = getattr(module, "parameters", None)
    if callable(params):
        try:
            return next(iter(params()))
        except StopIteration:
            return None
    for m in getattr(module, "models", {}).values():  # PerpendicularPrior3D
        p = _first_parameter(m)
        if p is not None:
            return p
    return None


class DiffusionPrior:
    """SIRF-``Prior``-like penalty from a diffusion model's denoiser (module docstring).

    Parameters
    ----------
    denoiser
        ``D(x, sigma) -> x0_hat`` in the prior's normalised space: a 2D model
        (``[B, 1, y, x]``, images with one slice) or a 3D one (``[B, 1, z, y, x]``, e.g.
        :class:`~sirf_diffusion.diffusion.prior3d.PerpendicularPrior3D`).
    sigma
        Noise level at which the score is evaluated, in normalised units (the scale ``s`` is the
        mean activity over the support, so ``0.1`` is 10 % of it).  Small values give a sharper
        prior but rely on the network where the noise is smallest.
    penalisation_factor
        ``beta >= 0``.
    normalisation
        Intensity normalisation (or its scale ``s`` as a number); ``None``: fitted by
        :meth:`set_up`, which must then be called before use.
    value_mode, num_quadrature
        Surrogate returned by :meth:`get_value` and its Gauss-Legendre order (``"path"``).
    support_threshold
        Support of the fitted scale: voxels above this fraction of the maximum (as
        :func:`~sirf_diffusion.diffusion.normalisation.support_mean`).
    dtype, device
        Where the denoiser runs; ``None``: those of the denoiser's parameters if it has any,
        else of the input image.

    Examples
    --------
    >>> prior = DiffusionPrior(denoiser, sigma=0.1, penalisation_factor=0.5)  # doctest: +SKIP
    >>> prior.set_up(osem_image)           # fits the intensity scale   # doctest: +SKIP
    >>> g = prior.get_gradient(image)      # same type as ``image``     # doctest: +SKIP
    >>> x = bsrem(likelihood, prior, osem_image, num_subsets=4, num_epochs=5)  # doctest: +SKIP
    """

    def __init__(self, denoiser: Denoiser, sigma: float = 0.1, penalisation_factor: float = 1.0,
                 *, normalisation: IntensityNormalisation | float | None = None,
                 value_mode: ValueMode = "path", num_quadrature: int = 4,
                 support_threshold: float = 0.05, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        if not callable(denoiser):
            raise TypeError("denoiser must be callable as D(x, sigma), got "
                            f"{type(denoiser).__name__}")
        self.denoiser = denoiser
        self.set_sigma(sigma)
        self.set_penalisation_factor(penalisation_factor)
        self.set_value_mode(value_mode, num_quadrature)
        t = float(support_threshold)
        if not 0 <= t < 1:
            raise ValueError(f"support_threshold must be in [0, 1), got {support_threshold}")
        self.support_threshold = t
        if normalisation is not None and not isinstance(normalisation, IntensityNormalisation):
            normalisation = IntensityNormalisation(float(normalisation))
        self._given_normalisation = normalisation is not None
        self.normalisation: IntensityNormalisation | None = normalisation
        self.image_shape: tuple[int, int, int] | None = None
        p = _first_parameter(denoiser)
        self.dtype = dtype if dtype is not None else (p.dtype if p is not None else None)
        self.device = torch.device(device) if device is not None else (
            p.device if p is not None else None)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike[str] | None = None, *,
                        volume: bool = False,
                        orientations: tuple[str, ...] | None = None,
                        **kwargs: Any) -> "DiffusionPrior":
        """A prior from a trained model folder (default: the prior shipped with the package).

        ``volume=False``: the axial (``'xy'``) slice model, for images with one slice;
        ``volume=True``: a :class:`~sirf_diffusion.diffusion.prior3d.PerpendicularPrior3D` of
        the ``orientations`` found (default: every one of ``xy``, ``yz``, ``xz`` present).
        ``kwargs`` go to the constructor.
        """
        from ..diffusion.loading import load_slice_prior

        if not volume:
            return cls(load_slice_prior(model_dir, "xy"), **kwargs)
        from ..diffusion.prior3d import PerpendicularPrior3D

        models = {}
        for o in orientations or ("xy", "yz", "xz"):
            try:
                models[o] = load_slice_prior(model_dir, o)
            except FileNotFoundError:
                if orientations:
                    raise
        if not models:
            raise FileNotFoundError("no slice model found for a volumetric prior")
        return cls(PerpendicularPrior3D(models), **kwargs)

    # ------------------------------------------------------------------ SIRF-like settings
    def set_penalisation_factor(self, penalisation_factor: float) -> None:
        """Set ``beta >= 0`` (SIRF ``set_penalisation_factor``)."""
        self.penalisation_factor = finite_non_negative(penalisation_factor,
                                                       "penalisation_factor")

    def get_penalisation_factor(self) -> float:
        """``beta`` (SIRF ``get_penalisation_factor``)."""
        return self.penalisation_factor

    def set_sigma(self, sigma: float) -> None:
        """Set the noise level (normalised units) at which the score is evaluated."""
        s = float(sigma)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"sigma must be finite and > 0, got {sigma}")
        self.sigma = s

    def get_sigma(self) -> float:
        return self.sigma

    def set_value_mode(self, value_mode: ValueMode, num_quadrature: int | None = None) -> None:
        """Choose the value surrogate (module docstring) and the quadrature order of ``"path"``."""
        if value_mode not in _VALUE_MODES:
            raise ValueError(f"value_mode must be one of {_VALUE_MODES}, got {value_mode!r}")
        if num_quadrature is not None:
            if isinstance(num_quadrature, bool) or not isinstance(num_quadrature, int) \
                    or num_quadrature < 1:
                raise ValueError("num_quadrature must be a positive integer, got "
                                 f"{num_quadrature!r}")
            self.num_quadrature = num_quadrature
        self.value_mode = value_mode

    def get_normalisation(self) -> IntensityNormalisation:
        """The intensity normalisation (after :meth:`set_up` or given at construction)."""
        if self.normalisation is None:
            raise RuntimeError("DiffusionPrior: call set_up(image) first (it fits the intensity "
                               "normalisation), or pass normalisation= to the constructor")
        return self.normalisation

    # ------------------------------------------------------------------ set-up
    def set_up(self, image: Any, mask: Any = None, *,
               fit_normalisation: bool | None = None) -> None:
        """Fit the intensity scale on ``image`` and fix the image shape (SIRF ``set_up``).

        Parameters
        ----------
        image
            An image of the reconstruction's shape in physical units, typically a few OSEM or
            MLEM iterations of the data (as :func:`~sirf_diffusion.samplers.methods.reconstruct`
            does); any supported container.
        mask
            Optional support mask of the same shape (default: voxels above
            ``support_threshold`` times the maximum).
        fit_normalisation
            Fit the scale on ``image``; ``None``: only when no normalisation was given to the
            constructor.

        Raises
        ------
        ValueError
            Wrong shapes, non-finite values, an empty support, or a slice model given a volume.
        """
        xb, _, _ = self._batch(image, "image", check_shape=False)
        shape = tuple(xb.shape[1:])
        self._check_layout(shape)
        if fit_normalisation is None:
            fit_normalisation = not self._given_normalisation
        if fit_normalisation:
            m = None
            if mask is not None:
                mb, _, _ = self._batch(mask, "mask", check_shape=False)
                if tuple(mb.shape[1:]) != shape:
                    raise ValueError(f"mask has shape {tuple(mb.shape[1:])}, image {shape}")
                m = mb
            scale = support_mean(xb.to(torch.float64), None if m is None else m,
                                 self.support_threshold)
            if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
                raise ValueError("cannot fit the intensity scale: the image has no positive "
                                 "support (pass an OSEM/MLEM image in physical units)")
            self.normalisation = IntensityNormalisation(
                float(scale[0]) if scale.numel() == 1 else scale.to(torch.float32))
        elif self.normalisation is None:
            raise ValueError("fit_normalisation=False but no normalisation was given")
        self.image_shape = shape  # type: ignore[assignment]

    def _check_layout(self, shape: tuple[int, ...]) -> None:
        from ..diffusion.model import ScoreModel

        if shape[0] > 1 and isinstance(self.denoiser, ScoreModel):
            raise ValueError(
                f"a slice (2D) ScoreModel cannot denoise a volume of shape {shape}: wrap it, e.g. "
                "PerpendicularPrior3D({'xy': model}), or use DiffusionPrior.from_pretrained("
                "volume=True)")

    @property
    def is_set_up(self) -> bool:
        return self.normalisation is not None

    # ------------------------------------------------------------------ plumbing
    def _batch(self, image: Any, name: str, check_shape: bool = True
               ) -> tuple[torch.Tensor, Restore, dict[str, Any]]:
        """``image`` as a ``[B, z, y, x]`` tensor (compute dtype/device) and how to go back."""
        t, restore = coerce_image(image, name)
        kind: ContainerKind = container_kind(image)
        if t.ndim == 2:
            xb = t[None, None]
        elif t.ndim == 3:
            xb = t[None]
        elif t.ndim == 4 and kind in ("numpy", "torch"):
            xb = t
        else:
            raise ValueError(f"{name} has shape {tuple(t.shape)}: expected (z, y, x), (y, x) or a "
                             "batch (B, z, y, x) of numpy/torch images")
        if not bool(torch.isfinite(xb).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        if check_shape and self.image_shape is not None and tuple(xb.shape[1:]) != self.image_shape:
            raise ValueError(f"{name} has shape {tuple(xb.shape[1:])} (z, y, x) but the prior was "
                             f"set up for {self.image_shape}")
        dtype = self.dtype or (xb.dtype if xb.is_floating_point() else torch.float32)
        xb = xb.to(dtype=dtype, device=self.device or xb.device)
        info = {"shape": tuple(t.shape), "kind": kind, "dtype": t.dtype}
        return xb, restore, info

    def _scale(self, xb: torch.Tensor) -> torch.Tensor:
        """``s`` as ``[B or 1, 1, 1, 1]`` (dtype/device of ``xb``)."""
        s = torch.as_tensor(self.get_normalisation().scale, dtype=xb.dtype, device=xb.device)
        s = s.reshape(-1)
        if s.numel() not in (1, xb.shape[0]):
            raise ValueError(f"the normalisation has {s.numel()} scales for a batch of "
                             f"{xb.shape[0]} images")
        return s.reshape(-1, 1, 1, 1)

    @staticmethod
    def _to_prior(xb: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``[B, z, y, x]`` physical -> prior tensor ``x = u / s`` (normalisation layout)."""
        x = xb / s
        return x if xb.shape[1] == 1 else x.unsqueeze(1)

    @staticmethod
    def _layout_back(t: torch.Tensor) -> torch.Tensor:
        """Prior layout -> ``[B, z, y, x]`` without any scaling."""
        return t if t.ndim == 4 else t[:, 0]

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sig = sig.reshape(-1).expand(x.shape[0]) if sig.numel() in (1, x.shape[0]) else sig
        with torch.no_grad():
            d = self.denoiser(x, sig.contiguous())
        if tuple(d.shape) != tuple(x.shape):
            raise ValueError(f"the denoiser returned shape {tuple(d.shape)} for input "
                             f"{tuple(x.shape)}")
        return d.to(x.dtype)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        """Prior-space score ``(D(x, sigma) - x) / sigma^2`` (prior layout)."""
        return (self._denoise(x, self.sigma) - x) / self.sigma ** 2

    @staticmethod
    def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).reshape(a.shape[0], -1).sum(dim=1)

    def _values_out(self, values: torch.Tensor, info: dict[str, Any]) -> Any:
        """Per-image values ``[B]`` as the input's kind expects (module docstring)."""
        unbatched = len(info["shape"]) < 4
        if info["kind"] == "torch":
            v = values.to(info["dtype"] if info["dtype"].is_floating_point else torch.float32)
            return v[0] if unbatched else v
        if unbatched:
            return float(values[0])
        return values.detach().cpu().numpy()

    def _image_out(self, gb: torch.Tensor, restore: Restore, info: dict[str, Any],
                   out: Any) -> Any:
        return restore(gb.reshape(info["shape"]), out=out)

    # ------------------------------------------------------------------ SIRF-like evaluation
    def get_value(self, image: Any) -> Any:
        """Penalty :math:`\\beta E(u / s)` with the surrogate ``E`` of ``value_mode``.

        Returns a float for a single SIRF/STIR/CIL/numpy image, a 0-dim tensor for a torch image
        ``(z, y, x)``, one value per image for batches (tensor or numpy array).
        """
        xb, _, info = self._batch(image, "image")
        if self.penalisation_factor == 0:
            return self._values_out(torch.zeros(xb.shape[0], dtype=xb.dtype), info)
        x = self._to_prior(xb, self._scale(xb))
        if self.value_mode == "path":
            nodes, weights = gauss_legendre_01(self.num_quadrature)
            e = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for t, w in zip(nodes.tolist(), weights.tolist()):
                e = e - w * self._inner(x, self._score(t * x))
        else:
            r = x - self._denoise(x, self.sigma)
            e = (self._inner(r, r) if self.value_mode == "residual" else self._inner(x, r)) \
                / (2 * self.sigma ** 2)
        return self._values_out(self.penalisation_factor * e, info)

    def get_gradient(self, image: Any, out: Any = None) -> Any:
        """:math:`\\nabla R(u) = -\\beta\\, [D(u/s, \\sigma) - u/s] / (s\\,\\sigma^2)`.

        Same type, shape and dtype as ``image``; with ``out`` (an object of that type), the
        gradient is written into it and ``out`` is returned (CIL convention).
        """
        xb, restore, info = self._batch(image, "image")
        if self.penalisation_factor == 0:
            return self._image_out(torch.zeros_like(xb), restore, info, out)
        s = self._scale(xb)
        score = self._layout_back(self._score(self._to_prior(xb, s)))
        return self._image_out(-self.penalisation_factor * score / s, restore, info, out)

    def _hessian_times(self, current: Any, input: Any
                       ) -> tuple[torch.Tensor, Restore, dict[str, Any]]:
        """``H(u) v`` as ``[B, z, y, x]`` and how to return it (module docstring)."""
        ub, restore, info = self._batch(current, "current")
        vb, _, _ = self._batch(input, "input")
        if tuple(vb.shape) != tuple(ub.shape):
            raise ValueError(f"input has shape {tuple(vb.shape[1:])} but current has "
                             f"{tuple(ub.shape[1:])} (z, y, x)")
        if self.penalisation_factor == 0:
            return torch.zeros_like(ub), restore, info
        s = self._scale(ub)
        x, v = self._to_prior(ub, s), self._to_prior(vb, s)
        sig = torch.full((x.shape[0],), self.sigma, dtype=x.dtype, device=x.device)
        _, jv = torch.func.jvp(lambda z: self.denoiser(z, sig), (x,), (v,))
        hv = -self.penalisation_factor * self._layout_back(jv.to(x.dtype) - v) \
            / (s * self.sigma ** 2)
        return hv.detach(), restore, info

    def multiply_with_Hessian(self, current: Any, input: Any, out: Any = None) -> Any:
        r""":math:`\nabla^2 R(u)\, v` at ``current`` ``u`` for ``input`` ``v`` (SIRF's
        ``Prior.multiply_with_Hessian``; module docstring).  Same type as ``current``; with
        ``out`` the product is written into it and ``out`` is returned."""
        hv, restore, info = self._hessian_times(current, input)
        return self._image_out(hv, restore, info, out)

    def accumulate_Hessian_times_input(self, current: Any, input: Any, out: Any = None) -> Any:
        """``out + H(u) v`` written into ``out`` and returned (SIRF's
        ``Prior.accumulate_Hessian_times_input``); without ``out``, ``H(u) v``."""
        hv, restore, info = self._hessian_times(current, input)
        if out is not None:
            ob, _, _ = self._batch(out, "out")
            if tuple(ob.shape) != tuple(hv.shape):
                raise ValueError(f"out has shape {tuple(ob.shape[1:])}, expected "
                                 f"{tuple(hv.shape[1:])} (z, y, x)")
            hv = ob + hv
        return self._image_out(hv, restore, info, out)

    # aliases: the protocol of sirf_diffusion.recon.map (value, gradient), CIL (__call__)
    def value(self, image: Any) -> Any:
        """Alias of :meth:`get_value` (the protocol of :func:`sirf_diffusion.recon.map.bsrem`)."""
        return self.get_value(image)

    def gradient(self, image: Any, out: Any = None) -> Any:
        """Alias of :meth:`get_gradient`."""
        return self.get_gradient(image, out=out)

    __call__ = get_value

    # ------------------------------------------------------------------ denoising, proximal map
    def denoise(self, image: Any, sigma: float | None = None, out: Any = None) -> Any:
        """Tweedie estimate in physical units, :math:`s\\,D(u / s, \\sigma)` (same type)."""
        sig = self.sigma if sigma is None else float(sigma)
        if not (math.isfinite(sig) and sig > 0):
            raise ValueError(f"sigma must be finite and > 0, got {sigma}")
        xb, restore, info = self._batch(image, "image")
        s = self._scale(xb)
        d = self._layout_back(self._denoise(self._to_prior(xb, s), sig)) * s
        return self._image_out(d, restore, info, out)

    def proximal(self, image: Any, tau: float, out: Any = None) -> Any:
        """Tweedie approximation of :math:`\\mathrm{prox}_{\\tau R}` (module docstring).

        :math:`z = s[y + (\\lambda/\\eta^2)(D(y, \\eta) - y)]`, ``y = u / s``,
        :math:`\\lambda = \\tau\\beta/s^2`, :math:`\\eta^2 = \\sigma^2 + \\lambda`.
        """
        if isinstance(tau, (torch.Tensor, np.ndarray)) and np.ndim(tau) == 0:
            tau = float(tau)
        if not isinstance(tau, (int, float)) or isinstance(tau, bool):
            raise TypeError(f"tau must be a scalar step size, got {type(tau).__name__}")
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau must be finite and >= 0, got {tau}")
        xb, restore, info = self._batch(image, "image")
        if tau == 0 or self.penalisation_factor == 0:
            return self._image_out(xb.clone(), restore, info, out)
        s = self._scale(xb)
        y = self._to_prior(xb, s)
        lam = (tau * self.penalisation_factor / s ** 2).reshape(-1).expand(xb.shape[0])
        eta2 = self.sigma ** 2 + lam
        d = self._denoise(y, eta2.sqrt())
        ratio = (lam / eta2).reshape(-1, *([1] * (y.ndim - 1)))
        z = self._layout_back(y + ratio * (d - y)) * s
        return self._image_out(z, restore, info, out)

    def __repr__(self) -> str:
        return (f"DiffusionPrior(denoiser={type(self.denoiser).__name__}, sigma={self.sigma}, "
                f"penalisation_factor={self.penalisation_factor}, value_mode={self.value_mode!r}, "
                f"normalisation={self.normalisation})")
