"""Cylindrical PET scanner, sinogram and image geometry following STIR's conventions.

Every convention here is the one STIR 6 uses for ``ProjDataInfoCylindricalArcCorr`` /
``ProjDataInfoCylindricalNoArcCorr`` and ``VoxelsOnCartesianGrid`` (see
``../shared/data/stir-reference/README.md`` section 1, which was checked against the real STIR):

* images are arrays ``[z, y, x]``; voxel ``[iz, iy, ix]`` sits at
  ``x = vx * (ix - nx // 2)``, ``y = vy * (iy - ny // 2)`` (mm) and at
  ``z_rel = (iz - (nz - 1) / 2) * vz`` relative to the axial centre of the scanner;
* sinograms are arrays ``[sinogram, view, tangential]`` with sinograms ordered as STIR's
  ``as_array()`` does: segments ``0, +1, -1, +2, -2, ...``, axial positions ascending in each;
* view ``v`` has azimuthal angle ``phi0 + v * pi / num_views`` and an image point ``(x, y)``
  projects at ``s = x cos(phi) + y sin(phi)``;
* tangential bin ``t = -(N // 2) ... N - N // 2 - 1`` (array index ``t + N // 2``) sits at
  ``s = t * bin_size`` (arc-corrected) or ``s = R sin(t * pi / num_detectors)``
  (non-arc-corrected, ``R`` the effective ring radius);
* for a positive segment the LOR end point on the ``+d = (-sin phi, cos phi)`` side lies in the
  higher-z ring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "Scanner",
    "SCANNERS",
    "get_scanner",
    "Segment",
    "SinogramGeometry",
    "ImageGeometry",
    "check_finite_non_negative",
]


def check_finite_non_negative(values: Any, name: str, why: str = "") -> None:
    """Raise a ``ValueError`` naming ``name`` unless every value of ``values`` (numpy array or
    torch tensor, on any device) is finite and ``>= 0``: images and sinograms on the grids
    below; ``why`` (the reason) ends the negative-value message."""
    finite = values.isfinite() if hasattr(values, "isfinite") else np.isfinite(values)
    if not finite.all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (values < 0).any():
        raise ValueError(f"{name} contains negative values (min {float(values.min()):.4g})"
                         + (f"; {why}" if why else ""))


@dataclass(frozen=True)
class Scanner:
    """A cylindrical PET scanner as STIR's ``Scanner`` class describes it.

    Parameters
    ----------
    name
        STIR's name for the scanner (written to Interfile headers as ``originating system``).
    num_rings, num_detectors_per_ring
        Number of detector rings and of crystals in each ring.
    inner_ring_radius_mm, average_depth_of_interaction_mm
        The effective ring radius is their sum (STIR ``get_effective_ring_radius``).
    ring_spacing_mm
        Axial distance between neighbouring rings.
    default_bin_size_mm
        Arc-corrected tangential sampling.
    max_num_non_arccorrected_bins, default_num_arccorrected_bins
        Number of tangential bins of the native and arc-corrected sinograms.
    intrinsic_azimuthal_tilt_rad
        Angle of the first view (before mashing offsets).
    """

    name: str
    num_rings: int
    num_detectors_per_ring: int
    inner_ring_radius_mm: float
    average_depth_of_interaction_mm: float
    ring_spacing_mm: float
    default_bin_size_mm: float
    max_num_non_arccorrected_bins: int
    default_num_arccorrected_bins: int
    intrinsic_azimuthal_tilt_rad: float = 0.0

    def __post_init__(self) -> None:
        for key in ("num_rings", "num_detectors_per_ring", "max_num_non_arccorrected_bins",
                    "default_num_arccorrected_bins"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"Scanner.{key} must be positive, got {getattr(self, key)}")
        if self.num_detectors_per_ring % 2:
            raise ValueError("Scanner.num_detectors_per_ring must be even")
        for key in ("inner_ring_radius_mm", "ring_spacing_mm", "default_bin_size_mm"):
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"Scanner.{key} must be > 0, got {getattr(self, key)}")

    @property
    def effective_ring_radius_mm(self) -> float:
        """Radius of the cylinder on which LOR end points lie (inner radius + mean DOI)."""
        return self.inner_ring_radius_mm + self.average_depth_of_interaction_mm

    def with_rings(self, num_rings: int) -> "Scanner":
        """A copy with another number of rings (like STIR's ``set_num_rings``)."""
        return replace(self, num_rings=int(num_rings))


#: Predefined scanners: ``mMR`` is STIR's "Siemens mMR" and ``DMI4`` is STIR's "GE Discovery MI
#: 4 rings" (values as in STIR's ``src/buildblock/Scanner.cxx``; for the DMI, STIR sets inner
#: radius 380.5 - 9.4 mm and DOI 9.4 mm so that the effective ring radius is 380.5 mm, and the
#: intrinsic tilt is -4.399 degrees).
SCANNERS: dict[str, Scanner] = {
    "mMR": Scanner(
        name="Siemens mMR", num_rings=64, num_detectors_per_ring=504,
        inner_ring_radius_mm=328.0, average_depth_of_interaction_mm=7.0,
        ring_spacing_mm=4.0625, default_bin_size_mm=2.08626,
        max_num_non_arccorrected_bins=344, default_num_arccorrected_bins=344,
        intrinsic_azimuthal_tilt_rad=0.0,
    ),
    "DMI4": Scanner(
        name="GE Discovery MI 4 rings", num_rings=36, num_detectors_per_ring=2 * 272,
        inner_ring_radius_mm=380.5 - 9.4, average_depth_of_interaction_mm=9.4,
        ring_spacing_mm=5.52296, default_bin_size_mm=2.206,
        max_num_non_arccorrected_bins=415, default_num_arccorrected_bins=401,
        intrinsic_azimuthal_tilt_rad=-4.399 * math.pi / 180,
    ),
}


def get_scanner(name: str) -> Scanner:
    """Look up a predefined scanner by key (``mMR``, ``DMI4``) or by its STIR name."""
    if name in SCANNERS:
        return SCANNERS[name]
    for scanner in SCANNERS.values():
        if scanner.name.lower() == name.lower():
            return scanner
    raise KeyError(f"unknown scanner {name!r}; known: {sorted(SCANNERS)}")


@dataclass(frozen=True)
class Segment:
    """One STIR segment: a range of ring differences sharing one polar angle.

    Attributes
    ----------
    number
        STIR segment number (0, +-1, ...).
    min_ring_difference, max_ring_difference
        Ring differences ``r2 - r1`` (``r2`` on the ``+d`` side) merged into this segment.
    num_axial_positions
        Number of sinograms of the segment.
    first_m_mm
        Axial coordinate ``m = (z1 + z2) / 2`` of axial position 0, relative to the scanner
        centre.
    axial_sampling_mm
        Distance in ``m`` between consecutive axial positions.
    tan_theta
        STIR ``get_tantheta``: (average ring difference * ring spacing) / (2 R).
    """

    number: int
    min_ring_difference: int
    max_ring_difference: int
    num_axial_positions: int
    first_m_mm: float
    axial_sampling_mm: float
    tan_theta: float

    @property
    def average_ring_difference(self) -> float:
        return 0.5 * (self.min_ring_difference + self.max_ring_difference)

    def m_mm(self) -> np.ndarray:
        """Axial coordinate of every axial position (mm, relative to the scanner centre)."""
        return self.first_m_mm + self.axial_sampling_mm * np.arange(self.num_axial_positions)


def _stir_segment_sequence(max_segment: int) -> list[int]:
    seq = [0]
    for k in range(1, max_segment + 1):
        seq += [k, -k]
    return seq


@dataclass(frozen=True)
class SinogramGeometry:
    """Sinogram layout of a cylindrical scanner (STIR ``ProjDataInfoCylindrical``).

    Parameters
    ----------
    scanner
        The scanner.
    num_views
        Number of views over [0, pi). ``num_detectors_per_ring / 2 / num_views`` is the view
        mashing factor.
    num_tangential
        Number of tangential bins; defaults to the scanner's native number.
    arc_corrected
        Uniform tangential sampling (``True``) or the native non-arc-corrected layout.
    span
        Axial compression (odd). ``span=1`` keeps every ring difference in its own segment.
    max_ring_difference
        Largest ``|r2 - r1|`` kept. ``0`` gives direct planes only (a 2D acquisition when the
        scanner has one ring).
    tangential_sampling_mm
        Arc-corrected bin size; defaults to the scanner's.
    """

    scanner: Scanner
    num_views: int
    num_tangential: int | None = None
    arc_corrected: bool = True
    span: int = 1
    max_ring_difference: int = 0
    tangential_sampling_mm: float | None = None
    segments: tuple[Segment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sc = self.scanner
        if self.num_tangential is None:
            n = (sc.default_num_arccorrected_bins if self.arc_corrected
                 else sc.max_num_non_arccorrected_bins)
            object.__setattr__(self, "num_tangential", int(n))
        if self.tangential_sampling_mm is None:
            object.__setattr__(self, "tangential_sampling_mm", float(sc.default_bin_size_mm))
        if self.num_views <= 0 or self.num_tangential <= 0:
            raise ValueError("num_views and num_tangential must be positive")
        half = sc.num_detectors_per_ring // 2
        if half % self.num_views:
            raise ValueError(
                f"num_views={self.num_views} must divide num_detectors_per_ring/2={half} "
                "(integer view mashing)")
        if self.span < 1 or self.span % 2 == 0:
            raise ValueError(f"span must be odd and >= 1, got {self.span}")
        if not 0 <= self.max_ring_difference < sc.num_rings:
            raise ValueError(
                f"max_ring_difference={self.max_ring_difference} must be in [0, num_rings-1="
                f"{sc.num_rings - 1}]")
        object.__setattr__(self, "segments", tuple(self._build_segments()))

    # ------------------------------------------------------------------ segments
    def _build_segments(self) -> list[Segment]:
        sc = self.scanner
        nr, rs, R = sc.num_rings, sc.ring_spacing_mm, sc.effective_ring_radius_mm
        mrd, span = self.max_ring_difference, self.span
        half_span = (span - 1) // 2
        if span > 1 and mrd < half_span:
            raise ValueError(f"max_ring_difference={mrd} must be >= (span-1)/2={half_span}")
        max_seg = 0 if span == 1 and mrd == 0 else (
            mrd if span == 1 else (mrd - half_span + span - 1) // span)
        segs = {}
        for k in range(-max_seg, max_seg + 1):
            if span == 1:
                dmin = dmax = k
            else:
                dmin, dmax = k * span - half_span, k * span + half_span
                dmin, dmax = max(dmin, -mrd), min(dmax, mrd)
            if span == 1:
                n_ax = nr - abs(k)
                sampling = rs
                first_m = (abs(k) / 2 - (nr - 1) / 2) * rs
            else:
                dabs = 0 if dmin <= 0 <= dmax else min(abs(dmin), abs(dmax))
                n_ax = 2 * nr - 1 - 2 * dabs
                sampling = rs / 2
                first_m = (dabs / 2 - (nr - 1) / 2) * rs
            tan_theta = 0.5 * (dmin + dmax) * rs / (2 * R)
            segs[k] = Segment(k, dmin, dmax, n_ax, first_m, sampling, tan_theta)
        return [segs[k] for k in _stir_segment_sequence(max_seg)]

    @property
    def segment_numbers_file_order(self) -> list[int]:
        """Segment numbers in the order STIR writes them to ``.s`` files (increasing)."""
        return sorted(s.number for s in self.segments)

    def segment(self, number: int) -> Segment:
        for s in self.segments:
            if s.number == number:
                return s
        raise KeyError(f"no segment {number}")

    def sinogram_offset(self, number: int) -> int:
        """Index of the first sinogram of a segment in the ``[sinogram, view, tangential]``
        array."""
        off = 0
        for s in self.segments:
            if s.number == number:
                return off
            off += s.num_axial_positions
        raise KeyError(f"no segment {number}")

    @property
    def num_sinograms(self) -> int:
        return sum(s.num_axial_positions for s in self.segments)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(sinogram, view, tangential)``."""
        return (self.num_sinograms, self.num_views, int(self.num_tangential))

    # ------------------------------------------------------------------ coordinates
    @property
    def view_mashing_factor(self) -> int:
        return self.scanner.num_detectors_per_ring // 2 // self.num_views

    def phi(self) -> np.ndarray:
        """Azimuthal angle of every view (rad), STIR's ``get_phi``.

        With view mashing ``k``, STIR offsets the first view by ``(k - 1) * pi / num_detectors``
        (the mean angle of the merged unmashed views).
        """
        sc = self.scanner
        phi0 = (sc.intrinsic_azimuthal_tilt_rad
                + (self.view_mashing_factor - 1) * math.pi / sc.num_detectors_per_ring)
        return phi0 + np.arange(self.num_views) * (math.pi / self.num_views)

    def tangential_indices(self) -> np.ndarray:
        """STIR tangential position numbers ``t`` for array indices ``0..N-1``."""
        n = int(self.num_tangential)
        return np.arange(n) - n // 2

    def s(self) -> np.ndarray:
        """Signed tangential coordinate (mm) of every tangential bin."""
        t = self.tangential_indices().astype(np.float64)
        if self.arc_corrected:
            return t * float(self.tangential_sampling_mm)
        sc = self.scanner
        return sc.effective_ring_radius_mm * np.sin(t * math.pi / sc.num_detectors_per_ring)

    def m(self) -> np.ndarray:
        """Axial coordinate (mm, relative to the scanner centre) of every sinogram."""
        return np.concatenate([s.m_mm() for s in self.segments])

    def tan_theta(self) -> np.ndarray:
        """``tan(theta)`` of every sinogram."""
        return np.concatenate([np.full(s.num_axial_positions, s.tan_theta) for s in self.segments])

    def sinogram_segments(self) -> np.ndarray:
        """Segment number of every sinogram."""
        return np.concatenate([np.full(s.num_axial_positions, s.number) for s in self.segments])

    # ------------------------------------------------------------------ helpers
    def is_compatible(self, other: "SinogramGeometry") -> bool:
        return (self.scanner == other.scanner and self.shape == other.shape
                and self.arc_corrected == other.arc_corrected and self.span == other.span
                and self.max_ring_difference == other.max_ring_difference
                and math.isclose(float(self.tangential_sampling_mm),
                                 float(other.tangential_sampling_mm)))

    def check_data_shape(self, shape: tuple[int, ...], name: str = "sinogram") -> None:
        """Raise ``ValueError`` unless ``shape`` ends with this geometry's shape."""
        if tuple(shape[-3:]) != self.shape:
            raise ValueError(
                f"{name} has shape {tuple(shape)}, expected "
                f"(..., {', '.join(map(str, self.shape))}) "
                "= (..., sinogram, view, tangential) for this scanner geometry")

    @classmethod
    def two_d(cls, scanner: Scanner | str = "mMR", num_views: int | None = None,
              arc_corrected: bool = True, num_tangential: int | None = None) -> "SinogramGeometry":
        """A single-ring (2D) geometry of a scanner, as in STIR with ``set_num_rings(1)``."""
        sc = get_scanner(scanner) if isinstance(scanner, str) else scanner
        nv = num_views or sc.num_detectors_per_ring // 2
        return cls(sc.with_rings(1), nv, num_tangential, arc_corrected)


@dataclass(frozen=True)
class ImageGeometry:
    """A voxel grid in STIR's convention.

    Parameters
    ----------
    shape
        ``(nz, ny, nx)``.
    voxel_size_mm
        ``(vz, vy, vx)`` in mm.
    """

    shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) <= 0:
            raise ValueError(f"image shape must be 3 positive ints (z, y, x), got {self.shape}")
        if len(self.voxel_size_mm) != 3 or not min(self.voxel_size_mm) > 0:
            raise ValueError("voxel sizes must be 3 positive floats (z, y, x), got "
                             f"{self.voxel_size_mm}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "voxel_size_mm", tuple(float(v) for v in self.voxel_size_mm))

    def x_mm(self) -> np.ndarray:
        nx, vx = self.shape[2], self.voxel_size_mm[2]
        return vx * (np.arange(nx) - nx // 2)

    def y_mm(self) -> np.ndarray:
        ny, vy = self.shape[1], self.voxel_size_mm[1]
        return vy * (np.arange(ny) - ny // 2)

    def z_mm(self) -> np.ndarray:
        """Plane centres relative to the axial centre of the scanner."""
        nz, vz = self.shape[0], self.voxel_size_mm[0]
        return vz * (np.arange(nz) - (nz - 1) / 2)

    def check_image_shape(self, shape: tuple[int, ...], name: str = "image") -> None:
        if tuple(shape[-3:]) != self.shape:
            raise ValueError(
                f"{name} has shape {tuple(shape)}, expected "
                f"(..., {', '.join(map(str, self.shape))}) "
                "= (..., z, y, x) for this image geometry")
