"""Command-line interface: a thin layer over the library (``sirf-diffusion``, ``python -m sirf_diffusion``).

Every command writes its resolved configuration (``config.json``) beside its outputs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

CLASSICAL = ("mlem", "osem", "mapem-rdp", "mapem-quadratic")
DIFFUSION = ("lisch", "dds", "dps")


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate a PET scan of a brain phantom as a PETRIC-layout case folder")
    p.add_argument("--out", required=True, help="case folder to write (created)")
    p.add_argument("--phantom", choices=("brain-fdg", "brain-amyloid"), default="brain-fdg",
                   help="tracer contrast of the brain phantom")
    p.add_argument("--counts", type=float, default=2.5,
                   help="count level: mean true counts per mm^3 of emission volume (e.g. 2.5 or 10)")
    p.add_argument("--seed", type=int, default=0, help="subject seed (also seeds the noise)")
    p.add_argument("--noise-seed", type=int, default=None, help="seed of the Poisson noise (default: --seed)")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D slice or 3D volume")
    p.add_argument("--scanner", default="mMR", help="scanner: mMR or DMI4")
    p.add_argument("--rings", type=int, default=None,
                   help="3D only: number of rings simulated (default: enough to cover the volume)")
    p.add_argument("--max-ring-difference", type=int, default=None, help="3D only: largest ring difference")
    p.add_argument("--lesions", type=int, default=2, help="number of hot/cold lesions to insert")
    p.add_argument("--psf-fwhm", type=float, default=4.5, help="scanner resolution (Gaussian FWHM, mm)")
    p.add_argument("--randoms-fraction", type=float, default=0.2, help="randoms as a fraction of trues")
    p.add_argument("--scatter-fraction", type=float, default=0.3, help="scatter as a fraction of trues")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct a PETRIC-layout case folder")
    p.add_argument("case", help="case folder (prompts.hs, mult_factors.hs, additive_term.hs, ...)")
    p.add_argument("--method", choices=CLASSICAL + DIFFUSION, default="osem", help="reconstruction method")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--iterations", type=int, default=None,
                   help="classical methods: iterations (epochs for OSEM/MAP-EM)")
    p.add_argument("--subsets", type=int, default=None, help="number of view subsets")
    p.add_argument("--beta", type=float, default=None, help="MAP: penalisation factor")
    p.add_argument("--model", default=None, help="diffusion methods: prior folder (default: the shipped prior)")
    p.add_argument("--steps", type=int, default=None, help="diffusion methods: number of generative steps")
    p.add_argument("--mlem-iterations", type=int, default=None,
                   help="PET-LiSch: MLEM iteration count K that sets the prior/data balance")
    p.add_argument("--samples", type=int, default=None,
                   help="diffusion methods: number of posterior samples (chains) averaged")
    p.add_argument("--zeta", type=float, default=None,
                   help="DPS: misfit-normalised step size (default 2000; depends on the data)")
    p.add_argument("--physics", choices=("torch", "stir", "sirf"), default="torch",
                   help="physics backend (stir/sirf need the toolkits installed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler's randomness")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate a low-count brain scan and compare reconstructions")
    p.add_argument("--out", default="demo_out", help="output folder (created)")
    p.add_argument("--counts", type=float, default=2.5, help="counts per mm^3 of emission volume")
    p.add_argument("--seed", type=int, default=0, help="test-split subject index")
    p.add_argument("--quick", action="store_true", help="fewer iterations and steps (smoke test)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train 2D score networks on simulated PET slices")
    p.add_argument("--out", required=True, help="model folder (one sub-folder per orientation)")
    p.add_argument("--orientation", choices=("xy", "yz", "xz", "all"), default="xy",
                   help="slice orientation(s) to train")
    p.add_argument("--config", default=None, help="JSON training config (e.g. configs/default_prior.json)")
    p.add_argument("--steps", type=int, default=None, help="number of optimiser steps (overrides config)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--device", default=None, help="torch device (default: from config, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw unconditional samples from a prior and save a PNG grid")
    p.add_argument("--model", default=None, help="model folder (default: the shipped prior, xy)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--steps", type=int, default=100, help="number of generative steps")
    p.add_argument("--eta", type=float, default=1.0,
                   help="DDIM stochasticity: 1 = ancestral (DDPM-like) sampling, the default; "
                        "0 = deterministic DDIM")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sirf-diffusion",
        description="Diffusion-model priors for PET reconstruction (STIR/SIRF/CIL plugin).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_simulate, _add_reconstruct, _add_demo, _add_train, _add_sample):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import workflows

    handler = {
        "simulate": workflows.cmd_simulate,
        "reconstruct": workflows.cmd_reconstruct,
        "demo": workflows.cmd_demo,
        "train": workflows.cmd_train,
        "sample": workflows.cmd_sample,
    }[args.command]
    try:
        return int(handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as exc:
        print(f"sirf-diffusion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
