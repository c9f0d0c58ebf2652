"""Evaluate the supervised methods (PET-DEFT, FBSEM-net) against the classical and diffusion ones.

Issue 13's evaluation: for every held-out test subject (``subject_seeds('test', n)``: never seen
by any network), dose (true counts per mm^3 of emission volume; a sweep of four or more levels)
and noise realisation, one 2D FDG brain scan (:func:`~sirf_diffusion.data.simulate.simulate_scan`,
full physics) is reconstructed by

* **OSEM** at its best epoch and **MAP-EM-RDP** at its best ``beta`` (oracle choices per subject
  and dose, as in :mod:`evaluate_methods`, whose scan runner this reuses);
* **PET-LiSch** and **PET-DDS** at their CLI defaults (:data:`METHOD_DEFAULTS`: steps, ``K``,
  chains);
* **PET-DEFT** at 5, 10 and 20 steps (``--deft-steps``) with its default number of chains, when
  the package has the method (``samplers.run.METHODS``; otherwise it is skipped and the report
  says so);
* **FBSEM-net** (the shipped model or ``--fbsem-model``);

and scored with NRMSE, SSIM and lesion CRC in the brain (:func:`evaluate_methods.scan_metrics`),
the posterior standard deviation of the methods with two or more chains (mean over the brain,
relative to the reference's mean), wall time and the numbers of network and likelihood
evaluations (full-data forward projections).  Tables: mean ± std over subjects and
realisations per dose; figures: NRMSE against dose, and one example per dose.

Outputs in ``--out`` (default ``docs/evaluation/supervised``): ``supervised.md``,
``results.json``, ``nrmse_vs_dose.png``, ``examples.png``.  Examples::

    python benchmarks/evaluate_supervised.py                      # 3 subjects x 5 x 5 doses
    python benchmarks/evaluate_supervised.py --quick --out /tmp/sup
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_methods as ev  # noqa: E402  (a sibling script, not a package)

#: Methods in the order of the tables; ``deft-N`` is PET-DEFT with N steps.
BASELINES = ("osem", "mapem-rdp", "lisch", "dds")
#: Labels of the tables and figures (PET-DEFT's, ``deft-N``, added for the steps asked for).
LABELS = {**ev.LABELS, "fbsem": "FBSEM-net"}
FULL = {"subjects": 3, "realisations": 5, "counts": [0.5, 1.0, 2.5, 5.0, 10.0]}
QUICK = {"subjects": 1, "realisations": 2, "counts": [1.0, 2.5]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=None,
                   help=f"test subjects (default {FULL['subjects']}; --quick {QUICK['subjects']})")
    p.add_argument("--realisations", type=int, default=None,
                   help=f"noise realisations (default {FULL['realisations']}; --quick "
                        f"{QUICK['realisations']})")
    p.add_argument("--counts", type=float, nargs="+", default=None,
                   help=f"doses, counts/mm^3 (default {FULL['counts']}; --quick "
                        f"{QUICK['counts']})")
    p.add_argument("--deft-steps", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--methods", nargs="+", default=[*BASELINES, "deft", "fbsem"],
                   choices=[*BASELINES, "deft", "fbsem"])
    p.add_argument("--fbsem-model", default=None, help="FBSEM-net folder (default: shipped)")
    p.add_argument("--deft-model", default=None, help="PET-DEFT h-network (default: shipped)")
    p.add_argument("--model", default=None, help="prior folder (default: shipped)")
    p.add_argument("--osem-epochs", type=int, default=12)
    p.add_argument("--rdp-beta", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--map-iterations", type=int, default=15,
                   help="MAP-EM-RDP epochs (from 2 OSEM epochs)")
    p.add_argument("--subsets", type=int, default=12, help="OSEM/MAP-EM subsets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a small run (1 subject, 2 x 2 scans)")
    p.add_argument("--out", default="docs/evaluation/supervised")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="store each scan's baseline results (OSEM, MAP-EM-RDP, PET-LiSch, "
                        "PET-DDS) here and reuse them in later runs with the same settings")
    p.add_argument("--no-progress", action="store_true")
    return p


# ----------------------------------------------------------------------------- one scan
def _jobs(args: argparse.Namespace, s: dict[str, Any], subject: int, counts: float,
          realisation: int) -> list[ev.Job]:
    """:class:`evaluate_methods.Job` s of one scan: OSEM + MAP-EM-RDP + PET-LiSch at LiSch's
    default steps, PET-DDS at its own (the runner has one step count per job)."""
    from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS as D

    base = ev.Job(subject=subject, counts=counts, realisation=realisation,
                  **ev.scan_seeds(args.seed, subject, counts, realisation), num_views=None,
                  subsets=args.subsets, osem_epochs=args.osem_epochs, map_init_epochs=2,
                  map_iterations=args.map_iterations, rdp_beta=list(args.rdp_beta), dps_zeta=[],
                  dds_beta=[D["dds"]["beta"]], dds_subsets=D["dds"]["num_subsets"], dds_epochs=1,
                  lisch_k=[D["lisch"]["num_mlem_iterations"]],
                  lisch_max_steps=D["lisch"]["max_likelihood_steps"],
                  steps=D["lisch"]["num_steps"], methods=[], model=args.model,
                  threads=args.threads, samples=D["lisch"]["num_samples"])
    jobs = [replace(base, methods=[m for m in ("osem", "mapem-rdp", "lisch")
                                   if m in args.methods])]
    if "dds" in args.methods:
        jobs.append(replace(base, methods=["dds"], steps=D["dds"]["num_steps"],
                            samples=D["dds"]["num_samples"]))
    return jobs


def _supervised_runs(job: ev.Job, args: dict[str, Any]) -> dict[str, dict[Any, Any]]:
    """FBSEM-net and PET-DEFT on the scan of ``job`` (simulated again: same seeds, same data)."""
    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.samplers.run import METHODS

    scan = simulate_scan(SimulationConfig(seed=job.subject, counts_per_mm3=job.counts,
                                          noise_seed=job.noise_seed, lesions=job.lesions),
                         progress=False)
    lik = PoissonLogLikelihood(scan.acquisition_model(), scan.prompts)
    img = lambda x: x.detach().reshape(scan.image_geometry.shape).cpu().numpy().astype(np.float32)  # noqa: E731
    runs: dict[str, dict[Any, Any]] = {}
    if "fbsem" in args["methods"]:
        from sirf_diffusion.recon.fbsem import fbsem_reconstruct, load_fbsem

        net, meta = load_fbsem(args["fbsem_model"])
        res = fbsem_reconstruct(lik, net, meta=meta, warn=False)
        runs["fbsem"] = {net.config.num_iterations: {
                             "image": img(res.image), "time_s": res.wall_time_s,
                             "net_evals": res.num_network_evaluations,
                             "lik_evals": res.num_likelihood_evaluations,
                             "warnings": res.warnings}}
    if "deft" in args["methods"] and "deft" in METHODS:
        from sirf_diffusion.samplers.methods import reconstruct

        options = {} if args["deft_model"] is None else {"deft_model": args["deft_model"]}
        for steps in args["deft_steps"]:
            r = reconstruct("deft", lik, ev._denoiser(job.model), num_steps=steps,
                            generator=torch.Generator().manual_seed(job.sampler_seed),
                            progress=False, **options)
            runs[f"deft-{steps}"] = {steps: {
                "image": img(r.mean), "time_s": r.wall_time_s,
                "net_evals": r.num_network_evaluations,
                "lik_evals": r.num_likelihood_evaluations + r.num_init_evaluations}}
            if r.sample.shape[0] > 1:
                runs[f"deft-{steps}"][steps]["std"] = img(r.std)
    return runs


# ----------------------------------------------------------------------------- baseline cache
def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """JSON-able skeleton of ``obj`` with its arrays moved into ``arrays`` (no pickle)."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _decode(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, dict) and "__array__" in obj:
        return arrays[obj["__array__"]]
    if isinstance(obj, dict):
        return {(tuple(k) if isinstance(k, list) else k): _decode(v, arrays)
                for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def prior_weights_sha256(model: str | None) -> str | None:
    """The weights' sha256 recorded in the xy model folder of ``model`` (``None``: the shipped
    prior), or ``None`` where there is no such folder."""
    import json

    from sirf_diffusion.models import default_prior_dir

    d = Path(model) if model is not None else default_prior_dir()
    for folder in (d / "xy", d):
        cfg = folder / "config.json"
        if cfg.is_file():
            return json.loads(cfg.read_text()).get("weights", {}).get("sha256")
    return None


def cached_run_job(job: ev.Job, cache: str | None) -> dict[str, Any]:
    """:func:`evaluate_methods.run_job`, stored in ``cache`` (``<sha256 of the job>.json`` +
    ``.npz``, loaded without pickle) and reused by a later run with the same job, so that the
    supervised methods can be re-evaluated with new models without rerunning the baselines.
    The key is the job and the sha256 of the prior's weights it runs with (so that a new
    shipped prior at the same path is not served stale results): clear the folder when the
    baseline methods' code changes."""
    import hashlib
    import json

    from sirf_diffusion.io.atomic import atomic_write_bytes, atomic_write_text

    if cache is None:
        return ev.run_job(job)
    keyed = {**asdict(job), "prior_weights": prior_weights_sha256(job.model)}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]
    meta, data = Path(cache) / f"{key}.json", Path(cache) / f"{key}.npz"
    if meta.is_file() and data.is_file():
        with np.load(data, allow_pickle=False) as arrays:
            return _decode(json.loads(meta.read_text()), {k: arrays[k] for k in arrays.files})
    out = ev.run_job(job)
    arrays: dict[str, np.ndarray] = {}
    skeleton = _encode(out, arrays)
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    Path(cache).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(data, buf.getvalue())
    atomic_write_text(meta, json.dumps(skeleton))
    return out


def run_scan(jobs: list[ev.Job], args: dict[str, Any]) -> dict[str, Any]:
    """Every method on one scan: the baselines' runner, then the supervised methods."""
    torch.set_num_threads(jobs[0].threads)
    out = None
    for job in jobs:
        o = cached_run_job(job, args.get("cache"))
        if out is None:
            out = o
        else:
            out["runs"].update(o["runs"])
    out["runs"].update(_supervised_runs(jobs[0], args))
    return out


def posterior_std(outputs: Sequence[dict[str, Any]], method: str) -> float | None:
    """Mean over the scans of the brain-mean posterior std relative to the reference's mean."""
    vals = []
    for o in outputs:
        for r in o["runs"].get(method, {}).values():
            if "std" in r:
                brain = np.asarray(o["masks"]["brain"]) > 0.5
                vals.append(float(r["std"][brain].mean() / o["reference"][brain].mean()))
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------- report
def plot_nrmse_vs_dose(path: Path, summary: dict[str, Any], methods: Sequence[str]) -> Path:
    from sirf_diffusion.plotting import save_curves

    doses = [float(c) for c in summary]
    curves = {LABELS.get(m, m): (doses, [summary[c][m]["nrmse"][0] for c in summary])
              for m in methods if all(m in summary[c] for c in summary)}
    return save_curves(curves, path, xlabel="dose (counts/mm^3)", ylabel="NRMSE in brain",
                       title="held-out test subjects (mean over subjects and realisations)",
                       logx=True)


def write_markdown(path: Path, command: str, settings: dict[str, Any], summary: dict[str, Any],
                   methods: Sequence[str], extra: dict[str, Any], wall: float) -> Path:
    from sirf_diffusion.io.atomic import atomic_write_text

    lines = ["# Supervised methods on held-out subjects (issue 13)", "",
             f"Command: `{command}`  ",
             f"Machine: {ev.machine_line(settings['workers'], settings['threads'])}  ",
             f"Wall time: {wall / 60:.1f} min  ",
             f"Subjects {settings['subject_seeds']}, {settings['realisations']} realisations, "
             f"doses {settings['counts']} counts/mm^3.  OSEM: best epoch of "
             f"{settings['osem_epochs']}; MAP-EM-RDP ({settings['map_iterations']} epochs): best "
             f"beta of {settings['rdp_beta']}; "
             "PET-LiSch, PET-DDS, PET-DEFT: CLI defaults (steps as named).", ""]
    for note in extra["notes"]:
        lines.append(f"*{note}*  ")
    for c, rows in summary.items():
        lines += ["", f"## {c} counts/mm^3", "",
                  "| method | NRMSE | SSIM | CRC hot | CRC cold | post. std | time s | "
                  "network evals | likelihood evals |", "|---|---|---|---|---|---|---|---|---|"]
        for m in methods:
            if m not in rows:
                continue
            r = rows[m]

            def f(k: str, r: dict[str, Any] = r) -> str:
                return ev._pm(r[k]) if k in r else "-"

            ps = extra["posterior_std"].get(c, {}).get(m)
            lines.append(f"| {LABELS.get(m, m)} | {f('nrmse')} | {f('ssim')} | {f('crc_hot')} | "
                         f"{f('crc_cold')} | {'-' if ps is None else f'{ps:.3f}'} | "
                         f"{r['time_s']:.2f} | {r['net_evals']:.0f} | {r['lik_evals']:.1f} |")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the evaluation (module docstring); returns what is written to ``results.json``."""
    from sirf_diffusion.data.splits import subject_seeds
    from sirf_diffusion.io.atomic import write_json
    from sirf_diffusion.samplers.run import METHODS

    args = build_parser().parse_args(argv)
    base = QUICK if args.quick else FULL
    s = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if s["realisations"] < 2 or s["subjects"] < 1 or len(s["counts"]) < 1:
        raise SystemExit("--realisations must be >= 2 and --subjects, --counts non-empty")
    torch.set_num_threads(args.threads)
    # the sibling script's figures name methods and their parameter through its two tables
    LABELS.update({f"deft-{n}": f"PET-DEFT ({n} steps)" for n in args.deft_steps})
    ev.LABELS.update(LABELS)
    ev.PARAMETERS.update({"fbsem": "iterations", **{f"deft-{n}": "steps"
                                                    for n in args.deft_steps}})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    if "deft" in args.methods and "deft" not in METHODS:
        notes.append("PET-DEFT skipped: this checkout has no 'deft' method "
                     "(sirf_diffusion.samplers.run.METHODS)")
    methods = [m for m in args.methods if m in BASELINES] + (
        [f"deft-{n}" for n in args.deft_steps]
        if "deft" in args.methods and "deft" in METHODS else []) + (
        ["fbsem"] if "fbsem" in args.methods else [])
    sup_args = {"methods": args.methods, "fbsem_model": args.fbsem_model,
                "deft_model": args.deft_model, "deft_steps": args.deft_steps,
                "cache": args.cache}
    seeds = subject_seeds("test", s["subjects"])
    # realisation-major: any prefix of the run (and of --cache) covers every dose and subject
    scans = [_jobs(args, s, sub, c, r) for r in range(s["realisations"]) for c in s["counts"]
             for sub in seeds]
    print(f"[supervised] {len(scans)} scans, methods {methods}")
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            outputs = list(pool.map(run_scan, scans, [sup_args] * len(scans)))
    else:
        outputs = []
        for i, jobs in enumerate(scans):
            outputs.append(run_scan(jobs, sup_args))
            if not args.no_progress:
                print(f"[supervised] scan {i + 1}/{len(scans)} done "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    jobs = [j[0] for j in scans]
    per_case = ev.analyse(jobs, outputs)
    summary = ev.summarise(per_case, s["counts"], methods)
    post = {f"{c:g}": {m: posterior_std([o for o, j in zip(outputs, jobs) if j.counts == c], m)
                       for m in methods} for c in s["counts"]}
    warnings = sorted({w for o in outputs for r in o["runs"].get("fbsem", {}).values()
                       for w in r.get("warnings", [])})
    notes += [f"FBSEM-net: {w}" for w in warnings]
    wall = time.perf_counter() - t0
    command = "python benchmarks/evaluate_supervised.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    settings = {**s, "subject_seeds": seeds, "osem_epochs": args.osem_epochs,
                "map_iterations": args.map_iterations,
                "rdp_beta": args.rdp_beta, "methods": methods, "workers": args.workers,
                "threads": args.threads, "deft_steps": args.deft_steps,
                "fbsem_model": args.fbsem_model, "deft_model": args.deft_model}
    extra = {"notes": notes, "posterior_std": post}
    write_markdown(out / "supervised.md", command.strip(), settings, summary, methods, extra,
                   wall)
    plot_nrmse_vs_dose(out / "nrmse_vs_dose.png", summary, methods)
    ev.plot_examples(out / "examples.png", jobs, outputs, per_case, s["counts"], methods)
    ev.lesions_eval.plot_lesions(out / "lesions.png", jobs, outputs, per_case, s["counts"],
                                 methods, LABELS, [m for m in methods if m not in
                                                   ("osem", "mapem-rdp", "fbsem")])
    results = ev._jsonable({"command": command, "settings": settings, "summary": summary,
                            "posterior_std": post, "notes": notes, "cases": per_case,
                            "jobs": [asdict(j) for j in jobs], "wall_time_s": wall})
    write_json(out / "results.json", results)
    print((out / "supervised.md").read_text())
    return results


if __name__ == "__main__":
    main()
