"""PET-LiSch with the shipped prior on real scanner grids: 127, 181, 285 in-plane, 2D and 3D.

Real scanner images have odd in-plane sizes and fields of view larger than the prior's training
slices (SIRF's mMR default is 285 x 285 x 127, PETRIC's 181 x 181): the prior pads any grid to
its network's multiple and, on a large field of view, denoises a window around the object
(``samplers.run.prepare``, step 4).  This script simulates held-out subject 0 at
2.5 counts/mm^3 on each grid (mMR, 2.086 mm voxels; 3D: ``--rings`` rings, span 1, the
``2 rings - 1`` planes they image) and runs

* OSEM, 4 epochs of 12 subsets (the baseline of ``docs/cli.md``);
* PET-LiSch with every option at its default (``METHOD_DEFAULTS``: 20 steps, K 30, mean of 4
  chains; in 3D the xy slice model as a ``PerpendicularPrior3D``, as the command line does),

and prints NRMSE inside the head, wall time and the window the prior used::

    python benchmarks/bench_grids.py [--grids 127 181 285] [--rings 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
from sirf_diffusion.diffusion import load_denoiser
from sirf_diffusion.likelihood import PoissonLogLikelihood
from sirf_diffusion.metrics import nrmse
from sirf_diffusion.recon.em import osem
from sirf_diffusion.samplers.methods import reconstruct


def run(n: int, dims: int, rings: int) -> dict[str, object]:
    cfg = SimulationConfig(seed=0, counts_per_mm3=2.5, image_shape=(n, n),
                           dims=dims,  # type: ignore[arg-type]
                           rings=rings if dims == 3 else None,
                           num_planes=2 * rings - 1 if dims == 3 else None)
    scan = simulate_scan(cfg, progress=False)
    head = scan.reference > 0
    t = time.perf_counter()
    x_osem = osem(PoissonLogLikelihood(scan.acquisition_model(num_subsets=12), scan.prompts),
                  num_subsets=12, num_epochs=4, progress=False)
    t_osem = time.perf_counter() - t
    lik = PoissonLogLikelihood(scan.acquisition_model(), scan.prompts)
    denoiser = load_denoiser(None, scan.image_geometry.shape[0])
    t = time.perf_counter()
    r = reconstruct("lisch", lik, denoiser, generator=torch.Generator().manual_seed(0),
                    progress=False)
    return {"grid": "x".join(map(str, scan.image_geometry.shape)),
            "osem": float(nrmse(x_osem, scan.reference, head)), "osem_s": t_osem,
            "lisch": float(nrmse(r.mean, scan.reference, head)),
            "lisch_s": time.perf_counter() - t, "window": r.config["prior_window"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grids", type=int, nargs="+", default=[127, 181, 285])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=(2, 3))
    p.add_argument("--rings", type=int, default=4, help="rings of the 3D cases")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print("| grid (z x y x x) | OSEM 4x12 NRMSE | PET-LiSch (defaults) NRMSE | OSEM s | "
          "LiSch s | prior window (top, left, h, w) |")
    print("|---|---|---|---|---|---|")
    for dims in a.dims:
        for n in a.grids:
            r = run(n, dims, a.rings)
            print(f"| {r['grid']} | {r['osem']:.4f} | {r['lisch']:.4f} | {r['osem_s']:.1f} | "
                  f"{r['lisch_s']:.1f} | {r['window']} |", flush=True)


if __name__ == "__main__":
    main()
