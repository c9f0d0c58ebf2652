"""Image-quality metrics for PET reconstructions (numpy or torch in, floats / numpy arrays out).

Conventions: a reference image ``ref`` has the spatial shape ``S`` (e.g. ``[z, y, x]`` or
``[y, x]``); the image ``x`` has shape ``S`` or ``[..., *S]`` (leading batch dimensions give one
result per batch element, as a numpy array); masks are boolean of shape ``S``.  Everything is
computed in float64 with numpy / scipy.

Definitions (``M`` the mask, ``|M|`` its number of voxels):

* NRMSE :math:`= \\lVert x - r \\rVert_M / \\lVert r \\rVert_M` (Euclidean norms over the mask).
* PSNR :math:`= 10 \\log_{10}(D^2 / \\mathrm{MSE}_M)`, ``D`` = max of the reference in the mask.
* SSIM: Wang et al., IEEE TIP 13(4):600-612, 2004, with a Gaussian window (sigma 1.5), computed
  on the whole image and then averaged over the mask.
* CRC :math:`= (\\bar x_L / \\bar x_B - 1) / (r_{true} - 1)` (NEMA NU 2 hot-contrast recovery).
* BV (NEMA NU 2): standard deviation (ddof=1) of the background ROI means over their mean.

Per lesion (:func:`lesion_report`, one integer label per lesion, each with its own local
background from :func:`lesion_backgrounds`): the true contrast :math:`r_{true} = \\bar r_L / \\bar
r_B` of the reference decides hot (> 1) or cold (< 1); the CRC formula above holds for both (for a
cold lesion it is NEMA's cold-contrast recovery :math:`(1 - \\bar x_L/\\bar x_B) / (1 - r_{true})`
written the same way: 1 = recovered, 0 = filled to the background level); the relative bias of the
lesion mean; and, given a posterior standard deviation map :math:`s`, the ratio
:math:`\\bar s_L / \\bar s_B`.  :func:`lesion_verdict` turns a CRC into a plain word
("recovered", "partly erased", "filled", ...).

:func:`image_metrics` is the summary every front end reports (command line, demo, benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

__all__ = [
    "nrmse",
    "psnr",
    "ssim",
    "crc",
    "background_variability",
    "coefficient_of_variation",
    "BiasVariance",
    "bias_variance",
    "roi_bias_std",
    "metrics_table",
    "image_metrics",
    "LesionMetrics",
    "lesion_backgrounds",
    "lesion_report",
    "lesion_verdict",
]


def _np(a: Any, name: str) -> np.ndarray:
    """float64 numpy copy of a numpy array / torch tensor / number."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch.Tensor, without importing torch
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _mask(mask: Any, shape: tuple[int, ...] | None, name: str = "mask") -> np.ndarray:
    """Boolean non-empty mask of the given shape (``None``: its own shape; ``mask=None``: all)."""
    if mask is None:
        if shape is None:
            raise ValueError(f"{name} is required")
        return np.ones(shape, dtype=bool)
    if hasattr(mask, "detach") and hasattr(mask, "cpu"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1)")
        m = m.astype(bool)
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, expected the reference's shape "
                         f"{tuple(shape)}")
    if not m.any():
        raise ValueError(f"{name} is empty")
    return m


def _check_image(x: np.ndarray, shape: tuple[int, ...], name: str = "image") -> None:
    if x.shape[x.ndim - len(shape):] != tuple(shape) or x.ndim < len(shape):
        raise ValueError(f"{name} has shape {x.shape}, expected "
                         f"(..., {', '.join(map(str, shape))})")


def _out(v: np.ndarray) -> float | np.ndarray:
    return float(v) if np.ndim(v) == 0 else v


def nrmse(x: Any, ref: Any, mask: Any = None) -> float | np.ndarray:
    """Normalised root-mean-square error :math:`\\lVert x - r\\rVert_M / \\lVert r\\rVert_M`.

    Equal to ``RMSE_M / RMS_M(ref)``; 0 for identical images; raises if the reference is zero in
    the mask.
    """
    r = _np(ref, "ref")
    xx = _np(x, "x")
    _check_image(xx, r.shape, "x")
    m = _mask(mask, r.shape)
    den = np.sqrt(np.sum(r[m] ** 2))
    if den == 0:
        raise ValueError("the reference is zero inside the mask: NRMSE is undefined")
    return _out(np.sqrt(np.sum((xx[..., m] - r[m]) ** 2, axis=-1)) / den)


def psnr(x: Any, ref: Any, mask: Any = None, data_range: float | None = None) -> float | np.ndarray:
    """Peak signal-to-noise ratio :math:`10\\log_{10}(D^2/\\mathrm{MSE}_M)` in dB.

    ``D`` (``data_range``) defaults to the maximum of the reference inside the mask.  Identical
    images give ``inf``.
    """
    r = _np(ref, "ref")
    xx = _np(x, "x")
    _check_image(xx, r.shape, "x")
    m = _mask(mask, r.shape)
    d = float(r[m].max()) if data_range is None else float(data_range)
    if not d > 0:
        raise ValueError(f"data_range must be > 0 (got {d}); the reference max in the mask is not")
    mse = np.mean((xx[..., m] - r[m]) ** 2, axis=-1)
    with np.errstate(divide="ignore"):
        return _out(10 * np.log10(d**2 / mse))


def ssim(x: Any, ref: Any, mask: Any = None, *, data_range: float | None = None,
         spatial_dims: Literal[2, 3] | None = None, sigma: float = 1.5, truncate: float = 3.5,
         k1: float = 0.01, k2: float = 0.03) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004) with a Gaussian window, averaged over a mask.

    .. math::

        \\mathrm{SSIM}(p) = \\frac{(2\\mu_x\\mu_r + C_1)(2\\sigma_{xr} + C_2)}
                                 {(\\mu_x^2 + \\mu_r^2 + C_1)(\\sigma_x^2 + \\sigma_r^2 + C_2)},
        \\qquad C_i = (k_i D)^2,

    with local means, variances and covariance from a normalised Gaussian window (standard
    deviation ``sigma`` voxels, radius ``int(truncate * sigma + 0.5)``, reflecting image edges,
    population (not sample) statistics as in the paper).  The map is computed on the whole
    image, then averaged over ``mask`` (no border cropping).

    Parameters
    ----------
    x, ref, mask
        See the module docstring.
    data_range
        ``D``; default: the maximum of the reference in the mask.
    spatial_dims
        2: window in the last two axes only (slice-wise SSIM of ``[z, y, x]`` volumes); 3: in
        the last three.  Default: 2 for 2D references (and single-slice ``[1, y, x]``), else 3.
    sigma, truncate, k1, k2
        Window and constants (Wang et al.: 1.5, 11x11 window, 0.01, 0.03).
    """
    from scipy.ndimage import gaussian_filter

    r = _np(ref, "ref")
    xx = _np(x, "x")
    _check_image(xx, r.shape, "x")
    m = _mask(mask, r.shape)
    if spatial_dims is None:
        spatial_dims = 2 if r.ndim == 2 or (r.ndim >= 3 and r.shape[-3] == 1) else 3
    if spatial_dims not in (2, 3) or spatial_dims > r.ndim:
        raise ValueError(f"spatial_dims must be 2 or 3 (and <= ref.ndim={r.ndim}), "
                         f"got {spatial_dims}")
    d = float(r[m].max()) if data_range is None else float(data_range)
    if not d > 0:
        raise ValueError(f"data_range must be > 0 (got {d})")
    c1, c2 = (k1 * d) ** 2, (k2 * d) ** 2
    sig = [0.0] * (xx.ndim - spatial_dims) + [float(sigma)] * spatial_dims

    def filt(a):
        return gaussian_filter(a, sigma=sig, truncate=truncate, mode="reflect")

    rb = np.broadcast_to(r, xx.shape)
    mu_x, mu_r = filt(xx), filt(rb)
    var_x = filt(xx * xx) - mu_x**2
    var_r = filt(rb * rb) - mu_r**2
    cov = filt(xx * rb) - mu_x * mu_r
    smap = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)
            / ((mu_x**2 + mu_r**2 + c1) * (var_x + var_r + c2)))
    return _out(smap[..., m].mean(axis=-1))


def crc(x: Any, lesion_mask: Any, background_mask: Any, true_ratio: float) -> float | np.ndarray:
    """Contrast recovery coefficient of a hot lesion (NEMA NU 2 style).

    .. math:: \\mathrm{CRC} = \\frac{\\bar x_L / \\bar x_B - 1}{r_{true} - 1}

    with :math:`\\bar x_L, \\bar x_B` the mean of ``x`` in the lesion and background masks and
    ``true_ratio`` the true lesion-to-background activity ratio (1 = perfect recovery).
    """
    lm = _mask(lesion_mask, None, "lesion_mask")
    bm = _mask(background_mask, lm.shape, "background_mask")
    xx = _np(x, "x")
    _check_image(xx, lm.shape, "x")
    tr = float(true_ratio)
    if not math.isfinite(tr) or tr == 1:
        raise ValueError(f"true_ratio must be finite and != 1, got {true_ratio}")
    mean_b = xx[..., bm].mean(axis=-1)
    if np.any(mean_b == 0):
        raise ValueError("the background mean is 0: CRC is undefined")
    return _out((xx[..., lm].mean(axis=-1) / mean_b - 1) / (tr - 1))


def background_variability(x: Any, background_rois: Sequence[Any] | Any) -> float | np.ndarray:
    """NEMA NU 2 background variability: SD of the background ROI means over their mean.

    .. math:: \\mathrm{BV} = \\frac{\\mathrm{SD}_k(\\bar x_{B,k})}{\\mathrm{mean}_k(\\bar x_{B,k})}

    (``SD`` with ``K - 1`` in the denominator).  ``background_rois``: a sequence of ``K >= 2``
    boolean masks, or one array ``[K, *S]``.  For the voxel-wise standard deviation over mean in
    one region use :func:`coefficient_of_variation`.
    """
    rois = list(background_rois)
    if len(rois) < 2:
        raise ValueError("background variability needs at least 2 background ROIs, "
                         f"got {len(rois)}")
    first = _mask(rois[0], None, "background ROI 0")
    masks = [first] + [_mask(r, first.shape, f"background ROI {i}")
                       for i, r in enumerate(rois[1:], 1)]
    xx = _np(x, "x")
    _check_image(xx, masks[0].shape, "x")
    means = np.stack([xx[..., m].mean(axis=-1) for m in masks], axis=-1)
    mu = means.mean(axis=-1)
    if np.any(mu == 0):
        raise ValueError("the mean of the background ROI means is 0: BV is undefined")
    return _out(means.std(axis=-1, ddof=1) / mu)


def coefficient_of_variation(x: Any, mask: Any) -> float | np.ndarray:
    """Voxel-wise standard deviation (ddof=1) over mean of ``x`` inside ``mask``."""
    xx = _np(x, "x")
    m = _mask(mask, None)
    _check_image(xx, m.shape, "x")
    if m.sum() < 2:
        raise ValueError("the mask needs at least 2 voxels")
    v = xx[..., m]
    mu = v.mean(axis=-1)
    if np.any(mu == 0):
        raise ValueError("the mean in the mask is 0: the coefficient of variation is undefined")
    return _out(v.std(axis=-1, ddof=1) / mu)


@dataclass
class BiasVariance:
    """Bias and variance of a reconstruction over noise realisations.

    Attributes
    ----------
    mean, bias, variance
        Per-voxel maps: mean over realisations, ``mean - ref``, variance (ddof=1).
    nrms_bias
        :math:`\\lVert \\mathrm{mean} - r\\rVert_M / \\lVert r\\rVert_M`.
    nrms_std
        :math:`\\sqrt{\\sum_M \\mathrm{variance}} / \\lVert r\\rVert_M` (same normalisation, so
        ``nrms_bias^2 + nrms_std^2 * (R-1)/R`` is the mean squared NRMSE over realisations).
    """

    mean: np.ndarray
    bias: np.ndarray
    variance: np.ndarray
    nrms_bias: float
    nrms_std: float


def bias_variance(realisations: Any, ref: Any, mask: Any = None) -> BiasVariance:
    """Per-voxel and image-level bias / variance of ``R >= 2`` realisations ``[R, *S]``."""
    r = _np(ref, "ref")
    xs = _np(realisations, "realisations")
    if xs.ndim != r.ndim + 1 or xs.shape[1:] != r.shape or xs.shape[0] < 2:
        raise ValueError(f"realisations have shape {xs.shape}, expected (R >= 2, "
                         f"{', '.join(map(str, r.shape))})")
    m = _mask(mask, r.shape)
    mean = xs.mean(axis=0)
    var = xs.var(axis=0, ddof=1)
    norm = np.sqrt(np.sum(r[m] ** 2))
    if norm == 0:
        raise ValueError("the reference is zero inside the mask")
    bias = mean - r
    return BiasVariance(mean=mean, bias=bias, variance=var,
                        nrms_bias=float(np.sqrt(np.sum(bias[m] ** 2)) / norm),
                        nrms_std=float(np.sqrt(np.sum(var[m])) / norm))


def roi_bias_std(realisations: Any, ref: Any, roi_mask: Any) -> tuple[float, float]:
    """Relative bias and standard deviation of the ROI mean over realisations.

    .. math::

        \\mathrm{bias} = \\frac{\\mathrm{mean}_k(\\bar x_k) - \\bar r}{\\bar r}, \\qquad
        \\mathrm{std} = \\frac{\\mathrm{SD}_k(\\bar x_k)}{\\bar r}

    with :math:`\\bar x_k` the ROI mean of realisation ``k`` (ddof=1) and :math:`\\bar r` that of
    the reference.
    """
    r = _np(ref, "ref")
    xs = _np(realisations, "realisations")
    if xs.ndim != r.ndim + 1 or xs.shape[1:] != r.shape or xs.shape[0] < 2:
        raise ValueError(f"realisations have shape {xs.shape}, expected (R >= 2, "
                         f"{', '.join(map(str, r.shape))})")
    m = _mask(roi_mask, r.shape, "roi_mask")
    true = r[m].mean()
    if true == 0:
        raise ValueError("the reference ROI mean is 0: relative bias is undefined")
    means = xs[:, m].mean(axis=1)
    return float((means.mean() - true) / true), float(means.std(ddof=1) / true)


def metrics_table(rows: dict[str, dict[str, float]], *, precision: int = 4,
                  first_column: str = "method") -> str:
    """A Markdown table: one row per entry of ``rows``, columns the union of the metric names.

    Columns appear in order of first occurrence; missing values are left blank; floats are
    printed with ``precision`` significant digits.
    """
    if not isinstance(rows, dict) or not all(isinstance(v, dict) for v in rows.values()):
        raise TypeError("rows must be a dict mapping row names to dicts of metric values")
    cols: list[str] = []
    for metrics in rows.values():
        for k in metrics:
            if k not in cols:
                cols.append(k)

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.{precision}g}"
        return str(v)

    lines = ["| " + " | ".join([first_column, *cols]) + " |",
             "|" + "|".join(["---"] * (len(cols) + 1)) + "|"]
    for name, metrics in rows.items():
        lines.append("| " + " | ".join([str(name), *(fmt(metrics.get(c)) for c in cols)]) + " |")
    return "\n".join(lines)


def image_metrics(x: Any, reference: Any, masks: dict[str, Any]) -> dict[str, float]:
    """The summary of a reconstruction: NRMSE, PSNR and SSIM in a region, lesion CRCs.

    Parameters
    ----------
    x, reference
        Image and reference, same shape (numpy or torch).
    masks
        VOI masks by name (a PETRIC case's ``masks``).  The region is ``brain``, else
        ``whole_object``, else the whole image.  With a region, ``lesion_hot`` /
        ``lesion_cold`` masks give ``crc_hot`` / ``crc_cold`` (:func:`crc`) against the region
        outside every lesion; a lesion whose true ratio to that background is 1 has no CRC.

    Returns
    -------
    dict
        ``nrmse``, ``psnr``, ``ssim`` and the CRCs.  A CRC is NaN when the image is 0 over the
        background (e.g. a diverged sampler), so that a sweep still reports the other metrics;
        write it with :func:`sirf_diffusion.io.atomic.write_json` (NaN -> ``null``).
    """
    x = _np(x, "image")
    ref = _np(reference, "reference")
    region = masks.get("brain", masks.get("whole_object"))
    region = None if region is None else _np(region, "region mask") > 0.5
    out = {"nrmse": float(nrmse(x, ref, region)), "psnr": float(psnr(x, ref, region)),
           "ssim": float(ssim(x, ref, region))}
    if region is None:
        return out
    lesions = {k: _np(masks[k], k) > 0.5 for k in ("lesion_hot", "lesion_cold") if k in masks}
    background = region.copy()
    for les in lesions.values():
        background &= ~les
    for name, les in lesions.items():
        if not les.any():
            continue
        true_ratio = ref[les].mean() / ref[background].mean()
        if abs(true_ratio - 1) > 1e-3:
            bg_mean = float(x[background].mean())
            out[f"crc_{name.split('_')[1]}"] = (
                float(crc(x, les, background, true_ratio)) if bg_mean != 0.0 else float("nan"))
    return out


# ----------------------------------------------------------------------------- per lesion
LesionKind = Literal["hot", "cold", "none"]


@dataclass(frozen=True)
class LesionMetrics:
    """Metrics of one lesion of one image (:func:`lesion_report`).

    Attributes
    ----------
    label
        The lesion's value in the label image.
    kind
        ``"hot"`` / ``"cold"``: true contrast above / below 1 (``"none"`` within
        ``min_contrast`` of 1: no CRC).
    voxels
        Number of lesion voxels.
    true_contrast
        :math:`r_{true} = \\bar r_L / \\bar r_B`, lesion over background mean of the reference.
    contrast
        :math:`\\bar x_L / \\bar x_B` of the image (NaN if the image is 0 over the background).
    crc
        :math:`(\\bar x_L/\\bar x_B - 1) / (r_{true} - 1)`; 1 = full recovery, 0 = the lesion
        has the background's level (NaN for ``kind == "none"``).
    bias
        Relative bias of the lesion mean, :math:`(\\bar x_L - \\bar r_L) / \\bar r_L` (NaN if
        the reference lesion mean is 0).
    std_ratio
        :math:`\\bar s_L / \\bar s_B` of the posterior standard deviation ``s`` (``None``
        without one; NaN if ``s`` is 0 over the background, e.g. a single sample).  Above 1: the
        posterior is less certain inside the lesion than around it.
    """

    label: int
    kind: LesionKind
    voxels: int
    true_contrast: float
    contrast: float
    crc: float
    bias: float
    std_ratio: float | None = None


def _labels(lesion_labels: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Validated integer label image (0 = no lesion, k > 0 = lesion k)."""
    if hasattr(lesion_labels, "detach") and hasattr(lesion_labels, "cpu"):
        lesion_labels = lesion_labels.detach().cpu().numpy()
    a = np.asarray(lesion_labels)
    if a.dtype == bool:
        raise ValueError("lesion_labels must be an integer label image (0 = no lesion, one label "
                         "> 0 per lesion), not a boolean mask; for one lesion pass "
                         "mask.astype(int)")
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"lesion_labels must be numeric, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
        raise ValueError("lesion_labels must hold whole numbers (and no NaN)")
    if np.any(a < 0):
        raise ValueError("lesion_labels must be >= 0 (0 = no lesion)")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"lesion_labels has shape {a.shape}, expected the reference's shape "
                         f"{tuple(shape)}")
    a = a.astype(np.int64)
    if not np.any(a > 0):
        raise ValueError("lesion_labels has no lesion (no voxel labelled > 0)")
    return a


def lesion_backgrounds(lesion_labels: Any, region: Any, *, gap: float = 2.0,
                       width: float = 3.0) -> dict[int, np.ndarray]:
    """A local background shell around each lesion.

    The background of lesion ``k`` is the set of voxels of ``region`` whose (Euclidean, voxel
    units) distance to lesion ``k`` lies in ``(gap, gap + width]`` and whose distance to every
    lesion is more than ``gap``: ``gap`` keeps out the partial-volume edge and the resolution
    spill-over of the lesion, ``width`` sets the shell's thickness.  A local background compares
    the lesion with the tissue around it; a whole-brain background can have nearly the lesion's
    level (e.g. an FDG lesion at twice white matter, against a brain mean dominated by grey
    matter at four times white matter), which makes the CRC meaningless.

    Parameters
    ----------
    lesion_labels
        Integer label image, one label ``> 0`` per lesion.
    region
        Boolean mask the shells are restricted to (e.g. the brain).
    gap, width
        In voxels (``gap >= 0``, ``width > 0``).

    Returns
    -------
    dict
        Label -> boolean mask, for every label of ``lesion_labels``, in increasing order.
    """
    from scipy.ndimage import distance_transform_edt

    labels = _labels(lesion_labels)
    reg = _mask(region, labels.shape, "region")
    if not (math.isfinite(gap) and gap >= 0):
        raise ValueError(f"gap must be finite and >= 0 voxels, got {gap}")
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be finite and > 0 voxels, got {width}")
    clear = distance_transform_edt(labels == 0) > gap  # further than gap from every lesion
    out: dict[int, np.ndarray] = {}
    for k in np.unique(labels[labels > 0]).tolist():
        d = distance_transform_edt(labels != k)
        shell = (d <= gap + width) & clear & reg
        if not shell.any():
            raise ValueError(f"the background shell of lesion {k} is empty (gap {gap}, width "
                             f"{width} voxels, inside region): widen it or check region")
        out[int(k)] = shell
    return out


def lesion_report(image: Any, reference: Any, lesion_labels: Any,
                  background: Any | Mapping[int, Any], posterior_std: Any = None, *,
                  min_contrast: float = 1e-3) -> list[LesionMetrics]:
    """Per-lesion contrast recovery, bias and posterior uncertainty of one image.

    For lesion ``L`` with background ``B`` (means :math:`\\bar x` of ``image``, :math:`\\bar r`
    of ``reference``, :math:`\\bar s` of ``posterior_std``):

    .. math::

        r_{true} = \\frac{\\bar r_L}{\\bar r_B}, \\qquad
        \\mathrm{CRC} = \\frac{\\bar x_L / \\bar x_B - 1}{r_{true} - 1}, \\qquad
        \\mathrm{bias} = \\frac{\\bar x_L - \\bar r_L}{\\bar r_L}, \\qquad
        \\mathrm{std\\ ratio} = \\frac{\\bar s_L}{\\bar s_B}.

    The CRC is NEMA NU 2's hot-contrast recovery; for a cold lesion (:math:`r_{true} < 1`) the
    same formula equals :math:`(1 - \\bar x_L/\\bar x_B) / (1 - r_{true})`, NEMA's cold
    contrast normalised by the true one, so that for both kinds 1 is full recovery, 0 a lesion
    at the background's level, negative a lesion of the wrong sign and above 1 exaggerated
    contrast.  The reference's CRC is exactly 1.

    Parameters
    ----------
    image, reference
        Images of the same shape ``S`` (numpy or torch).
    lesion_labels
        Integer label image of shape ``S``: 0 outside lesions, one label ``> 0`` per lesion
        (float arrays holding whole numbers, as read from a case folder, are accepted).
    background
        One boolean mask shared by all lesions, or a mapping label -> mask (one per lesion, e.g.
        :func:`lesion_backgrounds`).  A background must not overlap its lesion.
    posterior_std
        Optional voxel-wise posterior standard deviation of shape ``S`` (e.g. the std of the
        samples, :attr:`~sirf_diffusion.samplers.result.ReconResult.std`); gives ``std_ratio``.
    min_contrast
        A lesion with :math:`|r_{true} - 1| \\le` ``min_contrast`` has kind ``"none"`` and no
        CRC.

    Returns
    -------
    list of LesionMetrics
        One per label, in increasing label order.

    Raises
    ------
    ValueError
        Naming the argument: mismatched shapes, NaN or infinite values, a boolean or negative
        ``lesion_labels``, no lesion, an empty or overlapping background, a background mapping
        whose labels differ from the lesions', a negative ``posterior_std``, a reference that is
        not positive over a background.
    """
    r = _np(reference, "reference")
    x = _np(image, "image")
    if x.shape != r.shape:
        raise ValueError(f"image has shape {x.shape}, expected the reference's shape {r.shape}")
    labels = _labels(lesion_labels, r.shape)
    s = None
    if posterior_std is not None:
        s = _np(posterior_std, "posterior_std")
        if s.shape != r.shape:
            raise ValueError(f"posterior_std has shape {s.shape}, expected the reference's "
                             f"shape {r.shape}")
        if np.any(s < 0):
            raise ValueError("posterior_std has negative values")
    if not (math.isfinite(min_contrast) and 0 <= min_contrast < 1):
        raise ValueError(f"min_contrast must be in [0, 1), got {min_contrast}")
    ks = [int(k) for k in np.unique(labels[labels > 0])]
    if isinstance(background, Mapping):
        keys = {int(k) for k in background}
        if keys != set(ks):
            raise ValueError(f"background has masks for lesions {sorted(keys)}, but "
                             f"lesion_labels has lesions {ks}")
        bgs = {int(k): _mask(v, r.shape, f"background[{k}]") for k, v in background.items()}
    else:
        shared = _mask(background, r.shape, "background")
        bgs = {k: shared for k in ks}
    out: list[LesionMetrics] = []
    for k in ks:
        les, bg = labels == k, bgs[k]
        if (les & bg).any():
            raise ValueError(f"background overlaps lesion {k} of lesion_labels")
        r_l, r_b = float(r[les].mean()), float(r[bg].mean())
        if not r_b > 0:
            raise ValueError(f"the reference mean over the background of lesion {k} is {r_b}, "
                             "not > 0: no contrast is defined")
        true = r_l / r_b
        kind: LesionKind = ("hot" if true > 1 + min_contrast else
                            "cold" if true < 1 - min_contrast else "none")
        x_l, x_b = float(x[les].mean()), float(x[bg].mean())
        contrast = x_l / x_b if x_b != 0 else math.nan
        std_ratio = None
        if s is not None:
            s_b = float(s[bg].mean())
            std_ratio = float(s[les].mean()) / s_b if s_b > 0 else math.nan
        out.append(LesionMetrics(
            label=k, kind=kind, voxels=int(les.sum()), true_contrast=true, contrast=contrast,
            crc=(contrast - 1) / (true - 1) if kind != "none" else math.nan,
            bias=(x_l - r_l) / r_l if r_l != 0 else math.nan, std_ratio=std_ratio))
    return out


def lesion_verdict(kind: str, crc_value: float, *, partial: float = 0.5, lost: float = 0.1,
                   exaggerated: float = 1.5) -> str:
    """A plain word for a lesion's contrast recovery.

    ======================  =================  =================
    CRC                     hot lesion         cold lesion
    ======================  =================  =================
    ``< lost`` (0.1)        ``erased``         ``filled``
    ``< partial`` (0.5)     ``partly erased``  ``partly filled``
    ``> exaggerated`` (1.5) ``exaggerated``    ``exaggerated``
    otherwise               ``recovered``      ``recovered``
    ======================  =================  =================

    "Filled" means the cold lesion is (close to) the surrounding tissue's level: the prior has
    painted tissue over it; "exaggerated" means the image invents more contrast than the truth
    has.  ``kind == "none"`` or a NaN CRC gives ``"undefined"``.
    """
    if kind not in ("hot", "cold", "none"):
        raise ValueError(f"kind must be 'hot', 'cold' or 'none', got {kind!r}")
    if not 0 <= lost <= partial <= 1 <= exaggerated:
        raise ValueError("thresholds must satisfy 0 <= lost <= partial <= 1 <= exaggerated, got "
                         f"lost={lost}, partial={partial}, exaggerated={exaggerated}")
    c = float(crc_value)
    if kind == "none" or not math.isfinite(c):
        return "undefined"
    if c > exaggerated:
        return "exaggerated"
    if c < partial:
        word = "erased" if kind == "hot" else "filled"
        return word if c < lost else f"partly {word}"
    return "recovered"
