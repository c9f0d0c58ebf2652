"""``sirf-diffusion demo``: OSEM, MAP-EM-RDP and PET-LiSch on a simulated low-count scan."""

from __future__ import annotations

import argparse

from .arguments import non_negative_int, positive_float

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``demo``."""
    p.add_argument("--out", metavar="DIR", default="demo_out",
                   help="output folder: created, or empty, or replaced with --overwrite "
                        "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds (all of it)")
    p.add_argument("--counts", metavar="C", type=positive_float, default=2.5,
                   help="counts per mm^3 of emission volume (default: %(default)s)")
    p.add_argument("--seed", metavar="S", type=non_negative_int, default=0,
                   help="index of the test-split subject (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer iterations and steps (smoke test)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Run :func:`sirf_diffusion.demo.run_demo` into a staged result set."""
    from ..demo import run_demo
    from .output import ResultSet

    with ResultSet(args.out, overwrite=args.overwrite) as staging:
        run_demo(staging, counts_per_mm3=args.counts, subject_index=args.seed, quick=args.quick,
                 progress=not args.no_progress)
    print(f"demo: wrote {args.out} (demo.png, metrics.md, metrics.json, case/)")
    return 0
