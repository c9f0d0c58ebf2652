"""The demo: a low-count brain scan reconstructed by OSEM, MAP-EM-RDP and PET-LiSch.

1. simulate a 2D FDG brain slice of a *test-split* subject (never seen in training) at a low
   count level (2.5 true counts per mm^3 of emission volume by default) with attenuation,
   normalisation, randoms, scatter and a 4.5 mm PSF;
2. OSEM (12 subsets) with the NRMSE of every epoch: the best epoch is reported;
3. MAP-EM with STIR's relative difference prior over a small sweep of beta, from 2 OSEM epochs:
   the best beta is reported;
4. PET-LiSch (Webber et al. 2025) with the shipped score prior, when the prior and the sampler
   are available: the posterior mean of 4 chains for K = 10, 15, 20 MLEM iterations, the best
   K reported (the same oracle choice as the baselines');
5. a figure (``demo.png``), the NRMSE curves (``demo_curves.png``) and a metrics table
   (``metrics.md`` / ``metrics.json``).

The oracle choices (best epoch, best beta) use the ground truth, as in the literature's
comparisons; they favour the classical baselines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_demo"]


def run_demo(out: Path, *, counts_per_mm3: float = 2.5, subject_index: int = 0, quick: bool = False,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """Run the demo and write its outputs into ``out``; returns the metrics table."""
    from .data.simulate import SimulationConfig, simulate_scan, write_simulated_case
    from .data.splits import subject_seeds
    from .io.atomic import atomic_write_text, make_dir, write_json
    from .likelihood import PoissonLogLikelihood
    from .metrics import image_metrics, metrics_table
    from .models import has_default_prior
    from .plotting import save_curves, save_image_row
    from .recon import RelativeDifferencePrior, map_em, osem

    out = make_dir(out)
    seed = subject_seeds("test", subject_index + 1)[subject_index]
    cfg = SimulationConfig(seed=seed, counts_per_mm3=counts_per_mm3)
    print(f"[demo] simulating test subject {seed} at {counts_per_mm3} counts/mm^3 ...")
    scan = simulate_scan(cfg, progress=progress)
    shape = scan.image_geometry.shape
    num_subsets = 12
    model = scan.acquisition_model(num_subsets)
    lik = PoissonLogLikelihood(model, scan.prompts)
    ref, masks = scan.reference, scan.masks

    def metrics_of(x: torch.Tensor) -> dict[str, float]:
        return image_metrics(x.reshape(shape), ref, masks)

    rows: dict[str, dict[str, float]] = {}
    images: dict[str, Any] = {"reference": ref}
    titles = {"reference": f"reference (subject {seed})"}

    # -- OSEM: NRMSE per epoch, best epoch
    max_epochs = 4 if quick else 12
    per_epoch: list[float] = []
    snapshots: list[torch.Tensor] = []

    def on_osem(d: dict[str, Any]) -> None:
        if d["subset"] == num_subsets - 1:
            snapshots.append(d["x"].clone())
            per_epoch.append(metrics_of(d["x"])["nrmse"])

    t0 = time.perf_counter()
    osem(lik, num_subsets=num_subsets, num_epochs=max_epochs, callback=on_osem, progress=progress)
    t_osem = (time.perf_counter() - t0) / max_epochs
    best = min(range(len(per_epoch)), key=per_epoch.__getitem__)
    x_osem = snapshots[best]
    rows[f"OSEM (best: {best + 1} epochs x {num_subsets} subsets)"] = {
        **metrics_of(x_osem), "time_s": t_osem * (best + 1)}
    images["OSEM"] = x_osem
    titles["OSEM"] = f"OSEM, {best + 1} epochs"

    # -- MAP-EM with RDP: small beta sweep from 2 OSEM epochs
    betas = [0.5, 1.0, 2.0] if quick else [0.25, 0.5, 1.0, 2.0, 4.0]
    map_iters = 5 if quick else 15
    x_init = snapshots[min(1, len(snapshots) - 1)]
    sweep: list[tuple[float, dict[str, float], torch.Tensor, float]] = []
    for beta in betas:
        prior = RelativeDifferencePrior(beta, voxel_size_mm=model.voxel_size_mm, epsilon=1e-3)
        t0 = time.perf_counter()
        x = map_em(lik, prior, x_init, num_iterations=map_iters, num_subsets=num_subsets,
                   progress=progress)
        sweep.append((beta, metrics_of(x), x, time.perf_counter() - t0))
    beta, m_map, x_map, t_map = min(sweep, key=lambda r: r[1]["nrmse"])
    rows[f"MAP-EM-RDP (best beta {beta:g}, {map_iters} epochs)"] = {**m_map, "time_s": t_map}
    images["MAP-EM-RDP"] = x_map
    titles["MAP-EM-RDP"] = f"MAP-EM-RDP, beta {beta:g}"

    # -- PET-LiSch with the shipped prior (when available): small sweep of K like the others
    if has_default_prior("xy"):
        from .diffusion.loading import load_slice_prior
        from .samplers.methods import reconstruct

        denoiser = load_slice_prior(None, "xy")
        # 20 steps with K 20-40: the PET-LiSch points that are both faster and more accurate
        # than 50 steps in docs/evaluation/speed_accuracy (fewer steps want a larger K)
        ks = [15] if quick else [20, 30, 40]
        steps = 10 if quick else 20
        chains = 2 if quick else 4      # the posterior mean of a few chains (one batch)
        runs = []
        for k in ks:
            res = reconstruct("lisch", lik, denoiser, num_steps=steps, num_mlem_iterations=k,
                              num_samples=chains,
                              generator=torch.Generator().manual_seed(seed), progress=progress)
            runs.append((k, metrics_of(res.mean), res))
        k, m_l, res = min(runs, key=lambda r: r[1]["nrmse"])
        rows[f"PET-LiSch (best K {k}, {steps} steps, mean of {chains})"] = {
            **m_l, "time_s": res.wall_time_s, "network_evals": res.num_network_evaluations,
            "likelihood_evals": res.num_likelihood_evaluations}
        images["PET-LiSch"] = res.mean
        titles["PET-LiSch"] = f"PET-LiSch, K {k}"
    else:
        print("[demo] no shipped prior found: PET-LiSch skipped")

    for name, r in zip(images, [None] + list(rows.values())):
        if r is not None:
            titles[name] += f"\nNRMSE {r['nrmse']:.3f}  SSIM {r['ssim']:.3f}"
    save_image_row({k: v.reshape(shape) for k, v in images.items()}, out / "demo.png",
                   titles=titles, suptitle=f"2D FDG brain, {counts_per_mm3} counts/mm^3, "
                                           f"{scan.info['prompt_counts']:.0f} prompts")
    save_curves({"OSEM (x: epochs)": (range(1, len(per_epoch) + 1), per_epoch)},
                out / "demo_osem_nrmse.png", xlabel="epoch", ylabel="NRMSE in brain",
                title="OSEM: NRMSE vs epochs")
    save_curves({"MAP-EM-RDP": ([s[0] for s in sweep], [s[1]["nrmse"] for s in sweep])},
                out / "demo_rdp_nrmse.png", xlabel="beta", ylabel="NRMSE in brain",
                title="MAP-EM-RDP: NRMSE vs beta", logx=True)
    table = metrics_table(rows)
    atomic_write_text(
        out / "metrics.md",
        f"Demo: test subject {seed}, {counts_per_mm3} counts/mm^3 "
        f"({scan.info['prompt_counts']:.0f} prompts).\n\n{table}\n")
    write_json(out / "metrics.json", rows)
    write_json(out / "config.json", {"command": "demo", "counts_per_mm3": counts_per_mm3,
                                     "subject_seed": seed, "quick": quick,
                                     "num_subsets": num_subsets,
                                     "osem_max_epochs": max_epochs, "rdp_betas": betas,
                                     "map_iterations": map_iters})
    write_simulated_case(out / "case", scan, osem_image=x_osem.reshape(shape))
    print(table)
    return rows
