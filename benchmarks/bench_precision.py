"""Accuracy and speed of the bfloat16 score network against float32: denoising and reconstruction.

Both parts run the same slice prior (the shipped one, or ``--model``) twice, loaded with
``precision='fp32'`` and ``precision='bf16'`` (:mod:`sirf_diffusion.diffusion.precision`;
bfloat16 autocast, channels-last in evaluation), on the same inputs:

(a) **Tweedie estimates** ``D(y, sigma)`` of held-out test-split slices prepared exactly like the
    training slices (``benchmarks/bench_prior_denoising.py``'s data preparation), ``y = x0 +
    sigma eps``, per ``--sigmas``.  Reported inside the head support, relative to the RMS of the
    clean slices: the RMS of ``D_bf16(y) - D_fp32(y)``, and for scale the RMS of
    ``D_fp32(y') - D_fp32(y)`` with ``y'`` another noise draw (how much the estimate moves with
    the noise itself), their ratio, and the denoising MSE (against ``x0``) of both.
(b) **Reconstructions**: PET-LiSch at its defaults (:data:`~sirf_diffusion.samplers.defaults.
    METHOD_DEFAULTS`, unless ``--steps``/``--lisch-k``/``--samples`` say otherwise) on the
    evaluation scans of ``benchmarks/evaluate_methods.py`` (test-split subjects, ``--counts``
    true counts per mm^3, the noise and sampler seeds of its ``scan_seeds``), once per
    precision with the same sampler seed.  Per scan: the brain NRMSE of both and their
    difference, the time of the whole reconstruction and the time spent in the network
    (forward hooks on the model: the sampling cost the precision changes; the rest is
    likelihood work), each as the process's CPU time and as wall-clock time.  The two
    precisions alternate which runs first from scan to scan, so that a drift in the machine's
    load does not favour one.
(c) **Unconditional sampling**: :func:`sirf_diffusion.samplers.unconditional.sample` (what
    ``sirf-diffusion sample`` runs) of ``--sample-n`` slices with ``--sample-steps`` steps
    (ancestral, ``eta = 1``), with each precision ``--sample-repeats`` times in alternating
    order, the same seed: CPU and wall time of the whole sampler per precision (the fastest
    repeat) and the relative RMS difference of the two precisions' samples.  Sampling is
    network work only, so this is the speed-up a user of the sampler sees.

``--parts`` runs a subset (e.g. ``--parts c``); the report then holds only those parts.

Run it with one thread: the CPU time of a one-thread process is the cost of the computation
itself, while on a shared machine the wall clock also counts the time the process waits for a
core (the project's 2-core development machine runs training jobs beside benchmarks).

Outputs in ``--out`` (default ``docs/precision``): ``precision.md`` (command, machine, tables)
and ``results.json``.  Example (about 10 minutes on one core)::

    OMP_NUM_THREADS=1 python benchmarks/bench_precision.py --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prior_denoising as bpd  # noqa: E402  (sibling scripts, not a package)
import evaluate_methods as ev  # noqa: E402

PRECISIONS = ("fp32", "bf16")
DEFAULT_SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)
_TAG_OTHER = 3  # noise-seed tag of the second draw (bench_prior_denoising uses 1 and 2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="score model folder (or prior folder); default: the shipped prior")
    p.add_argument("--subjects", type=int, default=2, help="test-split subjects (both parts)")
    p.add_argument("--realisations", type=int, default=2,
                   help="noise realisations per subject (reconstructions)")
    p.add_argument("--counts", type=float, default=2.5, help="true counts per mm^3")
    p.add_argument("--seed", type=int, default=0, help="base seed (as evaluate_methods)")
    p.add_argument("--steps", type=int, default=None,
                   help="PET-LiSch generative steps (default: METHOD_DEFAULTS)")
    p.add_argument("--lisch-k", type=int, default=None,
                   help="PET-LiSch MLEM iterations K (default: METHOD_DEFAULTS)")
    p.add_argument("--samples", type=int, default=None,
                   help="PET-LiSch chains, the image is their mean (default: METHOD_DEFAULTS)")
    p.add_argument("--num-views", type=int, default=None,
                   help="sinogram views (default: all; fewer only for smoke tests)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS),
                   help="noise levels of the Tweedie comparison (normalised units)")
    p.add_argument("--slices-per-subject", type=int, default=8,
                   help="test slices per subject of the Tweedie comparison")
    p.add_argument("--volume-shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="override the phantom grid of the Tweedie slices (smoke tests only)")
    p.add_argument("--train-config", default=str(bpd.REPO / "configs" / "default_prior.json"),
                   help="data preparation when the model's config.json has no train config")
    p.add_argument("--sample-n", type=int, default=16,
                   help="(c) slices per unconditional sample batch (the sample command's --n)")
    p.add_argument("--sample-steps", type=int, default=25,
                   help="(c) generative steps of the unconditional sampler")
    p.add_argument("--sample-repeats", type=int, default=2,
                   help="(c) timed runs per precision (alternating; the fastest counts)")
    p.add_argument("--parts", nargs="+", choices=("a", "b", "c"), default=["a", "b", "c"],
                   help="which parts to run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="docs/precision", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a report already in --out (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _models(model: str | None) -> dict[str, Any]:
    from sirf_diffusion.diffusion import load_slice_prior

    return {p: load_slice_prior(model, "xy", precision=p) for p in PRECISIONS}


def _model_dir(model: str | None) -> Path:
    from sirf_diffusion.models import default_prior_dir

    d = Path(model) if model else default_prior_dir()
    return d / "xy" if (d / "xy" / "config.json").is_file() else d


# ------------------------------------------------------------------------ (a) Tweedie estimates
def _rms(a: torch.Tensor, support: np.ndarray) -> float:
    """RMS of ``a [M, 1, H, W]`` over the support pixels of every slice (pooled)."""
    d = a.double()[:, 0].numpy()
    return float(np.sqrt((d[support] ** 2).mean()))


def tweedie_comparison(models: dict[str, Any], args: argparse.Namespace,
                       progress: bool) -> dict[str, Any]:
    """Part (a) of the module docstring."""
    settings = bpd.data_settings(_model_dir(args.model), args.train_config)
    if args.volume_shape:
        settings["volume_shape"] = list(args.volume_shape)
    test = bpd.build_slices("test", args.subjects, settings, "xy", args.slices_per_subject,
                            progress)
    scale = _rms(test.x0, test.support)
    rows = []
    for k, sigma in enumerate(args.sigmas):
        y = bpd.noisy(test.x0, sigma, args.seed, bpd._TAG_TEST, k)
        y2 = bpd.noisy(test.x0, sigma, args.seed, _TAG_OTHER, k)
        est, secs = {}, {}
        for p, m in models.items():
            t0 = _clocks()
            est[p] = bpd.prior_denoise(m, y, sigma, 16, False, p)
            wall, cpu = (_clocks() - t0) / y.shape[0]
            secs[p] = {"wall": float(wall), "cpu": float(cpu)}
        other = bpd.prior_denoise(models["fp32"], y2, sigma, 16, False, "fp32")
        diff = _rms(est["bf16"] - est["fp32"], test.support) / scale
        draw = _rms(other - est["fp32"], test.support) / scale
        mse = {p: _rms(e - test.x0, test.support) ** 2 for p, e in est.items()}
        rows.append({"sigma": sigma, "rel_rms_bf16_vs_fp32": diff, "rel_rms_other_draw": draw,
                     "ratio": diff / draw, "mse_fp32": mse["fp32"], "mse_bf16": mse["bf16"],
                     "mse_change": mse["bf16"] / mse["fp32"] - 1,
                     "seconds_per_slice": secs,
                     "cpu_speedup": secs["fp32"]["cpu"] / secs["bf16"]["cpu"]})
    return {"num_slices": int(test.x0.shape[0]),
            "subjects": sorted(set(test.seeds.tolist())), "data": settings,
            "clean_rms_support": scale, "rows": rows}


# ---------------------------------------------------------------------- (b) reconstructions
def _clocks() -> np.ndarray:
    """``[wall, process CPU]`` seconds now."""
    return np.array([time.perf_counter(), time.process_time()])


class NetworkTimer:
    """Wall and CPU seconds spent inside ``model.__call__`` (forward pre/post hooks) and the
    number of calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds, self.calls, self._t0 = np.zeros(2), 0, np.zeros(2)
        self._handles = [model.register_forward_pre_hook(self._start),
                         model.register_forward_hook(self._stop)]

    def _start(self, *_: Any) -> None:
        self._t0 = _clocks()

    def _stop(self, *_: Any) -> None:
        self.seconds += _clocks() - self._t0
        self.calls += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def reconstruct_scan(models: dict[str, Any], subject: int, realisation: int, order: list[str],
                     args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """Simulate one evaluation scan and run PET-LiSch with each precision in ``order``."""
    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.metrics import image_metrics
    from sirf_diffusion.samplers.methods import reconstruct

    seeds = ev.scan_seeds(args.seed, subject, args.counts, realisation)
    scan = simulate_scan(SimulationConfig(seed=subject, counts_per_mm3=args.counts,
                                          noise_seed=seeds["noise_seed"],
                                          num_views=args.num_views), progress=False)
    lik = PoissonLogLikelihood(scan.acquisition_model(12), scan.prompts)  # as evaluate_methods
    ref = scan.reference.numpy()
    out: dict[str, Any] = {"subject": subject, "realisation": realisation, **seeds,
                           "order": order}
    images = {}
    for p in order:
        timer = NetworkTimer(models[p])
        t0 = _clocks()
        try:
            res = reconstruct("lisch", lik, models[p], progress=False,
                              generator=torch.Generator().manual_seed(seeds["sampler_seed"]),
                              **options)
        finally:
            timer.remove()
        wall, cpu = _clocks() - t0
        images[p] = res.mean.detach().reshape(ref.shape).numpy().astype(np.float64)
        out[p] = {"nrmse": image_metrics(images[p], ref, scan.masks)["nrmse"],
                  "wall_s": float(wall), "cpu_s": float(cpu),
                  "network_wall_s": float(timer.seconds[0]),
                  "network_cpu_s": float(timer.seconds[1]), "network_calls": timer.calls,
                  "network_evaluations": res.num_network_evaluations}
    out["nrmse_difference"] = out["bf16"]["nrmse"] - out["fp32"]["nrmse"]
    brain = np.asarray(scan.masks["brain"]) > 0.5
    out["image_rel_rms_difference"] = float(
        np.sqrt(((images["bf16"] - images["fp32"])[brain] ** 2).mean())
        / np.sqrt((ref[brain] ** 2).mean()))
    return out


# ------------------------------------------------------------- (c) unconditional sampling
def sampling_comparison(models: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Time :func:`~sirf_diffusion.samplers.unconditional.sample` with each precision (part c).

    Each precision runs ``--sample-repeats`` times, the order alternating between repeats
    (fp32 first in even repeats); the fastest run of each counts (the one least disturbed by
    other jobs).  Returns the times, the speed-ups and the relative RMS difference between the
    two precisions' samples from the same seed.
    """
    from sirf_diffusion.samplers.unconditional import sample

    h, w = (int(n) for n in models["fp32"].config.image_size)
    shape = (args.sample_n, 1, h, w)
    times: dict[str, list[np.ndarray]] = {p: [] for p in PRECISIONS}
    samples: dict[str, torch.Tensor] = {}
    for r in range(args.sample_repeats):
        for p in (PRECISIONS if r % 2 == 0 else tuple(reversed(PRECISIONS))):
            t0 = _clocks()
            samples[p] = sample(models[p], shape, args.sample_steps, eta=1.0,
                                generator=torch.Generator().manual_seed(args.seed))
            times[p].append(_clocks() - t0)
    best = {p: np.min(np.stack(times[p]), axis=0) for p in PRECISIONS}
    diff = (samples["bf16"].double() - samples["fp32"].double()).pow(2).mean().sqrt()
    ref = samples["fp32"].double().pow(2).mean().sqrt()
    return {"shape": list(shape), "num_steps": args.sample_steps,
            "repeats": args.sample_repeats,
            **{f"{k}_s_{p}": float(best[p][i]) for p in PRECISIONS
               for i, k in enumerate(("wall", "cpu"))},
            "all_cpu_s": {p: [float(t[1]) for t in times[p]] for p in PRECISIONS},
            "cpu_speedup": float(best["fp32"][1] / best["bf16"][1]),
            "wall_speedup": float(best["fp32"][0] / best["bf16"][0]),
            "rel_rms_sample_difference": float(diff / ref)}


# ----------------------------------------------------------------------------- report
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def _speed(c: dict[str, Any], key: str) -> str:
    return f"{c['fp32'][key] / c['bf16'][key]:.2f}x"


def write_markdown(path: Path, results: dict[str, Any]) -> str:
    """``precision.md``: command, machine, the Tweedie table and the reconstruction table."""
    s = results["settings"]
    lines = [
        "# bfloat16 against float32: Tweedie estimates, reconstructions, sampling", "",
        f"Command: `{results['command']}`", "",
        f"Machine: {results['machine']}; total {results['wall_time_s'] / 60:.1f} min.", "",
        f"Model: `{results['model']}`. Both precisions load the same weights "
        "(`load_slice_prior(..., precision='fp32' | 'bf16')`; bf16 = autocast, channels-last "
        "in evaluation). Times: CPU = the process's CPU time (one thread: the cost of the "
        "computation), wall = wall clock (also counts waiting for a core on a shared "
        "machine).", "",
    ]
    if "tweedie" in results:
        lines += _tweedie_lines(results["tweedie"])
    if "reconstruction" in results:
        lines += _reconstruction_lines(results["reconstruction"], s)
    if "sampling" in results:
        lines += _sampling_lines(results["sampling"])
    text = "\n".join(lines)
    path.write_text(text)
    return text


def _tweedie_lines(tw: dict[str, Any]) -> list[str]:
    return [
        f"## (a) Tweedie estimates, {tw['num_slices']} held-out slices of test subjects "
        f"{tw['subjects']}", "",
        "RMS inside the head support, relative to the RMS of the clean slices "
        f"({tw['clean_rms_support']:.3g}): bf16 - fp32 on the same noisy input, and fp32 on "
        "another noise draw - fp32 (the estimate's own variation with the noise, for scale); "
        "denoising MSE against the clean slices (support); network time per slice in batches "
        "of 16.", "",
        *_table(["sigma", "bf16 - fp32 (rel. RMS)", "other draw - fp32 (rel. RMS)", "ratio",
                 "MSE fp32", "MSE bf16", "MSE change", "CPU ms/slice fp32", "bf16", "x",
                 "wall ms/slice fp32", "bf16"],
                [[f"{r['sigma']:g}", f"{r['rel_rms_bf16_vs_fp32']:.2e}",
                  f"{r['rel_rms_other_draw']:.2e}", f"{r['ratio']:.3f}",
                  f"{r['mse_fp32']:.4g}", f"{r['mse_bf16']:.4g}",
                  f"{100 * r['mse_change']:+.2f} %",
                  f"{1e3 * r['seconds_per_slice']['fp32']['cpu']:.0f}",
                  f"{1e3 * r['seconds_per_slice']['bf16']['cpu']:.0f}",
                  f"{r['cpu_speedup']:.2f}x",
                  f"{1e3 * r['seconds_per_slice']['fp32']['wall']:.0f}",
                  f"{1e3 * r['seconds_per_slice']['bf16']['wall']:.0f}"] for r in tw["rows"]]),
        ""]


def _reconstruction_lines(rc: dict[str, Any], s: dict[str, Any]) -> list[str]:
    sm = rc["summary"]
    return [
        f"## (b) PET-LiSch reconstructions, {s['counts']:g} counts/mm^3", "",
        f"PET-LiSch with {s['lisch_options']} (METHOD_DEFAULTS unless overridden), test-split "
        f"subjects {s['subject_seeds']} x {s['realisations']} noise realisations (the scans and "
        "sampler seeds of `benchmarks/evaluate_methods.py`), the same sampler seed for both "
        "precisions. NRMSE in the brain; *network*: time inside the model's calls (the "
        "sampling cost); *reconstruction*: the whole call (initial MLEM and likelihood steps "
        "included); *order*: which precision ran first.", "",
        *_table(["subject", "realisation", "order", "NRMSE fp32", "NRMSE bf16", "difference",
                 "image rel. RMS diff.", "network CPU s fp32", "bf16", "x",
                 "reconstruction CPU s fp32", "bf16", "x", "network wall s fp32", "bf16",
                 "reconstruction wall s fp32", "bf16"],
                [[str(c["subject"]), str(c["realisation"]), " then ".join(c["order"]),
                  f"{c['fp32']['nrmse']:.4f}", f"{c['bf16']['nrmse']:.4f}",
                  f"{c['nrmse_difference']:+.4f}", f"{c['image_rel_rms_difference']:.2e}",
                  f"{c['fp32']['network_cpu_s']:.1f}", f"{c['bf16']['network_cpu_s']:.1f}",
                  _speed(c, "network_cpu_s"), f"{c['fp32']['cpu_s']:.1f}",
                  f"{c['bf16']['cpu_s']:.1f}", _speed(c, "cpu_s"),
                  f"{c['fp32']['network_wall_s']:.1f}", f"{c['bf16']['network_wall_s']:.1f}",
                  f"{c['fp32']['wall_s']:.1f}", f"{c['bf16']['wall_s']:.1f}"]
                 for c in rc["scans"]]), "",
        f"Summary: mean NRMSE fp32 {sm['nrmse_fp32']:.4f}, bf16 {sm['nrmse_bf16']:.4f}; largest "
        f"|difference| {sm['max_abs_nrmse_difference']:.4f}. Network time, all scans: CPU "
        f"{sm['network_cpu_s_fp32']:.1f} s (fp32) vs {sm['network_cpu_s_bf16']:.1f} s (bf16), "
        f"{sm['network_cpu_speedup']:.2f}x; wall {sm['network_wall_s_fp32']:.1f} s vs "
        f"{sm['network_wall_s_bf16']:.1f} s, {sm['network_wall_speedup']:.2f}x. Whole "
        f"reconstructions: CPU {sm['cpu_s_fp32']:.1f} s vs {sm['cpu_s_bf16']:.1f} s, "
        f"{sm['cpu_speedup']:.2f}x; wall {sm['wall_s_fp32']:.1f} s vs {sm['wall_s_bf16']:.1f} "
        f"s, {sm['wall_speedup']:.2f}x.", ""]


def _sampling_lines(sp: dict[str, Any]) -> list[str]:
    n, _, h, w = sp["shape"]
    return [
        f"## (c) Unconditional sampling, {n} slices of {h} x {w}, {sp['num_steps']} steps", "",
        "`samplers.unconditional.sample` (the `sample` command's sampler, eta 1), the same "
        f"seed for both precisions; the fastest of {sp['repeats']} alternating runs each.", "",
        *_table(["precision", "CPU s", "wall s", "CPU s, every run"],
                [[p, f"{sp[f'cpu_s_{p}']:.1f}", f"{sp[f'wall_s_{p}']:.1f}",
                  ", ".join(f"{t:.1f}" for t in sp["all_cpu_s"][p])] for p in PRECISIONS]), "",
        f"Speed-up of bf16: {sp['cpu_speedup']:.2f}x (CPU), {sp['wall_speedup']:.2f}x (wall). "
        f"Samples bf16 - fp32: relative RMS {sp['rel_rms_sample_difference']:.3f} (ancestral "
        "sampling amplifies small differences along the trajectory; a sample is one draw, not "
        "an estimate).", ""]


def summarise(scans: list[dict[str, Any]]) -> dict[str, float]:
    """Mean NRMSEs, the largest difference, total times and speed-ups over the scans."""
    keys = ("network_cpu_s", "network_wall_s", "cpu_s", "wall_s")
    tot = {f"{k}_{p}": float(sum(c[p][k] for c in scans)) for k in keys for p in PRECISIONS}
    speed = {f"{k[:-2]}_speedup": tot[f"{k}_fp32"] / tot[f"{k}_bf16"] for k in keys}
    return {"nrmse_fp32": float(np.mean([c["fp32"]["nrmse"] for c in scans])),
            "nrmse_bf16": float(np.mean([c["bf16"]["nrmse"] for c in scans])),
            "max_abs_nrmse_difference": float(max(abs(c["nrmse_difference"]) for c in scans)),
            **tot, **speed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parts (module docstring); returns what is written to ``results.json``."""
    from sirf_diffusion.data.splits import subject_seeds
    from sirf_diffusion.io.atomic import write_json
    from sirf_diffusion.samplers.defaults import defaults_for

    args = build_parser().parse_args(argv)
    if args.subjects < 1 or args.realisations < 1:
        raise SystemExit("--subjects and --realisations must be >= 1")
    if args.sample_n < 1 or args.sample_steps < 1 or args.sample_repeats < 1:
        raise SystemExit("--sample-n, --sample-steps and --sample-repeats must be >= 1")
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    t_start = time.perf_counter()
    out = Path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        raise SystemExit(f"--out {out} holds a report: pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    models = _models(args.model)

    parts: dict[str, Any] = {}
    if "a" in args.parts:
        print(f"[precision] (a) Tweedie estimates at sigma {args.sigmas}")
        parts["tweedie"] = tweedie_comparison(models, args, progress)

    options: dict[str, Any] = {}
    seeds = subject_seeds("test", args.subjects)
    if "b" in args.parts:
        d = defaults_for("lisch")
        options = {k: d[k] for k in ("num_steps", "num_mlem_iterations", "num_samples", "eta",
                                     "alpha", "max_likelihood_steps")}
        for key, flag in (("num_steps", args.steps), ("num_mlem_iterations", args.lisch_k),
                          ("num_samples", args.samples)):
            if flag is not None:
                options[key] = flag
        scans = []
        for i, (sub, r) in enumerate((s, r) for s in seeds for r in range(args.realisations)):
            order = list(PRECISIONS) if i % 2 == 0 else list(reversed(PRECISIONS))
            print(f"[precision] (b) subject {sub}, realisation {r}: PET-LiSch "
                  f"{' then '.join(order)}")
            scans.append(reconstruct_scan(models, sub, r, order, args, options))
        parts["reconstruction"] = {"scans": scans, "summary": summarise(scans)}
    if "c" in args.parts:
        print(f"[precision] (c) unconditional sampling, {args.sample_n} slices, "
              f"{args.sample_steps} steps")
        parts["sampling"] = sampling_comparison(models, args)
    command = ("python benchmarks/bench_precision.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))).strip()
    results = {
        "command": command, "machine": ev.machine_line(1, args.threads),
        "model": str(_model_dir(args.model)),
        "settings": {"counts": args.counts, "subject_seeds": seeds,
                     "realisations": args.realisations, "seed": args.seed,
                     "lisch_options": options, "num_views": args.num_views,
                     "sigmas": args.sigmas, "threads": args.threads,
                     "sample_n": args.sample_n, "sample_steps": args.sample_steps},
        **parts, "parts": list(args.parts),
        "wall_time_s": time.perf_counter() - t_start}
    text = write_markdown(out / "precision.md", results)
    write_json(out / "results.json", results)
    print(text)
    print(f"[precision] wrote {out} in {results['wall_time_s'] / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
