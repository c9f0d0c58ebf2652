"""Read and write STIR Interfile images (``.hv`` + ``.v``) and projection data (``.hs`` + ``.s``).

Only the part of Interfile that STIR 6 itself writes is supported, which is everything STIR,
SIRF and PETRIC produce for static, non-TOF data on cylindrical scanners:

* **Header syntax** (STIR ``KeyParser``): one ``key := value`` per line; keys are matched after
  STIR's ``standardise_interfile_keyword`` (lower case, ``!``, ``_`` and runs of white space
  become one space); an index ``[n]`` after a key makes it a vectorised key; lines starting
  with ``;`` are comments; parsing stops at ``!END OF INTERFILE``.  Values in braces
  (``{ 6,7,8}``) are lists.  A later key overrides an earlier one.
* **Images**: ``!matrix size [1..3]`` = x, y, z sizes, ``scaling factor (mm/pixel) [1..3]`` =
  voxel sizes, ``first pixel offset (mm) [1..3]`` = physical x, y, z of the first voxel.  STIR's
  index ranges are ``z = 0..nz-1``, ``y = -(ny//2)...``, ``x = -(nx//2)...`` and its origin is
  ``first_pixel_offset - voxel_size * min_index``.  The data file holds ``[z][y][x]`` (x
  fastest), which is returned unchanged as an ``[z, y, x]`` array.
* **Projection data**: the file holds ``[segment][view][axial position][tangential]`` with the
  segments in header order (STIR writes them in increasing segment number); the array returned
  is STIR's ``as_array()`` order ``[sinogram, view, tangential]`` with the sinograms of segments
  ``0, +1, -1, +2, -2, ...`` concatenated, axial positions ascending (see
  :class:`~sirf_diffusion.physics.geometry.SinogramGeometry`).  ``Segment_AxialPos_View_TangPos``
  files (axis labels 2 and 3 swapped) are read too.
* **Numbers**: ``float`` (4 or 8 bytes), ``signed integer`` / ``unsigned integer`` (1, 2, 4 or
  8 bytes), ``short float`` / ``long float``; either byte order (STIR's default, when the key is
  absent, is big endian); ``data offset in bytes`` and ``image scaling factor`` (and the
  non-standard ``quantification units``) are applied.  Arrays come back as float32 (float64 for
  8-byte floats).

Writing produces the same keys, in the same order, as STIR 6's
``write_basic_interfile_image_header`` and ``write_basic_interfile_PDFS_header`` (the data file
name is written relative to the header),
with numbers written to full (round-trip) precision.  Data and header are each written to a
temporary file in the target folder and moved into place with :func:`os.replace`.

Every problem (missing header or data file, truncated or over-long data file, unsupported number
format, TOF or multi-frame data, inconsistent segment tables, shapes that do not match the
geometry) raises :class:`InterfileError` (a ``ValueError``) or ``FileNotFoundError`` with the file
and key named.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

import numpy as np

from ..physics.geometry import SCANNERS, ImageGeometry, Scanner, SinogramGeometry

__all__ = [
    "InterfileError",
    "InterfileHeader",
    "standardise_key",
    "read_header",
    "read_image",
    "write_image",
    "read_sinogram",
    "write_sinogram",
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


# --------------------------------------------------------------------------- low-level data I/O
def _read_data(header: InterfileHeader, count: int) -> np.ndarray:
    data_path = header.data_file()
    if not data_path.is_file():
        raise FileNotFoundError(f"data file {data_path} named in Interfile header {header.path} "
                                "not found")
    dtype = header.number_dtype()
    offset = header.data_offset()
    expected = offset + count * dtype.itemsize
    actual = data_path.stat().st_size
    if actual < expected:
        raise InterfileError(
            f"data file {data_path} is truncated: {actual} bytes, expected {expected} "
            f"({count} values of {dtype.itemsize} bytes after an offset of {offset}) from header "
            f"{header.path}")
    if actual > expected:
        raise InterfileError(
            f"data file {data_path} is too long: {actual} bytes, expected {expected} "
            f"({count} values of {dtype.itemsize} bytes after an offset of {offset}) from header "
            f"{header.path}; multi-frame or mismatched data are not supported")
    raw = np.fromfile(data_path, dtype=dtype, count=count, offset=offset)
    out_dtype = np.float64 if (dtype.kind == "f" and dtype.itemsize == 8) else np.float32
    arr = raw.astype(out_dtype)
    scale = header.scale_factor()
    if scale != 1.0:
        arr *= out_dtype(scale)
    return arr


def _atomic_write(path: Path, payload: bytes | np.ndarray) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(payload, np.ndarray):
                payload.tofile(f)
            else:
                f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _paths(path: PathLike, header_suffix: str, data_suffix: str) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == "":
        p = p.with_suffix(header_suffix)
    if p.suffix.lower() != header_suffix:
        raise InterfileError(f"Interfile header name {p} must end in {header_suffix}")
    return p, p.with_suffix(data_suffix)


_DTYPES_OUT = {"float32": ("float", 4, "f4"), "float64": ("float", 8, "f8")}


def _as_numpy(array, name: str) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor without importing torch
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiu":
        raise InterfileError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InterfileError(f"{name} contains NaN or infinite values")
    return arr


# --------------------------------------------------------------------------- images
def read_image(path: PathLike) -> tuple[np.ndarray, ImageGeometry]:
    """Read a STIR Interfile image.

    Parameters
    ----------
    path
        The ``.hv`` header.

    Returns
    -------
    array, geometry
        ``[z, y, x]`` array (float32) and its :class:`ImageGeometry`.  The first pixel offsets
        and STIR origin are available from :func:`read_header` (``first_pixel_offset_mm()``,
        ``origin_mm()``); the package places images centred as STIR's projector does.  A
        transaxial origin further than 0.05 mm from 0 (which STIR's ray tracer refuses) gives a
        warning.
    """
    h = read_header(path)
    pdt = standardise_key(h.get("PET data type", default="Image"))
    if pdt != "image":
        raise h.error(f"'!PET data type' is {h.get('PET data type')!r}, expected 'Image' "
                      "(projection data use read_sinogram)")
    ndim = h.get_int("number of dimensions", default=3)
    if ndim != 3:
        raise h.error(f"image with 'number of dimensions' = {ndim}; only 3 is supported")
    frames = h.get_int("number of time frames", default=1)
    if frames != 1:
        raise h.error(f"{frames} time frames; only single-frame images are supported")
    for i, lab in ((1, "x"), (2, "y"), (3, "z")):
        if h.has("matrix axis label", i) and standardise_key(h.get("matrix axis label", i)) != lab:
            raise h.error(f"'matrix axis label [{i}]' is {h.get('matrix axis label', i)!r}, "
                          f"expected {lab!r}")
    nx, ny, nz = (h.get_int("matrix size", i) for i in (1, 2, 3))
    if min(nx, ny, nz) <= 0:
        raise h.error(f"non-positive matrix size {(nx, ny, nz)}")
    vx, vy, vz = (h.get_float("scaling factor (mm/pixel)", i) for i in (1, 2, 3))
    try:
        geometry = ImageGeometry((nz, ny, nx), (vz, vy, vx))
    except ValueError as err:
        raise h.error(f"{err}") from err
    origin = h.origin_mm()
    if max(abs(origin[1]), abs(origin[2])) > 0.05:
        warnings.warn(f"{h.path}: STIR image origin (x, y) = ({origin[2]:g}, {origin[1]:g}) mm "
                      "is not 0; "
                      "the package assumes transaxially centred images", stacklevel=2)
    arr = _read_data(h, nx * ny * nz).reshape(nz, ny, nx)
    return arr, geometry


def write_image(path: PathLike, array, geometry: ImageGeometry, *,
                origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
                number_format: Literal["float32", "float64"] = "float32",
                byte_order: Literal["little", "big"] = "little") -> Path:
    """Write a ``[z, y, x]`` image as STIR Interfile (``path`` ``.hv`` + data ``.v``).

    Parameters
    ----------
    path
        Header name; ``.hv`` is added when there is no suffix.
    array
        Numpy array or torch tensor of shape ``geometry.shape`` (finite values).
    geometry
        Voxel grid.
    origin_mm
        STIR origin ``(z, y, x)``; ``first pixel offset = voxel size * first index + origin``.
    number_format, byte_order
        Stored number type (``float`` with 4 or 8 bytes) and endianness.

    Returns
    -------
    Path of the header written.
    """
    hpath, dpath = _paths(path, ".hv", ".v")
    arr = _as_numpy(array, "image")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    geometry.check_image_shape(arr.shape)
    if arr.ndim != 3:
        raise InterfileError(f"image has shape {arr.shape}, expected {geometry.shape} (z, y, x)")
    if number_format not in _DTYPES_OUT:
        raise InterfileError(f"number_format must be one of {sorted(_DTYPES_OUT)}, "
                             f"got {number_format!r}")
    fmt, nbytes, code = _DTYPES_OUT[number_format]
    endian = {"little": "<", "big": ">"}[byte_order]
    nz, ny, nx = geometry.shape
    vz, vy, vx = geometry.voxel_size_mm
    first = (0, -(ny // 2), -(nx // 2))
    fpo = [v * f + o for v, f, o in zip((vz, vy, vx), first, origin_mm)]
    lines = [
        "!INTERFILE  :=",
        "!imaging modality := PT",
        "!version of keys := STIR6.0",
        f"name of data file := {dpath.name}",
        "!GENERAL DATA :=",
        "!GENERAL IMAGE DATA :=",
        "!type of data := PET",
        f"imagedata byte order := {'LITTLEENDIAN' if byte_order == 'little' else 'BIGENDIAN'}",
        "number of radionuclides := 1",
        "!PET STUDY (General) :=",
        "!PET data type := Image",
        "process status := Reconstructed",
        f"!number format := {fmt}",
        f"!number of bytes per pixel := {nbytes}",
        "number of dimensions := 3",
        "matrix axis label [1] := x",
        f"!matrix size [1] := {nx}",
        f"scaling factor (mm/pixel) [1] := {_fmt(vx)}",
        "matrix axis label [2] := y",
        f"!matrix size [2] := {ny}",
        f"scaling factor (mm/pixel) [2] := {_fmt(vy)}",
        "matrix axis label [3] := z",
        f"!matrix size [3] := {nz}",
        f"scaling factor (mm/pixel) [3] := {_fmt(vz)}",
        f"first pixel offset (mm) [1] := {_fmt(fpo[2])}",
        f"first pixel offset (mm) [2] := {_fmt(fpo[1])}",
        f"first pixel offset (mm) [3] := {_fmt(fpo[0])}",
        "number of time frames := 1",
        "!END OF INTERFILE :=",
    ]
    _atomic_write(dpath, np.ascontiguousarray(arr, dtype=endian + code))
    _atomic_write(hpath, ("\n".join(lines) + "\n").encode("latin-1"))
    return hpath


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


# --------------------------------------------------------------------------- projection data
def _segment_numbers(h: InterfileHeader, min_rd: list[int], max_rd: list[int]) -> list[int]:
    """STIR ``find_segment_sequence``: segment numbers by sorting ``min + max`` ring difference."""
    sums = [a + b for a, b in zip(min_rd, max_rd)]
    order = sorted(range(len(sums)), key=lambda i: sums[i])
    zero = [r for r, i in enumerate(order) if sums[i] == 0]
    if len(zero) != 1:
        raise h.error(f"the segment table has no (or more than one) segment 0 "
                      f"(min/max ring differences {min_rd} / {max_rd})")
    numbers = [0] * len(sums)
    for rank, i in enumerate(order):
        numbers[i] = rank - zero[0]
    return numbers


def _arc_corrected(h: InterfileHeader) -> bool:
    """``applied corrections``: ``{arc correction}`` or ``{None}`` (absent: arc-corrected)."""
    corrections = h.get("applied corrections", default="")
    if not corrections:
        warnings.warn(f"{h.path}: no 'applied corrections' key; assuming arc-corrected data "
                      "(as STIR does)", stacklevel=4)
        return True
    items = [standardise_key(c) for c in corrections.strip("{} ").split(",") if c.strip()]
    unknown = [c for c in items if c not in ("arc correction", "arc corrected", "none")]
    if unknown:
        raise h.error(f"unsupported 'applied corrections' {unknown}")
    return any(c in ("arc correction", "arc corrected") for c in items)


def _sinogram_layout(h: InterfileHeader) -> tuple[SinogramGeometry, list[int], list[int], bool]:
    """Geometry, segment numbers in file order, axial counts in file order, view-major flag."""
    ndim = h.get_int("number of dimensions")
    if ndim == 5:
        raise h.error("TOF projection data (5 dimensions) are not supported")
    if ndim != 4:
        raise h.error(f"projection data with 'number of dimensions' = {ndim}; expected 4")
    pdt = standardise_key(h.get("PET data type", default="Emission"))
    if pdt != "emission":
        raise h.error(f"'!PET data type' is {h.get('PET data type')!r}; expected 'Emission'")
    if h.get_int("number of time frames", default=1) != 1:
        raise h.error("multi-frame projection data are not supported")
    labels = {i: standardise_key(h.get("matrix axis label", i)) for i in (1, 2, 3, 4)}
    if labels[3] == "view" and labels[2] == "axial coordinate":
        view_major, view_idx, ax_idx = True, 3, 2
    elif labels[2] == "view" and labels[3] == "axial coordinate":
        view_major, view_idx, ax_idx = False, 2, 3
    else:
        view_major, view_idx, ax_idx = True, 0, 0
    if labels[1] != "tangential coordinate" or labels[4] != "segment" or view_idx == 0:
        raise h.error(f"matrix axis labels {labels} not supported; expected [4] segment, [3] and "
                      "[2] view and axial coordinate, [1] tangential coordinate")
    num_segments = h.get_int("matrix size", 4)
    n_ax = h.get_int_list("matrix size", ax_idx)
    min_rd = h.get_int_list("minimum ring difference per segment")
    max_rd = h.get_int_list("maximum ring difference per segment")
    if not len(n_ax) == len(min_rd) == len(max_rd) == num_segments:
        raise h.error(f"per-segment tables disagree with '!matrix size [4]' = {num_segments}: "
                      f"axial positions {n_ax}, min ring diff {min_rd}, max ring diff {max_rd}")
    numbers = _segment_numbers(h, min_rd, max_rd)
    arc = _arc_corrected(h)
    scanner = _scanner_from_header(h)
    seg0 = numbers.index(0)
    span = max_rd[seg0] - min_rd[seg0] + 1
    mrd = max(max(abs(a), abs(b)) for a, b in zip(min_rd, max_rd))
    sampling = None
    if arc and h.has("effective central bin size (cm)"):
        sampling = float(h.get_decimal("effective central bin size (cm)") * 10)
    try:
        geometry = SinogramGeometry(scanner, h.get_int("matrix size", view_idx),
                                    h.get_int("matrix size", 1), arc, span, mrd, sampling)
    except ValueError as err:
        raise h.error(f"cannot build a sinogram geometry: {err}") from err
    ours = {s.number: (s.min_ring_difference, s.max_ring_difference, s.num_axial_positions)
            for s in geometry.segments}
    for num, a, lo, hi in zip(numbers, n_ax, min_rd, max_rd):
        if ours.get(num) != (lo, hi, a):
            raise h.error(f"segment {num} (ring differences {lo}..{hi}, {a} axial positions) does "
                          f"not match STIR's layout for span {span}, max ring difference {mrd} on "
                          f"{scanner.num_rings} rings: (min, max, axial positions) = "
                          f"{ours.get(num)}")
    if sorted(numbers) != sorted(ours):
        raise h.error(f"segments {sorted(numbers)} do not cover the geometry's segments")
    return geometry, numbers, n_ax, view_major


def read_sinogram(path: PathLike) -> tuple[np.ndarray, SinogramGeometry]:
    """Read STIR Interfile projection data.

    Parameters
    ----------
    path
        The ``.hs`` header.

    Returns
    -------
    array, geometry
        ``[sinogram, view, tangential]`` array in STIR's ``as_array()`` order (segments
        ``0, +1, -1, ...``; float32) and the :class:`SinogramGeometry` rebuilt from the header
        (scanner block, views, tangential positions, arc correction, segment table -> span and
        maximum ring difference; view mashing follows from ``num_views``).
    """
    h = read_header(path)
    geometry, numbers, n_ax, view_major = _sinogram_layout(h)
    V, T = geometry.num_views, int(geometry.num_tangential)
    flat = _read_data(h, sum(n_ax) * V * T)
    out = np.empty(geometry.shape, dtype=flat.dtype)
    pos = 0
    for num, a in zip(numbers, n_ax):
        block = flat[pos:pos + a * V * T]
        pos += a * V * T
        block = block.reshape(V, a, T).transpose(1, 0, 2) if view_major else block.reshape(a, V, T)
        off = geometry.sinogram_offset(num)
        out[off:off + a] = block
    return out, geometry


def write_sinogram(path: PathLike, array, geometry: SinogramGeometry, *,
                   number_format: Literal["float32", "float64"] = "float32",
                   byte_order: Literal["little", "big"] = "little") -> Path:
    """Write ``[sinogram, view, tangential]`` data as STIR Interfile projection data.

    The data file is written in STIR's default ``Segment_View_AxialPos_TangPos`` order with the
    segments in increasing number, the header with the keys of STIR 6's
    ``write_basic_interfile_PDFS_header``.  A leading singleton (TOF) axis, as in SIRF's
    ``as_array()``, is accepted.

    Returns
    -------
    Path of the header written.
    """
    hpath, dpath = _paths(path, ".hs", ".s")
    arr = _as_numpy(array, "sinogram")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise InterfileError(f"sinogram has shape {arr.shape}, expected {geometry.shape} "
                             "(sinogram, view, tangential)")
    geometry.check_data_shape(arr.shape)
    if number_format not in _DTYPES_OUT:
        raise InterfileError(f"number_format must be one of {sorted(_DTYPES_OUT)}, "
                             f"got {number_format!r}")
    fmt, nbytes, code = _DTYPES_OUT[number_format]
    endian = {"little": "<", "big": ">"}[byte_order]
    order = geometry.segment_numbers_file_order
    blocks = []
    for num in order:
        off = geometry.sinogram_offset(num)
        n = geometry.segment(num).num_axial_positions
        blocks.append(arr[off:off + n].transpose(1, 0, 2).reshape(-1))
    payload = np.ascontiguousarray(np.concatenate(blocks), dtype=endian + code)
    segs = [geometry.segment(num) for num in order]
    sc = geometry.scanner
    lines = [
        "!INTERFILE  :=",
        "!imaging modality := PT",
        f"name of data file := {dpath.name}",
        f"originating system := {sc.name}",
        "!version of keys := STIR6.0",
        "!GENERAL DATA :=",
        "!GENERAL IMAGE DATA :=",
        "!type of data := PET",
        f"imagedata byte order := {'LITTLEENDIAN' if byte_order == 'little' else 'BIGENDIAN'}",
        "number of radionuclides := 1",
        "!PET STUDY (General) :=",
        "!PET data type := Emission",
        f"applied corrections := {{{'arc correction' if geometry.arc_corrected else 'None'}}}",
        f"!number format := {fmt}",
        f"!number of bytes per pixel := {nbytes}",
        "number of dimensions := 4",
        "matrix axis label [4] := segment",
        f"!matrix size [4] := {len(segs)}",
        "matrix axis label [3] := view",
        f"!matrix size [3] := {geometry.num_views}",
        "matrix axis label [2] := axial coordinate",
        "!matrix size [2] := " + _braces(s.num_axial_positions for s in segs),
        "matrix axis label [1] := tangential coordinate",
        f"!matrix size [1] := {geometry.num_tangential}",
        "minimum ring difference per segment := " + _braces(s.min_ring_difference for s in segs),
        "maximum ring difference per segment := " + _braces(s.max_ring_difference for s in segs),
        *_scanner_lines(sc),
    ]
    if geometry.arc_corrected:
        lines.append("effective central bin size (cm) := "
                     + _cm(float(geometry.tangential_sampling_mm)))
    lines += [
        "number of time frames := 1",
        "start vertical bed position (mm) := 0",
        "start horizontal bed position (mm) := 0",
        "!END OF INTERFILE :=",
    ]
    _atomic_write(dpath, payload)
    _atomic_write(hpath, ("\n".join(lines) + "\n").encode("latin-1"))
    return hpath
