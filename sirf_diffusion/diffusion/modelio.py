"""Saving and loading score models: ``model.safetensors`` + ``config.json``, no code execution.

Layout of a model directory::

    model_dir/
        model.safetensors   # weights only (safetensors: no pickle, nothing executed on load)
        config.json         # ScoreModelConfig + sha256 of the weights file, parameter count,
                            # tensor dtype, package version, free "extra" metadata

A multi-orientation prior (PET-LiSch 3D, Webber et al. 2025) is a directory of such model
directories named after their orientation::

    prior_dir/{xy,yz,xz}/model.safetensors + config.json

Writing and checking the files is :mod:`sirf_diffusion.io.weights`' (atomic, weights first,
sha256 recorded and verified).  :func:`load_model` also checks that every tensor name and shape
matches the model the config builds; any problem raises ``FileNotFoundError`` or ``ValueError``
naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..io.weights import CONFIG_FILE, WEIGHTS_FILE, WeightsFolder, check_tensor_fit
from .model import ORIENTATIONS, ScoreModel, ScoreModelConfig

__all__ = ["WEIGHTS_FILE", "CONFIG_FILE", "FORMAT", "save_model", "load_model", "save_prior",
           "load_prior"]

#: Format tag written into ``config.json``.
FORMAT = "sirf-diffusion-score-model/1"
_FOLDER = WeightsFolder(FORMAT, "model", "not a sirf-diffusion model config",
                        folder_word="directory", sections=("model",))
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def save_model(directory: str | os.PathLike[str], model: ScoreModel,
               extra: dict[str, Any] | None = None, dtype: str = "float32") -> Path:
    """Write ``model`` to ``directory`` (created if needed); returns the directory path.

    Parameters
    ----------
    directory
        Target directory; existing ``model.safetensors``/``config.json`` are replaced.
    model
        The :class:`~.model.ScoreModel` to save.
    extra
        JSON-serialisable metadata stored under ``"extra"`` (training log, data hash, ...).
    dtype
        Storage dtype of floating-point tensors: ``'float32'``, ``'float16'`` (halves the file;
        loaded back as float32) or ``'bfloat16'``.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"save_model expects a ScoreModel, got {type(model).__name__}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    weights = _FOLDER.encode(model.state_dict(), _DTYPES[dtype])
    meta = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "weights": weights.record(dtype=dtype, num_parameters=model.num_parameters),
        "saved_by": {"package": "sirf-diffusion", "version": __version__},
        "extra": extra or {},
    }
    return _FOLDER.save(directory, weights, meta)


def load_model(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu",
               precision: str = "auto") -> ScoreModel:
    """Load a model saved by :func:`save_model` (float32, eval mode) without executing code.

    ``precision`` is the network's run-time precision (:mod:`~.precision`; ``'auto'``:
    bfloat16 autocast where the hardware runs it natively); the weights stay float32.

    Raises
    ------
    FileNotFoundError
        The directory, ``config.json`` or ``model.safetensors`` is missing.
    ValueError
        Invalid config, sha256 mismatch (corrupt, truncated or tampered weights), unreadable
        safetensors, or tensor names/shapes that do not match the configured architecture.
    """
    directory = Path(directory)
    meta = _FOLDER.read_config(directory)
    cfg_path = directory / CONFIG_FILE
    try:
        config = ScoreModelConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: invalid model configuration ({e})") from e
    sd = _FOLDER.read_weights(directory, meta)
    model = ScoreModel(config, precision=precision)
    ref = model.state_dict()
    check_tensor_fit(sd, ref, _FOLDER.weights_path(directory, meta), cfg_path)
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in sd.items()}, strict=True)
    return model.to(map_location).eval()


def save_prior(prior_dir: str | os.PathLike[str], models: dict[str, ScoreModel],
               extra: dict[str, Any] | None = None, dtype: str = "float32") -> Path:
    """Save one model per orientation to ``prior_dir/<orientation>/``."""
    prior_dir = Path(prior_dir)
    for o, m in models.items():
        if o not in ORIENTATIONS:
            raise ValueError(f"unknown orientation {o!r}; expected one of {ORIENTATIONS}")
        if m.config.orientation != o:
            raise ValueError(f"model saved under {o!r} was trained on orientation "
                             f"{m.config.orientation!r}")
        save_model(prior_dir / o, m, extra=extra, dtype=dtype)
    return prior_dir


def load_prior(prior_dir: str | os.PathLike[str], orientations: tuple[str, ...] | None = None,
               map_location: str | torch.device = "cpu") -> dict[str, ScoreModel]:
    """Load ``prior_dir/<orientation>/`` models, e.g. for :class:`~.prior3d.PerpendicularPrior3D`.

    ``orientations=None`` loads every orientation present (at least one is required); an
    explicit tuple requires each of them.  Each model's stored orientation must match its
    directory name.
    """
    prior_dir = Path(prior_dir)
    if not prior_dir.is_dir():
        raise FileNotFoundError(f"{prior_dir}: prior directory not found")
    if orientations is None:
        orientations = tuple(o for o in ORIENTATIONS if (prior_dir / o / CONFIG_FILE).is_file())
        if not orientations:
            raise FileNotFoundError(f"{prior_dir}: no model sub-directory among {ORIENTATIONS}")
    out: dict[str, ScoreModel] = {}
    for o in orientations:
        if o not in ORIENTATIONS:
            raise ValueError(f"unknown orientation {o!r}; expected one of {ORIENTATIONS}")
        m = load_model(prior_dir / o, map_location=map_location)
        if m.config.orientation != o:
            raise ValueError(f"{prior_dir / o / CONFIG_FILE}: model orientation is "
                             f"{m.config.orientation!r}, but it is stored under {o!r}")
        out[o] = m
    return out
