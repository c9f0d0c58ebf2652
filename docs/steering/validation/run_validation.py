"""Single exploratory PET-LiSch / PET-LiSch-SCD runs on validation subjects (docs/steering.md 5.2).

Amyloid scan of subject SUBJECT (a validation seed: 1, 11, ...) at COUNTS counts/mm^3, 2D mMR,
noise seed 7, sampler seed 3, 20 steps; one reconstruction per JSON option dict (``K`` the
MLEM-equivalent iterations, ``num_samples``, any ``steer*`` option).  Appends one JSON line per
run to ``runs.jsonl`` beside this file: NRMSE, SSIM, the Poisson deviance per bin of the image
and of the reference, the relative bias of the grey- and white-matter means, and per fit the
deviance per bin of the Tweedie estimate before the first and after the last Adam step.

    PYTHONPATH=$PWD python docs/steering/validation/run_validation.py 1 2.5 \\
        '[{"K": 15}, {"K": 15, "steer": true, "steer_weight_decay": 50, "steer_lr": 1e-3}]'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
from sirf_diffusion.diffusion.loading import load_slice_prior
from sirf_diffusion.likelihood import PoissonLogLikelihood, saturated_log_likelihood
from sirf_diffusion.metrics import image_metrics
from sirf_diffusion.samplers.methods import reconstruct


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    subject, counts, configs = int(argv[0]), float(argv[1]), json.loads(argv[2])
    scan = simulate_scan(SimulationConfig(seed=subject, counts_per_mm3=counts, tracer="amyloid",
                                          noise_seed=7), progress=False)
    lik = PoissonLogLikelihood(scan.acquisition_model(12), scan.prompts)
    y = lik.data.double()
    sat = saturated_log_likelihood(y)

    def deviance(image: torch.Tensor) -> float:
        return 2 * (sat - float(lik.value(image.reshape(lik.image_shape)[None].to(lik.dtype))
                                .sum())) / y.numel()

    prior = load_slice_prior()
    ref = scan.reference.numpy()
    for c in configs:
        c = dict(c)
        k, n = c.pop("K"), c.pop("num_samples", 1)
        fits: list[list[float]] = []

        def on_step(d: dict, n: int = n) -> None:   # NLL of the batch -> mean deviance per bin
            if "steer_loss" in d:
                dev = [2 * (sat + v / n) / y.numel() for v in d["steer_loss"]]
                fits.append([round(dev[0], 3), round(dev[-1], 3)])

        t0 = time.perf_counter()
        res = reconstruct("lisch", lik, prior, num_steps=20, num_samples=n,
                          num_mlem_iterations=k, generator=torch.Generator().manual_seed(3),
                          progress=False, callback=on_step, **c)
        wall = time.perf_counter() - t0
        m = image_metrics(res.mean, scan.reference, scan.masks)
        x = res.mean.reshape(ref.shape).numpy()
        bias = {r: round(float(x[scan.masks[r] > 0.5].mean() / ref[scan.masks[r] > 0.5].mean()
                               - 1), 4) for r in ("gm", "wm") if r in scan.masks}
        rec = {"subject": subject, "counts": counts, "K": k, "num_samples": n, **c,
               "nrmse": round(m["nrmse"], 4), "ssim": round(m["ssim"], 4), "bias": bias,
               "dev_per_bin": round(deviance(res.mean), 4),
               "dev_ref": round(deviance(scan.reference), 4), "wall_s": round(wall, 1),
               "fits": fits}
        print(json.dumps(rec), flush=True)
        with open(Path(__file__).with_name("runs.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
