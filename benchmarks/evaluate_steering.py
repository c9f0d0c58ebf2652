"""Domain shift: does steerable conditional diffusion help the FDG prior on other scans?

The shipped prior was trained on lesion-free FDG brains (grey matter hotter than white).  Two
shifted domains, on held-out test subjects (``subject_seeds('test', n)``; ``--split val`` for
validation subjects, to choose settings), 2D mMR scans at
``--counts`` true counts per mm^3:

* ``amyloid``: amyloid-negative scans (``simulate --phantom brain-amyloid``: white matter
  hotter than grey, the opposite contrast of the training images), 2 lesions;
* ``fdg-lesions``: FDG scans with a different lesion load (``--lesion-load`` lesions,
  alternately hot and cold, default 8, against the training set's none): the anatomy and
  contrast the prior knows, plus structures it never saw.

Methods, each at its best parameter (lowest NRMSE averaged over the realisations, per subject:
an oracle choice that favours every method equally): OSEM (epochs), MAP-EM-RDP (beta),
PET-LiSch (``K``) and PET-LiSch-SCD (``K``; steering options from ``METHOD_DEFAULTS`` unless
given).  Everything but the steering is :mod:`evaluate_methods`'s :func:`run_job` (the same
scans, seeds and metrics); PET-LiSch and PET-LiSch-SCD share their sampler noise.

The paper's caveat (Webber et al. 2025: steering does not remove noise spikes) is checked with
the *hot-spot count*: voxels in the brain whose value exceeds the reference's brain maximum by
more than 25 % (no true activity reaches there; MLEM-like noise spikes do), and the 99.9th
percentile of the absolute error in the brain relative to the reference's mean.

Outputs in ``--out`` (default ``docs/steering``): ``steering.md`` (tables), ``results.json``,
``steering.png`` (reference, every method at its best parameter and the LiSch-SCD minus LiSch
difference, first subject, realisation 0, per domain).  Example (the run in docs/steering.md)::

    python benchmarks/evaluate_steering.py --subjects 2 --realisations 2 --workers 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_methods as em  # noqa: E402  (a sibling script, not a package)

DOMAINS = {"amyloid": {"tracer": "amyloid", "lesions": 2},
           "fdg-lesions": {"tracer": "fdg", "lesions": None}}   # None: --lesion-load
METHODS = ("osem", "mapem-rdp", "lisch", "lisch-scd")
LABELS = {**em.LABELS, "lisch-scd": "PET-LiSch-SCD"}
PARAMETERS = {**em.PARAMETERS, "lisch-scd": "K"}
FULL = {"subjects": 2, "realisations": 2, "osem_epochs": 12, "rdp_beta": [0.5, 1.0, 2.0, 4.0],
        "map_iterations": 15, "lisch_k": [10, 20, 30], "scd_k": [10, 20, 30]}
QUICK = {"subjects": 1, "realisations": 2, "osem_epochs": 3, "rdp_beta": [1.0],
         "map_iterations": 2, "lisch_k": [5], "scd_k": [5]}
STEER_FLAGS = {"steer_rank": int, "steer_steps": int, "steer_adam_steps": int, "steer_lr": float,
               "steer_layers": str, "steer_weight_decay": float, "steer_discrepancy": float}


def build_parser() -> argparse.ArgumentParser:
    def d(key: str) -> str:
        return f"(default {FULL[key]}; --quick: {QUICK[key]})"

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", nargs="+", choices=tuple(DOMAINS), default=list(DOMAINS),
                   help="shifted domains to evaluate")
    p.add_argument("--subjects", type=int, default=None, help=f"test subjects {d('subjects')}")
    p.add_argument("--realisations", type=int, default=None,
                   help=f"noise realisations per subject, >= 2 {d('realisations')}")
    p.add_argument("--counts", type=float, default=2.5, help="true counts per mm^3")
    p.add_argument("--lesion-load", type=int, default=8,
                   help="lesions of the fdg-lesions domain (the other has 2)")
    p.add_argument("--steps", type=int, default=None,
                   help="generative steps (default: PET-LiSch's METHOD_DEFAULTS; --quick: 4)")
    p.add_argument("--samples", type=int, default=1, help="chains per diffusion reconstruction")
    p.add_argument("--num-views", type=int, default=None,
                   help="sinogram views (a divisor of 252 that 12 divides; default: all)")
    p.add_argument("--osem-epochs", type=int, default=None, help=f"OSEM sweep {d('osem_epochs')}")
    p.add_argument("--rdp-beta", type=float, nargs="+", default=None,
                   help=f"MAP-EM-RDP penalisation factors {d('rdp_beta')}")
    p.add_argument("--map-iterations", type=int, default=None,
                   help=f"MAP-EM epochs {d('map_iterations')}")
    p.add_argument("--lisch-k", type=int, nargs="+", default=None,
                   help=f"PET-LiSch K sweep {d('lisch_k')}")
    p.add_argument("--scd-k", type=int, nargs="+", default=None,
                   help=f"PET-LiSch-SCD K sweep {d('scd_k')}")
    for flag, kind in STEER_FLAGS.items():
        extra: dict[str, Any] = {"type": kind}
        if flag == "steer_steps":   # one value: an interval; several: the step indices
            extra["nargs"] = "+"
        if flag == "steer_layers":
            extra = {"choices": ("all", "deepest")}
        p.add_argument("--" + flag.replace("_", "-"), default=None, **extra,
                       help=f"PET-LiSch-SCD {flag} (default: METHOD_DEFAULTS)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="subjects of this split (data/splits.py): 'val' to choose settings, "
                        "'test' for the held-out evaluation")
    p.add_argument("--model", default=None, help="prior folder (default: the shipped prior)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the noise and the samplers")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--quick", action="store_true", help="smoke-test settings")
    p.add_argument("--out", default="docs/steering", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def steering_options(args: argparse.Namespace) -> dict[str, Any]:
    """``steer=True`` and every steering option (the flags over ``METHOD_DEFAULTS``)."""
    from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS

    d = METHOD_DEFAULTS["lisch"]
    opts: dict[str, Any] = {"steer": True}
    for flag in STEER_FLAGS:
        v = getattr(args, flag)
        if flag == "steer_steps" and v is not None and len(v) == 1:
            v = v[0]
        opts[flag] = d[flag] if v is None else v
    return opts


def hot_spots(image: np.ndarray, reference: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """Noise-spike measures (module docstring): hot-spot count and the 99.9th percentile of the
    absolute error over the brain, relative to the reference's brain mean."""
    top = float(reference[brain].max())
    err = np.abs(image - reference)[brain]
    return {"hot_spots": float(np.sum(image[brain] > 1.25 * top)),
            "err_p999": float(np.percentile(err, 99.9) / reference[brain].mean())}


def evaluate_domain(domain: str, args: argparse.Namespace, s: dict[str, Any],
                    steer: dict[str, Any]) -> tuple[list[em.Job], list[dict[str, Any]], dict]:
    """Run one domain: :func:`evaluate_methods.run_job` without and with steering, merged."""
    from sirf_diffusion.data.splits import subject_seeds

    spec = DOMAINS[domain]
    lesions = args.lesion_load if spec["lesions"] is None else spec["lesions"]
    jobs = [em.Job(subject=sub, counts=args.counts, realisation=r,
                   **em.scan_seeds(args.seed, sub, args.counts, r), num_views=args.num_views,
                   subsets=12,
                   osem_epochs=s["osem_epochs"], map_init_epochs=2,
                   map_iterations=s["map_iterations"], rdp_beta=list(s["rdp_beta"]), dps_zeta=[],
                   dds_beta=[], dds_subsets=4, dds_epochs=1, lisch_k=list(s["lisch_k"]),
                   lisch_max_steps=None, steps=s["steps"], methods=["osem", "mapem-rdp", "lisch"],
                   model=args.model, threads=args.threads, samples=args.samples,
                   lesions=lesions, tracer=spec["tracer"])
            for sub in subject_seeds(args.split, s["subjects"])
            for r in range(s["realisations"])]
    scd = [replace(j, methods=["lisch"], lisch_k=list(s["scd_k"]), lisch_options=steer)
           for j in jobs]
    progress = not args.no_progress
    outputs = em.run_jobs(jobs + scd, args.workers, progress, unit=f"{domain} run")
    base, steered = outputs[:len(jobs)], outputs[len(jobs):]
    for o, o_scd in zip(base, steered):
        assert np.array_equal(o["reference"], o_scd["reference"])
        o["runs"]["lisch-scd"] = o_scd["runs"]["lisch"]
    per_case = em.analyse(jobs, base)
    summary = em.summarise(per_case, [args.counts], METHODS)[f"{args.counts:g}"]
    for m, row in summary.items():   # noise spikes at each case's best parameter
        spikes: dict[str, list[float]] = {"hot_spots": [], "err_p999": []}
        for case, best in zip(per_case.values(), row["best"]):
            for j, o in zip(jobs, base):
                if j.subject == case["subject"]:
                    brain = np.asarray(o["masks"]["brain"]) > 0.5
                    h = hot_spots(o["runs"][m][best]["image"], o["reference"], brain)
                    for k in spikes:
                        spikes[k].append(h[k])
        row.update({k: [float(np.mean(v)), float(np.std(v, ddof=1))] for k, v in spikes.items()})
    return jobs, base, {"per_case": per_case, "summary": summary, "lesions": lesions}


def plot_domains(path: Path, results: dict[str, Any], examples: dict[str, Any]) -> Path:
    """Per domain: reference, each method at its best parameter, LiSch-SCD minus LiSch."""
    plt = em._pyplot()
    rows = list(results)
    ncol = 2 + len(METHODS)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.3 * ncol, 3.0 * len(rows)),
                             squeeze=False)
    for r, domain in enumerate(rows):
        o, case = examples[domain]
        ref = o["reference"][0]
        vmax = float(np.percentile(ref, 99.9)) or 1.0
        panels = [(ref, f"{domain}: reference", "gray", 0.0, vmax)]
        best = {m: case["methods"][m]["best"] for m in METHODS}
        for m in METHODS:
            nr = case["methods"][m]["sweep"][best[m]]["metrics"]["nrmse"][0]
            panels.append((o["runs"][m][best[m]]["image"][0],
                           f"{LABELS[m]} ({PARAMETERS[m]} {best[m]:g})\nNRMSE {nr:.3f}", "gray",
                           0.0, vmax))
        diff = (o["runs"]["lisch-scd"][best["lisch-scd"]]["image"][0]
                - o["runs"]["lisch"][best["lisch"]]["image"][0])
        panels.append((diff, "LiSch-SCD - LiSch", "RdBu_r", -0.3 * vmax, 0.3 * vmax))
        for ax, (im, title, cmap, lo, hi) in zip(axes[r], panels):
            ax.imshow(im, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("FDG prior on shifted domains: first subject, noise realisation 0",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_markdown(path: Path, command: str, settings: dict[str, Any],
                   results: dict[str, Any], wall: float) -> Path:
    from sirf_diffusion.metrics import metrics_table

    lines = ["# Steering on shifted domains (generated by benchmarks/evaluate_steering.py)", "",
             f"Command: `{command}`", "",
             f"Machine: {em.machine_line(settings['workers'], settings['threads'])}; total wall "
             f"time {wall / 60:.1f} min.", "",
             f"{'Test' if settings['split'] == 'test' else 'Validation'} subjects "
             f"{settings['subject_seeds']}, {settings['realisations']} noise "
             f"realisations, {settings['counts']:g} counts/mm^3, {settings['steps']} steps, "
             f"{settings['samples']} chain(s); steering {settings['steer']}.", ""]
    for domain, res in results.items():
        lines += [f"## {domain} ({res['lesions']} lesions)", ""]
        table = {}
        for m in METHODS:
            r = res["summary"][m]
            table[LABELS[m]] = {
                "best parameter": f"{PARAMETERS[m]} " + "/".join(f"{b:g}" for b in r["best"]),
                "NRMSE": em._pm(r["nrmse"], digits=4), "PSNR (dB)": em._pm(r["psnr"]),
                "SSIM": em._pm(r["ssim"]),
                "CRC hot": em._pm(r["crc_hot"]) if "crc_hot" in r else "",
                "CRC cold": em._pm(r["crc_cold"]) if "crc_cold" in r else "",
                "GM bias (%)": f"{100 * r['gm_bias']:.2f}",
                "hot spots": em._pm(r["hot_spots"]), "err p99.9": em._pm(r["err_p999"]),
                "time (s)": f"{r['time_s']:.1f}", "network evals": f"{r['net_evals']:.0f}"}
        lines += [metrics_table(table), ""]
        rows = {}
        for m in ("lisch", "lisch-scd"):
            cur = em.sweep_curves(res["per_case"], settings["counts"], m)
            for k, v in enumerate(cur["value"]):
                rows[f"{LABELS[m]}, K {v:g}"] = {
                    "NRMSE": f"{cur['nrmse_mean'][k]:.4f} ± {cur['nrmse_std'][k]:.2g}",
                    "GM bias (%)": f"{100 * cur['gm_bias'][k]:.2f}",
                    "voxel NRMS std (%)": f"{100 * cur['voxel_std'][k]:.2f}"}
        lines += ["K sweeps (averaged over subjects):", "",
                  metrics_table(rows, first_column="method, parameter"), ""]
    lines += ["![examples](steering.png)", ""]
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from sirf_diffusion.data.splits import subject_seeds
    from sirf_diffusion.io.atomic import write_json
    from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS

    args = build_parser().parse_args(argv)
    base = QUICK if args.quick else FULL
    s = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    s["steps"] = args.steps or (4 if args.quick else METHOD_DEFAULTS["lisch"]["num_steps"])
    if s["realisations"] < 2 or s["subjects"] < 1:
        raise SystemExit("--realisations must be >= 2 and --subjects >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steer = steering_options(args)
    t0 = time.perf_counter()
    results, examples, all_jobs = {}, {}, []
    for domain in args.domains:
        jobs, outputs, res = evaluate_domain(domain, args, s, steer)
        results[domain] = res
        first = next(k for k, j in enumerate(jobs) if j.realisation == 0)
        examples[domain] = (outputs[first],
                            res["per_case"][f"{args.counts:g}/{jobs[first].subject}"])
        all_jobs += [asdict(j) | {"domain": domain} for j in jobs]
    wall = time.perf_counter() - t0
    command = ("python benchmarks/evaluate_steering.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))).strip()
    settings = {**s, "counts": args.counts, "samples": args.samples, "steer": steer,
                "split": args.split, "subject_seeds": subject_seeds(args.split, s["subjects"]),
                "workers": args.workers,
                "threads": args.threads, "domains": args.domains, "model": args.model}
    write_markdown(out / "steering.md", command, settings, results, wall)
    plot_domains(out / "steering.png", results, examples)
    payload = em._jsonable({"command": command, "settings": settings, "wall_time_s": wall,
                            "results": results, "jobs": all_jobs})
    write_json(out / "results.json", payload)
    print((out / "steering.md").read_text())
    return payload


if __name__ == "__main__":
    main()
