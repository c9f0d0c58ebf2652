"""``sirf-diffusion train``: slice score priors, one run per orientation, resumable.

Layout of ``--out``: ``checkpoints/<o>/`` (the run: checkpoints, losses, resolved config) and
``<o>/`` (the exported EMA model), the prior-folder layout the loaders read.

A run must be resumable after a kill, so it writes into ``--out`` itself, not into a staging
folder.  What protects earlier results instead:

* without ``--resume``, ``--out`` must be absent or empty, unless ``--overwrite``: then its
  previous contents are moved aside and deleted once the new run ends; should the new run fail
  before its first checkpoint they are put back;
* ``--resume`` continues the run in ``--out`` (or starts one in an absent or empty folder, so
  that one command both starts and continues a run); it refuses a folder holding an exported
  model without the checkpoints of its run (a model it did not produce) or anything else that
  is not a run;
* a run that fails before its first checkpoint leaves nothing behind (no empty folder); one that
  fails later keeps its checkpoints, which ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Any

from .arguments import (
    add_config_argument,
    add_precision_argument,
    add_progress_argument,
    add_run_arguments,
    add_steps_argument,
    check_device,
    load_config,
)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``train``."""
    p.add_argument("--out", metavar="DIR", required=True,
                   help="prior folder: checkpoints/<orientation> and the exported model "
                        "<orientation>; created, or empty, or continued with --resume")
    p.add_argument("--orientation", choices=("xy", "yz", "xz", "all"), default="xy",
                   help="slice orientation(s) to train (default: %(default)s)")
    add_config_argument(p, "training", "configs/default_prior.json", "TrainConfig")
    add_steps_argument(p)
    add_run_arguments(p, "replace what --out holds (all of it) with a new run")
    p.add_argument("--device", metavar="DEVICE", default=None,
                   help="torch device, e.g. cpu or cuda (default: the config's, else cpu)")
    add_precision_argument(p, None, "the config's, else auto")
    add_progress_argument(p)


def _load_config(path: str | None) -> Any:
    from ..diffusion.training import TrainConfig

    return load_config(path, TrainConfig.from_json, TrainConfig)


def _check_resume(folder: Path, shown: str, orientations: tuple[str, ...]) -> bool:
    """Whether ``--resume`` continues a run in ``folder`` (``False``: absent or empty, a new run
    starts, so that the same command starts and continues a run); refuses anything else."""
    from ..diffusion.checkpointing import list_checkpoints
    from .output import check_run_folder, entries

    old = entries(folder, "--out") if folder.is_dir() else []
    if not old:
        return False
    found = False
    for o in orientations:
        has_checkpoints = bool(list_checkpoints(folder / "checkpoints" / o))
        if (folder / o / "config.json").is_file() and not has_checkpoints:
            raise ValueError(f"--resume: --out {shown} holds an exported model ({o}/) without "
                             f"the checkpoints of its run (checkpoints/{o}/): it was not "
                             "produced by `sirf-diffusion train` into this folder; train into "
                             "a new folder")
        found |= has_checkpoints
    where = f"no checkpoint in checkpoints/{'|'.join(orientations)}/"
    check_run_folder(old, shown, kind="training run", has_run=found, resume=True,
                     overwrite=None, where=where)
    return True


def run(args: argparse.Namespace) -> int:
    """Train every requested orientation (module docstring for what is refused)."""
    from ..diffusion.checkpointing import list_checkpoints
    from ..diffusion.training import train
    from .output import (
        abandon_run,
        check_location,
        check_replaceable,
        check_run_folder,
        entries,
        make_folders,
        set_aside,
    )

    cfg = _load_config(args.config)
    orientations = ("xy", "yz", "xz") if args.orientation == "all" else (args.orientation,)
    changes: dict[str, Any] = {}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.device is not None:
        changes["device"] = args.device
    if args.precision is not None:
        changes["precision"] = args.precision
    if changes.get("device", cfg.device) != "auto":
        check_device(changes.get("device", cfg.device),
                     "--device" if args.device is not None else f"--config {args.config}: device")
    try:
        configs = [dataclasses.replace(cfg, orientation=o, **changes) for o in orientations]
    except ValueError as exc:
        raise ValueError(f"--config {args.config}: {exc}") from None
    protect = {"--config file": args.config,
               **{f"init_from model ({c.orientation})": c.init_path() for c in configs}}
    folder = check_location(args.out, "--out", protect if args.overwrite else {})
    old = entries(folder, "--out") if folder.is_dir() else []
    continuing = args.resume and _check_resume(folder, args.out, orientations)
    if old and not args.resume:
        check_run_folder(old, args.out, kind="training run", resume=False,
                         has_run=any(list_checkpoints(folder / "checkpoints" / o)
                                     for o in ("xy", "yz", "xz")), overwrite=args.overwrite)
        check_replaceable(folder, args.out)

    created = make_folders(folder)
    trash = set_aside(folder, old) if old and not args.resume else None
    try:
        for c in configs:
            o = c.orientation
            train(c, folder / "checkpoints" / o, resume=args.resume,
                  progress=not args.no_progress, export_dir=folder / o)
            print(f"train: {o} model in {Path(args.out) / o} ({c.steps} steps)")
    except BaseException:
        if not continuing and not any(list_checkpoints(folder / "checkpoints" / o)
                                      for o in orientations):
            abandon_run(folder, trash, created)
            trash = None
        raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    return 0
