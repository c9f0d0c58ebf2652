"""``sirf-diffusion train-deft``: train PET-DEFT's h-network for a prior, resumable.

``--out`` is the run folder of :func:`~sirf_diffusion.diffusion.deft_training.train_deft`
(checkpoints, losses, ``train_config.json``) with the exported model in ``--out/model``, the
folder ``reconstruct --method deft --deft-model`` reads.  Nothing is lost:

* without ``--resume``, ``--out`` must be absent or empty, unless ``--overwrite`` (which starts
  a new run there: its checkpoints are deleted, its files replaced);
* ``--resume`` continues the run in ``--out`` (or starts one in an absent or empty folder, so one
  command both starts and continues a run), and refuses a non-empty folder without checkpoints;
* the configuration of a resumed run must match its checkpoint's (only ``steps`` and the
  checkpoint/validation periods may change).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .arguments import (
    add_config_argument,
    add_precision_argument,
    add_progress_argument,
    add_run_arguments,
    add_steps_argument,
    load_config,
)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``train-deft``."""
    p.add_argument("--out", metavar="DIR", required=True,
                   help="run folder (checkpoints, losses; the model in DIR/model); created, or "
                        "empty, or continued with --resume")
    add_config_argument(p, "DEFT training", "configs/deft.json", "DEFTTrainConfig")
    add_steps_argument(p)
    p.add_argument("--prior", metavar="DIR", default=None,
                   help="the frozen prior's model folder (default: the config's, else the "
                        "shipped models/default/xy)")
    add_run_arguments(p, "start a new run in a non-empty --out (its checkpoints are deleted)")
    add_precision_argument(p, None, "the config's, else auto")
    add_progress_argument(p, "the progress bar")


def _config(args: argparse.Namespace) -> Any:
    from ..diffusion.deft_training import DEFTTrainConfig

    cfg = load_config(args.config, DEFTTrainConfig.from_json, DEFTTrainConfig)
    changes = {k: v for k, v in (("steps", args.steps), ("prior", args.prior),
                                 ("precision", args.precision)) if v is not None}
    if args.prior is not None and not Path(args.prior).is_dir():
        raise ValueError(f"--prior {args.prior}: model folder not found")
    return dataclasses.replace(cfg, **changes)


def run(args: argparse.Namespace) -> int:
    """Train (module docstring for what is refused)."""
    from ..diffusion.checkpointing import list_checkpoints
    from ..diffusion.deft_training import train_deft
    from .output import check_location, check_run_folder, entries

    cfg = _config(args)
    folder = check_location(args.out, "--out", {"--config file": args.config,
                                                 "--prior folder": cfg.prior})
    old = entries(folder, "--out") if folder.is_dir() else []
    check_run_folder(old, args.out, kind="DEFT training run",
                     has_run=bool(list_checkpoints(folder)), resume=args.resume,
                     overwrite=args.overwrite)
    model = train_deft(cfg, folder, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress)
    print(f"train-deft: model in {Path(args.out) / model.name} ({cfg.steps} steps)")
    return 0
