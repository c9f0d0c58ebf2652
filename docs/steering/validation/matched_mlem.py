"""Where does PET-LiSch's white-matter bias on amyloid come from: the FDG prior or the data fit?

For each validation subject, simulates the amyloid scan of ``run_validation.py`` (same seeds and
dose), runs MLEM from a uniform image and records, per iteration, the Poisson deviance per bin
and the relative bias of the grey- and white-matter means against the reference.  Each PET-LiSch
run (without steering) of that subject and dose in ``runs.jsonl`` is then matched with the MLEM
iterate of the same deviance per bin (the same likelihood level: the matching of the PET-SCD
paper, arXiv 2510.13441): if the two have the same regional bias, the bias is the data fit's
(resolution not yet recovered at that likelihood), which no adaptation of the prior to the data
can remove; if PET-LiSch's is larger, it is the prior's.  Prints one JSON line per match, with
the NRMSE PET-LiSch would have if the grey-matter offset the prior adds (PET-LiSch's grey-matter
bias minus MLEM's) were removed exactly: a region's mean offset is orthogonal to the error left
within the region, so ``nrmse^2`` falls by ``(b m_GM)^2 N_GM / ||ref||^2`` in the brain.

    PYTHONPATH=$PWD python docs/steering/validation/matched_mlem.py 2.5 1 11
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
from sirf_diffusion.likelihood import PoissonLogLikelihood, saturated_log_likelihood
from sirf_diffusion.recon.em import mlem


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    counts, subjects = float(argv[0]), [int(s) for s in argv[1:]]
    runs = [json.loads(line) for line in
            Path(__file__).with_name("runs.jsonl").read_text().splitlines() if line.strip()]
    for subject in subjects:
        scan = simulate_scan(SimulationConfig(seed=subject, counts_per_mm3=counts,
                                              tracer="amyloid", noise_seed=7), progress=False)
        lik = PoissonLogLikelihood(scan.acquisition_model(12), scan.prompts)
        y = lik.data.double()
        sat = saturated_log_likelihood(y)
        ref = scan.reference.numpy()
        masks = {r: scan.masks[r] > 0.5 for r in ("gm", "wm")}
        brain_energy = float((ref[scan.masks["brain"] > 0.5] ** 2).sum())
        gm_mean, gm_voxels = float(ref[masks["gm"]].mean()), int(masks["gm"].sum())
        history: list[dict[str, float]] = []

        def record(info: dict) -> None:
            x = info["x"].reshape(lik.image_shape)
            dev = 2 * (sat - float(lik.value(x[None].to(lik.dtype)).sum())) / y.numel()
            xx = x.numpy()
            history.append({"iteration": info["iteration"], "dev_per_bin": dev,
                            **{r: float(xx[m].mean() / ref[m].mean() - 1)
                               for r, m in masks.items()}})

        mlem(lik, num_iterations=200, callback=record, progress=False)
        seen: set[tuple[int, float]] = set()
        for r in runs:
            if (r.get("subject") != subject or r.get("counts") != counts or r.get("steer")
                    or "bias" not in r or r.get("num_samples", 1) != 1
                    or (r["K"], r["dev_per_bin"]) in seen):
                continue
            seen.add((r["K"], r["dev_per_bin"]))
            match = min(history, key=lambda h: abs(h["dev_per_bin"] - r["dev_per_bin"]))
            added = r["bias"]["gm"] - match["gm"]
            drop = (added * gm_mean) ** 2 * gm_voxels / brain_energy
            print(json.dumps({
                "subject": subject, "counts": counts, "lisch_K": r["K"],
                "lisch_dev_per_bin": r["dev_per_bin"], "lisch_bias": r["bias"],
                "mlem_iteration": match["iteration"],
                "mlem_dev_per_bin": round(match["dev_per_bin"], 4),
                "mlem_bias": {k: round(match[k], 4) for k in masks},
                "mlem_at_K": {k: round(history[r["K"] - 1][k], 4) for k in masks},
                "lisch_nrmse": r["nrmse"], "gm_offset_added_by_prior": round(added, 4),
                "lisch_nrmse_without_it": round(max(r["nrmse"] ** 2 - drop, 0.0) ** 0.5, 4)}),
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
