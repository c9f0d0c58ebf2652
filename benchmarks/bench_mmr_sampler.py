"""The diffusion samplers on the full Siemens mMR in span 11 with the matrix-free projector.

A held-out brain (``--subject``, test split, 2.5 counts/mm^3 by default) is simulated as
``sirf-diffusion simulate --dims 3 --rings 64 --max-ring-difference 60 --span 11
--image-size 285`` does it: 837 sinograms x 252 views x 344 bins, 127 x 285 x 285 voxels of
2.03 x 2.09 x 2.09 mm, the embedded physics with its PSF, attenuation, normalisation, randoms and
scatter.  ``mode="auto"`` of the projector then takes the matrix-free path (numba kernels on the
CPU).  Every ``--methods`` entry is prepared through :func:`~sirf_diffusion.samplers.run.prepare`
(the steps of :func:`~sirf_diffusion.samplers.methods.reconstruct`) with the shipped prior
(``load_denoiser(--model, 127)``, the xy/xz/yz slice models, windowed around the object as on
any real scanner grid) and every option at
:data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS` except ``--steps`` generative steps and
``--samples`` chains (few, to fit the machine; stated in the output).  It reports

* the simulation and the initial reconstruction (wall and CPU seconds of the process);
* per generative step, wall and CPU seconds, split into the network (forward passes of the slice
  models, timed by hooks), the projections (the projector's forward and adjoint, timed around
  the projector) and the rest (the update maths, windowing, re-noising);
* resident memory: after the simulation, and the process's peak (``VmHWM``);
* NRMSE against the reference activity (in the brain, else the head) of the result (mean of the
  chains), of the initial reconstruction, and of OSEM run on from that initial image for as many
  epochs of the same subsets as the sampler's data-consistency steps used (the same number of
  projections as the sampler's whole run).

Not a test.  Prints a Markdown table and writes the rows to ``--json`` (after every method)::

    nice -n 5 python benchmarks/bench_mmr_sampler.py --methods dds --steps 3 --threads 2 \\
        --json mmr_sampler.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_3d as b3  # noqa: E402  (a sibling script, not a package)

METHODS = ("dds", "lisch")
LABELS = {"dds": "PET-DDS", "lisch": "PET-LiSch"}


#: ``--geometry`` choices: (rings, span, maximum ring difference, in-plane voxels, planes);
#: ``small`` is for smoke tests only
GEOMETRIES = {"mmr-span11": (64, 11, 60, 285, 127), "mmr-span1": (64, 1, 60, 285, 127),
              "small": (8, 3, 5, 32, 15)}


def mmr_config(args: argparse.Namespace) -> Any:
    """The :class:`~sirf_diffusion.data.simulate.SimulationConfig` of the scan
    (``--geometry``: the full mMR in span 11 by default)."""
    from sirf_diffusion.data.simulate import SimulationConfig

    rings, span, mrd, size, planes = GEOMETRIES[args.geometry]
    return SimulationConfig(seed=args.subject, dims=3, counts_per_mm3=args.counts, rings=rings,
                            span=span, max_ring_difference=mrd, image_shape=(size, size),
                            num_planes=planes)


class TimedProjector:
    """Times every forward and adjoint application of a ``RayTracingProjector`` (in place)."""

    def __init__(self, projector: Any) -> None:
        self.watch = b3.Stopwatch()
        self.calls = 0
        for name in ("_apply_forward", "_apply_adjoint"):
            setattr(projector, name, self._timed(getattr(projector, name)))

    def _timed(self, fn: Any) -> Any:
        def timed(*a: Any, **k: Any) -> Any:
            self.watch.start()
            try:
                return fn(*a, **k)
            finally:
                self.watch.stop()
                self.calls += 1
        return timed


def region(masks: dict[str, Any]) -> Any:
    """The NRMSE region: the brain, else the head, else everything (``None``)."""
    for name in ("brain", "whole_object"):
        if name in masks:
            return masks[name]
    return None


def run_method(method: str, lik: Any, prior: Any, timer: TimedProjector, reference: torch.Tensor,
               mask: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Prepare ``method``, take every step, time them; NRMSE of the result and of OSEM."""
    from sirf_diffusion.metrics import nrmse
    from sirf_diffusion.recon.em import osem
    from sirf_diffusion.samplers.defaults import defaults_for
    from sirf_diffusion.samplers.run import prepare

    options = {"num_steps": args.steps, "num_samples": args.samples}
    nets, handles = b3.time_networks(prior)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        run = prepare(method, lik, prior, generator=torch.Generator().manual_seed(0),
                      progress=False, **options)
        init_s, init_cpu = time.perf_counter() - t0, time.process_time() - c0
        for w in nets.values():
            w.reset()
        timer.watch.reset()
        timer.calls = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(run.stepper.num_steps):
            run.step()
            print(f"[bench_mmr_sampler] {LABELS[method]}: step done, "
                  f"{time.perf_counter() - t0:.0f} s, RSS {b3.rss_mib() / 1024:.2f} GiB",
                  flush=True)
        steps = run.stepper.num_steps
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        result = run.result(wall_time_s=math.nan)
    finally:
        for h in handles:
            h.remove()
    net_wall = sum(w.wall for w in nets.values())
    net_cpu = sum(w.cpu for w in nets.values())
    row: dict[str, Any] = {
        "method": method, "grid": list(lik.image_shape), "sinograms": list(lik.data.shape),
        "samples": run.num_samples, "steps": steps, "options": {**defaults_for(method),
                                                                **options},
        "init_s": init_s, "init_cpu_s": init_cpu, "step_s": wall / steps,
        "step_cpu_s": cpu / steps, "network_s": net_wall / steps, "network_cpu_s": net_cpu / steps,
        "projection_s": timer.watch.wall / steps, "projection_cpu_s": timer.watch.cpu / steps,
        "projections_per_step": timer.calls / steps if timer.calls else 0,
        "other_s": (wall - net_wall - timer.watch.wall) / steps,
        "peak_rss_gib": b3.rss_mib("VmHWM") / 1024,
        "prior_window": result.config.get("prior_window"),
        "finite": bool(torch.isfinite(result.mean).all()),
        "nrmse": float(nrmse(result.mean, reference, mask)),
    }
    timer.calls = 0
    if result.init_image is not None:
        init = result.init_image.reshape(reference.shape)
        row["nrmse_init"] = float(nrmse(init, reference, mask))
        if method == "dds":
            # the same data passes as the sampler: one epoch of its subsets per step
            k = int(result.config.get("num_subsets", defaults_for("dds")["num_subsets"]))
            t0 = time.perf_counter()
            x = osem(lik, init.clone(), num_subsets=k, num_epochs=steps, progress=False)
            row["osem_s"] = time.perf_counter() - t0
            row["osem"] = f"{k} subsets x {steps} epochs after the initial image"
            row["nrmse_osem"] = float(nrmse(x, reference, mask))
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (times: wall, CPU in brackets)."""
    out = ["| method | chains x steps | initial recon s | step s | network s / step | "
           "projection s / step (projections) | other s / step | peak RSS GiB | finite | "
           "NRMSE result | NRMSE initial | NRMSE OSEM, same passes |", "|" + "---|" * 12]
    for r in rows:
        out.append(
            f"| {LABELS[r['method']]} | {r['samples']} x {r['steps']} | "
            f"{r['init_s']:.0f} ({r['init_cpu_s']:.0f}) | "
            f"{r['step_s']:.0f} ({r['step_cpu_s']:.0f}) | "
            f"{r['network_s']:.0f} ({r['network_cpu_s']:.0f}) | "
            f"{r['projection_s']:.0f} ({r['projection_cpu_s']:.0f}) "
            f"({r['projections_per_step']:.0f}) | {r['other_s']:.0f} | "
            f"{r['peak_rss_gib']:.2f} | {r['finite']} | {r['nrmse']:.3f} | "
            f"{r.get('nrmse_init', math.nan):.3f} | {r.get('nrmse_osem', math.nan):.3f} |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["dds"],
                   help="methods (default dds; PET-LiSch's K = 30 MLEM iterations per step "
                        "take tens of minutes here)")
    p.add_argument("--steps", type=int, default=3, help="generative steps (default 3)")
    p.add_argument("--samples", type=int, default=1, help="chains (default 1)")
    p.add_argument("--counts", type=float, default=2.5, help="counts/mm^3 (default 2.5)")
    p.add_argument("--subject", type=int, default=0, help="test-split subject seed (default 0)")
    p.add_argument("--model", default=None, help="prior folder (default: the shipped prior)")
    p.add_argument("--chunk-size", type=int, default=16,
                   help="slices per network call of the 3D prior (default 16, as the CLI)")
    p.add_argument("--geometry", choices=tuple(GEOMETRIES), default="mmr-span11",
                   help="scan geometry (default mmr-span11; mmr-span1: span 1 with a maximum "
                        "ring difference of 60; small: a smoke test)")
    p.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--simulate-only", action="store_true",
                   help="stop after the simulation (its time and peak memory)")
    return p


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark (module docstring); returns the rows."""
    import os
    import resource

    from sirf_diffusion.data.simulate import simulate_scan
    from sirf_diffusion.data.splits import check_split
    from sirf_diffusion.io.atomic import write_json
    from sirf_diffusion.likelihood import PoissonLogLikelihood

    args = build_parser().parse_args(argv)
    for name in ("steps", "samples", "chunk_size", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"bench_mmr_sampler: --{name.replace('_', '-')} must be >= 1")
    if not args.counts > 0:
        raise SystemExit("bench_mmr_sampler: --counts must be > 0")
    try:
        check_split([args.subject], "test")
    except ValueError as exc:
        raise SystemExit(f"bench_mmr_sampler: --subject: {exc}") from None
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    scan = simulate_scan(mmr_config(args), progress=False)
    sim_s, sim_cpu = time.perf_counter() - t0, time.process_time() - c0
    model = scan.acquisition_model()
    lik = PoissonLogLikelihood(model, scan.prompts)
    timer = TimedProjector(model.projector)
    reference, mask = scan.reference, region(scan.masks)
    rss_sim = b3.rss_mib() / 1024
    peak_sim = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    print(f"[bench_mmr_sampler] simulated {tuple(lik.data.shape)} sinograms, image "
          f"{tuple(lik.image_shape)} in {sim_s:.0f} s (CPU {sim_cpu:.0f} s), projector "
          f"{model.projector.implementation}, RSS {rss_sim:.2f} GiB (peak so far "
          f"{peak_sim:.2f} GiB), load {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    if args.simulate_only:
        return []
    del scan
    prior = b3.ev3.load_prior(args.model, int(lik.image_shape[0]), args.chunk_size)
    rows = []
    for method in args.methods:
        row = run_method(method, lik, prior, timer, reference, mask, args)
        row.update(simulation_s=sim_s, simulation_cpu_s=sim_cpu, rss_after_simulation_gib=rss_sim,
                   projector=model.projector.implementation, threads=args.threads,
                   load_start=load0, load_end=os.getloadavg()[0])
        rows.append(row)
        print(f"[bench_mmr_sampler] {row}", flush=True)
        if args.json:
            write_json(args.json, rows)
    print(f"\n{args.geometry}, {args.counts:g} counts/mm^3, subject {args.subject}, threads "
          f"{args.threads}, torch {torch.__version__}, projector "
          f"{model.projector.implementation}; simulation {sim_s:.0f} s (CPU {sim_cpu:.0f} s), "
          f"RSS after it {rss_sim:.2f} GiB; load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; times: wall (CPU seconds of the process, "
          "every thread, in brackets)\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
