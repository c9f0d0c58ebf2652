"""Compare training recipes at equal wall time on held-out denoising MSE.

Every variant continues the same starting model (``--init-from``, default the shipped xy prior)
from the same training config (``--config``) with its own overrides (:data:`VARIANTS`: noise-level
distribution, loss weighting, batch size, learning rate), for the same wall-clock budget
(``--minutes``) on the same number of CPU threads.  The learning rate is constant after the
warm-up so that a run stopped by the clock is a complete run.  Then the EMA model of each
variant denoises the same held-out slices (validation split: the choice must not see the test
subjects) at the sigmas of ``benchmarks/bench_prior_denoising.py`` and the support MSE is
compared with the starting model's.

Example (about 4 x 12 min on 2 cores, then a few minutes of evaluation)::

    PYTHONPATH=$PWD python benchmarks/compare_recipes.py --minutes 12 --parallel 2 \\
        --out docs/prior_recipes

Writes ``README.md`` (table + chosen variant), ``results.json`` and ``mse_ratio.png`` into
``--out``; runs go to ``--runs`` (default ``runs/recipes``).  ``--from-results`` rebuilds the
report from ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

#: name -> (description, TrainConfig overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("uniform t, unweighted eps loss, batch 16, lr 3e-4 (the shipped prior's recipe)",
              {}),
    "lognormal": ("ln sigma ~ N(-1.2, 1.2^2) (EDM), unweighted, batch 16",
                  {"recipe": {"time_sampling": "lognormal"}}),
    "mixture": ("half uniform t, half lognormal sigma, unweighted, batch 16",
                {"recipe": {"time_sampling": "mixture"}}),
    "mixture-minsnr": ("mixture + Min-SNR-5 weighting, batch 16",
                       {"recipe": {"time_sampling": "mixture", "weighting": "min_snr"}}),
    "mixture-b8": ("mixture, batch 8 (twice the steps), lr 3e-4",
                   {"recipe": {"time_sampling": "mixture"}, "batch_size": 8, "micro_batches": 1}),
    "mixture-lr1e-4": ("mixture, batch 16, lr 1e-4",
                       {"recipe": {"time_sampling": "mixture"}, "lr": 1e-4}),
}
SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "default_prior_stage3.json"),
                   help="base TrainConfig JSON (data, architecture)")
    p.add_argument("--init-from", default=None,
                   help="starting model folder (default: the shipped prior's xy model)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget per variant")
    p.add_argument("--parallel", type=int, default=2, help="variants trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--val-subjects", type=int, default=2, help="held-out (val split) subjects")
    p.add_argument("--slices-per-subject", type=int, default=24)
    p.add_argument("--runs", default="runs/recipes", help="folder of the training runs")
    p.add_argument("--out", default="docs/prior_recipes", help="report folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report/runs")
    p.add_argument("--from-results", action="store_true", help="rebuild the report only")
    return p


# ------------------------------------------------------------------------------- training
class _Clock:
    """Training callback that stops the run ``seconds`` after its first step ended (data
    preparation is not counted; a checkpoint is written at the stop)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0, self.steps = seconds, None, 0

    def __call__(self, info: dict[str, Any]) -> None:
        self.steps = int(info["step"])
        if self.t0 is None:
            self.t0 = time.perf_counter()
        elif time.perf_counter() - self.t0 >= self.seconds:
            raise StopIteration


def train_variant(name: str, config: dict[str, Any], run_dir: str, seconds: float,
                  threads: int) -> dict[str, Any]:
    """Train one variant for ``seconds`` (run in a worker process)."""
    import torch

    from sirf_diffusion.diffusion.training import TrainConfig, train

    torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(config)
    clock = _Clock(seconds)
    t0 = time.perf_counter()
    train(cfg, run_dir, progress=False, callback=clock)
    return {"name": name, "steps": clock.steps, "wall_s": time.perf_counter() - t0,
            "images": clock.steps * cfg.batch_size}


def variant_config(base: dict[str, Any], overrides: dict[str, Any], init_from: str,
                   cache_dir: str, precision: str) -> dict[str, Any]:
    """The base config with the variant's overrides, a constant learning rate, no fixed end."""
    cfg = {k: v for k, v in base.items() if not k.startswith("_")}
    cfg.update({"steps": 10**7, "lr_decay": "constant", "min_lr": 0.0, "init_from": init_from,
                "cache_dir": cache_dir, "precision": precision, "val_subjects": 0,
                "checkpoint_every": 10**6, "device": "cpu"})
    cfg.update(overrides)
    return cfg


def prepare_cache(config: dict[str, Any]) -> None:
    """Generate the cached training volumes once, before the parallel runs read them."""
    from sirf_diffusion.diffusion.datasets import build_volume_pool, split_seeds
    from sirf_diffusion.diffusion.training import TrainConfig, phantom_source

    cfg = TrainConfig.from_dict(config)
    source, meta = phantom_source(cfg)
    build_volume_pool(split_seeds("train", cfg.num_subjects), source,
                      cache_path=Path(cfg.cache_dir) / "volumes_train.npz", meta=meta,
                      progress=True)


# ----------------------------------------------------------------------------- evaluation
def denoising_mse(model_dir: str, slices: Any, sigmas: tuple[float, ...], seed: int = 0
                  ) -> list[float]:
    """Mean support MSE of ``D(x0 + sigma eps, sigma)`` per sigma (fp32 network)."""
    from bench_prior_denoising import noisy, per_slice_mse, prior_denoise

    from sirf_diffusion.diffusion.loading import load_slice_prior

    model = load_slice_prior(model_dir, "xy", precision="fp32")
    out = []
    for k, s in enumerate(sigmas):
        y = noisy(slices.x0, s, seed, 1, k)
        inside, _ = per_slice_mse(prior_denoise(model, y, s, 16, False, ""), slices.x0,
                                  slices.support)
        out.append(float(np.mean(inside)))
    return out


# --------------------------------------------------------------------------------- report
def choose(results: dict[str, Any]) -> str:
    """The variant with the lowest geometric-mean MSE ratio to the start over the sigmas."""
    def score(r: dict[str, Any]) -> float:
        return float(np.exp(np.mean(np.log(r["mse_ratio"]))))
    return min(results["variants"], key=lambda n: score(results["variants"][n]))


def write_report(results: dict[str, Any], out: Path) -> Path:
    from sirf_diffusion.io.atomic import atomic_write_text, write_json

    sig = results["sigmas"]
    best = choose(results)
    lines = ["# Training recipes at equal wall time", "",
             f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']}; {results['minutes']} min per variant, "
             f"{results['threads']} thread(s) each, {results['parallel']} at once, network "
             f"precision {results['precision']}.", "",
             f"Every variant continues `{results['init_from']}` from `{results['config']}` with a "
             "constant learning rate after the warm-up; the EMA model then denoises "
             f"{results['num_slices']} slices of validation-split subjects "
             f"{results['val_seeds']} (support MSE, fp32 network, noise seed 0).", "",
             "| variant | steps | images | " + " | ".join(f"sigma {s:g}" for s in sig)
             + " | geo-mean ratio |",
             "|---|---:|---:|" + "---:|" * (len(sig) + 1)]
    start = results["start_mse"]
    lines.append("| start (no training) | 0 | 0 | " + " | ".join(f"{m:.3g}" for m in start)
                 + " | 1 |")
    for name, r in results["variants"].items():
        g = math.exp(float(np.mean(np.log(r["mse_ratio"]))))
        cells = " | ".join(f"{m:.3g} ({q:.2f})" for m, q in zip(r["mse"], r["mse_ratio"]))
        lines.append(f"| {name}{' **(chosen)**' if name == best else ''} | {r['steps']} | "
                     f"{r['images']} | {cells} | {g:.3f} |")
    lines += ["", "Cells: support MSE (ratio to the start).", "",
              "Variants:", ""]
    lines += [f"- `{n}`: {VARIANTS[n][0]}" for n in results["variants"] if n in VARIANTS]
    lines += ["", f"Chosen: `{best}` (lowest geometric-mean ratio).", "",
              "![MSE ratio](mse_ratio.png)", ""]
    _plot(results, out / "mse_ratio.png")
    write_json(out / "results.json", results)
    return atomic_write_text(out / "README.md", "\n".join(lines))


def _plot(results: dict[str, Any], path: Path) -> None:
    from sirf_diffusion.plotting import save_curves

    save_curves({name: (results["sigmas"], r["mse_ratio"])
                 for name, r in results["variants"].items()},
                path, xlabel="sigma (normalised units)", ylabel="support MSE / start model's",
                title=f"{results['minutes']} min per recipe", logx=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.from_results:
        results = json.loads((out / "results.json").read_text())
        write_report(results, out)
        return results
    if args.minutes <= 0 or args.parallel < 1 or args.threads < 1:
        raise SystemExit("--minutes, --parallel and --threads must be positive")
    if (out / "results.json").exists() and not args.overwrite:
        raise SystemExit(f"--out {out} holds a report: pass --overwrite to replace it")
    runs = Path(args.runs)
    taken = [n for n in args.variants if (runs / n).exists()]
    if taken and not args.overwrite:
        raise SystemExit(f"--runs {runs} holds runs {taken}: pass --overwrite or choose --runs")

    from bench_prior_denoising import build_slices, machine_line

    from sirf_diffusion.diffusion.datasets import split_seeds
    from sirf_diffusion.models import default_prior_dir

    init_from = args.init_from or str(default_prior_dir() / "xy")
    base = json.loads(Path(args.config).read_text())
    cache = str(runs / "cache")
    configs = {n: variant_config(base, VARIANTS[n][1], init_from, cache, args.precision)
               for n in args.variants}
    prepare_cache(next(iter(configs.values())))
    if args.overwrite:
        import shutil

        for n in taken:
            shutil.rmtree(runs / n)
    seconds = 60.0 * args.minutes
    trained: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(args.parallel) as pool:
        futs = {n: pool.submit(train_variant, n, c, str(runs / n), seconds, args.threads)
                for n, c in configs.items()}
        for n, f in futs.items():
            trained[n] = f.result()
            print(f"{n}: {trained[n]['steps']} steps in {trained[n]['wall_s']:.0f} s", flush=True)

    import torch

    torch.set_num_threads(args.parallel * args.threads)
    settings = {"tracer": base.get("tracer", "fdg"), "volume_shape": base.get("volume_shape"),
                "voxel_size_mm": base["voxel_size_mm"], "psf_fwhm_mm": base["psf_fwhm_mm"],
                "slice_shape": base["slice_shape"], "support_threshold": base["support_threshold"],
                "min_support_fraction": base["min_support_fraction"]}
    slices = build_slices("val", args.val_subjects, settings, "xy", args.slices_per_subject, True)
    start = denoising_mse(init_from, slices, SIGMAS)
    results: dict[str, Any] = {
        "command": "python benchmarks/compare_recipes.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_line(args.threads), "minutes": args.minutes, "threads": args.threads,
        "parallel": args.parallel, "precision": args.precision, "init_from": init_from,
        "config": args.config, "sigmas": list(SIGMAS), "num_slices": int(slices.x0.shape[0]),
        "val_seeds": split_seeds("val", args.val_subjects), "start_mse": start, "variants": {}}
    for n, t in trained.items():
        mse = denoising_mse(str(runs / n / "model"), slices, SIGMAS)
        results["variants"][n] = {**t, "overrides": VARIANTS[n][1], "mse": mse,
                                  "mse_ratio": [m / s for m, s in zip(mse, start)]}
    out.mkdir(parents=True, exist_ok=True)
    print(write_report(results, out))
    return results


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
