"""Pairwise neighbourhood priors with STIR's conventions: relative difference and quadratic.

Both priors are *penalties* ``R(x) >= 0`` that MAP methods subtract from the Poisson
log-likelihood (STIR's convention: the objective maximised is ``L(x) - R(x)``).  With
neighbourhood offsets ``d``, inverse-distance weights ``w_d``, an optional spatially varying
``kappa`` image and penalisation factor ``beta``:

.. math::

    R(x) = \\beta \\sum_r \\sum_{d} \\frac{w_d}{2}\\, \\kappa_r \\kappa_{r+d}\\,
           \\phi(x_r, x_{r+d})
         = \\beta \\sum_{\\{r, r+d\\}} w_d\\, \\kappa_r \\kappa_{r+d}\\, \\phi(x_r, x_{r+d}),

the first sum over ordered voxel pairs (as STIR writes it), the second over unordered pairs.
STIR's weights (``compute_weights`` in ``RelativeDifferencePrior.cxx`` / ``QuadraticPrior.cxx``)
are the *x* voxel size divided by the Euclidean distance between the voxel centres,

.. math::

    w_d = \\frac{v_x}{\\sqrt{(d_z v_z)^2 + (d_y v_y)^2 + (d_x v_x)^2}},

so face neighbours in-plane have weight 1 and voxel sizes enter only through ratios.  Pairs with a
voxel outside the image are left out (STIR: "effectively the same as extending the volume by
replicating the edges").  Neighbourhoods:

``"26"``
    the 3x3x3 neighbourhood (STIR's default).
``"transaxial"``
    the 3x3 in-plane neighbourhood (STIR's ``only 2D := 1``).
``"axial"``
    only the two neighbours along ``z`` (weight ``v_x / v_z``).  This is the "axial RDP" that
    PET-DDS combines with 2D (slice-wise) diffusion models: the learned prior regularises each
    transaxial slice and the axial RDP couples the slices (Singh et al., "Score-based generative
    models for PET image reconstruction", MELBA 2024).

Everything is vectorised with slicing over the 1, 4 or 13 "forward" offsets; images are
``[..., z, y, x]`` with any leading batch dimensions, and device and dtype follow the input.
"""

from __future__ import annotations

import abc
import math
from typing import Literal, Mapping, Sequence

import torch

__all__ = [
    "Neighbourhood",
    "NeighbourhoodPrior",
    "RelativeDifferencePrior",
    "QuadraticPrior",
    "neighbourhood_offsets",
    "finite_non_negative",
]

Neighbourhood = Literal["26", "axial", "transaxial"]


def neighbourhood_offsets(neighbourhood: Neighbourhood,
                          voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                          ) -> list[tuple[tuple[int, int, int], float]]:
    """The "forward" half of a symmetric neighbourhood with STIR's inverse-distance weights.

    Parameters
    ----------
    neighbourhood
        ``"26"``, ``"transaxial"`` or ``"axial"`` (see the module docstring).
    voxel_size_mm
        ``(vz, vy, vx)``.

    Returns
    -------
    list of ((dz, dy, dx), w)
        One entry per unordered neighbour direction (the lexicographically positive offset), with
        :math:`w_d = v_x / \\lVert d \\odot v \\rVert`.
    """
    if neighbourhood == "26":
        dzs = (-1, 0, 1)
        dys = dxs = (-1, 0, 1)
    elif neighbourhood == "transaxial":
        dzs, dys, dxs = (0,), (-1, 0, 1), (-1, 0, 1)
    elif neighbourhood == "axial":
        dzs, dys, dxs = (-1, 0, 1), (0,), (0,)
    else:
        raise ValueError("neighbourhood must be '26', 'transaxial' or 'axial', "
                         f"got {neighbourhood!r}")
    vz, vy, vx = _check_voxel_size(voxel_size_mm)
    out = []
    for dz in dzs:
        for dy in dys:
            for dx in dxs:
                if (dz, dy, dx) <= (0, 0, 0):  # keep one offset of each +-d pair
                    continue
                dist = math.sqrt((dz * vz) ** 2 + (dy * vy) ** 2 + (dx * vx) ** 2)
                out.append(((dz, dy, dx), vx / dist))
    return out


def _check_voxel_size(voxel_size_mm: Sequence[float]) -> tuple[float, float, float]:
    v = tuple(float(s) for s in voxel_size_mm)
    if len(v) != 3 or not all(math.isfinite(s) and s > 0 for s in v):
        raise ValueError("voxel_size_mm must be three positive numbers (vz, vy, vx), "
                         f"got {voxel_size_mm!r}")
    return v  # type: ignore[return-value]


def finite_non_negative(value: float, name: str) -> float:
    """``float(value)`` when it is finite and ``>= 0`` (weights, step sizes, smoothing
    parameters), else a ``ValueError`` naming ``name``."""
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return v


def _pair_slices(shape: Sequence[int], d: tuple[int, int, int]):
    """Slices ``(sa, sb)`` such that ``x[sa]`` and ``x[sb]`` are the voxel pairs ``(r, r + d)``."""
    sa, sb = [Ellipsis], [Ellipsis]
    for n, k in zip(shape[-3:], d):
        sa.append(slice(max(0, -k), n - max(0, k)))
        sb.append(slice(max(0, k), n - max(0, -k)))
    return tuple(sa), tuple(sb)


class NeighbourhoodPrior(abc.ABC):
    """Base class: a pairwise penalty
    :math:`\\beta \\sum_{\\{r,s\\}} w_{rs} \\kappa_r\\kappa_s \\phi(x_r, x_s)`.

    Subclasses give the symmetric pair potential ``phi(a, b)`` and its partial derivatives; this
    class does the neighbourhood bookkeeping.

    Parameters
    ----------
    penalisation_factor
        ``beta >= 0``.
    neighbourhood
        ``"26"`` (default, STIR), ``"transaxial"`` (STIR ``only 2D``) or ``"axial"``.
    voxel_size_mm
        ``(vz, vy, vx)`` for the inverse-distance weights (pass ``physics.voxel_size_mm`` to match
        STIR); the default ``(1, 1, 1)`` gives ``w = 1 / distance in voxels``.
    kappa
        Optional spatially varying weights, shape ``[..., z, y, x]`` matching the image's last three
        dimensions; each pair is weighted by ``kappa_r * kappa_s`` (STIR, after Fessler).
    pair_weights
        Optional weight of every unordered pair, multiplying ``w_d``: a mapping from each forward
        offset ``d`` of the neighbourhood to a tensor of the shape of the pairs ``(r, r + d)``
        inside the image (e.g. Bowsher's MR-selected neighbours,
        :func:`~sirf_diffusion.recon.bowsher.bowsher_weights`).
    """

    #: Smallest ``lower_ratio`` for which :meth:`separable_curvature` is valid.
    min_lower_ratio: float = 0.0

    def __init__(self, penalisation_factor: float = 1.0, *,
                 neighbourhood: Neighbourhood = "26",
                 voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                 kappa: torch.Tensor | None = None,
                 pair_weights: Mapping[tuple[int, int, int], torch.Tensor] | None = None) -> None:
        self.set_penalisation_factor(penalisation_factor)
        self.neighbourhood = neighbourhood
        self.voxel_size_mm = _check_voxel_size(voxel_size_mm)
        self.offsets = neighbourhood_offsets(neighbourhood, self.voxel_size_mm)
        self.set_kappa(kappa)
        self.set_pair_weights(pair_weights)

    # ------------------------------------------------------------ pair potential (subclasses)
    @abc.abstractmethod
    def _phi(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``phi(a, b)``, symmetric in its arguments."""

    @abc.abstractmethod
    def _d1(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``d phi / d a``."""

    @abc.abstractmethod
    def _d11(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``d^2 phi / d a^2``."""

    @abc.abstractmethod
    def _curvature_bound(self, a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
        """``sup_{t >= tau * a} d^2 phi / d t^2 (t, b)``."""

    def _check_image(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"image must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 3:
            raise ValueError(f"image has shape {tuple(x.shape)}; expected [..., z, y, x]")
        if self._kappa is not None and tuple(self._kappa.shape[-3:]) != tuple(x.shape[-3:]):
            raise ValueError(f"kappa has shape {tuple(self._kappa.shape)} but the image has shape "
                             f"{tuple(x.shape)}: their last three dimensions must agree")
        if self._pair_weights is not None:
            for d, _ in self.offsets:
                want = tuple(max(n - abs(k), 0) for n, k in zip(x.shape[-3:], d))
                if tuple(self._pair_weights[d].shape[-3:]) != want:
                    raise ValueError(f"pair_weights[{d}] has shape "
                                     f"{tuple(self._pair_weights[d].shape)}; the image "
                                     f"{tuple(x.shape)} has pairs of shape {want} for that "
                                     "offset (weights made for another image grid?)")

    # ------------------------------------------------------------ generic machinery
    def _pairs(self, x: torch.Tensor):
        """Yield ``(sa, sb, w * kappa_a * kappa_b, a, b)`` over the forward offsets."""
        kappa = None if self._kappa is None else self._kappa.to(device=x.device, dtype=x.dtype)
        for d, w in self.offsets:
            sa, sb = _pair_slices(x.shape, d)
            a, b = x[sa], x[sb]
            if a.numel() == 0:
                continue
            weight = w if kappa is None else w * kappa[sa] * kappa[sb]
            if self._pair_weights is not None:
                weight = weight * self._pair_weights[d].to(device=x.device, dtype=x.dtype)
            yield sa, sb, weight, a, b

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Penalty :math:`R(x)`, one value per leading batch element (dtype of ``x``).

        .. math:: R(x) = \\beta \\sum_{\\{r,s\\}} w_{rs}\\kappa_r\\kappa_s\\, \\phi(x_r, x_s)
        """
        self._check_image(x)
        total = torch.zeros(x.shape[:-3], dtype=x.dtype, device=x.device)
        if self.penalisation_factor == 0:
            return total
        for _, _, weight, a, b in self._pairs(x):
            total = total + (weight * self._phi(a, b)).sum(dim=(-3, -2, -1))
        return self.penalisation_factor * total

    def gradient(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`\\nabla R(x)_r = \\beta \\sum_{s \\in N(r)} w_{rs}\\kappa_r\\kappa_s\\,
        \\partial_1\\phi(x_r, x_s)` (``out``: optional tensor to write into, CIL style)."""
        g = self._neighbour_sum(x, self._d1)
        if out is not None:
            out.copy_(g)
            return out
        return g

    def hessian_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal of the Hessian, :math:`\\beta\\sum_{s\\in N(r)} w_{rs}\\kappa_r\\kappa_s\\,
        \\partial_1^2\\phi(x_r, x_s)` (STIR's ``derivative_20`` summed over the neighbourhood)."""
        return self._neighbour_sum(x, self._d11)

    def _neighbour_sum(self, x: torch.Tensor, d) -> torch.Tensor:
        """:math:`\\beta \\sum_{s \\in N(r)} w_{rs}\\kappa_r\\kappa_s\\, d(x_r, x_s)` at every
        voxel ``r`` (each pair ``(r, s)`` adds to both ends), for ``d`` a partial derivative
        of ``phi`` in its first argument."""
        self._check_image(x)
        out = torch.zeros_like(x)
        if self.penalisation_factor != 0:
            for sa, sb, weight, a, b in self._pairs(x):
                out[sa] += weight * d(a, b)
                out[sb] += weight * d(b, a)
            out *= self.penalisation_factor
        return out

    def separable_curvature(self, x: torch.Tensor, lower_ratio: float = 0.75) -> torch.Tensor:
        """Curvatures ``c`` of a separable quadratic majoriser of ``R`` at ``x``.

        For every ``z`` with ``z >= lower_ratio * x`` (componentwise; ``x, z >= 0``)

        .. math::

            R(z) \\le R(x) + \\nabla R(x)^T (z - x) + \\tfrac12 \\sum_r c_r (z_r - x_r)^2 .

        Derivation (De Pierro, IEEE TMI 14(1):132-137, 1995, eq. 9-11, applied to a jointly
        convex pair potential): write each pair as the midpoint
        ``(z_r, z_s) = 1/2 (2 z_r - x_r, x_s) + 1/2 (x_r, 2 z_s - x_s)``, so by convexity
        ``phi(z_r, z_s) <= 1/2 phi(2 z_r - x_r, x_s) + 1/2 phi(x_r, 2 z_s - x_s)``.  With
        ``z_r >= rho x_r`` the argument ``t = 2 z_r - x_r`` stays ``>= tau x_r``,
        ``tau = 2 rho - 1 >= 0``, inside the domain where ``phi`` is convex, and the one-variable
        term has curvature at most ``2 S_rs`` in ``z_r`` with
        ``S_rs = sup_{t >= tau x_r} d^2 phi / dt^2 (t, x_s)``.  Hence

        .. math:: c_r = 2\\beta \\sum_{s \\in N(r)} w_{rs}\\kappa_r\\kappa_s\\, S_{rs}.

        Parameters
        ----------
        x
            Current image (non-negative).
        lower_ratio
            ``rho`` in ``[min_lower_ratio, 1)``; the majoriser holds for ``z >= rho * x``.
        """
        self._check_image(x)
        rho = float(lower_ratio)
        if not self.min_lower_ratio <= rho < 1:
            raise ValueError(f"lower_ratio must be in [{self.min_lower_ratio}, 1), "
                             f"got {lower_ratio}")
        tau = max(0.0, 2 * rho - 1)
        c = torch.zeros_like(x)
        if self.penalisation_factor != 0:
            for sa, sb, weight, a, b in self._pairs(x):
                c[sa] += weight * self._curvature_bound(a, b, tau)
                c[sb] += weight * self._curvature_bound(b, a, tau)
            c *= 2 * self.penalisation_factor
        return c

    __call__ = value

    # ------------------------------------------------------------ SIRF-like surface
    def set_penalisation_factor(self, penalisation_factor: float) -> None:
        """Set ``beta`` (SIRF ``set_penalisation_factor``)."""
        self.penalisation_factor = finite_non_negative(penalisation_factor,
                                                       "penalisation_factor")

    def get_penalisation_factor(self) -> float:
        """``beta`` (SIRF ``get_penalisation_factor``)."""
        return self.penalisation_factor

    def set_kappa(self, kappa: torch.Tensor | None) -> None:
        """Set (or clear with ``None``) the spatially varying weights ``kappa``."""
        if kappa is not None:
            if not isinstance(kappa, torch.Tensor):
                raise TypeError(f"kappa must be a torch.Tensor or None, got {type(kappa).__name__}")
            if kappa.ndim < 3:
                raise ValueError(f"kappa has shape {tuple(kappa.shape)}; expected [..., z, y, x]")
            if not torch.isfinite(kappa).all():
                raise ValueError("kappa contains NaN or infinite values")
        self._kappa = kappa

    def get_kappa(self) -> torch.Tensor | None:
        """The ``kappa`` image (``None``: all ones)."""
        return self._kappa

    def set_pair_weights(self,
                         pair_weights: Mapping[tuple[int, int, int], torch.Tensor] | None) -> None:
        """Set (or clear with ``None``) the per-pair weights (one tensor per forward offset of
        the neighbourhood, finite and non-negative)."""
        if pair_weights is not None:
            want = {d for d, _ in self.offsets}
            got = {tuple(int(k) for k in d) for d in pair_weights}
            if got != want:
                raise ValueError(f"pair_weights must have one tensor per forward offset of the "
                                 f"{self.neighbourhood!r} neighbourhood {sorted(want)}, got "
                                 f"{sorted(got)}")
            pair_weights = {tuple(int(k) for k in d): v for d, v in pair_weights.items()}
            for d, v in pair_weights.items():
                if not isinstance(v, torch.Tensor) or v.ndim < 3:
                    raise ValueError(f"pair_weights[{d}] must be a tensor [..., z, y, x]")
                if not torch.isfinite(v).all() or (v < 0).any():
                    raise ValueError(f"pair_weights[{d}] must be finite and >= 0")
        self._pair_weights = pair_weights

    def get_pair_weights(self) -> dict[tuple[int, int, int], torch.Tensor] | None:
        """The per-pair weights (``None``: all ones)."""
        return self._pair_weights

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`value` (SIRF ``get_value``)."""
        return self.value(x)

    def get_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`gradient` (SIRF ``get_gradient``)."""
        return self.gradient(x)


class RelativeDifferencePrior(NeighbourhoodPrior):
    """Relative difference prior (Nuyts et al., IEEE TNS 49(1):56-60, 2002), exactly as STIR.

    .. math::

        R(x) = \\beta \\sum_r \\sum_{d} \\frac{w_d}{2}\\,\\kappa_r\\kappa_{r+d}\\,
               \\frac{(x_r - x_{r+d})^2}{x_r + x_{r+d} + \\gamma |x_r - x_{r+d}| + \\epsilon}

    (STIR ``RelativeDifferencePrior``: the factor 1/2 sits in front of each *ordered* pair, so
    each unordered pair counts once; ``epsilon`` is added to the denominator only).  Gradient
    (STIR ``derivative_10``):

    .. math::

        \\partial_r R = \\beta \\sum_d w_d \\kappa_r\\kappa_{r+d}\\,
            \\frac{(x_r - x_{r+d})(\\gamma|x_r - x_{r+d}| + x_r + 3 x_{r+d} + 2\\epsilon)}
                 {(x_r + x_{r+d} + \\gamma|x_r - x_{r+d}| + \\epsilon)^2}.

    With ``epsilon = 0`` a pair of zero voxels contributes 0 to value and gradient (STIR's
    choice) and ``inf`` to :meth:`hessian_diagonal`.  Only defined for ``x >= 0``: negative
    images raise ``ValueError``.

    Parameters
    ----------
    penalisation_factor
        ``beta``.
    gamma
        Edge-preservation parameter ``gamma >= 0`` (STIR default 2).
    epsilon
        ``epsilon >= 0`` (STIR default 0; a small positive value, e.g. ``1e-3`` x the expected
        image maximum, makes the prior smooth at zero, as used in PETRIC).
    neighbourhood, voxel_size_mm, kappa, pair_weights
        See :class:`NeighbourhoodPrior`.
    """

    #: The majoriser needs ``2 z - x >= 0``.
    min_lower_ratio = 0.5

    def __init__(self, penalisation_factor: float = 1.0, *, gamma: float = 2.0,
                 epsilon: float = 0.0, neighbourhood: Neighbourhood = "26",
                 voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
                 kappa: torch.Tensor | None = None,
                 pair_weights: Mapping[tuple[int, int, int], torch.Tensor] | None = None) -> None:
        super().__init__(penalisation_factor, neighbourhood=neighbourhood,
                         voxel_size_mm=voxel_size_mm, kappa=kappa, pair_weights=pair_weights)
        self.set_gamma(gamma)
        self.set_epsilon(epsilon)

    def set_gamma(self, gamma: float) -> None:
        """Set ``gamma >= 0``."""
        self.gamma = finite_non_negative(gamma, "gamma")

    def get_gamma(self) -> float:
        return self.gamma

    def set_epsilon(self, epsilon: float) -> None:
        """Set ``epsilon >= 0``."""
        self.epsilon = finite_non_negative(epsilon, "epsilon")

    def get_epsilon(self) -> float:
        return self.epsilon

    def _check_image(self, x: torch.Tensor) -> None:
        super()._check_image(x)
        if (x < 0).any():
            raise ValueError(f"the relative difference prior is defined for non-negative images "
                             f"only (min {float(x.min()):.4g}); clamp the image first")

    def _denominator(self, a, b):
        return a + b + self.gamma * (a - b).abs() + self.epsilon

    def _phi(self, a, b):
        den = self._denominator(a, b)
        both_zero = den == 0  # only when epsilon == 0 and a == b == 0
        return torch.where(both_zero, torch.zeros_like(a),
                           (a - b) ** 2 / torch.where(both_zero, torch.ones_like(den), den))

    def _d1(self, a, b):
        den = self._denominator(a, b)
        both_zero = den == 0
        num = (a - b) * (self.gamma * (a - b).abs() + a + 3 * b + 2 * self.epsilon)
        return torch.where(both_zero, torch.zeros_like(a),
                           num / torch.where(both_zero, torch.ones_like(den), den) ** 2)

    def _d11(self, a, b):
        # d^2/da^2 of (a-b)^2 / D = 2 (2 b + eps)^2 / D^3 on both sides of a = b
        # (STIR derivative_20)
        den = self._denominator(a, b)
        both_zero = den == 0
        return torch.where(both_zero, torch.full_like(a, math.inf),
                           2 * (2 * b + self.epsilon) ** 2
                           / torch.where(both_zero, torch.ones_like(den), den) ** 3)

    def _curvature_bound(self, a, b, tau):
        # phi''(t; b) = 2 K^2 / D(t)^3, K = 2b + eps, with D(t) = t + b + gamma |t - b| + eps
        # piecewise linear in t: decreasing on [0, b] iff gamma > 1, increasing after b.  Its
        # minimum over t >= tau * a is at t* = max(tau a, b) (gamma >= 1) or t* = tau a (gamma < 1).
        t_min = tau * a
        t_star = torch.maximum(t_min, b) if self.gamma >= 1 else t_min
        m = self._denominator(t_star, b)
        k = 2 * b + self.epsilon
        # m == 0 only if b == 0, t* == 0, eps == 0: then phi(t; 0) = t / (1 + gamma) is linear.
        return torch.where(m > 0, 2 * k**2 / torch.where(m > 0, m, torch.ones_like(m)) ** 3,
                           torch.zeros_like(m))


class QuadraticPrior(NeighbourhoodPrior):
    """Quadratic (Gaussian Markov random field) prior, as STIR's ``QuadraticPrior``.

    .. math::

        R(x) = \\frac{\\beta}{4} \\sum_r \\sum_d w_d\\,\\kappa_r\\kappa_{r+d}\\,(x_r - x_{r+d})^2,
        \\qquad
        \\partial_r R = \\beta \\sum_d w_d\\,\\kappa_r\\kappa_{r+d}\\,(x_r - x_{r+d})

    (ordered pairs, so each unordered pair counts ``beta/2 w (x_r - x_s)^2``).  Defined for all
    real images; its separable majoriser (:meth:`separable_curvature`) is global, with
    ``c_r = 2 beta sum_s w_rs kappa_r kappa_s`` (twice STIR's ``parabolic_surrogate_curvature``,
    De Pierro 1995).
    """

    min_lower_ratio = 0.0

    def _phi(self, a, b):
        return 0.5 * (a - b) ** 2

    def _d1(self, a, b):
        return a - b

    def _d11(self, a, b):
        return torch.ones_like(a)

    def _curvature_bound(self, a, b, tau):
        return torch.ones_like(a)
