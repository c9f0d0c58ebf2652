"""``sirf-diffusion simulate``: a PET scan of a brain phantom written as a PETRIC-layout case."""

from __future__ import annotations

import argparse

from .arguments import fraction, non_negative_float, non_negative_int, positive_float, positive_int

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``simulate``."""
    from ..physics.geometry import SCANNERS

    p.add_argument("--out", metavar="CASE", required=True,
                   help="case folder to write: created, or empty, or replaced with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds (all of it)")
    p.add_argument("--phantom", choices=("brain-fdg", "brain-amyloid"), default="brain-fdg",
                   help="tracer contrast of the brain phantom (default: %(default)s)")
    p.add_argument("--counts", metavar="C", type=positive_float, default=2.5,
                   help="count level: mean true counts per mm^3 of emission volume "
                        "(default: %(default)s)")
    p.add_argument("--seed", metavar="S", type=non_negative_int, default=0,
                   help="subject seed, also seeds the noise; seeds that are multiples of 10 are "
                        "test-split subjects the shipped prior never saw (default: %(default)s)")
    p.add_argument("--noise-seed", metavar="S", type=non_negative_int, default=None,
                   help="seed of the Poisson noise (default: --seed)")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2,
                   help="2D slice or 3D volume (default: %(default)s)")
    p.add_argument("--scanner", choices=tuple(SCANNERS), default="mMR",
                   help="scanner (default: %(default)s)")
    p.add_argument("--rings", metavar="N", type=positive_int, default=None,
                   help="--dims 3 only: rings simulated; the volume is the 2N - 1 planes they "
                        "image (default: 48 rings, 96 planes)")
    p.add_argument("--max-ring-difference", metavar="N", type=non_negative_int, default=None,
                   help="--dims 3 only: largest ring difference (default: min(rings - 1, 4))")
    p.add_argument("--span", metavar="S", type=positive_int, default=1,
                   help="--dims 3 only: axial compression, odd (default: %(default)s; the full "
                        "mMR: --rings 64 --max-ring-difference 60 --span 11 --image-size 285)")
    p.add_argument("--image-size", metavar="N", type=positive_int, default=128,
                   help="transaxial image size in voxels of 2.08626 mm (default: %(default)s)")
    p.add_argument("--lesions", metavar="N", type=non_negative_int, default=2,
                   help="number of hot/cold lesions to insert (default: %(default)s)")
    p.add_argument("--psf-fwhm", metavar="MM", type=non_negative_float, default=4.5,
                   help="scanner resolution: Gaussian FWHM in mm, 0 for none "
                        "(default: %(default)s)")
    p.add_argument("--randoms-fraction", metavar="F", type=fraction, default=0.2,
                   help="randoms as a fraction of trues, in [0, 1) (default: %(default)s)")
    p.add_argument("--scatter-fraction", metavar="F", type=fraction, default=0.3,
                   help="scatter as a fraction of trues, in [0, 1) (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Simulate, reconstruct 3 OSEM epochs (``OSEM_image.hv``) and write the case."""
    from ..data.simulate import SimulationConfig, simulate_scan, write_simulated_case
    from ..io.atomic import write_json
    from ..likelihood import PoissonLogLikelihood
    from ..recon import osem
    from .case import default_subsets
    from .output import ResultSet

    if args.dims == 2:
        for dest in ("rings", "max_ring_difference"):
            if getattr(args, dest) is not None:
                raise ValueError(f"--{dest.replace('_', '-')} applies to --dims 3 only")
    if args.dims == 2 and args.span != 1:
        raise ValueError("--span applies to --dims 3 only")
    if args.span % 2 == 0:
        raise ValueError(f"--span must be odd, got {args.span}")
    if args.span > 1 and (args.max_ring_difference is None
                          or args.max_ring_difference < (args.span - 1) // 2):
        raise ValueError(f"--span {args.span} needs --max-ring-difference of at least "
                         f"{(args.span - 1) // 2}")
    if (args.rings is not None and args.max_ring_difference is not None
            and args.max_ring_difference >= args.rings):
        raise ValueError(f"--max-ring-difference {args.max_ring_difference} must be smaller than "
                         f"--rings {args.rings}")
    cfg = SimulationConfig(seed=args.seed, tracer=args.phantom.split("-")[1], dims=args.dims,
                           counts_per_mm3=args.counts, scanner=args.scanner, rings=args.rings,
                           max_ring_difference=args.max_ring_difference, span=args.span,
                           image_shape=(args.image_size, args.image_size), lesions=args.lesions,
                           psf_fwhm_mm=args.psf_fwhm, randoms_fraction=args.randoms_fraction,
                           scatter_fraction=args.scatter_fraction, noise_seed=args.noise_seed)
    results = ResultSet(args.out, overwrite=args.overwrite)
    progress = not args.no_progress
    with results as staging:
        scan = simulate_scan(cfg, progress=progress)
        model = scan.acquisition_model()
        lik = PoissonLogLikelihood(model, scan.prompts)
        x_osem = osem(lik, num_subsets=default_subsets(model), num_epochs=3, progress=progress)
        write_simulated_case(staging, scan, osem_image=x_osem)
        write_json(staging / "config.json", {"command": "simulate", **vars(args)})
    print(f"simulate: wrote {args.out}: {scan.info['prompt_counts']:.0f} prompts, "
          f"{scan.info['true_counts']:.0f} trues ({cfg.counts_per_mm3:g} counts/mm^3), "
          f"subject {cfg.seed} ({scan.info['split']} split)")
    return 0
