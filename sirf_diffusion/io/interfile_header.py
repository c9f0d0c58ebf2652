"""Interfile header parsing, number formatting and the scanner block (used by :mod:`.interfile`).

* :class:`InterfileHeader` parses ``key := value`` text with STIR's ``KeyParser`` rules
  (:func:`standardise_key`, vectorised ``key [n]`` entries, ``{ a,b}`` lists) and offers typed
  look-ups that raise :class:`InterfileError` naming the file and key;
* the number formatting helpers write floats to full (round-trip) precision and lengths in cm as
  exact decimals;
* :func:`_scanner_from_header` / :func:`_scanner_lines` read and write STIR's
  ``Scanner parameters`` block, snapping to the predefined scanners of
  :mod:`sirf_diffusion.physics.geometry` when the values agree to STIR's 6 significant digits.

Everything here is re-exported by :mod:`sirf_diffusion.io.interfile`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np

from ..physics.geometry import SCANNERS, Scanner

__all__ = [
    "InterfileError",
    "InterfileHeader",
    "standardise_key",
    "read_header",
]

PathLike = str | os.PathLike


class InterfileError(ValueError):
    """An Interfile header or data file that cannot be read (or data that cannot be written)."""


# --------------------------------------------------------------------------- header parsing
_KEY_INDEX = re.compile(r"^(.*?)\s*\[\s*(\d+)\s*\]\s*$")
_WS = re.compile(r"[\s_!]+")


def standardise_key(key: str) -> str:
    """STIR's ``standardise_interfile_keyword``: lower case; ``!``, ``_``, white space -> " "."""
    return _WS.sub(" ", key).strip().lower()


@dataclass
class InterfileHeader:
    """A parsed Interfile header: an ordered list of ``(key, index, value)`` entries.

    Keys are stored standardised (see :func:`standardise_key`); ``index`` is the number in
    ``key [n]`` or ``None``.  Use :meth:`get` and the typed helpers to look values up.

    Attributes
    ----------
    entries
        ``(standard key, index or None, raw value string)`` in file order.
    path
        The header file, if it was read from disk (data file names are relative to its folder).
    """

    entries: list[tuple[str, int | None, str]] = field(default_factory=list)
    path: Path | None = None

    # ------------------------------------------------------------ construction
    @classmethod
    def parse(cls, text: str, path: Path | None = None) -> "InterfileHeader":
        """Parse header text (raises :class:`InterfileError` if it is not Interfile)."""
        where = f" {path}" if path is not None else ""
        entries: list[tuple[str, int | None, str]] = []
        seen_signature = False
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith(";"):
                continue
            if ":=" not in line:
                raise InterfileError(f"Interfile header{where} line {lineno}: expected "
                                     f"'key := value', got {raw!r}")
            key, value = line.split(":=", 1)
            m = _KEY_INDEX.match(key)
            index = int(m.group(2)) if m else None
            skey = standardise_key(m.group(1) if m else key)
            if not seen_signature:
                if skey != "interfile":
                    raise InterfileError(f"{path or 'text'} is not an Interfile header: first key "
                                         f"is {key.strip()!r}, expected '!INTERFILE :='")
                seen_signature = True
                continue
            if skey == "end of interfile":
                break
            entries.append((skey, index, value.strip()))
        if not seen_signature:
            raise InterfileError(f"Interfile header{where} is empty")
        return cls(entries, path)

    @classmethod
    def read(cls, path: PathLike) -> "InterfileHeader":
        """Read and parse a header file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Interfile header not found: {path}")
        try:
            text = path.read_text(encoding="latin-1")
        except OSError as err:  # pragma: no cover - permission problems etc.
            raise InterfileError(f"cannot read Interfile header {path}: {err}") from err
        return cls.parse(text, path)

    def error(self, message: str) -> InterfileError:
        """An :class:`InterfileError` naming this header."""
        return InterfileError(f"Interfile header {self.path or '<text>'}: {message}")

    # ------------------------------------------------------------ lookup
    def has(self, key: str, index: int | None = None) -> bool:
        skey = standardise_key(key)
        return any(k == skey and i == index for k, i, _ in self.entries)

    def get(self, key: str, index: int | None = None, default: str | None = None) -> str:
        """Value of ``key`` (``key [index]``); the last occurrence wins.

        Raises :class:`InterfileError` naming the key when it is absent and no default is given.
        """
        skey = standardise_key(key)
        for k, i, v in reversed(self.entries):
            if k == skey and i == index:
                return v
        if default is not None:
            return default
        name = key if index is None else f"{key} [{index}]"
        raise self.error(f"lacks the key {name!r}")

    def _convert(self, key: str, index: int | None, value: str, kind: type):
        try:
            if kind is int:
                f = float(value)
                if f != int(f):
                    raise ValueError
                return int(f)
            return float(value)
        except (ValueError, OverflowError):
            name = key if index is None else f"{key} [{index}]"
            raise self.error(f"{name!r} has value {value!r}, "
                             f"expected a{'n integer' if kind is int else ' number'}") from None

    def get_int(self, key: str, index: int | None = None, default: int | None = None) -> int:
        if default is not None and not self.has(key, index):
            return default
        return self._convert(key, index, self.get(key, index), int)

    def get_float(self, key: str, index: int | None = None, default: float | None = None) -> float:
        if default is not None and not self.has(key, index):
            return default
        return self._convert(key, index, self.get(key, index), float)

    def get_decimal(self, key: str, index: int | None = None) -> Decimal:
        """Exact decimal value (for unit conversions that must round-trip)."""
        value = self.get(key, index)
        try:
            return Decimal(value)
        except ArithmeticError:
            raise self.error(f"{key!r} has value {value!r}, expected a number") from None

    def get_int_list(self, key: str, index: int | None = None) -> list[int]:
        """A ``{ a,b,c}`` list (a bare number is a one-element list)."""
        value = self.get(key, index).strip()
        if value.startswith("{") and value.endswith("}"):
            value = value[1:-1]
        parts = [p for p in re.split(r"[,\s]+", value) if p]
        return [self._convert(key, index, p, int) for p in parts]

    # ------------------------------------------------------------ data description
    def data_file(self) -> Path:
        """Absolute path of the data file (``name of data file``, relative to the header)."""
        name = self.get("name of data file")
        if not name:
            raise self.error("'name of data file' is empty")
        p = Path(name)
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p

    def number_dtype(self) -> np.dtype:
        """Numpy dtype of the data from ``number format``, ``bytes per pixel`` and byte order."""
        fmt = standardise_key(self.get("number format", default="unsigned integer"))
        raw_order = self.get("imagedata byte order", default="BIGENDIAN")
        order = standardise_key(raw_order)
        if order not in ("littleendian", "bigendian"):
            raise self.error(f"unsupported 'imagedata byte order' {raw_order!r} "
                             "(LITTLEENDIAN or BIGENDIAN)")
        if fmt == "short float":
            fmt, nbytes = "float", 4
        elif fmt == "long float":
            fmt, nbytes = "float", 8
        else:
            nbytes = self.get_int("number of bytes per pixel")
        kinds = {("float", 4): "f4", ("float", 8): "f8",
                 ("signed integer", 1): "i1", ("signed integer", 2): "i2",
                 ("signed integer", 4): "i4", ("signed integer", 8): "i8",
                 ("unsigned integer", 1): "u1", ("unsigned integer", 2): "u2",
                 ("unsigned integer", 4): "u4", ("unsigned integer", 8): "u8"}
        if (fmt, nbytes) not in kinds:
            raise self.error(f"unsupported number format "
                             f"{self.get('number format', default=fmt)!r} with {nbytes} "
                             "bytes per pixel")
        return np.dtype(("<" if order == "littleendian" else ">") + kinds[(fmt, nbytes)])

    def data_offset(self) -> int:
        """``data offset in bytes [1]`` (or the scalar key), default 0."""
        for idx in (1, None):
            if self.has("data offset in bytes", idx):
                off = self.get_int("data offset in bytes", idx)
                if off < 0:
                    raise self.error(f"negative data offset {off}")
                return off
        return 0

    def scale_factor(self) -> float:
        """``image scaling factor [1]`` times ``quantification units`` (both default 1)."""
        s = (self.get_float("image scaling factor", 1) if self.has("image scaling factor", 1)
             else self.get_float("image scaling factor", default=1.0))
        q = self.get_float("quantification units", default=1.0)
        if s != 1.0 and q != 1.0 and s != q:
            raise self.error(f"'image scaling factor' ({s}) and "
                             f"'quantification units' ({q}) disagree")
        return q if s == 1.0 else s

    # ------------------------------------------------------------ image placement
    def first_pixel_offset_mm(self) -> tuple[float, float, float] | None:
        """``first pixel offset (mm)`` as ``(z, y, x)``, or ``None`` when absent."""
        if not self.has("first pixel offset (mm)", 1):
            return None
        z, y, x = (self.get_float("first pixel offset (mm)", i) for i in (3, 2, 1))
        return (z, y, x)

    def origin_mm(self) -> tuple[float, float, float]:
        """STIR image origin ``(z, y, x)`` = first pixel offset - voxel size * first STIR index.

        STIR's first indices are ``(0, -(ny//2), -(nx//2))``; without the offset key it is 0.
        """
        fpo = self.first_pixel_offset_mm()
        if fpo is None:
            return (0.0, 0.0, 0.0)
        sizes = [self.get_int("matrix size", i) for i in (3, 2, 1)]
        vox = [self.get_float("scaling factor (mm/pixel)", i, default=1.0) for i in (3, 2, 1)]
        first = (0, -(sizes[1] // 2), -(sizes[2] // 2))
        return tuple(float(o - v * f) for o, v, f in zip(fpo, vox, first))  # type: ignore


def read_header(path: PathLike) -> InterfileHeader:
    """Parse an Interfile header file (``.hv`` or ``.hs``)."""
    return InterfileHeader.read(path)


# --------------------------------------------------------------------------- number formatting
def _fmt(value: float) -> str:
    """Shortest round-trip text of a float, without a trailing ``.0`` (STIR-like)."""
    v = float(value)
    if v == 0:
        return "0"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _braces(values) -> str:
    """STIR's list format ``{ 6,7,8}``."""
    return "{ " + ",".join(str(int(v)) for v in values) + "}"


def _dec(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def _dec_str(d: Decimal) -> str:
    d = d.normalize()
    s = format(d, "f")
    return "0" if s in ("-0", "0") else s


def _cm(mm: float) -> str:
    """Exact decimal text of ``mm / 10`` (reading back and multiplying by 10 round-trips)."""
    return _dec_str(_dec(mm) / 10)


def _deg_for_rad(rad: float) -> float:
    """A float ``d`` with ``math.radians(d) == rad`` when one exists near ``degrees(rad)``."""
    d = math.degrees(rad)
    if math.radians(d) == rad:
        return d
    for direction in (math.inf, -math.inf):
        c = d
        for _ in range(8):
            c = math.nextafter(c, direction)
            if math.radians(c) == rad:
                return c
    return d


# --------------------------------------------------------------------------- scanners
#: Keys STIR's ``Scanner::parameter_info`` writes beyond those of :class:`Scanner`, for the
#: scanners STIR knows by name (values from STIR's ``Scanner.cxx``).
_STIR_SCANNER_EXTRAS: dict[str, list[tuple[str, str]]] = {
    "Siemens mMR": [
        ("Energy resolution         ", "0.145"),
        ("Reference energy (in keV) ", "511"),
        ("Number of blocks per bucket in transaxial direction         ", "1"),
        ("Number of blocks per bucket in axial direction              ", "2"),
        ("Number of crystals per block in axial direction             ", "8"),
        ("Number of crystals per block in transaxial direction        ", "9"),
        ("Number of detector layers                                   ", "1"),
        ("Number of crystals per singles unit in axial direction      ", "16"),
        ("Number of crystals per singles unit in transaxial direction ", "9"),
    ],
}


def _known_scanner(name: str) -> Scanner | None:
    for sc in SCANNERS.values():
        if sc.name.lower() == name.strip().lower():
            return sc
    return None


def _scanner_from_header(h: InterfileHeader) -> Scanner:
    name = h.get("scanner type", default="") or h.get("originating system", default="")
    if not name:
        raise h.error("neither 'Scanner type' nor 'originating system' is given")
    known = _known_scanner(name)

    def dec(key: str, factor: int, known_value: float | None) -> float:
        if h.has(key):
            return float(h.get_decimal(key) * factor)
        if known_value is None:
            raise h.error(f"scanner {name!r} is not predefined and the header lacks {key!r}")
        return known_value

    def integer(key: str, known_value: int | None) -> int:
        if h.has(key):
            return h.get_int(key)
        if known_value is None:
            raise h.error(f"scanner {name!r} is not predefined and the header lacks {key!r}")
        return known_value

    k = known
    num_rings = integer("number of rings", k and k.num_rings)
    num_det = integer("number of detectors per ring", k and k.num_detectors_per_ring)
    inner = dec("inner ring diameter (cm)", 5, k and k.inner_ring_radius_mm)
    doi = dec("average depth of interaction (cm)", 10, k and k.average_depth_of_interaction_mm)
    spacing = dec("distance between rings (cm)", 10, k and k.ring_spacing_mm)
    bin_size = dec("default bin size (cm)", 10, k and k.default_bin_size_mm)
    tilt = (math.radians(h.get_float("view offset (degrees)")) if h.has("view offset (degrees)")
            else (k.intrinsic_azimuthal_tilt_rad if k else 0.0))
    max_nac = integer("maximum number of non-arc-corrected bins",
                      k and k.max_num_non_arccorrected_bins)
    def_ac = integer("default number of arc-corrected bins", k and k.default_num_arccorrected_bins)
    geom = standardise_key(h.get("scanner geometry (blocksoncylindrical/cylindrical/generic)",
                                 default="Cylindrical"))
    if geom != "cylindrical":
        raise h.error(f"scanner geometry {geom!r} is not supported (only Cylindrical)")
    try:
        scanner = Scanner(name=name, num_rings=num_rings, num_detectors_per_ring=num_det,
                          inner_ring_radius_mm=inner, average_depth_of_interaction_mm=doi,
                          ring_spacing_mm=spacing, default_bin_size_mm=bin_size,
                          max_num_non_arccorrected_bins=max_nac,
                          default_num_arccorrected_bins=def_ac, intrinsic_azimuthal_tilt_rad=tilt)
    except ValueError as err:
        raise h.error(f"invalid scanner parameters: {err}") from err
    if known is not None:
        # STIR writes 6 significant digits: snap to the predefined values when they agree.
        ref = known.with_rings(num_rings)
        close = all(math.isclose(getattr(scanner, f), getattr(ref, f), rel_tol=1e-5, abs_tol=1e-6)
                    for f in ("inner_ring_radius_mm", "average_depth_of_interaction_mm",
                              "ring_spacing_mm", "default_bin_size_mm",
                              "intrinsic_azimuthal_tilt_rad"))
        same_int = (scanner.num_detectors_per_ring == ref.num_detectors_per_ring
                    and scanner.max_num_non_arccorrected_bins == ref.max_num_non_arccorrected_bins
                    and scanner.default_num_arccorrected_bins == ref.default_num_arccorrected_bins)
        if close and same_int:
            scanner = ref
    return scanner


def _scanner_lines(sc: Scanner) -> list[str]:
    tilt_deg = _fmt(_deg_for_rad(sc.intrinsic_azimuthal_tilt_rad))
    lines = [
        "Scanner parameters:=",
        f"  Scanner type := {sc.name}",
        f"  Number of rings                          := {sc.num_rings}",
        f"  Number of detectors per ring             := {sc.num_detectors_per_ring}",
        f"  Inner ring diameter (cm)                 := {_cm(sc.inner_ring_radius_mm * 2)}",
        f"  Average depth of interaction (cm)        := {_cm(sc.average_depth_of_interaction_mm)}",
        f"  Distance between rings (cm)              := {_cm(sc.ring_spacing_mm)}",
        f"  Default bin size (cm)                    := {_cm(sc.default_bin_size_mm)}",
        f"  View offset (degrees)                    := {tilt_deg}",
        f"  Maximum number of non-arc-corrected bins := {sc.max_num_non_arccorrected_bins}",
        f"  Default number of arc-corrected bins     := {sc.default_num_arccorrected_bins}",
    ]
    for key, value in _STIR_SCANNER_EXTRAS.get(sc.name, []):
        lines.append(f"  {key}:= {value}")
    lines.append("  Scanner geometry (BlocksOnCylindrical/Cylindrical/Generic)  := Cylindrical")
    lines.append("End scanner parameters:=")
    return lines
