"""A SIRF reconstruction script in which OSMAPOSL is replaced by PET-LiSch with a diffusion prior.

Needs SIRF (conda-forge ``sirf`` or the SIRF SuperBuild).  The data are a PETRIC-layout folder
(``prompts.hs``, ``mult_factors.hs``, ``additive_term.hs``, ``OSEM_image.hv``): real scanner data
prepared with SIRF/STIR, or a case simulated by this package::

    sirf-diffusion simulate --out case_2d --counts 2.5
    python examples/sirf_diffusion_reconstructor.py case_2d out_sirf

Everything up to the reconstructor is an ordinary SIRF script; the two marked lines are the
whole change from OSEM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sirf.STIR as pet

from sirf_diffusion.integrations.sirf import DiffusionReconstructor


def sirf_model(case_dir: Path) -> tuple[pet.AcquisitionModel, pet.AcquisitionData,
                                         pet.ImageData]:
    """An ordinary SIRF set-up of a PETRIC-layout folder: data, normalisation x attenuation,
    additive term, ray-tracing model ``S (G x + a)``; returns (model, prompts, image)."""
    prompts = pet.AcquisitionData(str(case_dir / "prompts.hs"))
    mult = pet.AcquisitionData(str(case_dir / "mult_factors.hs"))
    additive = pet.AcquisitionData(str(case_dir / "additive_term.hs"))
    image = pet.ImageData(str(case_dir / "OSEM_image.hv"))
    acq_model = pet.AcquisitionModelUsingRayTracingMatrix()
    acq_model.set_acquisition_sensitivity(pet.AcquisitionSensitivityModel(mult))
    acq_model.set_additive_term(additive)
    acq_model.set_up(prompts, image)
    return acq_model, prompts, image


def main(case: str, out: str) -> None:
    case_dir, out_dir = Path(case), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pet.set_verbosity(0)

    # --- an ordinary SIRF set-up (sirf_model above) and objective function
    acq_model, prompts, image = sirf_model(case_dir)
    obj_fun = pet.make_Poisson_loglikelihood(prompts)
    obj_fun.set_acquisition_model(acq_model)

    # --- the reconstructor: OSEM would be
    #     recon = pet.OSMAPOSLReconstructor()
    #     recon.set_num_subiterations(24)
    recon = DiffusionReconstructor("lisch", num_mlem_iterations=20)   # changed line 1
    recon.set_num_subiterations(50)                                   # changed line 2: steps
    recon.set_objective_function(obj_fun)
    recon.set_num_subsets(12)
    recon.set_up(image)
    recon.set_current_estimate(image.get_uniform_copy(1.0))
    recon.process()
    result = recon.get_output()                                       # a sirf.STIR.ImageData
    result.write(str(out_dir / "lisch.hv"))
    print(f"wrote {out_dir / 'lisch.hv'}; {recon.result.num_network_evaluations} network and "
          f"{recon.result.num_likelihood_evaluations:.0f} likelihood evaluations, "
          f"{recon.result.wall_time_s:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
