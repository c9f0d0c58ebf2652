"""Benchmark PET-DEFT: the time of a 5-step posterior sample of a 2D 128 x 128 mMR slice.

Simulates a held-out (test-split) subject at ``--counts`` counts/mm^3, loads the shipped prior
and a DEFT model (``--deft-model``, default the shipped one; ``--untrained`` times an untrained
h-network of the default architecture instead: the same cost), builds the likelihood once and
warms everything up (the projector's matrices, the networks), then times ``--repeats`` runs of
``reconstruct('deft', ...)`` per number of chains: the whole call (normalisation OSEM included)
and its parts (the initial OSEM; the steps, each a prior call, an h-network call and one MLEM
step).  Prints a Markdown table.  Example::

    OMP_NUM_THREADS=2 python benchmarks/bench_deft.py --threads 2

``--nrmse`` instead compares accuracy (no timing): the posterior-mean NRMSE over the head of
PET-DEFT, of the same sampler with an untrained h-network (the prior alone) and of OSEM at its
best epoch of 1-10 (12 subsets), per ``--doses`` and test ``--seeds``::

    python benchmarks/bench_deft.py --nrmse --doses 0.5 2.5 10 --seeds 0 10 20

Timings are medians of the wall clock (``--clock cpu``: the process's CPU time, which a busy
shared machine does not inflate).  The issue's target is a 5-step sample in at most 2 s on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _problem(counts: float, seed: int):
    from sirf_diffusion import PoissonLogLikelihood
    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan

    scan = simulate_scan(SimulationConfig(seed=seed, counts_per_mm3=counts), progress=False)
    return PoissonLogLikelihood(scan.acquisition_model(), scan.prompts), scan


def _deft_model(path: str | None, untrained: bool, prior: torch.nn.Module):
    from sirf_diffusion.diffusion.deftio import DEFTModel
    from sirf_diffusion.diffusion.htransform import HTransformNet, weights_fingerprint
    from sirf_diffusion.samplers.deft import resolve_deft_model

    if not untrained:
        return resolve_deft_model(path)
    geometry = {"scanner": "mMR", "image_shape": [1, 128, 128],
                "voxel_size_mm": [4.0625, 2.08626, 2.08626], "data_shape": [1, 252, 344]}
    return DEFTModel(HTransformNet(), weights_fingerprint(prior), geometry, (0.5, 10.0),
                     {"init_subsets": 4, "init_epochs": 2})


def time_deft(likelihood, prior, model, *, num_steps: int, num_samples: int, repeats: int,
              clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds of the whole reconstruction, its initial OSEM and its steps."""
    from sirf_diffusion.samplers.run import prepare

    whole, init, steps = [], [], []
    for r in range(repeats + 1):  # the first is the warm-up
        t0 = clock()
        run = prepare("deft", likelihood, prior, deft_model=model, num_steps=num_steps,
                      num_samples=num_samples, generator=torch.Generator().manual_seed(r))
        t1 = clock()
        run.run()
        run.result()
        t2 = clock()
        if r:
            whole.append(t2 - t0)
            init.append(t1 - t0)
            steps.append(t2 - t1)
    return {"whole": statistics.median(whole), "init": statistics.median(init),
            "steps": statistics.median(steps)}


def nrmse_rows(model, prior, doses: list[float], seeds: list[int], num_steps: int,
               num_samples: int, t_starts: list[float] | None = None,
               tracer: str = "fdg") -> list[str]:
    """Markdown rows ``| dose | subject | OSEM best | DEFT per t_start | prior alone |``
    (``--nrmse``; ``t_starts``: PET-DEFT's first noise levels, default ``[None]``, the
    method's default)."""
    import dataclasses

    from sirf_diffusion import PoissonLogLikelihood, osem
    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
    from sirf_diffusion.diffusion.htransform import HTransformNet
    from sirf_diffusion.metrics import nrmse
    from sirf_diffusion.samplers.methods import reconstruct

    alone = dataclasses.replace(model, hnet=HTransformNet(model.hnet.config))
    rows = []
    for dose in doses:
        for seed in seeds:
            scan = simulate_scan(SimulationConfig(seed=seed, counts_per_mm3=dose, tracer=tracer),
                                 progress=False)
            lik = PoissonLogLikelihood(scan.acquisition_model(num_subsets=12), scan.prompts)
            mask = torch.from_numpy(scan.masks["whole_object"])
            x, best = None, float("inf")
            for _ in range(10):
                x = osem(lik, x, num_subsets=12, num_epochs=1, progress=False)
                best = min(best, float(nrmse(x, scan.reference, mask)))
            err = [float(nrmse(reconstruct("deft", lik, prior, num_steps=num_steps,
                                           num_samples=num_samples, deft_model=m, t_start=t,
                                           generator=torch.Generator().manual_seed(0),
                                           progress=False).mean, scan.reference, mask))
                   for m, t in [*((model, t) for t in (t_starts or [None])), (alone, None)]]
            rows.append(f"| {dose:g} | {seed} | {best:.3f} | "
                        + " | ".join(f"{e:.3f}" for e in err) + " |")
    return rows


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deft-model", default=None, help="DEFT model folder (default: shipped)")
    p.add_argument("--untrained", action="store_true",
                   help="time an untrained h-network of the default architecture")
    p.add_argument("--counts", type=float, default=2.5, help="counts/mm^3 (default 2.5)")
    p.add_argument("--seed", type=int, default=0, help="test-split subject seed (default 0)")
    p.add_argument("--steps", type=int, default=5, help="generative steps (default 5)")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 4],
                   help="numbers of chains to time (default 1 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs each (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--nrmse", action="store_true", help="compare accuracy instead of timing")
    p.add_argument("--doses", type=float, nargs="+", default=[2.5], help="--nrmse doses")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="--nrmse subjects")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="--nrmse: the split of --seeds (val: to choose options; default test)")
    p.add_argument("--t-start", type=float, nargs="+", default=None,
                   help="--nrmse: PET-DEFT first noise levels to compare (default: the "
                        "method's default)")
    p.add_argument("--tracer", default="fdg", choices=("fdg", "amyloid"),
                   help="--nrmse: the simulated tracer (fdg, the training tracer, or amyloid)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sirf_diffusion.data.splits import check_split
    from sirf_diffusion.diffusion import load_slice_prior

    prior = load_slice_prior(precision=args.precision)
    model = _deft_model(args.deft_model, args.untrained, prior)
    model.hnet.precision = args.precision
    if args.nrmse:
        check_split(args.seeds, args.split)
        n = args.samples[-1]
        ts = args.t_start or [None]
        heads = [f"PET-DEFT t_start {t:g}" if t is not None else "PET-DEFT" for t in ts]
        md = "\n".join([
            f"Posterior-mean NRMSE (head), PET-DEFT {args.steps} steps, mean of {n} chains; "
            f"OSEM at its best epoch of 1-10; {args.split} subjects, tracer {args.tracer}.", "",
            "| dose (counts/mm^3) | subject | OSEM best | " + " | ".join(heads)
            + " | prior alone |", "|---|---|---|" + "---|" * (len(ts) + 1),
            *nrmse_rows(model, prior, args.doses, args.seeds, args.steps, n, ts, args.tracer)])
        print(md)
        return md
    check_split([args.seed], "test")
    likelihood, _ = _problem(args.counts, args.seed)
    rows = []
    for n in args.samples:
        t = time_deft(likelihood, prior, model, num_steps=args.steps, num_samples=n,
                      repeats=args.repeats, clock=CLOCKS[args.clock])
        rows.append(f"| {n} | {t['whole']:.2f} | {t['init']:.2f} | {t['steps']:.2f} | "
                    f"{t['steps'] / args.steps:.3f} |")
    where = (f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
             f"thread(s), torch {torch.__version__}, prior network {prior.network_dtype()}, "
             f"{args.clock} clock, median of {args.repeats}")
    what = ("untrained h-network (timing only)" if args.untrained
            else f"DEFT model {model.path}")
    md = "\n".join([
        f"PET-DEFT, {args.steps} steps, 128 x 128 mMR slice at {args.counts:g} counts/mm^3, "
        f"{what}; {where}.", "",
        "| chains | whole (s) | initial OSEM (s) | steps (s) | per step (s) |",
        "|---|---|---|---|---|", *rows])
    print(md)
    return md


if __name__ == "__main__":
    main()
