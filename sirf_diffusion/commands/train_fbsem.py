"""``sirf-diffusion train-fbsem``: train an FBSEM-net on paired data, resumable, by one command.

``--out`` is the run folder (``checkpoints/``, ``loss.csv``, ``val_loss.csv``,
``train_config.json``) and holds the exported model in ``--out/model`` (what
``reconstruct --method fbsem --fbsem-model`` reads; the run folder itself is accepted too).
Nothing is overwritten: without ``--resume`` the folder must be absent or empty; ``--resume``
continues the run in it (or starts one in an absent or empty folder, so that one command both
starts and continues a run) and refuses a folder that holds no run of its own.  A run that fails
before its first checkpoint leaves no folder behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from .arguments import (
    add_config_argument,
    add_progress_argument,
    add_run_arguments,
    add_steps_argument,
    load_config,
)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``train-fbsem``."""
    p.add_argument("--out", metavar="DIR", required=True,
                   help="run folder (checkpoints, losses; the model in DIR/model): created, or "
                        "empty, or continued with --resume")
    add_config_argument(p, "training", "configs/fbsem.json", "FBSEMTrainConfig")
    add_steps_argument(p)
    add_run_arguments(p, None)
    add_progress_argument(p)


def _load_config(path: str | None, steps: int | None) -> Any:
    from ..recon.fbsem_training import FBSEMTrainConfig

    cfg = load_config(path, FBSEMTrainConfig.from_json, FBSEMTrainConfig)
    return cfg if steps is None else dataclasses.replace(cfg, steps=steps)


def run(args: argparse.Namespace) -> int:
    """Train (module docstring for what is refused)."""
    from ..diffusion.checkpointing import list_checkpoints
    from ..recon.fbsem_training import train_fbsem
    from .output import check_location, check_run_folder, entries, make_folders, remove_folders

    cfg = _load_config(args.config, args.steps)
    folder = check_location(args.out, "--out", {"--config file": args.config},
                            replaces_folder=False)
    old = entries(folder, "--out") if folder.is_dir() else []
    has_run = bool(list_checkpoints(folder))
    check_run_folder(old, args.out, kind="FBSEM-net run", has_run=has_run, resume=args.resume,
                     overwrite=None, where="no checkpoint in checkpoints/", article="an")
    created = make_folders(folder)
    command = "sirf-diffusion train-fbsem " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "train-fbsem" else None
    try:
        model = train_fbsem(cfg, folder, resume=args.resume, progress=not args.no_progress,
                            command=command)
    except BaseException:
        if not has_run and not list_checkpoints(folder):
            for e in folder.iterdir():
                shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
            remove_folders(created)
        raise
    print(f"train-fbsem: model in {Path(args.out) / model.name} ({cfg.steps} steps)")
    return 0
