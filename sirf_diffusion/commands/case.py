"""A PETRIC-layout case for the commands: read, checked, and its physics built.

:func:`~sirf_diffusion.io.petric.read_case` refuses NaN, infinite and negative sinograms naming
the file; :func:`load_case` also refuses data that cannot give an image (all-zero prompts or
multiplicative factors), naming the file, before any reconstruction starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["load_case", "case_physics", "default_subsets", "Physics"]

Physics = Literal["torch", "sirf", "stir"]


def load_case(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """Read a PETRIC-layout case and its optional ``simulation.json`` (PSF, settings).

    Raises
    ------
    FileNotFoundError
        The folder or a required file does not exist.
    ValueError
        A file is unreadable or its data cannot be reconstructed (the message names the file).
    """
    from ..io.petric import read_case

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"case folder {folder} does not exist")
    case = read_case(folder)
    if not case.prompts.any():
        raise ValueError(f"{folder / 'prompts.hs'}: every bin is 0: there are no counts to "
                         "reconstruct")
    if not case.multiplicative.any():
        raise ValueError(f"{folder / 'mult_factors.hs'}: every multiplicative factor is 0: the "
                         "scanner would detect nothing")
    meta_path = folder / "simulation.json"
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise ValueError(f"{meta_path}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path}: expected a JSON object")
    return case, meta


def case_physics(case: Any, meta: dict[str, Any], *, num_subsets: int = 1, device: str = "cpu",
                 physics: Physics = "torch", folder: str | Path | None = None) -> Any:
    """The physics of a case.

    ``physics='torch'``: the embedded model with the case's ``m``, ``b`` and PSF (from
    ``simulation.json``); ``'sirf'`` / ``'stir'``: STIR's projector through SIRF or through
    STIR's Python bindings, on the case's files in ``folder``.
    """
    psf = meta.get("psf_fwhm_mm") or None
    if physics in ("sirf", "stir"):
        if folder is None:
            raise ValueError(f"--physics {physics} reads the case files: give the case folder")
        if physics == "sirf":
            from ..integrations.sirf import sirf_case_likelihood

            return sirf_case_likelihood(folder, psf_fwhm_mm=psf, num_subsets=num_subsets,
                                        device=device).physics
        from stir_wrappers import stir_case_physics

        return stir_case_physics(folder, psf_fwhm_mm=psf, num_subsets=num_subsets)
    if physics != "torch":
        raise ValueError(f"--physics must be torch, sirf or stir, got {physics}")
    from ..physics.model import AcquisitionModel

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)

    return AcquisitionModel(case.sinogram_geometry, case.image_geometry,
                            multiplicative=tensor(case.multiplicative),
                            additive=tensor(case.additive), psf_fwhm_mm=psf,
                            num_subsets=num_subsets)


def default_subsets(model: Any) -> int:
    """A number of view subsets that divides the views (12 if it can); for STIR's projectors
    (SIRF/STIR physics) it divides a quarter of the views, as STIR needs with its default
    symmetries."""
    from ..integrations.subsets import ToolkitSubsets

    views = model.data_shape[1]
    if isinstance(model, ToolkitSubsets) and views % 4 == 0:
        views //= 4
    for k in (12, 14, 9, 7, 6, 4, 3, 2):
        if views % k == 0:
            return k
    return 1
