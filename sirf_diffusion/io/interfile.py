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
with numbers written to full (round-trip) precision.  Data and header are each written
atomically with the user's umask (:func:`sirf_diffusion.io.atomic.atomic_write_bytes`: a
temporary file in the target folder, ``fsync``, :func:`os.replace`).

The header parser (:class:`InterfileHeader`), the number formatting and the scanner block live in
:mod:`sirf_diffusion.io.interfile_header` and are re-exported here.

Every problem (missing header or data file, truncated or over-long data file, unsupported number
format, TOF or multi-frame data, inconsistent segment tables, shapes that do not match the
geometry) raises :class:`InterfileError` (a ``ValueError``) or ``FileNotFoundError`` with the file
and key named.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from ..physics.geometry import ImageGeometry, SinogramGeometry
from .atomic import atomic_write_bytes
from .interfile_header import (  # noqa: F401  (re-exported: the header helpers lived here)
    _STIR_SCANNER_EXTRAS,
    InterfileError,
    InterfileHeader,
    PathLike,
    _braces,
    _cm,
    _dec,
    _dec_str,
    _deg_for_rad,
    _fmt,
    _known_scanner,
    _scanner_from_header,
    _scanner_lines,
    read_header,
    standardise_key,
)

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
    """Write bytes or an array's raw data with :func:`~.atomic.atomic_write_bytes`."""
    if isinstance(payload, np.ndarray):
        atomic_write_bytes(path, payload.tofile)
    else:
        atomic_write_bytes(path, payload)


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
