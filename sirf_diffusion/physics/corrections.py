"""Data corrections in sinogram space: crystal-efficiency normalisation, randoms and scatter.

All sinograms are ``[sinogram, view, tangential]`` tensors in STIR's ``as_array()`` order (see
:class:`~sirf_diffusion.physics.geometry.SinogramGeometry`); device and dtype follow the input
tensors (or the ``device``/``dtype`` arguments where there is no input tensor).  The model is
SIRF's ``ybar = m * (G x) + b``: the normalisation returned here is a factor of ``m`` (it
multiplies the expected counts), the randoms and scatter sinograms are parts of ``b`` (counts).

Detector pairs
--------------
A bin is the set of lines of response (LORs) it merges.  For STIR's cylindrical geometries
(``ProjDataInfoCylindricalNoArcCorr``):

* **transaxial**: the unmashed view ``v`` and tangential position ``t`` join crystals
  (``get_det_num_pair_for_view_tangential_pos_num``; ``>>`` is a floor shift)

  .. math::

      d_1 = (v + (t \\gg 1)) \\bmod N, \\qquad d_2 = (v - ((t + 1) \\gg 1) + N/2) \\bmod N,

  with ``N`` detectors per ring; crystal ``d`` sits at azimuth ``2 pi d / N`` measured from the
  ``-y`` axis, so ``d_1`` is the LOR end point ``P1`` (``-d`` side, README section 1.2) and the
  tangential coordinate is ``s = R sin(t pi / N)``.  A view ``v`` of data mashed by ``k`` merges
  the unmashed views ``v k ... v k + k - 1``.
* **axial**: a bin of segment ``S`` (ring differences ``r2 - r1`` in ``[dmin, dmax]``) at axial
  coordinate ``m`` merges every ring pair with ``r2 - r1`` in that range and
  ``(r1 + r2) / 2 = m / ring_spacing + (num_rings - 1) / 2``; ring ``r1`` belongs to ``d_1`` and
  ``r2`` to ``d_2`` (STIR ``get_all_det_pos_pairs_for_bin``).  For span 1 this is the single
  pair ``(a + max(0, -d), a + max(0, d))``.
* **arc-corrected** data have no detector pairs; each bin is given the pair of the nearest
  non-arc-corrected position ``t' = round(N asin(s / R) / pi)`` (an approximation, documented
  where used).  Bins with ``|s| >= R`` or ``|t'| = N/2`` contain no LOR.

The reductions over the LORs of a bin run over segments, ring differences and mashed views
(a handful of vectorised passes); nothing loops over bins or LORs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from .geometry import Scanner, SinogramGeometry

__all__ = [
    "detector_pair_for_view_tangential",
    "ring_pairs_for_segment",
    "bin_lors",
    "num_lors_per_bin",
    "normalisation_from_efficiencies",
    "random_crystal_efficiencies",
    "uniform_randoms",
    "randoms_from_singles",
    "fan_sums",
    "singles_from_fan_sums",
    "scatter_like",
]


# --------------------------------------------------------------------------- detector pairs
def detector_pair_for_view_tangential(view: torch.Tensor, tangential: torch.Tensor,
                                      num_detectors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crystals ``(d1, d2)`` of unmashed view ``view`` and STIR tangential position ``tangential``.

    STIR ``ProjDataInfoCylindricalNoArcCorr::get_det_num_pair_for_view_tangential_pos_num``:
    ``d1 = (v + floor(t / 2)) mod N``, ``d2 = (v - floor((t + 1) / 2) + N / 2) mod N``.  Inputs
    broadcast against each other; ``t`` must lie in STIR's range ``-N/2+1 ... N/2``.
    """
    if num_detectors <= 0 or num_detectors % 2:
        raise ValueError(f"num_detectors must be positive and even, got {num_detectors}")
    v = torch.as_tensor(view)
    t = torch.as_tensor(tangential, device=v.device)
    if v.dtype.is_floating_point or t.dtype.is_floating_point:
        raise TypeError("view and tangential must be integer tensors")
    if ((t < -num_detectors // 2 + 1) | (t > num_detectors // 2)).any():
        raise ValueError(f"tangential positions must lie in [{-num_detectors // 2 + 1}, "
                         f"{num_detectors // 2}] for {num_detectors} detectors")
    n = num_detectors
    d1 = torch.remainder(v + torch.div(t, 2, rounding_mode="floor"), n)
    d2 = torch.remainder(v - torch.div(t + 1, 2, rounding_mode="floor") + n // 2, n)
    return d1, d2


def _nonarccorr_tangential(geometry: SinogramGeometry, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-arc-corrected tangential position of every tangential bin and whether it has a LOR."""
    sc = geometry.scanner
    n = sc.num_detectors_per_ring
    if not geometry.arc_corrected:
        t = torch.as_tensor(geometry.tangential_indices(), dtype=torch.long, device=device)
        valid = (t > -n // 2) & (t < n // 2)
        return torch.where(valid, t, torch.zeros_like(t)), valid
    s = torch.as_tensor(geometry.s(), dtype=torch.float64, device=device)
    R = sc.effective_ring_radius_mm
    inside = s.abs() < R
    t = torch.round(torch.asin((s / R).clamp(-1, 1)) * n / math.pi).to(torch.long)
    valid = inside & (t > -n // 2) & (t < n // 2)
    return torch.where(valid, t, torch.zeros_like(t)), valid


_RingPairs = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]


def ring_pairs_for_segment(geometry: SinogramGeometry, segment: int,
                           device: torch.device | str = "cpu") -> list[_RingPairs]:
    """Ring pairs merged in every axial position of a segment.

    Returns
    -------
    list of ``(d, r1, r2, valid)``, one per ring difference ``d = r2 - r1`` of the segment, with
    ``r1``, ``r2`` (long) and ``valid`` (bool) of length ``num_axial_positions``: axial position
    ``a`` contains ring pair ``(r1[a], r2[a])`` iff ``valid[a]``.  The pairs satisfy
    ``(r1 + r2) / 2 = m(a) / ring_spacing + (num_rings - 1) / 2`` (README section 1.2).
    """
    seg = geometry.segment(segment)
    sc = geometry.scanner
    nr = sc.num_rings
    m = torch.as_tensor(seg.m_mm(), dtype=torch.float64, device=device)
    ring_sum = torch.round(2 * m / sc.ring_spacing_mm + (nr - 1)).to(torch.long)
    out = []
    for d in range(seg.min_ring_difference, seg.max_ring_difference + 1):
        twice_r1 = ring_sum - d
        r1 = torch.div(twice_r1, 2, rounding_mode="floor")
        r2 = r1 + d
        valid = (torch.remainder(twice_r1, 2) == 0) & (r1 >= 0) & (r1 < nr) & (r2 >= 0) & (r2 < nr)
        out.append((d, torch.where(valid, r1, 0), torch.where(valid, r2, 0), valid))
    return out


@dataclass(frozen=True)
class _LorGroup:
    """LORs sharing a segment, a ring difference and a mashed-view offset ([A, V, T])."""

    start: int            # first sinogram of the segment in the as_array order
    r1: torch.Tensor      # [A, 1, 1]
    r2: torch.Tensor      # [A, 1, 1]
    d1: torch.Tensor      # [1, V, T]
    d2: torch.Tensor      # [1, V, T]
    valid: torch.Tensor   # [A, V, T] bool


def _lor_groups(geometry: SinogramGeometry, device) -> Iterator[_LorGroup]:
    n = geometry.scanner.num_detectors_per_ring
    k = geometry.view_mashing_factor
    t, t_valid = _nonarccorr_tangential(geometry, device)
    views = torch.arange(geometry.num_views, device=device) * k
    pairs_j = []
    for j in range(k):
        d1, d2 = detector_pair_for_view_tangential(views[:, None] + j, t[None, :], n)
        pairs_j.append((d1[None], d2[None]))
    for seg in geometry.segments:
        start = geometry.sinogram_offset(seg.number)
        for _, r1, r2, rvalid in ring_pairs_for_segment(geometry, seg.number, device):
            if not bool(rvalid.any()):
                continue
            valid = rvalid[:, None, None] & t_valid[None, None, :].expand(1, geometry.num_views, -1)
            for d1, d2 in pairs_j:
                yield _LorGroup(start, r1[:, None, None], r2[:, None, None], d1, d2, valid)


def bin_lors(geometry: SinogramGeometry, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every LOR of every bin as rows ``(sinogram, view, tangential_index, r1, d1, r2, d2)``.

    Meant for checks and small geometries (one row per LOR).  ``tangential_index`` is the array
    index ``t + num_tangential // 2``.
    """
    rows = []
    for g in _lor_groups(geometry, device):
        a, v, t = torch.nonzero(g.valid, as_tuple=True)
        r1 = g.r1.reshape(-1)[a]
        r2 = g.r2.reshape(-1)[a]
        d1 = g.d1[0][v, t]
        d2 = g.d2[0][v, t]
        rows.append(torch.stack([a + g.start, v, t, r1, d1, r2, d2], dim=1))
    if not rows:
        return torch.zeros((0, 7), dtype=torch.long, device=device)
    return torch.cat(rows)


def _reduce_over_lors(geometry: SinogramGeometry,
                      pair_value: Callable[..., torch.Tensor],
                      dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``pair_value(r1, d1, r2, d2)`` over the LORs of every bin, and their number."""
    total = torch.zeros(geometry.shape, dtype=dtype, device=device)
    count = torch.zeros(geometry.shape, dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    for g in _lor_groups(geometry, device):
        val = pair_value(g.r1, g.d1, g.r2, g.d2)
        a = g.valid.shape[0]
        total[g.start:g.start + a] += torch.where(g.valid, val, zero)
        count[g.start:g.start + a] += g.valid.to(dtype)
    return total, count


def num_lors_per_bin(geometry: SinogramGeometry, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Number of detector pairs merged in every bin (ring pairs x mashed views; 0 off the ring)."""
    zero = torch.zeros((), dtype=dtype, device=device)
    _, count = _reduce_over_lors(geometry, lambda r1, d1, r2, d2: zero, dtype, device)
    return count


def _check_per_crystal(values: torch.Tensor, scanner: Scanner, name: str) -> None:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}")
    expected = (scanner.num_rings, scanner.num_detectors_per_ring)
    if tuple(values.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(values.shape)}, expected {expected} = "
                         "(num_rings, num_detectors_per_ring)")
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    if (values < 0).any():
        raise ValueError(f"{name} must be >= 0 (min {float(values.min()):.4g})")


# --------------------------------------------------------------------------- normalisation
def normalisation_from_efficiencies(efficiencies: torch.Tensor, geometry: SinogramGeometry, *,
                                    reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Per-bin multiplicative factor from crystal efficiencies (component-based normalisation).

    The detection probability of LOR ``(r1, d1) - (r2, d2)`` is scaled by
    ``eps[r1, d1] * eps[r2, d2]``; the factor of a bin is

    .. math::

        n_b = \\frac{1}{|L_b|} \\sum_{(r_1 d_1, r_2 d_2) \\in L_b}
              \\epsilon_{r_1 d_1} \\epsilon_{r_2 d_2}

    over its LORs ``L_b`` (ring pairs merged by the span, unmashed views merged by view mashing;
    ``reduction="sum"`` drops the ``1/|L_b|``).  It *multiplies* the expected counts, i.e. it is
    a factor of ``m`` in ``ybar = m * (G x) + b`` (STIR's ``BinNormalisation`` "undo" direction;
    a normalisation *correction* divides by it).  Bins without a LOR (arc-corrected bins with
    ``|s| >= R``) get 0.  Arc-corrected bins use the nearest non-arc-corrected detector pair.

    Parameters
    ----------
    efficiencies
        ``[num_rings, num_detectors_per_ring]`` tensor, >= 0.  Output dtype/device follow it.
    geometry
        The sinogram geometry.
    reduction
        ``"mean"`` (default: all-ones efficiencies give all-ones factors) or ``"sum"``.
    """
    _check_per_crystal(efficiencies, geometry.scanner, "efficiencies")
    eps = efficiencies
    total, count = _reduce_over_lors(geometry, lambda r1, d1, r2, d2: eps[r1, d1] * eps[r2, d2],
                                     eps.dtype, eps.device)
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def random_crystal_efficiencies(scanner: Scanner, *, generator: torch.Generator,
                                spread: float = 0.1,
                                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random crystal efficiencies ``eps = exp(spread * z - spread^2 / 2)``, ``z ~ N(0, 1)``.

    Log-normal, so positive with mean 1 and relative standard deviation
    ``sqrt(exp(spread^2) - 1) ~ spread``.  Shape ``[num_rings, num_detectors_per_ring]``; the
    device is the generator's.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator")
    if not (spread >= 0 and math.isfinite(spread)):
        raise ValueError(f"spread must be finite and >= 0, got {spread}")
    z = torch.randn((scanner.num_rings, scanner.num_detectors_per_ring), generator=generator,
                    dtype=dtype, device=generator.device)
    return torch.exp(spread * z - 0.5 * spread ** 2)


# --------------------------------------------------------------------------- randoms
def uniform_randoms(geometry: SinogramGeometry, total_counts: float, *,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """A constant randoms sinogram with ``total_counts`` expected counts spread over all bins."""
    if not (total_counts >= 0 and math.isfinite(total_counts)):
        raise ValueError(f"total_counts must be finite and >= 0, got {total_counts}")
    n = geometry.shape[0] * geometry.shape[1] * geometry.shape[2]
    return torch.full(geometry.shape, float(total_counts) / n, dtype=dtype, device=device)


def randoms_from_singles(singles: torch.Tensor, geometry: SinogramGeometry, *, tau_s: float,
                         duration_s: float = 1.0) -> torch.Tensor:
    """Expected randoms from crystal singles rates (Hoffman et al. 1981; Casey & Hoffman 1986).

    .. math::

        R_b = T \\sum_{(r_1 d_1, r_2 d_2) \\in L_b} 2 \\tau\\, s_{r_1 d_1} s_{r_2 d_2}

    i.e. the coincidence rate ``2 tau s_i s_j`` of every detector pair (``2 tau`` the coincidence
    window width, ``s`` in counts/s), times the duration ``T``, summed over the LORs merged in the
    bin (the counts of a compressed bin are the sum of its LORs' counts).

    Parameters
    ----------
    singles
        ``[num_rings, num_detectors_per_ring]`` singles rates (counts/s), >= 0.
    tau_s
        Half the coincidence window (s).
    duration_s
        Acquisition time (s).
    """
    _check_per_crystal(singles, geometry.scanner, "singles")
    if not (tau_s > 0 and duration_s > 0):
        raise ValueError(f"tau_s and duration_s must be > 0, got {tau_s}, {duration_s}")
    s = singles
    total, _ = _reduce_over_lors(geometry, lambda r1, d1, r2, d2: s[r1, d1] * s[r2, d2],
                                 s.dtype, s.device)
    return total * (2.0 * tau_s * duration_s)


def _check_sinogram(y: torch.Tensor, geometry: SinogramGeometry, name: str) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    geometry.check_data_shape(tuple(y.shape), name)
    if y.ndim != 3:
        raise ValueError(f"{name} must have shape {geometry.shape} (no batch axes), "
                         f"got {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} contain NaN or infinite values")


def fan_sums(sinogram: torch.Tensor, geometry: SinogramGeometry) -> torch.Tensor:
    """Per-crystal fan sums ``F_i = sum_{LOR j touching i} y_j`` of a sinogram.

    A bin's value is shared equally among its LORs (exact for span-1 unmashed
    non-arc-corrected data, where every bin is one LOR; an approximation otherwise).  Returns a
    ``[num_rings, num_detectors_per_ring]`` tensor whose sum is twice the sinogram's sum over
    bins that contain a LOR.
    """
    _check_sinogram(sinogram, geometry, "sinogram")
    sc = geometry.scanner
    dtype, device = sinogram.dtype, sinogram.device
    count = num_lors_per_bin(geometry, dtype=dtype, device=device)
    share = torch.where(count > 0, sinogram / count.clamp_min(1), torch.zeros_like(sinogram))
    fan = torch.zeros(sc.num_rings * sc.num_detectors_per_ring, dtype=dtype, device=device)
    n = sc.num_detectors_per_ring
    for g in _lor_groups(geometry, device):
        a = g.valid.shape[0]
        w = share[g.start:g.start + a][g.valid]
        idx1 = (g.r1 * n + g.d1).expand_as(g.valid)[g.valid]
        idx2 = (g.r2 * n + g.d2).expand_as(g.valid)[g.valid]
        fan.index_add_(0, idx1, w)
        fan.index_add_(0, idx2, w)
    return fan.reshape(sc.num_rings, n)


def _fan_operator(singles: torch.Tensor, geometry: SinogramGeometry) -> torch.Tensor:
    """``(A s)_i = sum_{j in fan(i)} s_j`` over the LORs of the geometry."""
    sc = geometry.scanner
    n = sc.num_detectors_per_ring
    flat = singles.reshape(-1)
    out = torch.zeros_like(flat)
    for g in _lor_groups(geometry, singles.device):
        idx1 = (g.r1 * n + g.d1).expand_as(g.valid)[g.valid]
        idx2 = (g.r2 * n + g.d2).expand_as(g.valid)[g.valid]
        out.index_add_(0, idx1, flat[idx2])
        out.index_add_(0, idx2, flat[idx1])
    return out.reshape(singles.shape)


def singles_from_fan_sums(fans: torch.Tensor, geometry: SinogramGeometry, *, tau_s: float,
                          duration_s: float = 1.0, num_iterations: int = 100) -> torch.Tensor:
    """Singles rates whose randoms ``2 tau T s_i s_j`` have the given fan sums.

    Solves ``F_i = 2 tau T s_i (A s)_i`` (``A`` the fan operator: ``(A s)_i`` sums ``s_j`` over
    the crystals in coincidence with ``i``) by the damped fixed-point iteration

    .. math::

        s \\leftarrow \\sqrt{ s \\cdot \\frac{F}{2 \\tau T\\, A s} }

    (geometric mean of ``s`` and the plain update ``F / (2 tau T A s)``, which would flip the
    overall scale every step), started from ``s_i = F_i / sqrt(2 tau T sum F)``.  This is the
    maximum-likelihood singles estimate of randoms-from-delayeds methods (Panin et al. 2007).
    Crystals with ``F_i = 0`` get ``s_i = 0``.
    """
    _check_per_crystal(fans, geometry.scanner, "fan sums")
    if not (tau_s > 0 and duration_s > 0):
        raise ValueError(f"tau_s and duration_s must be > 0, got {tau_s}, {duration_s}")
    if num_iterations < 1:
        raise ValueError("num_iterations must be >= 1")
    c = 2.0 * tau_s * duration_s
    total = fans.sum()
    if total <= 0:
        return torch.zeros_like(fans)
    s = fans / torch.sqrt(c * total)
    for _ in range(num_iterations):
        a_s = _fan_operator(s, geometry)
        update = torch.where(a_s > 0, fans / (c * a_s.clamp_min(torch.finfo(fans.dtype).tiny)),
                             torch.zeros_like(fans))
        s = torch.sqrt(s * update)
    return s


# --------------------------------------------------------------------------- scatter
def _gauss_kernel(sigma: float, dtype, device) -> torch.Tensor:
    half = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-half, half + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


#: Elements per block of :func:`scatter_like`'s blurs: sinogram elements, and the unfolded
#: columns of a convolution (:func:`_conv_rows`); 8 M, 64 MiB in float64.
_BLOCK_ELEMENTS = 1 << 23


def _conv_rows(rows: torch.Tensor, k: torch.Tensor, padding: int) -> torch.Tensor:
    """``conv1d`` of every row of ``rows [N, 1, L]`` with the kernel ``k``, in blocks of rows.

    PyTorch's CPU convolution of float64 (and of other types without a oneDNN kernel) unfolds
    its input into ``N x L x len(k)`` columns, which for a whole clinical sinogram would be
    tens of GiB; blocks of at most :data:`_BLOCK_ELEMENTS` unfolded elements bound that, and
    give the same rows.
    """
    n, _, length = rows.shape
    width = length + 2 * padding
    step = max(1, _BLOCK_ELEMENTS // (width * k.numel()))
    out = rows.new_empty((n, 1, width - k.numel() + 1))
    for i in range(0, n, step):
        out[i:i + step] = torch.nn.functional.conv1d(rows[i:i + step], k.view(1, 1, -1),
                                                     padding=padding)
    return out


def _smooth_last(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing along the last axis with zero padding (``sigma`` in samples)."""
    if sigma <= 0:
        return x
    k = _gauss_kernel(sigma, x.dtype, x.device)
    shape = x.shape
    y = _conv_rows(x.reshape(-1, 1, shape[-1]), k, k.numel() // 2)
    return y[..., : shape[-1]].reshape(shape)


def _smooth_views(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing over views ``[S, V, T]``, continued past 180 degrees as sinograms are.

    View ``V + u`` is view ``u`` with ``s -> -s`` (tangential index ``i -> 2 (T // 2) - i``).
    """
    if sigma <= 0:
        return x
    S, V, T = x.shape
    k = _gauss_kernel(sigma, x.dtype, x.device)
    p = k.numel() // 2
    if p >= V:
        raise ValueError(f"view smoothing sigma {sigma} is too wide for {V} views")
    mirror = (2 * (T // 2) - torch.arange(T, device=x.device)).clamp(0, T - 1)
    before = x[:, V - p:, :][:, :, mirror]
    after = x[:, :p, :][:, :, mirror]
    padded = torch.cat([before, x, after], dim=1)          # [S, V + 2p, T]
    rows = padded.permute(0, 2, 1).reshape(-1, 1, V + 2 * p)
    y = _conv_rows(rows, k, 0)
    return y.reshape(S, T, V).permute(0, 2, 1).contiguous()


def scatter_like(trues: torch.Tensor, geometry: SinogramGeometry, *, scatter_fraction: float,
                 tangential_sigma_mm: float = 100.0, view_sigma_deg: float = 20.0,
                 axial_sigma_mm: float = 20.0) -> torch.Tensor:
    """A smooth, scatter-like additive sinogram with a requested scatter fraction.

    The trues sinogram (expected true coincidences, counts, i.e. ``m * G x``) is blurred by a
    broad Gaussian along ``s`` (zero padded: tails extend past the object, as scatter does),
    along views (continued through 180 degrees with ``s -> -s``) and along the axial positions
    of each segment, and scaled so that the NEMA scatter fraction
    ``SF = S / (S + T)`` of the totals is ``scatter_fraction``:

    .. math::

        \\mathrm{scatter} = \\frac{SF}{1 - SF}
            \\frac{\\sum \\mathrm{trues}}{\\sum B(\\mathrm{trues})} B(\\mathrm{trues}).

    This only mimics the low-frequency shape of scatter (it is not a single-scatter simulation).
    """
    _check_sinogram(trues, geometry, "trues")
    if (trues < 0).any():
        raise ValueError("trues must be >= 0")
    if not 0 <= scatter_fraction < 1:
        raise ValueError(f"scatter_fraction must be in [0, 1), got {scatter_fraction}")
    total = trues.sum()
    if total <= 0:
        raise ValueError("trues sum to 0: no scatter fraction can be defined")
    sc = geometry.scanner
    t_step = (float(geometry.tangential_sampling_mm) if geometry.arc_corrected
              else sc.effective_ring_radius_mm * math.pi / sc.num_detectors_per_ring)
    # Blocks of about _BLOCK_ELEMENTS keep the temporaries of the convolutions (padding, the
    # transposed copies) small next to the sinogram: every blur acts along one axis, so blocks
    # across the other axes give the same numbers as one pass over the whole sinogram.
    S, V, T = trues.shape
    out = torch.empty_like(trues)
    rows = max(1, _BLOCK_ELEMENTS // (V * T))
    for s0 in range(0, S, rows):
        y = _smooth_last(trues[s0:s0 + rows], tangential_sigma_mm / t_step)
        out[s0:s0 + rows] = _smooth_views(y, math.radians(view_sigma_deg)
                                          / (math.pi / geometry.num_views))
    for seg in geometry.segments:
        off, n_ax = geometry.sinogram_offset(seg.number), seg.num_axial_positions
        sig = axial_sigma_mm / seg.axial_sampling_mm
        if n_ax <= 1 or sig <= 0:
            continue
        block = out[off:off + n_ax]                                  # [A, V, T], a view
        # normalised convolution keeps the edges of the axial range unbiased
        norm = _smooth_last(torch.ones(1, 1, n_ax, dtype=out.dtype, device=out.device), sig)
        views = max(1, _BLOCK_ELEMENTS // (n_ax * T))
        for v0 in range(0, V, views):
            b = block[:, v0:v0 + views].permute(1, 2, 0)             # [v, T, A]
            block[:, v0:v0 + views] = (_smooth_last(b, sig) / norm).permute(2, 0, 1)
    return out.mul_(scatter_fraction / (1 - scatter_fraction) * total / out.sum())
