"""Evaluate OSEM, MAP-EM-RDP, DPS, PET-DDS and PET-LiSch on held-out test subjects.

For every test-split subject (``subject_seeds('test', n)``: never seen by the prior), count level
(true counts per mm^3 of emission volume, Singh et al. 2024) and noise realisation (the Poisson
noise seed varies, the subject is fixed) a 2D FDG brain scan is simulated
(:func:`~sirf_diffusion.data.simulate.simulate_scan`: attenuation, normalisation, randoms,
scatter, 4.5 mm PSF) and reconstructed by

* **OSEM** (``--subsets`` subsets) up to ``--osem-epochs`` epochs: the parameter is the epoch;
* **MAP-EM-RDP** (De Pierro's MAP-EM with STIR's relative difference prior, ``epsilon = 1e-3``,
  ``--map-iterations`` epochs from ``--map-init-epochs`` OSEM epochs, as the demo) for each
  ``--rdp-beta``;
* **DPS** (Poisson DPS, step normalised by the misfit) for each ``--dps-zeta``;
* **PET-DDS** (anchored EM data consistency: ``--dds-epochs`` epochs of ``--dds-subsets``-subset
  EM-preconditioned ascent from the Tweedie estimate per generative step) for each
  ``--dds-beta``, given *relative* to the likelihood: the physical anchor weight is
  ``beta = value * mean(sensitivity) / mean(x)`` over the support of the ``--map-init-epochs``
  OSEM image, so ``value`` is the fraction of the way back to the anchor one subset step takes at
  mean activity (0: the paper's "OSEM" variant).  The anchor only acts from the second update of
  a step on (the ascent starts at the anchor), hence the default of 4 subsets: with one full-data
  EM step per generative step (the 2D convention of Singh et al.'s code) ``beta`` has no effect;
* **PET-LiSch** (likelihood schedule from a ``K``-iteration MLEM) for each ``--lisch-k``;

the diffusion methods with the shipped slice prior (or ``--model``), ``--steps`` generative
steps, one chain (or the mean of ``--samples`` chains, run as one batch: the posterior-mean
estimate; ``--dps-samples`` for DPS, whose chains each cost two network passes with autograd),
the same sampler seed for every parameter of a realisation.

Per method and parameter: NRMSE, PSNR and SSIM in the brain, lesion contrast recovery (hot/cold
masks of the phantom; background = brain without lesions), NEMA background variability over
white-matter ROIs (8 x 8-voxel blocks of eroded white matter away from the lesions), the bias and
standard deviation over realisations of the grey-matter ROI mean
(:func:`~sirf_diffusion.metrics.roi_bias_std`) and of the voxels in the brain
(:func:`~sirf_diffusion.metrics.bias_variance`), wall time and the numbers of network and
likelihood evaluations (full-data forward projections, initial reconstructions included).
Per lesion (``--lesions`` per scan, alternately hot and cold; :mod:`evaluation_lesions`): the CRC
against a local background, the bias of the lesion mean and, for the diffusion methods with two
or more chains, the posterior standard deviation in the lesion relative to its background, with
a plain verdict (recovered, partly erased, filled, exaggerated, ...).

For each subject and count level the best parameter of each method is the one with the lowest
NRMSE averaged over the realisations (an oracle choice using the ground truth, as in the
literature; it favours every method equally).  The tables report mean ± standard deviation over
all subjects and realisations at those parameters.

Outputs in ``--out`` (default ``docs/evaluation``): ``evaluation.md``, ``results.json``,
``bias_variance.png``, ``nrmse_vs_parameter.png``, ``examples.png``, ``lesions.png`` and
``reconstructions.npz`` (every image, and the posterior std of every diffusion run with two or
more chains as ``<key>/std``, saved before the analysis).  Examples::

    python benchmarks/evaluate_methods.py --subjects 2 --realisations 3 --steps 50 --workers 2
    python benchmarks/evaluate_methods.py --quick --out /tmp/eval
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluation_lesions as lesions_eval  # noqa: E402  (a sibling script, not a package)

METHODS = ("osem", "mapem-rdp", "dps", "dds", "lisch")
LABELS = {"osem": "OSEM", "mapem-rdp": "MAP-EM-RDP", "dps": "DPS", "dds": "PET-DDS",
          "lisch": "PET-LiSch"}
PARAMETERS = {"osem": "epochs", "mapem-rdp": "beta", "dps": "zeta", "dds": "relative beta",
              "lisch": "K"}
DIFFUSION = ("dps", "dds", "lisch")

#: Settings with different defaults in full and ``--quick`` runs.
FULL = {"subjects": 2, "realisations": 5, "steps": 50, "osem_epochs": 12,
        "rdp_beta": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], "map_iterations": 15,
        "dps_zeta": [1000.0, 2000.0, 3000.0], "dds_beta": [0.0, 0.1, 0.3],
        "lisch_k": [10, 15, 20, 30]}
QUICK = {"subjects": 1, "realisations": 2, "steps": 8, "osem_epochs": 4,
         "rdp_beta": [0.5, 2.0], "map_iterations": 4, "dps_zeta": [2000.0],
         "dds_beta": [0.0, 0.2], "lisch_k": [5, 10]}


@dataclass
class Job:
    """One simulated scan (subject, count level, noise realisation) and what to run on it."""

    subject: int
    counts: float
    realisation: int
    noise_seed: int
    sampler_seed: int
    num_views: int | None
    subsets: int
    osem_epochs: int
    map_init_epochs: int
    map_iterations: int
    rdp_beta: list[float]
    dps_zeta: list[float]
    dds_beta: list[float]
    dds_subsets: int
    dds_epochs: int
    lisch_k: list[int]
    lisch_max_steps: int | None
    steps: int
    methods: list[str]
    model: str | None
    threads: int
    samples: int = 1
    dps_samples: int = 1
    lesions: int = 2
    tracer: str = "fdg"
    lisch_options: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- arguments
def defaults_note(full: dict[str, Any], quick: dict[str, Any]) -> Callable[..., str]:
    """``d(key, what=None)``: the help suffix ``(default <full[key] or what>; --quick: ...)``."""
    def d(key: str, what: str | None = None) -> str:
        return f"(default {full[key] if what is None else what}; --quick: {quick[key]})"
    return d


def add_classical_arguments(p: argparse.ArgumentParser, d: Callable[..., str],
                            init_help: str) -> None:
    """The flags of the OSEM and MAP-EM-RDP sweeps (``d``: :func:`defaults_note`)."""
    p.add_argument("--osem-epochs", type=int, default=None,
                   help=f"largest OSEM epoch of the sweep {d('osem_epochs')}")
    p.add_argument("--rdp-beta", type=float, nargs="+", default=None,
                   help=f"MAP-EM-RDP penalisation factors {d('rdp_beta')}")
    p.add_argument("--map-iterations", type=int, default=None,
                   help=f"MAP-EM epochs {d('map_iterations')}")
    p.add_argument("--map-init-epochs", type=int, default=2, help=init_help)


def build_parser() -> argparse.ArgumentParser:
    d = defaults_note(FULL, QUICK)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=None,
                   help=f"test-split subjects {d('subjects')}")
    p.add_argument("--counts", type=float, nargs="+", default=[2.5, 10.0],
                   help="count levels in true counts per mm^3 (--quick keeps the first)")
    p.add_argument("--realisations", type=int, default=None,
                   help=f"noise realisations per subject and count level, >= 2 {d('realisations')}")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to run")
    p.add_argument("--model", default=None,
                   help="score model folder (or prior folder); default: the shipped prior")
    p.add_argument("--steps", type=int, default=None,
                   help=f"generative steps of the diffusion methods {d('steps')}")
    p.add_argument("--subsets", type=int, default=12,
                   help="OSEM / MAP-EM view subsets (must divide the number of views)")
    add_classical_arguments(
        p, d, "OSEM epochs initialising MAP-EM (also the image that scales --dds-beta)")
    p.add_argument("--dps-zeta", type=float, nargs="+", default=None,
                   help=f"DPS step sizes zeta (misfit-normalised) {d('dps_zeta')}")
    p.add_argument("--dds-beta", type=float, nargs="+", default=None,
                   help="PET-DDS anchor weights relative to mean(sensitivity) / mean(activity), "
                        f"0 = no anchor {d('dds_beta')}")
    p.add_argument("--dds-subsets", type=int, default=4,
                   help="PET-DDS view subsets of the ascent per generative step")
    p.add_argument("--dds-epochs", type=int, default=1,
                   help="PET-DDS epochs of the ascent per generative step")
    p.add_argument("--lisch-k", type=int, nargs="+", default=None,
                   help=f"PET-LiSch MLEM iterations K of the likelihood schedule {d('lisch_k')}")
    p.add_argument("--lisch-max-steps", type=int, default=None,
                   help="PET-LiSch cap on ascent steps per generative step (default: the "
                        "sampler's, 20)")
    p.add_argument("--num-views", type=int, default=None,
                   help="sinogram views (a divisor of the scanner's 252 that --subsets divides; "
                        "default: all)")
    p.add_argument("--samples", type=int, default=1,
                   help="chains per diffusion reconstruction; the reported image is their mean "
                        "(the posterior-mean estimate), the same for every diffusion method "
                        "except DPS (--dps-samples)")
    p.add_argument("--dps-samples", type=int, default=None,
                   help="chains per DPS reconstruction (default: --samples)")
    p.add_argument("--lesions", type=int, default=2,
                   help="lesions per simulated scan, alternately hot and cold (the simulation's "
                        "default 2; more lesions keep the first ones and add smaller ones)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the noise and the samplers")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel worker processes (one scan each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test settings: 1 subject, the first count level, 2 realisations, "
                        "few steps and short sweeps")
    p.add_argument("--out", default="docs/evaluation", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Explicit flags, else the ``--quick`` or full defaults."""
    base = QUICK if args.quick else FULL
    s = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    s["counts"] = [float(c) for c in (args.counts[:1] if args.quick else args.counts)]
    if s["realisations"] < 2:
        raise SystemExit("--realisations must be >= 2 (bias and variance need two)")
    if s["subjects"] < 1:
        raise SystemExit("--subjects must be >= 1")
    if args.dps_samples is None:
        args.dps_samples = args.samples
    if args.samples < 1 or args.dps_samples < 1:
        raise SystemExit("--samples and --dps-samples must be >= 1")
    if args.map_init_epochs < 1 or args.map_init_epochs > s["osem_epochs"]:
        raise SystemExit("--map-init-epochs must be in [1, --osem-epochs]")
    if args.lesions < 0:
        raise SystemExit("--lesions must be >= 0")
    return s


# ----------------------------------------------------------------------------- regions
def grey_matter_roi(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Grey matter away (2 voxels) from the lesions."""
    from scipy.ndimage import binary_dilation

    les = binary_dilation(np.asarray(masks.get("lesion", np.zeros_like(masks["gm"]))) > 0.5,
                          iterations=2)
    return (np.asarray(masks["gm"]) > 0.5) & ~les


def white_matter_rois(masks: dict[str, np.ndarray], block: int = 8,
                      min_voxels: int = 16) -> list[np.ndarray]:
    """White-matter ROIs for the background variability: the eroded white matter away from
    the lesions, cut into ``block x block`` in-plane tiles with at least ``min_voxels`` voxels."""
    from scipy.ndimage import binary_dilation, binary_erosion

    wm = np.asarray(masks["wm"]) > 0.5
    les = binary_dilation(np.asarray(masks.get("lesion", np.zeros_like(wm))) > 0.5, iterations=3)
    core = binary_erosion(wm, structure=np.ones((1, 3, 3), bool)) & ~les
    rois = []
    ny, nx = core.shape[-2:]
    for y in range(0, ny, block):
        for x in range(0, nx, block):
            r = np.zeros_like(core)
            r[..., y:y + block, x:x + block] = core[..., y:y + block, x:x + block]
            if r.sum() >= min_voxels:
                rois.append(r)
    return rois


# ----------------------------------------------------------------------------- one scan
_MODELS: dict[str | None, Any] = {}


def _denoiser(model: str | None) -> Any:
    if model not in _MODELS:
        from sirf_diffusion.diffusion import load_slice_prior

        _MODELS[model] = load_slice_prior(model, "xy")
    return _MODELS[model]


def run_job(job: Job) -> dict[str, Any]:
    """Simulate one scan and run every method and parameter on it.

    Returns ``{"reference", "masks", "lesion_labels", "info", "runs": {method: {param: {"image",
    "time_s", "net_evals", "lik_evals", ...}}}}`` (images ``[1, y, x]`` float32 numpy; diffusion
    runs of two or more chains also have ``"std"``, the voxel-wise std over the chains).
    """
    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
    from sirf_diffusion.diffusion.normalisation import support_mean
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.recon import RelativeDifferencePrior, map_em, osem
    from sirf_diffusion.samplers.methods import reconstruct

    torch.set_num_threads(job.threads)
    cfg = SimulationConfig(seed=job.subject, counts_per_mm3=job.counts, noise_seed=job.noise_seed,
                           num_views=job.num_views, lesions=job.lesions, tracer=job.tracer)
    scan = simulate_scan(cfg, progress=False)
    model = scan.acquisition_model(job.subsets)
    lik = PoissonLogLikelihood(model, scan.prompts)
    runs: dict[str, dict[Any, dict[str, Any]]] = {m: {} for m in job.methods}
    img = lambda x: x.detach().reshape(scan.image_geometry.shape).cpu().numpy().astype(np.float32)  # noqa: E731

    # OSEM: an image, the cumulative time and forward projections after every epoch
    epochs: list[dict[str, Any]] = []
    fwd0, t0 = lik.num_forward, time.perf_counter()

    def on_update(d: dict[str, Any]) -> None:
        if d["iteration"] % job.subsets == 0:
            epochs.append({"image": img(d["x"]), "time_s": time.perf_counter() - t0,
                           "lik_evals": lik.num_forward - fwd0, "net_evals": 0,
                           "x": d["x"].detach().clone()})

    osem(lik, num_subsets=job.subsets, num_epochs=job.osem_epochs, callback=on_update,
         progress=False)
    init = epochs[job.map_init_epochs - 1]
    if "osem" in runs:
        for e, r in enumerate(epochs, 1):
            runs["osem"][e] = {k: v for k, v in r.items() if k != "x"}

    if "mapem-rdp" in runs:
        for beta in job.rdp_beta:
            prior = RelativeDifferencePrior(beta, voxel_size_mm=model.voxel_size_mm, epsilon=1e-3)
            f0, t1 = lik.num_forward, time.perf_counter()
            x = map_em(lik, prior, init["x"], num_iterations=job.map_iterations,
                       num_subsets=job.subsets, progress=False)
            runs["mapem-rdp"][beta] = {
                "image": img(x), "time_s": init["time_s"] + time.perf_counter() - t1,
                "lik_evals": init["lik_evals"] + lik.num_forward - f0, "net_evals": 0}

    if any(m in runs for m in DIFFUSION):
        denoiser = _denoiser(job.model)
        x_init = init["x"][None]
        support = x_init > 0.05 * x_init.max()
        mean_x = float(support_mean(x_init))
        mean_s = float(lik.sensitivity(like=x_init)[support[0]].mean())
        settings: list[tuple[str, Any, dict[str, Any]]] = []
        if "dps" in runs:
            settings += [("dps", z, {"step_size": z}) for z in job.dps_zeta]
        if "dds" in runs:
            settings += [("dds", b, {"beta": b * mean_s / mean_x, "num_subsets": job.dds_subsets,
                                     "num_epochs": job.dds_epochs}) for b in job.dds_beta]
        if "lisch" in runs:
            extra = ({} if job.lisch_max_steps is None
                     else {"max_likelihood_steps": job.lisch_max_steps})
            settings += [("lisch", k, {"num_mlem_iterations": k, **extra, **job.lisch_options})
                         for k in job.lisch_k]
        for method, value, options in settings:
            g = torch.Generator().manual_seed(job.sampler_seed)
            res = reconstruct(method, lik, denoiser, num_steps=job.steps, generator=g,
                              num_samples=job.dps_samples if method == "dps" else job.samples,
                              progress=False, **options)
            runs[method][value] = {
                "image": img(res.mean), "time_s": res.wall_time_s,
                "net_evals": res.num_network_evaluations,
                "lik_evals": res.num_likelihood_evaluations + res.num_init_evaluations,
                "options": {k: float(v) if isinstance(v, (bool, int, float)) else v
                            for k, v in options.items()}}
            if res.sample.shape[0] > 1:
                runs[method][value]["std"] = img(res.std)
    return {"reference": scan.reference.numpy().astype(np.float64), "masks": scan.masks,
            "lesion_labels": scan.lesion_labels,
            "info": {k: scan.info[k] for k in ("prompt_counts", "true_counts")}, "runs": runs}


def scan_seeds(seed: int, subject: int, counts: float, realisation: int) -> dict[str, int]:
    """``noise_seed`` and ``sampler_seed`` of one scan: every benchmark that derives them here
    reconstructs the same scans with the same sampler noise."""
    from sirf_diffusion.diffusion.datasets import derive_seed

    c = int(round(1000 * counts))
    return {"noise_seed": derive_seed(seed, subject, c, realisation),
            "sampler_seed": derive_seed(seed, subject, c, realisation, 1)}


def run_jobs(jobs: Sequence[Job], workers: int, progress: bool,
             unit: str = "scan") -> list[dict[str, Any]]:
    """:func:`run_job` for every job, in order; ``workers > 1`` runs them in spawned processes."""
    bar = tqdm(total=len(jobs), desc=f"{unit}s", disable=not progress, unit=unit)
    outputs: list[dict[str, Any]] = []
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for f in [pool.submit(run_job, j) for j in jobs]:
                outputs.append(f.result())
                bar.update()
    else:
        for j in jobs:
            outputs.append(run_job(j))
            bar.update()
    bar.close()
    return outputs


# ----------------------------------------------------------------------------- analysis
def scan_metrics(image: np.ndarray, reference: np.ndarray, masks: dict[str, np.ndarray],
                 wm_rois: list[np.ndarray]) -> dict[str, float]:
    """NRMSE / PSNR / SSIM / CRCs (:func:`~sirf_diffusion.metrics.image_metrics`) and BV."""
    from sirf_diffusion.metrics import background_variability
    from sirf_diffusion.metrics import image_metrics

    m = image_metrics(image, reference, masks)
    if len(wm_rois) >= 2:
        # an image that is zero over the white matter (a diverged sampler) has no BV: NaN
        wm_mean = float(np.mean([np.asarray(image)[r].mean() for r in wm_rois]))
        m["bv"] = (float(background_variability(image, wm_rois)) if wm_mean != 0.0
                   else float("nan"))
    return m


def analyse(jobs: list[Job], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics per scan, sweeps and best parameters per (count, subject), summaries per count."""
    from sirf_diffusion.metrics import bias_variance, roi_bias_std

    groups: dict[tuple[float, int], list[int]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault((j.counts, j.subject), []).append(i)
    per_case: dict[str, Any] = {}
    for (counts, subject), idx in groups.items():
        outs = [outputs[i] for i in idx]
        masks = outs[0]["masks"]
        gm, wm_rois = grey_matter_roi(masks), white_matter_rois(masks)
        brain = np.asarray(masks["brain"]) > 0.5
        ref_mean = np.mean([o["reference"] for o in outs], axis=0)
        les_setup = lesions_eval.lesion_setup(outs[0].get("lesion_labels"), masks)
        case: dict[str, Any] = {"subject": subject, "counts": counts,
                                "prompts": float(np.mean([o["info"]["prompt_counts"]
                                                          for o in outs])),
                                "num_wm_rois": len(wm_rois), "methods": {}}
        if les_setup is not None:
            case["lesions"] = lesions_eval.scan_lesions(outs[0]["reference"],
                                                        outs[0]["reference"], les_setup)
        for method in outs[0]["runs"]:
            sweep = {}
            for value in outs[0]["runs"][method]:
                rs = [o["runs"][method][value] for o in outs]
                ms = [scan_metrics(r["image"], o["reference"], masks, wm_rois)
                      for r, o in zip(rs, outs)]
                stack = np.stack([r["image"] for r in rs])
                bias, std = roi_bias_std(stack, ref_mean, gm)
                bv = bias_variance(stack, ref_mean, brain)
                sweep[value] = {
                    "metrics": {k: [m[k] for m in ms] for k in ms[0]},
                    "gm_bias": bias, "gm_std": std,
                    "voxel_bias": bv.nrms_bias, "voxel_std": bv.nrms_std,
                    "time_s": float(np.mean([r["time_s"] for r in rs])),
                    "net_evals": float(np.mean([r["net_evals"] for r in rs])),
                    "lik_evals": float(np.mean([r["lik_evals"] for r in rs])),
                }
                if "options" in rs[0]:
                    sweep[value]["options"] = [r["options"] for r in rs]
                if les_setup is not None:
                    sweep[value]["lesions"] = lesions_eval.over_realisations(
                        [lesions_eval.scan_lesions(r["image"], o["reference"], les_setup,
                                                   r.get("std")) for r, o in zip(rs, outs)])
            best = min(sweep, key=lambda v: float(np.mean(sweep[v]["metrics"]["nrmse"])))
            case["methods"][method] = {"best": best, "sweep": sweep}
        per_case[f"{counts:g}/{subject}"] = case
    return per_case


def summarise(per_case: dict[str, Any], counts_levels: list[float],
              methods: Sequence[str]) -> dict[str, Any]:
    """Per count level and method: metrics at each case's best parameter, pooled."""
    summary: dict[str, Any] = {}
    for c in counts_levels:
        cases = [v for v in per_case.values() if v["counts"] == c]
        rows: dict[str, Any] = {}
        for method in methods:
            if method not in cases[0]["methods"]:
                continue
            best = [cs["methods"][method]["best"] for cs in cases]
            entries = [cs["methods"][method]["sweep"][b] for cs, b in zip(cases, best)]
            keys = [k for k in entries[0]["metrics"] if all(k in e["metrics"] for e in entries)]
            pooled = {k: np.concatenate([e["metrics"][k] for e in entries]) for k in keys}
            # NaN (e.g. a CRC of an image that is zero over the background) is left out
            row = {"best": best,
                   **{k: [float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                          float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0]
                      for k, v in pooled.items()}}
            for k in ("gm_bias", "gm_std", "voxel_bias", "voxel_std", "time_s", "net_evals",
                      "lik_evals"):
                row[k] = float(np.mean([e[k] for e in entries]))
            row["lesions"] = lesions_eval.summary_rows(cases, method, best)
            rows[method] = row
        summary[f"{c:g}"] = rows
    return summary


def sweep_curves(per_case: dict[str, Any], counts: float, method: str) -> dict[str, list[float]]:
    """Sweep of one method at one count level, averaged over subjects."""
    cases = [v for v in per_case.values() if v["counts"] == counts and method in v["methods"]]
    values = list(cases[0]["methods"][method]["sweep"])
    out: dict[str, list[float]] = {"value": [float(v) for v in values]}
    for key in ("gm_bias", "gm_std", "voxel_bias", "voxel_std"):
        out[key] = [float(np.mean([cs["methods"][method]["sweep"][v][key] for cs in cases]))
                    for v in values]
    nr = [np.concatenate([cs["methods"][method]["sweep"][v]["metrics"]["nrmse"] for cs in cases])
          for v in values]
    out["nrmse_mean"] = [float(a.mean()) for a in nr]
    out["nrmse_std"] = [float(a.std(ddof=1)) if a.size > 1 else 0.0 for a in nr]
    return out


# ----------------------------------------------------------------------------- figures, text
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _marker(method: str) -> str:
    return {"osem": "o", "mapem-rdp": "s", "dps": "^", "dds": "v", "lisch": "D"}[method]


def plot_bias_variance(path: Path, per_case: dict[str, Any], summary: dict[str, Any],
                       counts_levels: list[float], methods: Sequence[str]) -> Path:
    """Rows: grey-matter ROI (bias vs std of the ROI mean) and voxels in the brain (NRMS bias vs
    NRMS std); columns: count levels.  Each method is a curve over its parameter; the best
    parameter is circled."""
    plt = _pyplot()
    nc = len(counts_levels)
    fig, axes = plt.subplots(2, nc, figsize=(5.2 * nc, 8.0), squeeze=False)
    for j, c in enumerate(counts_levels):
        for method in methods:
            if method not in summary[f"{c:g}"]:
                continue
            cur = sweep_curves(per_case, c, method)
            best = summary[f"{c:g}"][method]["best"]
            ib = cur["value"].index(float(best[0]))
            for i, (xk, yk, scale) in enumerate((("gm_std", "gm_bias", 100.0),
                                                 ("voxel_std", "voxel_bias", 100.0))):
                ax = axes[i, j]
                xs = [scale * v for v in cur[xk]]
                ys = [scale * v for v in cur[yk]]
                (line,) = ax.plot(xs, ys, marker=_marker(method), ms=4, label=LABELS[method])
                ax.plot([xs[ib]], [ys[ib]], "o", ms=11, mfc="none", color=line.get_color())
        for i, (xl, yl) in enumerate((("std of the GM ROI mean over realisations (%)",
                                       "bias of the GM ROI mean (%)"),
                                      ("NRMS std over realisations, brain (%)",
                                       "NRMS bias, brain (%)"))):
            ax = axes[i, j]
            ax.set_xlabel(xl, fontsize=8)
            ax.set_ylabel(yl, fontsize=8)
            ax.set_title(f"{c:g} counts/mm^3", fontsize=9)
            if i == 0:
                ax.axhline(0, color="k", lw=0.5)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Bias vs noise over realisations (curves: parameter sweeps; circle: best NRMSE)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_nrmse(path: Path, per_case: dict[str, Any], counts_levels: list[float],
               methods: Sequence[str]) -> Path:
    """One panel per method: NRMSE (mean ± std over subjects and realisations) vs parameter."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for c in counts_levels:
            cur = sweep_curves(per_case, c, method)
            ax.errorbar(cur["value"], cur["nrmse_mean"], yerr=cur["nrmse_std"], marker="o", ms=3,
                        capsize=2, label=f"{c:g} counts/mm^3")
        if method in ("mapem-rdp", "dps") and min(cur["value"]) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(PARAMETERS[method], fontsize=8)
        ax.set_ylabel("NRMSE in brain", fontsize=8)
        ax.set_title(LABELS[method], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_examples(path: Path, jobs: list[Job], outputs: list[dict[str, Any]],
                  per_case: dict[str, Any], counts_levels: list[float],
                  methods: Sequence[str]) -> Path:
    """Reference and every method at its best parameter: first subject, realisation 0."""
    plt = _pyplot()
    subject = jobs[0].subject
    ncol = 1 + len(methods)
    fig, axes = plt.subplots(len(counts_levels), ncol,
                             figsize=(2.3 * ncol, 2.6 * len(counts_levels)),
                             squeeze=False)
    for r, c in enumerate(counts_levels):
        i = next(k for k, j in enumerate(jobs)
                 if j.counts == c and j.subject == subject and j.realisation == 0)
        o, case = outputs[i], per_case[f"{c:g}/{subject}"]
        ref = o["reference"][0]
        vmax = float(np.percentile(ref, 99.9)) or 1.0
        panels = [("reference", ref, f"reference, {c:g} counts/mm^3")]
        for m in methods:
            b = case["methods"][m]["best"]
            nr = case["methods"][m]["sweep"][b]["metrics"]["nrmse"][0]
            panels.append((m, o["runs"][m][b]["image"][0],
                           f"{LABELS[m]} ({PARAMETERS[m]} {b:g})\nNRMSE {nr:.3f}"))
        for ax, (_, im, title) in zip(axes[r], panels):
            ax.imshow(im, cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"Test subject {subject}, noise realisation 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pm(v: list[float], scale: float = 1.0, digits: int = 3) -> str:
    return f"{scale * v[0]:.{digits}g} ± {scale * v[1]:.2g}"


def machine_line(workers: int, threads: int) -> str:
    """CPU count, torch version, workers and threads, Python, platform."""
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, {workers} worker process(es) x {threads} torch "
            f"thread(s), Python {platform.python_version()}, {platform.system()}")


def write_markdown(path: Path, command: str, settings: dict[str, Any], summary: dict[str, Any],
                   per_case: dict[str, Any], methods: Sequence[str], wall: float,
                   workers: int, threads: int) -> Path:
    """``evaluation.md``: command, machine, settings, one summary and one sweep table per count."""
    from sirf_diffusion.metrics import metrics_table

    lines = [
        "# Reconstruction methods on held-out test subjects", "",
        f"Command: `{command}`", "",
        f"Machine: {machine_line(workers, threads)}; total wall time {wall / 60:.1f} min.", "",
        f"Test-split subjects {settings['subject_seeds']} (2D FDG slice, 128 x 128, mMR geometry, "
        f"{settings['num_views_used']} views, 4.5 mm PSF, attenuation, normalisation, randoms, "
        f"scatter, {settings['lesions']} lesions), {settings['realisations']} noise realisations "
        "per subject and count "
        f"level. Prior: `{settings['model']}` ({settings['model_parameters']:,} parameters). "
        f"Diffusion methods: {settings['steps']} steps, "
        + ("one chain" if settings['samples'] == 1 else
           f"posterior mean of {settings['samples']} chains (run as one batch)")
        + ("" if settings["dps_samples"] == settings["samples"] else
           f" (DPS: {settings['dps_samples']} chain(s))")
        + "; PET-DDS: "
        f"{settings['dds_epochs']} epoch(s) of {settings['dds_subsets']} subsets per step. "
        "OSEM/MAP-EM: "
        f"{settings['subsets']} subsets; MAP-EM {settings['map_iterations']} epochs from "
        f"{settings['map_init_epochs']} OSEM epochs.", "",
        "Each method's parameter is swept and the best one (lowest NRMSE averaged over the "
        "realisations, per subject and count level: an oracle choice) is reported as mean ± "
        "standard deviation over subjects and realisations. NRMSE/PSNR/SSIM in the brain; CRC of "
        "the hot / cold lesion (1 = full recovery); BV: background variability over "
        "white-matter ROIs; GM bias / std: relative bias and standard deviation over "
        "realisations of the grey-matter ROI mean; time and evaluation counts per "
        "reconstruction (likelihood evaluations = full-data forward projections, initial "
        "reconstructions included; network evaluations = denoiser calls).", "",
    ]
    for c, rows in summary.items():
        prompts = np.mean([v["prompts"] for v in per_case.values() if f"{v['counts']:g}" == c])
        lines += [f"## {c} counts/mm^3 (mean {prompts:,.0f} prompts)", ""]
        table: dict[str, dict[str, Any]] = {}
        for m in methods:
            if m not in rows:
                continue
            r = rows[m]
            table[LABELS[m]] = {
                "best parameter": f"{PARAMETERS[m]} " + "/".join(f"{b:g}" for b in r["best"]),
                "NRMSE": _pm(r["nrmse"]), "PSNR (dB)": _pm(r["psnr"]), "SSIM": _pm(r["ssim"]),
                "CRC hot": _pm(r["crc_hot"]) if "crc_hot" in r else "",
                "CRC cold": _pm(r["crc_cold"]) if "crc_cold" in r else "",
                "BV (%)": _pm(r["bv"], 100) if "bv" in r else "",
                "GM bias (%)": f"{100 * r['gm_bias']:.2f}",
                "GM std (%)": f"{100 * r['gm_std']:.2f}",
                "time (s)": f"{r['time_s']:.1f}", "network evals": f"{r['net_evals']:.0f}",
                "likelihood evals": f"{r['lik_evals']:.1f}"}
        lines += [metrics_table(table), "", "Parameter sweeps (averaged over subjects):", ""]
        sweep_rows: dict[str, dict[str, Any]] = {}
        for m in methods:
            if m not in rows:
                continue
            cur = sweep_curves(per_case, float(c), m)
            for k, v in enumerate(cur["value"]):
                sweep_rows[f"{LABELS[m]}, {PARAMETERS[m]} {v:g}"] = {
                    "NRMSE": f"{cur['nrmse_mean'][k]:.4f} ± {cur['nrmse_std'][k]:.2g}",
                    "GM bias (%)": f"{100 * cur['gm_bias'][k]:.2f}",
                    "GM std (%)": f"{100 * cur['gm_std'][k]:.2f}",
                    "voxel NRMS bias (%)": f"{100 * cur['voxel_bias'][k]:.2f}",
                    "voxel NRMS std (%)": f"{100 * cur['voxel_std'][k]:.2f}"}
        lines += [metrics_table(sweep_rows, first_column="method, parameter"), ""]
        lines += lesions_eval.lesion_section(rows, methods, LABELS, DIFFUSION)
    lines += ["![bias vs variance](bias_variance.png)", "",
              "![NRMSE vs parameter](nrmse_vs_parameter.png)", "", "![examples](examples.png)", ""]
    if settings["lesions"]:
        lines += ["![lesions](lesions.png)", ""]
    path.write_text("\n".join(lines))
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(f"{k:g}" if isinstance(k, float) else str(k)): _jsonable(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the evaluation (module docstring); returns what is written to ``results.json``."""
    from sirf_diffusion.data.splits import subject_seeds
    from sirf_diffusion.io.atomic import write_json

    args = build_parser().parse_args(argv)
    s = resolve(args)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    methods = [m for m in METHODS if m in args.methods]
    model_params = None
    model_dir = args.model
    if any(m in DIFFUSION for m in methods):
        net = _denoiser(args.model)  # fail early when there is no prior
        model_params = int(net.num_parameters)
        if model_dir is None:
            from sirf_diffusion.models import default_prior_dir

            model_dir = str(default_prior_dir() / "xy")
    seeds = subject_seeds("test", s["subjects"])
    jobs = [Job(subject=sub, counts=c, realisation=r, **scan_seeds(args.seed, sub, c, r),
                num_views=args.num_views, subsets=args.subsets, osem_epochs=s["osem_epochs"],
                map_init_epochs=args.map_init_epochs, map_iterations=s["map_iterations"],
                rdp_beta=[float(b) for b in s["rdp_beta"]],
                dps_zeta=[float(z) for z in s["dps_zeta"]],
                dds_beta=[float(b) for b in s["dds_beta"]], dds_subsets=args.dds_subsets,
                dds_epochs=args.dds_epochs, lisch_k=[int(k) for k in s["lisch_k"]],
                lisch_max_steps=args.lisch_max_steps, steps=s["steps"], methods=methods,
                model=args.model, threads=args.threads, samples=args.samples,
                dps_samples=args.dps_samples, lesions=args.lesions)
            for c in s["counts"] for sub in seeds for r in range(s["realisations"])]
    print(f"[evaluate] {len(jobs)} scans (subjects {seeds}, counts {s['counts']}, "
          f"{s['realisations']} realisations), methods {methods}")
    outputs = run_jobs(jobs, args.workers, progress, unit="scan")

    # the reconstructions first (an hour of work on a 2-core CPU), in a file that loads
    # without executing code: images as arrays, the rest as JSON
    raw = {f"{i}/{m}/{v}": r["image"] for i, o in enumerate(outputs)
           for m, runs in o["runs"].items() for v, r in runs.items()}
    raw.update({f"{i}/{m}/{v}/std": r["std"] for i, o in enumerate(outputs)
                for m, runs in o["runs"].items() for v, r in runs.items() if "std" in r})
    np.savez_compressed(out / "reconstructions.npz", **raw)
    per_case = analyse(jobs, outputs)
    summary = summarise(per_case, s["counts"], methods)
    wall = time.perf_counter() - t_start
    command = ("python benchmarks/evaluate_methods.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))).strip()
    from sirf_diffusion.data.simulate import SimulationConfig, sinogram_geometry_for

    views = sinogram_geometry_for(SimulationConfig(num_views=args.num_views), 1).num_views
    settings = {**s, "subject_seeds": seeds, "model": model_dir, "model_parameters": model_params,
                "subsets": args.subsets, "map_init_epochs": args.map_init_epochs,
                "dds_subsets": args.dds_subsets, "dds_epochs": args.dds_epochs,
                "lisch_max_steps": args.lisch_max_steps, "num_views_used": views,
                "seed": args.seed, "workers": args.workers, "threads": args.threads,
                "quick": args.quick, "methods": methods, "samples": args.samples,
                "dps_samples": args.dps_samples, "lesions": args.lesions}
    write_markdown(out / "evaluation.md", command, settings, summary, per_case, methods, wall,
                   args.workers, args.threads)
    plot_bias_variance(out / "bias_variance.png", per_case, summary, s["counts"], methods)
    plot_nrmse(out / "nrmse_vs_parameter.png", per_case, s["counts"], methods)
    plot_examples(out / "examples.png", jobs, outputs, per_case, s["counts"], methods)
    lesions_eval.plot_lesions(out / "lesions.png", jobs, outputs, per_case, s["counts"], methods,
                              LABELS, DIFFUSION)
    results = _jsonable({
        "command": command, "machine": machine_line(args.workers, args.threads),
        "settings": settings, "summary": summary, "cases": per_case,
        "jobs": [asdict(j) for j in jobs], "wall_time_s": wall})
    write_json(out / "results.json", results)
    print((out / "evaluation.md").read_text().split("## ", 1)[-1][:3000])
    print(f"[evaluate] wrote {out} in {wall / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
