"""Does the prior's estimate depend on the field of view?  And does a window around the object
fix it?

A. The shipped xy prior's D(x, sigma) on a held-out brain slice (subject 100, 112 x 112,
   blurred by 1 voxel, normalised) embedded in noisy grids of 112, 128, 184 and 288 voxels
   (zero activity around it, the same noise realisation): relative error inside the head
   against the clean slice.
B. PET-LiSch (20 steps, K 30 MLEM iterations, one chain, generator seed 0) on the simulated
   2D case of subject 0 at 2.5 counts/mm^3 on 127 x 127, 181 x 181 and 285 x 285 grids of
   2.08626 mm, with the prior as it is and on a window around the object
   (fit_prior_to_grid(..., support=...), the support from OSEM at 4 epochs of 12 subsets:
   voxels above 5 % of its maximum among the well-sampled ones); NRMSE inside the head
   (reference > 0) and OSEM's for comparison.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python docs/prior_boundary/fov_study.py   # ~6 min on CPU
"""

import time

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from sirf_diffusion.data.phantoms import brain_phantom
from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
from sirf_diffusion.diffusion import IntensityNormalisation, fit_prior_to_grid, load_model
from sirf_diffusion.diffusion.normalisation import support_mask, well_sampled
from sirf_diffusion.likelihood import PoissonLogLikelihood
from sirf_diffusion.metrics import nrmse
from sirf_diffusion.models import default_prior_dir
from sirf_diffusion.recon.em import osem
from sirf_diffusion.samplers.methods import reconstruct


def part_a(model) -> None:
    ph = brain_phantom(100, dims=2, shape=(1, 112, 112))
    a = torch.tensor(gaussian_filter(np.asarray(ph.activity, np.float32)[0], 1.0))[None]
    x0 = IntensityNormalisation.fit(a[None]).to_prior(a[None])
    head = (x0 > 0.05 * x0.max())[0, 0]
    grids = (112, 128, 184, 288)
    print("A. relative error of D inside the head, by grid size")
    print("| sigma | " + " | ".join(str(n) for n in grids) + " |")
    print("|---" * (len(grids) + 1) + "|")
    for sigma in (0.1, 0.5, 2.0, 10.0):
        noise = sigma * torch.randn(1, 1, 288, 288, generator=torch.Generator().manual_seed(0))
        errs = []
        for n in grids:
            k, j = (288 - n) // 2, (n - 112) // 2
            x = noise[..., k:k + n, k:k + n].clone()
            x[..., j:j + 112, j:j + 112] += x0
            with torch.no_grad():
                d = model(x, torch.tensor([sigma]))[0, 0, j:j + 112, j:j + 112]
            errs.append(float((d - x0[0, 0])[head].norm() / x0[0, 0][head].norm()))
        print(f"| {sigma:g} | " + " | ".join(f"{e:.3f}" for e in errs) + " |")


def part_b(model) -> None:
    print("\nB. PET-LiSch, NRMSE inside the head")
    print("| grid | OSEM 4 epochs | LiSch | LiSch on a window | window | seconds (LiSch, window) |")
    print("|---|---|---|---|---|---|")
    for n in (127, 181, 285):
        scan = simulate_scan(SimulationConfig(seed=0, counts_per_mm3=2.5, image_shape=(n, n)),
                             progress=False)
        geom = scan.image_geometry
        head = scan.reference > 0
        phys12 = scan.acquisition_model(num_subsets=12)
        x_osem = osem(PoissonLogLikelihood(phys12, scan.prompts), num_subsets=12, num_epochs=4,
                      progress=False)
        eligible = well_sampled(phys12.sensitivity())
        support = support_mask(x_osem, 0.05, eligible=eligible)
        lik = PoissonLogLikelihood(scan.acquisition_model(num_subsets=1), scan.prompts)
        row, secs, window = [], [], None
        for use_support in (False, True):
            D = fit_prior_to_grid(model, geom.shape, geom.voxel_size_mm,
                                  support=support if use_support else None)
            window = getattr(D, "window", window)
            t = time.perf_counter()
            r = reconstruct("lisch", lik, D, num_steps=20, num_mlem_iterations=30,
                            num_samples=1, generator=torch.Generator().manual_seed(0),
                            progress=False)
            secs.append(time.perf_counter() - t)
            row.append(float(nrmse(r.mean, scan.reference, head)))
        print(f"| {n} x {n} | {float(nrmse(x_osem, scan.reference, head)):.3f} | "
              f"{row[0]:.3f} | {row[1]:.3f} | {window} | {secs[0]:.0f}, {secs[1]:.0f} |")


def main() -> None:
    torch.set_num_threads(1)
    model = load_model(default_prior_dir() / "xy")
    part_a(model)
    part_b(model)


if __name__ == "__main__":
    main()
