"""``sirf-diffusion sample``: unconditional samples of a prior as a PNG grid (and its settings)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .arguments import add_precision_argument, non_negative_int, positive_int, unit_interval

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``sample``."""
    p.add_argument("--model", metavar="DIR", default=None,
                   help="model folder, or prior folder (its --orientation model) (default: the "
                        "shipped prior)")
    p.add_argument("--orientation", choices=("xy", "yz", "xz"), default="xy",
                   help="slice model of a prior folder: xy axial, yz sagittal, xz coronal "
                        "(default: %(default)s)")
    p.add_argument("--out", metavar="PNG", required=True,
                   help="PNG file to write; its settings go to the same name with .json")
    p.add_argument("--overwrite", action="store_true", help="replace --out and its .json")
    p.add_argument("--n", metavar="N", type=positive_int, default=16,
                   help="number of samples (default: %(default)s)")
    p.add_argument("--steps", metavar="N", type=positive_int, default=100,
                   help="number of generative steps (default: %(default)s)")
    p.add_argument("--eta", metavar="ETA", type=unit_interval, default=1.0,
                   help="DDIM stochasticity in [0, 1]: 1 = ancestral (DDPM-like) sampling, "
                        "0 = deterministic DDIM (default: %(default)s)")
    p.add_argument("--seed", metavar="S", type=non_negative_int, default=0,
                   help="random seed (default: %(default)s)")
    add_precision_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Sample into a staged result set of ``NAME.png`` and ``NAME.json``."""
    from ..diffusion.loading import load_slice_prior
    from ..io.atomic import write_json
    from ..samplers.unconditional import sample_grid_png
    from .output import ResultSet

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: must name a .png file")
    settings = out.with_suffix(".json")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give a .png file name")
    results = ResultSet(out.parent, overwrite=args.overwrite, names=(out.name, settings.name),
                        protect={"model folder": args.model}, shown=out)
    model = load_slice_prior(args.model, args.orientation, args.precision)
    with results as staging:
        sample_grid_png(model, staging / out.name, n=args.n, num_steps=args.steps,
                        generator=torch.Generator().manual_seed(args.seed), eta=args.eta,
                        progress=not args.no_progress)
        write_json(staging / settings.name,
                   {"command": "sample", **vars(args),
                    "model": str(args.model) if args.model
                    else f"shipped prior ({args.orientation})"})
    print(f"sample: wrote {out} and {settings.name}")
    return 0
