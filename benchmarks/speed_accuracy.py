"""Speed against accuracy of PET-DDS and PET-LiSch: NRMSE and wall time over the number of steps.

The diffusion methods' wall time is set mostly by the number of generative steps ``N`` (one
network pass of the batch of chains per step), and each method's main parameter (PET-DDS's
anchor weight, PET-LiSch's MLEM iteration count ``K``) sets its NRMSE.  Comparing the two at
one ``N`` does not say which one is faster *at a given accuracy*; this script sweeps both.

For every test-split subject, count level and noise realisation (the same scans and sampler
seeds as :mod:`evaluate_methods`, so ``N = 50`` repeats its diffusion runs) and every ``N`` of
``--steps``, PET-DDS runs each ``--dds-beta`` and PET-LiSch each ``--lisch-k`` (posterior mean of
``--samples`` chains).  Per method and ``N`` the parameter with the lowest NRMSE averaged over
the realisations is chosen per subject (the oracle choice of :mod:`evaluate_methods`).

Outputs in ``--out`` (default ``docs/evaluation/speed_accuracy``):

* ``speed_accuracy.md``: per count level a table of the best NRMSE and the wall time of each
  method at each ``N``, and the **comparison the evaluation asks for**: for every PET-DDS point
  (``N``, best parameter) the fastest PET-LiSch point with equal or lower NRMSE, and the reverse;
* ``speed_accuracy.png``: NRMSE against wall time, every (``N``, parameter) point;
* ``results.json``.

Examples::

    python benchmarks/speed_accuracy.py --subjects 2 --realisations 3 --samples 8 --workers 2
    python benchmarks/speed_accuracy.py --quick --out /tmp/speed
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_methods as ev  # noqa: E402  (a sibling script, not a package)

METHODS = ("dds", "lisch")

FULL = {"subjects": 2, "realisations": 3, "steps": [20, 30, 50], "dds_beta": [0.0, 0.1, 0.3],
        "lisch_k": [15, 20, 30]}
QUICK = {"subjects": 1, "realisations": 2, "steps": [4, 8], "dds_beta": [0.0, 0.2],
         "lisch_k": [5, 10]}


def build_parser() -> argparse.ArgumentParser:
    def d(key: str) -> str:
        return f"(default {FULL[key]}; --quick: {QUICK[key]})"

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=None, help=f"test subjects {d('subjects')}")
    p.add_argument("--realisations", type=int, default=None,
                   help=f"noise realisations per subject, >= 2 {d('realisations')}")
    p.add_argument("--counts", type=float, nargs="+", default=[2.5],
                   help="count levels in true counts per mm^3")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help=f"numbers of generative steps {d('steps')}")
    p.add_argument("--dds-beta", type=float, nargs="+", default=None,
                   help=f"PET-DDS relative anchor weights (as evaluate_methods) {d('dds_beta')}")
    p.add_argument("--dds-subsets", type=int, default=4, help="PET-DDS subsets per step")
    p.add_argument("--lisch-k", type=int, nargs="+", default=None,
                   help=f"PET-LiSch MLEM iterations K {d('lisch_k')}")
    p.add_argument("--lisch-max-steps", type=int, default=None,
                   help="PET-LiSch cap on ascent steps per generative step (default 20)")
    p.add_argument("--model", default=None, help="score model folder; default: shipped prior")
    p.add_argument("--num-views", type=int, default=None, help="sinogram views (default: all)")
    p.add_argument("--samples", type=int, default=8, help="chains per reconstruction (mean)")
    p.add_argument("--seed", type=int, default=0, help="base seed (as evaluate_methods)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--quick", action="store_true", help="smoke-test settings")
    p.add_argument("--out", default="docs/evaluation/speed_accuracy", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--from-results", default=None, metavar="JSON",
                   help="redo the analysis, tables and figure from a results.json of an earlier "
                        "run instead of reconstructing (its settings are used)")
    return p


def load_cases(path: Path) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """``cases`` (per N) and ``settings`` of a ``results.json``, with numeric sweep keys again."""
    import json

    data = json.loads(Path(path).read_text())
    per_steps: dict[int, dict[str, Any]] = {}
    for n, per_case in data["cases"].items():
        for case in per_case.values():
            for rec in case["methods"].values():
                rec["sweep"] = {float(k): v for k, v in rec["sweep"].items()}
                rec["best"] = float(rec["best"])
        per_steps[int(n)] = per_case
    return per_steps, {**data["settings"], "wall_time_s": data["wall_time_s"],
                       "command": data["command"], "jobs": data["jobs"]}


def make_jobs(args: argparse.Namespace, s: dict[str, Any]) -> list[ev.Job]:
    """One :class:`evaluate_methods.Job` per (count, subject, realisation, N), DDS and LiSch only,
    with the seeds :mod:`evaluate_methods` gives the same scan."""
    from sirf_diffusion.data.splits import subject_seeds

    return [ev.Job(subject=sub, counts=c, realisation=r, **ev.scan_seeds(args.seed, sub, c, r),
                   num_views=args.num_views, subsets=12, osem_epochs=2, map_init_epochs=2,
                   map_iterations=1, rdp_beta=[], dps_zeta=[],
                   dds_beta=[float(b) for b in s["dds_beta"]], dds_subsets=args.dds_subsets,
                   dds_epochs=1, lisch_k=[int(k) for k in s["lisch_k"]],
                   lisch_max_steps=args.lisch_max_steps, steps=int(n), methods=list(METHODS),
                   model=args.model, threads=args.threads, samples=args.samples)
            for c in s["counts"] for sub in subject_seeds("test", s["subjects"])
            for r in range(s["realisations"]) for n in s["steps"]]


def points(per_steps: dict[int, dict[str, Any]], counts: float) -> dict[str, list[dict[str, Any]]]:
    """Per method, one point per (N, parameter): NRMSE and time averaged over subjects and
    realisations; ``best`` marks the per-subject oracle parameter (as in evaluate_methods)."""
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for n, per_case in per_steps.items():
        cases = [v for v in per_case.values() if v["counts"] == counts]
        summ = ev.summarise(per_case, [counts], METHODS)[f"{counts:g}"]
        for m in METHODS:
            for value in cases[0]["methods"][m]["sweep"]:
                entries = [cs["methods"][m]["sweep"][value] for cs in cases]
                nr = np.concatenate([e["metrics"]["nrmse"] for e in entries])
                out[m].append({"steps": n, "value": float(value), "best": False,
                               "nrmse": float(nr.mean()), "nrmse_std": float(nr.std(ddof=1)),
                               "nrmse_per_scan": [float(v) for v in nr],
                               "time_s": float(np.mean([e["time_s"] for e in entries])),
                               "lik_evals": float(np.mean([e["lik_evals"] for e in entries])),
                               "net_evals": float(np.mean([e["net_evals"] for e in entries]))})
            row = summ[m]
            per_scan = np.concatenate([cs["methods"][m]["sweep"][cs["methods"][m]["best"]]
                                       ["metrics"]["nrmse"] for cs in cases])
            out[m].append({"steps": n, "value": [float(b) for b in row["best"]], "best": True,
                           "nrmse": row["nrmse"][0], "nrmse_std": row["nrmse"][1],
                           "nrmse_per_scan": [float(v) for v in per_scan],
                           "time_s": row["time_s"], "lik_evals": row["lik_evals"],
                           "net_evals": row["net_evals"]})
    return out


def compare(pts: dict[str, list[dict[str, Any]]], a: str, b: str) -> list[dict[str, Any]]:
    """For every best point of ``a``: the fastest point of ``b`` (any N, any parameter, averaged
    over cases) with equal or lower NRMSE, or ``None`` when ``b`` never reaches it."""
    rows = []
    for p in (q for q in pts[a] if q["best"]):
        ok = [q for q in pts[b] if not q["best"] and q["nrmse"] <= p["nrmse"]]
        fastest = min(ok, key=lambda q: q["time_s"]) if ok else None
        row = {"reference": p, "match": fastest,
               "at_least_as_fast": None if fastest is None
               else bool(fastest["time_s"] <= p["time_s"])}
        if fastest is not None and len(fastest.get("nrmse_per_scan", [])) == len(
                p.get("nrmse_per_scan", [])) > 1:
            # the same scans: the paired NRMSE difference and its standard error
            d = np.asarray(fastest["nrmse_per_scan"]) - np.asarray(p["nrmse_per_scan"])
            row["paired_difference"] = [float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))]
        rows.append(row)
    return rows


def plot(path: Path, pts_by_count: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    plt = ev._pyplot()
    n = len(pts_by_count)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    colours = {"dds": "tab:blue", "lisch": "tab:red"}
    for ax, (counts, pts) in zip(axes[0], pts_by_count.items()):
        for m in METHODS:
            raw = [q for q in pts[m] if not q["best"]]
            ax.scatter([q["time_s"] for q in raw], [q["nrmse"] for q in raw], s=18,
                       color=colours[m], alpha=0.45, marker=ev._marker(m))
            for q in raw:
                ax.annotate(f"{q['steps']}/{q['value']:g}", (q["time_s"], q["nrmse"]),
                            fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
            best = sorted((q for q in pts[m] if q["best"]), key=lambda q: q["steps"])
            ax.errorbar([q["time_s"] for q in best], [q["nrmse"] for q in best],
                        yerr=[q["nrmse_std"] for q in best], color=colours[m],
                        marker=ev._marker(m), label=f"{ev.LABELS[m]} (best per N)", capsize=3)
        ax.set_xlabel("wall time per reconstruction (s)")
        ax.set_ylabel("NRMSE (brain)")
        ax.set_title(f"{counts} counts/mm$^3$ (labels: N steps / parameter)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt_best(q: dict[str, Any]) -> str:
    v = q["value"]
    return "/".join(f"{x:g}" for x in v) if isinstance(v, list) else f"{v:g}"


def write_markdown(path: Path, command: str, settings: dict[str, Any],
                   pts_by_count: dict[str, dict[str, list[dict[str, Any]]]],
                   comparisons: dict[str, dict[str, list[dict[str, Any]]]], wall: float) -> None:
    lines = ["# Speed against accuracy: PET-DDS and PET-LiSch over the number of steps", "",
             f"Command: `{command}`", "",
             f"Machine: {ev.machine_line(settings['workers'], settings['threads'])}; "
             f"total wall time {wall / 60:.1f} min.", "",
             f"Test-split subjects {settings['subject_seeds']}, {settings['realisations']} noise "
             f"realisations each (the scans and sampler seeds of evaluate_methods), posterior mean "
             f"of {settings['samples']} chains. Steps N {settings['steps']}; PET-DDS relative beta "
             f"{settings['dds_beta']} ({settings['dds_subsets']} subsets, one epoch per step); "
             f"PET-LiSch K {settings['lisch_k']}. Times are per reconstruction on the shared "
             "CPU (the initial reconstruction included).", ""]
    for counts, pts in pts_by_count.items():
        lines += [f"## {counts} counts/mm^3", "",
                  "Best parameter per subject at each N (the oracle choice of evaluate_methods):",
                  "", "| method | N | best parameter | NRMSE | time (s) | network evals "
                  "| likelihood evals |", "|---|---|---|---|---|---|---|"]
        for m in METHODS:
            for q in sorted((q for q in pts[m] if q["best"]), key=lambda q: q["steps"]):
                lines.append(f"| {ev.LABELS[m]} | {q['steps']} | {ev.PARAMETERS[m]} "
                             f"{_fmt_best(q)} | {q['nrmse']:.4f} ± {q['nrmse_std']:.4f} | "
                             f"{q['time_s']:.1f} | {q['net_evals']:.0f} | {q['lik_evals']:.1f} |")
        for a, b in (("dds", "lisch"), ("lisch", "dds")):
            lines += ["", f"Fastest {ev.LABELS[b]} point (any N and parameter, averaged over "
                      f"scans) with NRMSE at most that of each {ev.LABELS[a]} point:", "",
                      f"| {ev.LABELS[a]} N | its NRMSE | its time (s) | {ev.LABELS[b]} N, "
                      f"{ev.PARAMETERS[b]} | NRMSE | paired difference (± s.e.) | time (s) | "
                      f"{ev.LABELS[b]} at least as fast? |", "|---|---|---|---|---|---|---|---|"]
            for row in comparisons[counts][f"{a}->{b}"]:
                p, q = row["reference"], row["match"]
                pd = row.get("paired_difference")
                diff = "" if pd is None else f"{pd[0]:+.4f} ± {pd[1]:.4f}"
                rhs = ("| none reaches it | | | | no |" if q is None else
                       f"| {q['steps']}, {q['value']:g} | {q['nrmse']:.4f} | {diff} | "
                       f"{q['time_s']:.1f} | {'yes' if row['at_least_as_fast'] else 'no'} |")
                lines.append(f"| {p['steps']} | {p['nrmse']:.4f} | {p['time_s']:.1f} {rhs}")
        lines.append("")
    lines += ["![NRMSE against wall time](speed_accuracy.png)", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep (module docstring); returns what is written to ``results.json``."""
    args = build_parser().parse_args(argv)
    if args.from_results is not None:
        return report(*load_cases(Path(args.from_results)), Path(args.out))
    base = QUICK if args.quick else FULL
    s = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    s["counts"] = [float(c) for c in args.counts]
    if s["realisations"] < 2:
        raise SystemExit("--realisations must be >= 2")
    if any(n < 1 for n in s["steps"]) or args.samples < 1:
        raise SystemExit("--steps and --samples must be >= 1")
    torch.set_num_threads(args.threads)
    ev._denoiser(args.model)  # fail early when there is no prior
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = make_jobs(args, s)
    print(f"[speed_accuracy] {len(jobs)} runs (steps {s['steps']}, counts {s['counts']})")
    outputs = ev.run_jobs(jobs, args.workers, not args.no_progress, unit="run")
    per_steps: dict[int, dict[str, Any]] = {}
    for n in s["steps"]:
        idx = [i for i, j in enumerate(jobs) if j.steps == n]
        per_steps[int(n)] = ev.analyse([jobs[i] for i in idx], [outputs[i] for i in idx])
    command = ("python benchmarks/speed_accuracy.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))).strip()
    from sirf_diffusion.data.splits import subject_seeds

    settings = {**s, "subject_seeds": subject_seeds("test", s["subjects"]),
                "samples": args.samples, "dds_subsets": args.dds_subsets,
                "lisch_max_steps": args.lisch_max_steps, "workers": args.workers,
                "threads": args.threads, "model": args.model, "quick": args.quick,
                "wall_time_s": time.perf_counter() - t0, "command": command,
                "jobs": [asdict(j) for j in jobs]}
    return report(per_steps, settings, out)


def report(per_steps: dict[int, dict[str, Any]], settings: dict[str, Any],
           out: Path) -> dict[str, Any]:
    """Points, comparisons, ``speed_accuracy.md``, ``speed_accuracy.png`` and ``results.json``."""
    from sirf_diffusion.io.atomic import write_json

    out.mkdir(parents=True, exist_ok=True)
    settings = dict(settings)
    command, wall, jobs = (settings.pop("command"), settings.pop("wall_time_s"),
                           settings.pop("jobs"))
    pts_by_count = {f"{c:g}": points(per_steps, c) for c in settings["counts"]}
    comparisons = {c: {"dds->lisch": compare(p, "dds", "lisch"),
                       "lisch->dds": compare(p, "lisch", "dds")} for c, p in pts_by_count.items()}
    write_markdown(out / "speed_accuracy.md", command, settings, pts_by_count, comparisons, wall)
    plot(out / "speed_accuracy.png", pts_by_count)
    results = ev._jsonable({"command": command, "settings": settings, "points": pts_by_count,
                            "comparisons": comparisons, "cases": per_steps, "jobs": jobs,
                            "wall_time_s": wall})
    write_json(out / "results.json", results)
    print((out / "speed_accuracy.md").read_text())
    return results


if __name__ == "__main__":
    main()
