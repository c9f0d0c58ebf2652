"""PET-DEFT across a change of prior: does an h-network still fit when the prior under it moves?

The h-network of PET-DEFT (Webber et al., arXiv 2506.24034) is trained against one frozen prior,
and :func:`sirf_diffusion.samplers.deft.deft_denoiser` refuses any other (weights fingerprint).
When the shipped prior is retrained, this script measures what that binding protects against:
each ``--pair`` is an h-network folder and a prior folder, run on the same validation-split
scans (FDG, 2D mMR, noise seed 7) with the same sampler seed at PET-DEFT's defaults (5 steps
from ``t_start`` 0.9, mean of 4 chains).  The fingerprint check is bypassed *here only*, so that
an h-network can be paired with a prior it was not trained against.  Prints NRMSE (in the head)
per scan and pair, then the mean per pair.

    python benchmarks/deft_prior_change.py \\
        --pair OLD_DEFT OLD_PRIOR --pair OLD_DEFT NEW_PRIOR --pair NEW_DEFT NEW_PRIOR
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
import torch

from sirf_diffusion.data.splits import subject_split
from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
from sirf_diffusion.diffusion.deftio import load_deft_model
from sirf_diffusion.diffusion.htransform import weights_fingerprint
from sirf_diffusion.diffusion.loading import load_slice_prior
from sirf_diffusion.likelihood import PoissonLogLikelihood
from sirf_diffusion.metrics import image_metrics
from sirf_diffusion.samplers.methods import reconstruct


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", nargs=2, action="append", metavar=("DEFT_DIR", "PRIOR_DIR"),
                   required=True, help="an h-network folder and a prior folder (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 11],
                   help="validation-split subject seeds (default 1 11)")
    p.add_argument("--doses", type=float, nargs="+", default=[0.5, 2.5, 10.0],
                   help="counts/mm^3 (default 0.5 2.5 10)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    bad = [s for s in args.seeds if subject_split(s) != "val"]
    if bad:
        p.exit(2, f"deft_prior_change: --seeds {bad} are not validation-split subjects\n")
    if not all(d > 0 for d in args.doses):
        p.exit(2, f"deft_prior_change: --doses must be > 0, got {args.doses}\n")
    if args.threads < 1:
        p.exit(2, f"deft_prior_change: --threads must be >= 1, got {args.threads}\n")
    torch.set_num_threads(args.threads)
    pairs = []
    for deft_dir, prior_dir in args.pair:
        try:
            prior = load_slice_prior(prior_dir)
            model = load_deft_model(deft_dir)
        except (FileNotFoundError, ValueError) as e:
            p.exit(2, f"deft_prior_change: --pair {deft_dir} {prior_dir}: {e}\n")
        pairs.append((f"{deft_dir} + {prior_dir}",
                      dataclasses.replace(model, prior_fingerprint=weights_fingerprint(prior)),
                      prior))
    results: dict[str, list[float]] = {name: [] for name, _, _ in pairs}
    for seed in args.seeds:
        for dose in args.doses:
            scan = simulate_scan(SimulationConfig(seed=seed, counts_per_mm3=dose, noise_seed=7),
                                 progress=False)
            lik = PoissonLogLikelihood(scan.acquisition_model(), scan.prompts)
            row = []
            for name, model, prior in pairs:
                r = reconstruct("deft", lik, prior, deft_model=model, progress=False,
                                generator=torch.Generator().manual_seed(3))
                results[name].append(image_metrics(r.mean, scan.reference, scan.masks)["nrmse"])
                row.append(f"{results[name][-1]:.4f}")
            print(f"subject {seed}, {dose:g} counts/mm^3: " + " | ".join(row), flush=True)
    for name, values in results.items():
        print(f"mean NRMSE {np.mean(values):.4f}  {name}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
