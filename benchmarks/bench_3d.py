"""Time per generative step and peak memory of PET-LiSch-3D and PET-DDS-3D (fully 3D).

For every ``--planes`` value a held-out subject (``--subject``, test split) is simulated on the
Siemens mMR geometry as :mod:`evaluate_3d` does it (``(planes + 1) // 2`` rings, span 1, ring
differences up to ``--max-ring-difference``, 2.5 counts/mm^3); each method is prepared with
every option at :data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS` (``--samples`` and
``--steps-total`` may override the number of chains and of generative steps; PET-DDS-3D with an
axial RDP of weight ``--dds-axial-penalty``) through the 3D perpendicular prior
``load_denoiser(--model, planes)`` with ``--chunk-size`` slices per network call, and
``--steps`` generative steps are taken.  Per method and number of planes it reports

* the initial reconstruction (``prepare``: PET-LiSch's ``K``-iteration MLEM, PET-DDS's OSEM);
* per generative step, wall and CPU seconds (CPU: this process, every thread; less sensitive
  than wall time to other jobs on a shared machine), split into the network (forward passes of
  the slice models, timed by hooks), the data consistency (the method's rule) and the rest
  (slicing, stacking, re-noising);
* the resident memory before the steps (simulation and physics included) and its peak during
  them (the kernel's high-water mark, reset before the first step: ``/proc/self/clear_refs``);
* the estimated full run: initial reconstruction + number of steps x mean step time (PET-LiSch's
  data consistency varies from step to step: up to ``max_likelihood_steps`` ascent steps).

``--case DIR`` benchmarks a PETRIC-layout case folder instead (e.g. one written by
``sirf-diffusion simulate --dims 3``; the embedded physics with its PSF): no simulation.

Prints a Markdown table (and writes the rows to ``--json`` when given, after every row)::

    python benchmarks/bench_3d.py --planes 48 127 --steps 2 --threads 2
    python benchmarks/bench_3d.py --case CASE --methods lisch --samples 1 --steps 1
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_3d as ev3  # noqa: E402  (a sibling script, not a package)

METHODS = ("lisch", "dds")
LABELS = {"lisch": "PET-LiSch-3D", "dds": "PET-DDS-3D"}


# ----------------------------------------------------------------------------- memory
def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib(field: str = "VmRSS") -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process in MiB; without ``/proc`` the
    process's peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- timing
class Stopwatch:
    """Accumulated wall and CPU seconds of the intervals between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._t: tuple[float, float] | None = None

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        assert self._t is not None
        self.wall += time.perf_counter() - self._t[0]
        self.cpu += time.process_time() - self._t[1]
        self._t = None

    def reset(self) -> None:
        self.wall = self.cpu = 0.0


def time_networks(prior: Any) -> tuple[dict[str, Stopwatch], list[Any]]:
    """One :class:`Stopwatch` per orientation model of ``prior`` (a ``PerpendicularPrior3D``),
    started and stopped by forward hooks around every network call; and the hook handles
    (``.remove()`` them when done)."""
    watches: dict[str, Stopwatch] = {}
    handles = []
    for orientation, model in prior.models.items():
        if isinstance(model, torch.nn.Module):
            w = watches[orientation] = Stopwatch()
            handles += [model.register_forward_pre_hook(lambda *_, w=w: w.start()),
                        model.register_forward_hook(lambda *_, w=w: w.stop())]
    return watches, handles


class TimedRule:
    """A data-consistency rule whose calls are timed (same call signature)."""

    def __init__(self, rule: Callable[..., torch.Tensor]) -> None:
        self.rule, self.watch = rule, Stopwatch()

    def __call__(self, x0: torch.Tensor, context: Any) -> torch.Tensor:
        self.watch.start()
        try:
            return self.rule(x0, context)
        finally:
            self.watch.stop()


# ----------------------------------------------------------------------------- one case
def measure(method: str, likelihood: Any, prior: Any, args: argparse.Namespace,
            planes: int) -> dict[str, Any]:
    """Prepare ``method``, take ``args.steps`` steps; times and memory (module docstring)."""
    options: dict[str, Any] = {"num_samples": args.samples, "num_steps": args.steps_total}
    if method == "dds":
        options["axial_penalty"] = args.dds_axial_penalty
    nets, handles = time_networks(prior)
    try:
        return _measure(method, likelihood, prior, options, nets, args.steps, planes)
    finally:
        for h in handles:
            h.remove()


def _measure(method: str, likelihood: Any, prior: Any, options: dict[str, Any],
             nets: dict[str, Stopwatch], num_steps: int, planes: int) -> dict[str, Any]:
    from sirf_diffusion.samplers.run import prepare

    t0, c0 = time.perf_counter(), time.process_time()
    run = prepare(method, likelihood, prior, generator=torch.Generator().manual_seed(0),
                  progress=False, **options)
    init_s, init_cpu = time.perf_counter() - t0, time.process_time() - c0
    rule = TimedRule(run.stepper.data_consistency)  # type: ignore[arg-type]
    run.stepper.data_consistency = rule
    for w in nets.values():
        w.reset()
    rss_before = rss_mib()
    exact = reset_peak_rss()
    steps = min(num_steps, run.stepper.num_steps)
    t0, c0 = time.perf_counter(), time.process_time()
    ascent = []
    for _ in range(steps):
        info = run.step()
        n = info.get("n_likelihood_steps")
        if isinstance(n, list):
            ascent.append(sum(n) / len(n))
    wall, cpu = (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    net_wall = sum(w.wall for w in nets.values()) / steps
    n_total = run.stepper.num_steps
    return {
        "method": method, "planes": planes, "grid": list(likelihood.image_shape),
        "orientations": list(prior.orientations), "chunk_size": prior.chunk_size,
        "samples": run.num_samples, "steps_timed": steps, "steps_total": n_total,
        "init_s": init_s, "init_cpu_s": init_cpu, "step_s": wall, "step_cpu_s": cpu,
        "network_s": net_wall, "network_cpu_s": sum(w.cpu for w in nets.values()) / steps,
        "network_s_per_orientation": {o: w.wall / steps for o, w in nets.items()},
        "dc_s": rule.watch.wall / steps, "dc_cpu_s": rule.watch.cpu / steps,
        "other_s": wall - net_wall - rule.watch.wall / steps,
        "ascent_steps": ascent, "rss_before_mib": rss_before,
        "peak_rss_mib": rss_mib("VmHWM") if exact else None,
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "estimated_full_run_s": init_s + n_total * wall,
        "estimated_full_run_cpu_s": init_cpu + n_total * cpu,
    }


def case_likelihood(folder: str) -> tuple[Any, float]:
    """The likelihood of a PETRIC-layout case (embedded physics) and the seconds it took."""
    from sirf_diffusion.commands.case import case_physics, load_case
    from sirf_diffusion.likelihood import PoissonLogLikelihood

    t0 = time.perf_counter()
    case, meta = load_case(folder)
    prompts = torch.as_tensor(case.prompts, dtype=torch.float32)
    lik = PoissonLogLikelihood(case_physics(case, meta), prompts)
    return lik, time.perf_counter() - t0


def simulate(planes: int, args: argparse.Namespace) -> tuple[Any, float]:
    """The scan of ``args.subject`` with ``planes`` planes (:mod:`evaluate_3d`'s first noise
    realisation of it at 2.5 counts/mm^3) and the seconds it took."""
    from sirf_diffusion.data.simulate import simulate_scan

    s = {"counts": 2.5, "num_views": args.num_views, "rings": None, "planes": planes,
         "max_ring_difference": args.max_ring_difference, "image_size": args.image_size}
    noise = ev3.ev.scan_seeds(0, args.subject, s["counts"], 0)["noise_seed"]
    t0 = time.perf_counter()
    scan = simulate_scan(ev3.simulation_config(s, args.subject, noise), progress=False)
    return scan, time.perf_counter() - t0


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--planes", type=int, nargs="+", default=[48, 127],
                   help="image planes, one case each (default 48 127: 127 is the mMR's full "
                        "axial size)")
    p.add_argument("--case", default=None, metavar="DIR",
                   help="benchmark this PETRIC-layout case instead of simulated ones (--planes, "
                        "--image-size, --max-ring-difference, --num-views, --subject unused)")
    p.add_argument("--image-size", type=int, default=128,
                   help="in-plane voxels per side, 2.09 mm (default 128)")
    p.add_argument("--max-ring-difference", type=int, default=None,
                   help="largest ring difference (default: the simulation's, min(rings - 1, 4))")
    p.add_argument("--num-views", type=int, default=None, help="sinogram views (default 252)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="methods (default: both)")
    p.add_argument("--model", default=None, help="prior folder (default: the shipped prior)")
    p.add_argument("--chunk-size", type=int, default=4,
                   help="slices per network call of the 3D prior (default 4; the command "
                        "line's prior uses 16)")
    p.add_argument("--steps", type=int, default=2,
                   help="generative steps timed per method (default 2)")
    p.add_argument("--steps-total", type=int, default=None,
                   help="generative steps of the prepared run (default: METHOD_DEFAULTS)")
    p.add_argument("--samples", type=int, default=None,
                   help="chains (default: METHOD_DEFAULTS)")
    p.add_argument("--dds-axial-penalty", type=float, default=1.0,
                   help="PET-DDS-3D axial RDP weight (default 1; its cost does not depend on it)")
    p.add_argument("--subject", type=int, default=0,
                   help="test-split subject seed (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    return p


def _check(args: argparse.Namespace) -> None:
    from sirf_diffusion.data.splits import check_split

    for name in ("image_size", "chunk_size", "steps", "threads", "steps_total", "samples",
                 "num_views"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SystemExit(f"bench_3d: --{name.replace('_', '-')} must be >= 1, got {v}")
    if any(n < 2 for n in args.planes):
        raise SystemExit("bench_3d: --planes values must be >= 2")
    try:
        check_split([args.subject], "test")
    except ValueError as exc:
        raise SystemExit(f"bench_3d: --subject: {exc}") from None


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (times: wall, CPU in brackets)."""
    def gib(v: float | None) -> str:
        return "" if v is None else f"{v / 1024:.2f}"

    out = ["| method | grid (z x y x x) | orientations | chunk | chains | initial recon s | "
           "step s | network s / step | data consistency s / step (ascent steps) | RSS before "
           "steps GiB | peak RSS in steps GiB | estimated full run min (steps) |",
           "|" + "---|" * 12]
    for r in rows:
        out.append(
            f"| {LABELS[r['method']]} | {' x '.join(map(str, r['grid']))} | "
            f"{'/'.join(r['orientations'])} | {r['chunk_size']} | {r['samples']} | "
            f"{r['init_s']:.1f} ({r['init_cpu_s']:.1f}) | "
            f"{r['step_s']:.1f} ({r['step_cpu_s']:.1f}) | "
            f"{r['network_s']:.1f} ({r['network_cpu_s']:.1f}) | "
            f"{r['dc_s']:.1f} ({r['dc_cpu_s']:.1f})"
            + (f" ({sum(r['ascent_steps']) / len(r['ascent_steps']):.1f})"
               if r["ascent_steps"] else "") + " | "
            f"{gib(r['rss_before_mib'])} | {gib(r['peak_rss_mib'])} | "
            f"{r['estimated_full_run_s'] / 60:.1f} ({r['estimated_full_run_cpu_s'] / 60:.1f}) "
            f"({r['steps_total']}) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark (module docstring); returns the rows."""
    from sirf_diffusion.io.atomic import write_json
    from sirf_diffusion.likelihood import PoissonLogLikelihood

    args = build_parser().parse_args(argv)
    _check(args)
    torch.set_num_threads(args.threads)
    rows = []
    for planes in ([None] if args.case else args.planes):
        if args.case:
            lik, sim_s = case_likelihood(args.case)
            planes = lik.image_shape[0]
            what = f"read {args.case}"
        else:
            scan, sim_s = simulate(planes, args)
            lik = PoissonLogLikelihood(scan.acquisition_model(), scan.prompts)
            what = "simulated"
            del scan
        prior = ev3.load_prior(args.model, planes, args.chunk_size)
        print(f"[bench_3d] {planes} planes: {what} in {sim_s:.0f} s "
              f"({lik.data.shape[0]} sinograms), RSS {rss_mib() / 1024:.2f} GiB", flush=True)
        for method in args.methods:
            r = measure(method, lik, prior, args, planes)
            r["simulation_s"] = sim_s
            rows.append(r)
            print(f"[bench_3d] {LABELS[method]}, {planes} planes: {r['step_s']:.1f} s/step "
                  f"(network {r['network_s']:.1f}, data consistency {r['dc_s']:.1f}; CPU "
                  f"{r['step_cpu_s']:.1f}, {r['network_cpu_s']:.1f}, {r['dc_cpu_s']:.1f})",
                  flush=True)
            if args.json:  # after every row: a long run keeps what it measured
                write_json(args.json, rows)
        del lik
    print(f"\nTorch threads: {args.threads}; timed steps per method: {args.steps}; times: wall "
          "(CPU seconds of the process, every thread, in brackets).\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
