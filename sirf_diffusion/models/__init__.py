"""Priors shipped inside the package (``default/{xy,yz,xz}``: safetensors + config.json).

How they were trained (command, configuration, hardware, time) is recorded in
``default/TRAINING.md`` and ``configs/default_prior.json``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_prior_dir", "has_default_prior"]


def default_prior_dir() -> Path:
    """Folder of the shipped default prior (one sub-folder per orientation)."""
    return Path(__file__).resolve().parent / "default"


def has_default_prior(orientation: str = "xy") -> bool:
    """Whether the shipped prior has a model for ``orientation``."""
    d = default_prior_dir() / orientation
    return (d / "model.safetensors").is_file() and (d / "config.json").is_file()
