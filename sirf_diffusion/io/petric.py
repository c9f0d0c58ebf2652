"""PETRIC case folders (SyneRBI PET Rapid Image reconstruction Challenge dataset layout).

A PETRIC case folder (``petric.py:get_data`` in github SyneRBI/PETRIC) holds

==============================  =========================================================
``prompts.hs``                  measured prompts ``y``
``mult_factors.hs``             multiplicative factors ``m`` (normalisation x attenuation)
``additive_term.hs``            additive term ``a`` *before* multiplication
``OSEM_image.hv``               OSEM reconstruction (initial image)
``kappa.hv``                    RDP spatial weights (optional here)
``penalisation_factor.txt``     RDP strength (optional)
``PETRIC/reference_image.hv``   converged reference reconstruction (where known)
``PETRIC/VOI_<name>.hv``        masks, e.g. ``VOI_whole_object``, ``VOI_background``
==============================  =========================================================

PETRIC's model is ``ybar = m * (G x + a)`` (SIRF ``AcquisitionModel`` with the additive term
``a = (randoms + scatter) / m``, see PETRIC's ``data_utilities.py``); this package uses
``ybar = m * (G x) + b``.  Hence ``b = m * a`` on reading and ``a = b / m`` on writing, where
bins with ``m == 0`` get ``a = 0`` (they carry no information; a non-zero ``b`` there cannot be
represented and raises unless ``on_unrepresentable="drop"``).  Any other ``*.hv`` image in the
folder (``kappa``, ``mu_map``, ``t1``, ...) goes to :attr:`Case.extra` by file stem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np

from ..physics.geometry import ImageGeometry, SinogramGeometry, check_finite_non_negative
from .interfile import InterfileError, read_image, read_sinogram, write_image, write_sinogram

__all__ = ["Case", "read_case", "write_case", "additive_to_background", "background_to_additive",
           "case_headers"]

PathLike = str | os.PathLike

_SINOGRAMS = {"prompts": "prompts.hs", "multiplicative": "mult_factors.hs",
              "additive": "additive_term.hs"}
_RESERVED_IMAGES = {"OSEM_image", "reference_image"}
_SINOGRAM_STEMS = {"prompts", "mult_factors", "additive_term"}


@dataclass
class Case:
    """One reconstruction problem in the package's conventions.

    Attributes
    ----------
    prompts
        Measured counts ``y`` ``[sinogram, view, tangential]``.
    multiplicative
        ``m`` (same shape).
    additive
        Background ``b`` in counts, **after** multiplication (``ybar = m * G x + b``).
    sinogram_geometry, image_geometry
        Geometries of the sinograms and of every image.
    reference, osem
        Reference and OSEM images ``[z, y, x]`` (``None`` when absent).
    masks
        VOI masks by name without the ``VOI_`` prefix (``whole_object``, ``background``, ...).
    extra
        Other images on the same grid by file stem (``kappa``, ``mu_map``, ``t1``, ...).
    penalisation_factor
        Content of ``penalisation_factor.txt`` if present.
    """

    prompts: np.ndarray
    multiplicative: np.ndarray
    additive: np.ndarray
    sinogram_geometry: SinogramGeometry
    image_geometry: ImageGeometry
    reference: np.ndarray | None = None
    osem: np.ndarray | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    penalisation_factor: float | None = None

    def __post_init__(self) -> None:
        for name in ("prompts", "multiplicative", "additive"):
            arr = np.asarray(getattr(self, name))
            self.sinogram_geometry.check_data_shape(arr.shape, name)
            if arr.ndim != 3:
                raise ValueError(f"{name} must have shape {self.sinogram_geometry.shape}, "
                                 f"got {arr.shape}")
            check_finite_non_negative(arr, name)
        images = {"reference": self.reference, "osem": self.osem,
                  **{f"masks[{k!r}]": v for k, v in self.masks.items()},
                  **{f"extra[{k!r}]": v for k, v in self.extra.items()}}
        for name, img in images.items():
            if img is not None:
                self.image_geometry.check_image_shape(np.shape(img), name)
                if np.ndim(img) != 3:
                    raise ValueError(f"{name} must have shape {self.image_geometry.shape}")


def additive_to_background(additive: np.ndarray, multiplicative: np.ndarray) -> np.ndarray:
    """PETRIC/SIRF additive term ``a`` -> package background ``b = m * a``."""
    return np.asarray(multiplicative) * np.asarray(additive)


def background_to_additive(background: np.ndarray, multiplicative: np.ndarray, *,
                           on_unrepresentable: Literal["raise", "drop"] = "raise") -> np.ndarray:
    """Package background ``b`` -> PETRIC/SIRF additive term ``a = b / m`` (0 where ``m = 0``).

    Bins with ``m == 0`` and ``b > 0`` cannot be represented in the PETRIC model; they raise
    ``ValueError`` unless ``on_unrepresentable="drop"`` (then their background is lost).
    """
    b = np.asarray(background)
    m = np.asarray(multiplicative)
    if b.shape != m.shape:
        raise ValueError(f"background {b.shape} and multiplicative factors {m.shape} differ "
                         "in shape")
    zero = m == 0
    lost = zero & (b != 0)
    if lost.any() and on_unrepresentable != "drop":
        raise ValueError(f"{int(lost.sum())} bins have multiplicative factor 0 but background > 0, "
                         "which PETRIC's ybar = m * (G x + a) cannot represent; pass "
                         "on_unrepresentable='drop' to set their additive term to 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(zero, 0.0, b / np.where(zero, 1.0, m))
    return a.astype(np.result_type(b.dtype, m.dtype, np.float32), copy=False)


def _read_required_sinogram(folder: Path, fname: str) -> tuple[np.ndarray, SinogramGeometry]:
    p = folder / fname
    if not p.is_file():
        raise FileNotFoundError(f"PETRIC case {folder} lacks {fname}")
    arr, g = read_sinogram(p)
    if not np.isfinite(arr).all():
        raise InterfileError(f"{p}: the data contain NaN or infinite values")
    if (arr < 0).any():
        raise InterfileError(f"{p}: the data contain negative values")
    return arr, g


def _difference(a: object, b: object) -> str:
    """The fields in which two geometry dataclasses differ, by name (their reprs are long)."""
    names = [f.name for f in fields(a) if f.compare and getattr(a, f.name) != getattr(b, f.name)]
    return ", ".join(names) or "geometry"


def case_headers(folder: PathLike) -> tuple[dict[str, Path], Path]:
    """The Interfile headers a toolkit (SIRF, STIR) reads a PETRIC case from: ``{"prompts",
    "mult_factors", "additive_term"} -> .hs`` and the image template, ``OSEM_image.hv`` (else
    ``PETRIC/reference_image.hv``); ``FileNotFoundError`` naming what is missing."""
    folder = Path(folder)
    paths = {k: folder / f"{k}.hs" for k in ("prompts", "mult_factors", "additive_term")}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: a PETRIC case needs prompts.hs, "
                                    "mult_factors.hs and additive_term.hs")
    template = next((p for p in (folder / "OSEM_image.hv", folder / "PETRIC" / "reference_image.hv")
                     if p.is_file()), None)
    if template is None:
        raise FileNotFoundError(f"{folder} has neither OSEM_image.hv nor "
                                "PETRIC/reference_image.hv to define the image geometry")
    return paths, template


def read_case(folder: PathLike) -> Case:
    """Read a PETRIC case folder (see module docstring) into a :class:`Case`.

    Raises ``FileNotFoundError`` naming a missing required file (``prompts.hs``,
    ``mult_factors.hs``, ``additive_term.hs``, and at least one image to define the grid),
    :class:`~sirf_diffusion.io.interfile.InterfileError` for geometry mismatches.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"PETRIC case folder not found: {folder}")
    sinos: dict[str, np.ndarray] = {}
    geometry: SinogramGeometry | None = None
    for key, fname in _SINOGRAMS.items():
        arr, g = _read_required_sinogram(folder, fname)
        if geometry is None:
            geometry = g
        elif g != geometry:
            raise InterfileError(f"{folder / fname}: sinogram geometry differs from prompts.hs "
                                 f"in {_difference(g, geometry)} (shape {g.shape} vs "
                                 f"{geometry.shape})")
        sinos[key] = arr
    assert geometry is not None
    image_files: dict[str, Path] = {}
    for p in sorted(folder.glob("*.hv")):
        image_files[p.stem] = p
    sub = folder / "PETRIC"
    vois: dict[str, Path] = {}
    if sub.is_dir():
        for p in sorted(sub.glob("*.hv")):
            if p.stem.startswith("VOI_"):
                vois[p.stem[4:]] = p
            elif p.stem == "reference_image":
                image_files["reference_image"] = p
    if not image_files and not vois:
        raise FileNotFoundError(f"PETRIC case {folder} has no image (OSEM_image.hv or "
                                "PETRIC/reference_image.hv) "
                                "to define the image grid")
    image_geometry: ImageGeometry | None = None
    images: dict[str, np.ndarray] = {}
    ordered = sorted(image_files.items(), key=lambda kv: kv[0] != "OSEM_image")
    for stem, p in [*ordered, *((f"VOI_{k}", v) for k, v in vois.items())]:
        arr, g = read_image(p)
        if image_geometry is None:
            image_geometry = g
        elif g != image_geometry:
            raise InterfileError(f"{p}: image grid differs from the case grid in "
                                 f"{_difference(g, image_geometry)} ({g.shape}, "
                                 f"{g.voxel_size_mm} mm vs {image_geometry.shape}, "
                                 f"{image_geometry.voxel_size_mm} mm)")
        images[stem] = arr
    assert image_geometry is not None
    pen = None
    pen_file = folder / "penalisation_factor.txt"
    if pen_file.is_file():
        try:
            pen = float(np.loadtxt(pen_file))
        except ValueError as err:
            raise ValueError(f"{pen_file}: not a single number ({err})") from err
    return Case(
        prompts=sinos["prompts"], multiplicative=sinos["multiplicative"],
        additive=additive_to_background(sinos["additive"], sinos["multiplicative"]),
        sinogram_geometry=geometry, image_geometry=image_geometry,
        reference=images.pop("reference_image", None), osem=images.pop("OSEM_image", None),
        masks={k: images.pop(f"VOI_{k}") for k in vois},
        extra=images, penalisation_factor=pen)


def write_case(folder: PathLike, case: Case, *,
               on_unrepresentable: Literal["raise", "drop"] = "raise") -> Path:
    """Write a :class:`Case` in PETRIC's layout (folder and ``PETRIC/`` created if needed).

    The background is stored as PETRIC's additive term ``a = b / m`` (see
    :func:`background_to_additive`).  Returns the folder.
    """
    folder = Path(folder)
    additive = background_to_additive(case.additive, case.multiplicative,
                                      on_unrepresentable=on_unrepresentable)
    for name in case.extra:
        if name in _RESERVED_IMAGES or name.startswith("VOI_") or name in _SINOGRAM_STEMS:
            raise ValueError(f"extra image name {name!r} clashes with a PETRIC file name")
    folder.mkdir(parents=True, exist_ok=True)
    g = case.sinogram_geometry
    write_sinogram(folder / "prompts.hs", case.prompts, g)
    write_sinogram(folder / "mult_factors.hs", case.multiplicative, g)
    write_sinogram(folder / "additive_term.hs", additive, g)
    ig = case.image_geometry
    if case.osem is not None:
        write_image(folder / "OSEM_image.hv", case.osem, ig)
    for name, img in case.extra.items():
        write_image(folder / f"{name}.hv", img, ig)
    if case.reference is not None or case.masks:
        (folder / "PETRIC").mkdir(exist_ok=True)
    if case.reference is not None:
        write_image(folder / "PETRIC" / "reference_image.hv", case.reference, ig)
    for name, mask in case.masks.items():
        write_image(folder / "PETRIC" / f"VOI_{name}.hv", mask, ig)
    if case.penalisation_factor is not None:
        (folder / "penalisation_factor.txt").write_text(f"{float(case.penalisation_factor)!r}\n")
    return folder
