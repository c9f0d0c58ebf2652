"""Time of one generative step of PET-LiSch-3D and PET-DDS-3D on SIRF, STIR and embedded physics.

A small fully 3D mMR case with oblique segments is simulated (subject 3, 2.5 counts/mm^3;
``--rings`` rings, ring differences up to ``--max-ring-difference``, span 1, ``--planes`` planes
of ``--size`` x ``--size`` voxels, ``--views`` views, all 344 tangential bins) and written in
the PETRIC layout to a temporary folder; each method is prepared (initial reconstruction) on
each physics, as ``reconstruct --physics torch|sirf|stir`` builds it, and its generative steps
are timed one by one.  The network (a perpendicular prior of the orientations in ``--model``,
default: the shipped prior) is timed alone on the same input, so a step splits into network and
data consistency (projections, which are what the physics changes).  Not a test::

    python benchmarks/bench_toolkit_step.py [--physics torch sirf stir] [--steps 4]
        [--planes 7] [--size 34] [--rings 4] [--max-ring-difference 2] [--views 252]

Needs SIRF / STIR for those rows (``source`` the toolkits' environment first; run it outside the
repository: SIRF writes temporary files into the working directory).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sirf_diffusion.commands.case import case_physics, load_case
from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan, write_simulated_case
from sirf_diffusion.diffusion import load_denoiser
from sirf_diffusion.likelihood import PoissonLogLikelihood
from sirf_diffusion.samplers.run import prepare

#: The runs timed: short schedules (the step's cost depends on the schedule, not its length);
#: PET-DDS with its default epoch of 4 subsets per step and an axial RDP.
RUNS: dict[str, dict[str, Any]] = {
    "lisch": {"num_mlem_iterations": 4},
    "dds": {"num_subsets": 4, "init_subsets": 4, "init_epochs": 2, "axial_penalty": 0.5},
}


def simulate(folder: Path, a: argparse.Namespace) -> Path:
    """The benchmark's case (module docstring) in ``folder``."""
    config = SimulationConfig(seed=3, dims=3, counts_per_mm3=2.5, rings=a.rings,
                              max_ring_difference=a.max_ring_difference, num_planes=a.planes,
                              image_shape=(a.size, a.size), num_views=a.views)
    scan = simulate_scan(config, progress=False)
    return write_simulated_case(folder, scan)   # image grid: PETRIC/reference_image.hv


def time_steps(method: str, lik: PoissonLogLikelihood, denoiser: Any, steps: int
               ) -> dict[str, float]:
    """Prepare ``method`` and time each of its ``steps`` generative steps (one chain)."""
    t0 = time.perf_counter()
    run = prepare(method, lik, denoiser, num_steps=steps, num_samples=1,
                  generator=torch.Generator().manual_seed(0), **RUNS[method])
    t_prepare = time.perf_counter() - t0
    times, evaluations = [], []
    while not run.done:
        t0 = time.perf_counter()
        info = run.step()
        times.append(time.perf_counter() - t0)
        evaluations.append(float(info.get("n_likelihood_evaluations", 0.0)))
    shape = run.normalisation.to_prior(torch.zeros(1, *lik.image_shape)).shape
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    with torch.no_grad():
        denoiser(x, torch.full((1,), 0.5))
    t_net = time.perf_counter() - t0
    return {"prepare": t_prepare, "step": statistics.median(times), "network": t_net,
            "evaluations": statistics.mean(evaluations)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--physics", nargs="+", default=["torch", "sirf", "stir"],
                   choices=("torch", "sirf", "stir"))
    p.add_argument("--methods", nargs="+", default=["lisch", "dds"], choices=tuple(RUNS))
    p.add_argument("--steps", type=int, default=4, help="generative steps timed per run")
    p.add_argument("--planes", type=int, default=7)
    p.add_argument("--size", type=int, default=34, help="in-plane voxels per side")
    p.add_argument("--rings", type=int, default=4)
    p.add_argument("--max-ring-difference", type=int, default=2)
    p.add_argument("--views", type=int, default=252)
    p.add_argument("--model", default=None, help="prior folder (default: the shipped prior)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = simulate(Path(tmp) / "case", a)
        case, meta = load_case(folder)
        denoiser = load_denoiser(a.model, case.image_geometry.shape[0], a.precision)
        print(f"case {case.image_geometry.shape} (z, y, x), sinograms "
              f"{case.sinogram_geometry.shape}; prior orientations "
              f"{', '.join(getattr(denoiser, 'orientations', ('xy',)))}; "
              f"{torch.get_num_threads()} torch threads\n")
        print("| physics | method | prepare s | one step s (median) | network s | "
              "data consistency s | likelihood evaluations per step |")
        print("|---|---|---|---|---|---|---|")
        y = torch.as_tensor(case.prompts, dtype=torch.float32)
        for physics in a.physics:
            lik = PoissonLogLikelihood(case_physics(case, meta, physics=physics, folder=folder), y)
            for method in a.methods:
                r = time_steps(method, lik, denoiser, a.steps)
                print(f"| {physics} | {method} | {r['prepare']:.2f} | {r['step']:.2f} | "
                      f"{r['network']:.2f} | {r['step'] - r['network']:.2f} | "
                      f"{r['evaluations']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
