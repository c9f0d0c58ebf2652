"""Saving and loading score models: ``model.safetensors`` + ``config.json``, no code execution.

Layout of a model directory::

    model_dir/
        model.safetensors   # weights only (safetensors: no pickle, nothing executed on load)
        config.json         # ScoreModelConfig + sha256 of the weights file, parameter count,
                            # tensor dtype, package version, free "extra" metadata

A multi-orientation prior (PET-LiSch 3D, Webber et al. 2025) is a directory of such model
directories named after their orientation::

    prior_dir/{xy,yz,xz}/model.safetensors + config.json

Both files are written atomically with the user's umask
(:func:`sirf_diffusion.io.atomic.atomic_write_bytes`: temporary file in the same directory,
``fsync``, ``os.replace``), weights first, so an interrupted save never leaves a config that
validates against the wrong weights.  :func:`load_model` verifies the sha256 and that every
tensor name and shape matches the model the config builds; any problem raises
``FileNotFoundError`` or ``ValueError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..io.atomic import atomic_write_bytes, atomic_write_text
from .model import ORIENTATIONS, ScoreModel, ScoreModelConfig

__all__ = ["WEIGHTS_FILE", "CONFIG_FILE", "FORMAT", "save_model", "load_model", "save_prior",
           "load_prior"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Format tag written into ``config.json``.
FORMAT = "sirf-diffusion-score-model/1"
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
    from safetensors.torch import save

    if not isinstance(model, ScoreModel):
        raise TypeError(f"save_model expects a ScoreModel, got {type(model).__name__}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().to(_DTYPES[dtype]) if v.is_floating_point() else v.detach())
          .cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(sd, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "dtype": dtype,
            "num_parameters": model.num_parameters,
            "num_tensors": len(sd),
        },
        "saved_by": {"package": "sirf-diffusion", "version": __version__},
        "extra": extra or {},
    }
    try:
        text = json.dumps(meta, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model config or 'extra' metadata is not JSON-serialisable: {e}") from e
    atomic_write_bytes(directory / WEIGHTS_FILE, blob)
    atomic_write_text(directory / CONFIG_FILE, text + "\n")
    return directory


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model config file not found")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a sirf-diffusion model config (expected format {FORMAT!r})")
    for key in ("model", "weights"):
        if not isinstance(meta.get(key), dict):
            raise ValueError(f"{path}: missing the {key!r} section")
    return meta


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
    from safetensors.torch import load

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: model directory not found")
    cfg_path = directory / CONFIG_FILE
    meta = _read_config(cfg_path)
    w = meta["weights"]
    w_path = directory / str(w.get("file", WEIGHTS_FILE))
    if not w_path.is_file():
        raise FileNotFoundError(f"{w_path}: weights file not found")
    try:
        config = ScoreModelConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: invalid model configuration ({e})") from e
    blob = w_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != w.get("sha256"):
        raise ValueError(f"{w_path}: sha256 mismatch (file {digest[:12]}..., config.json says "
                         f"{str(w.get('sha256'))[:12]}...): the weights file is corrupt, "
                         "truncated or was modified")
    try:
        sd = load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{w_path}: not a readable safetensors file ({e})") from e
    model = ScoreModel(config, precision=precision)
    ref = model.state_dict()
    missing, unexpected = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
    if missing or unexpected:
        raise ValueError(f"{w_path}: tensor names do not match the architecture in {cfg_path}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
             for k, v in ref.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"{w_path}: tensor shapes do not match the architecture in {cfg_path}: "
                         + "; ".join(wrong[:5]))
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
