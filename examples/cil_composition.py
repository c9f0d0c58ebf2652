"""CIL composition: the diffusion prior as a CIL ``Function`` and the samplers as CIL ``Algorithm``s.

Needs CIL (conda-forge ``cil``, or the SIRF SuperBuild).  Runs on the package's embedded physics;
with SIRF, pass ``sirf_diffusion.integrations.sirf.sirf_likelihood(acq_model, acq_data)`` instead
and a SIRF ``ImageData`` as ``template``::

    python examples/cil_composition.py out_cil

1. PET-LiSch as a CIL ``Algorithm``: ``run(iterations, callbacks=[...])``, the objective (negative
   Poisson log-likelihood) recorded by CIL, a callback that stops by ``StopIteration``.
2. ``DiffusionPriorFunction`` in CIL's own FISTA: a plug-and-play denoising of the OSEM image,
   ``min_u 1/2 ||u - u_osem||^2 + R(u)``, FISTA using the prior's (Tweedie) proximal map.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from cil.framework import ImageGeometry
from cil.optimisation.algorithms import FISTA
from cil.optimisation.functions import L2NormSquared
from cil.optimisation.utilities.callbacks import Callback

from sirf_diffusion import PoissonLogLikelihood, metrics, osem
from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
from sirf_diffusion.integrations import DiffusionPrior
from sirf_diffusion.integrations.cil import DiffusionPriorFunction, LikelihoodScheduledDiffusion
from sirf_diffusion.diffusion import load_slice_prior


class PrintPLL(Callback):
    """Print the recorded objective every 10 generative steps; stop once it stops improving."""

    def __init__(self) -> None:
        super().__init__(verbose=0)

    def __call__(self, algorithm) -> None:
        if algorithm.iteration % 10 == 0 and algorithm.objective:
            print(f"step {algorithm.iteration:3d}: -PLL = {algorithm.objective[-1]:.1f}")


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    scan = simulate_scan(SimulationConfig(seed=0, counts_per_mm3=2.5))   # a test-split subject
    lik = PoissonLogLikelihood(scan.acquisition_model(num_subsets=12), scan.prompts)
    ref = scan.reference.numpy()
    brain = scan.masks["brain"] > 0.5
    nz, ny, nx = lik.physics.image_shape
    vz, vy, vx = lik.physics.voxel_size_mm
    ig = ImageGeometry(voxel_num_x=nx, voxel_num_y=ny, voxel_num_z=nz,
                       voxel_size_x=vx, voxel_size_y=vy, voxel_size_z=vz)
    model = load_slice_prior()

    # 1. PET-LiSch as a CIL Algorithm, solution as a CIL ImageData
    algo = LikelihoodScheduledDiffusion(lik, model, template=ig.allocate(0), num_steps=50,
                                        num_mlem_iterations=20,
                                        generator=torch.Generator().manual_seed(0))
    algo.run(100, callbacks=[PrintPLL()])        # stops by itself after its 50 steps
    lisch = algo.solution.as_array().reshape(ref.shape)   # CIL drops the size-1 z axis
    print(f"PET-LiSch (CIL Algorithm): NRMSE {metrics.nrmse(lisch, ref, brain):.4f}")

    # 2. the prior as a CIL Function inside CIL's FISTA
    x_osem = osem(lik, num_subsets=12, num_epochs=3, progress=False)
    b = ig.allocate(0)
    b.fill(x_osem.numpy().astype(np.float32).reshape(b.shape))
    prior = DiffusionPrior(model, sigma=0.2, penalisation_factor=0.02)
    f = DiffusionPriorFunction(prior).set_up(b)
    fista = FISTA(initial=b.copy(), f=0.5 * L2NormSquared(b=b), g=f, step_size=1.0)
    fista.run(20, verbose=0)
    print(f"OSEM 3 epochs: NRMSE {metrics.nrmse(x_osem.numpy(), ref, brain):.4f}; "
          f"FISTA with the prior's proximal map: "
          f"{metrics.nrmse(fista.solution.as_array().reshape(ref.shape), ref, brain):.4f}")
    np.save(out_dir / "lisch.npy", lisch)
    np.save(out_dir / "fista.npy", fista.solution.as_array())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
