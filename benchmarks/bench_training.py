"""Time the full training step of a :class:`TrainConfig` per precision and estimate a run's time.

Runs :func:`~sirf_diffusion.diffusion.training.train` for a few steps on a small pool of
phantoms (data, micro-batches, clipping, EMA, logging included) once per ``--precisions``
(``TrainConfig.precision``: float32 and bfloat16 autocast by default, side by side; the phantoms
are generated once and shared), then prints a Markdown table with the median seconds per step
(wall clock, and the process's CPU time: with ``--threads 1`` on a shared machine the CPU time
is the cost of the step itself, which the wall clock inflates by whatever else runs), the
speed-ups against the first precision and the time the config's ``steps`` would take.
Example::

    python benchmarks/bench_training.py --config configs/default_prior.json --threads 1
    torchrun --nproc_per_node 2 benchmarks/bench_training.py --threads 1

Use it to choose ``steps`` for a time budget on the machine that will train.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sirf_diffusion.diffusion.precision import PRECISIONS, resolve_precision
from sirf_diffusion.diffusion.training import TrainConfig, train


def time_steps(cfg: TrainConfig) -> dict[str, float] | None:
    """Median wall and CPU seconds per step (between the training loop's per-step callbacks;
    the first step is dropped) and the total wall time of ``train(cfg)``; None on ranks > 0."""
    marks: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, tmp, progress=False,
              callback=lambda _: marks.append((time.perf_counter(), time.process_time())))
        total = time.perf_counter() - t0
        if not (Path(tmp) / "loss.csv").is_file():  # not rank 0
            return None
    wall, cpu = ([b[i] - a[i] for a, b in zip(marks[:-1], marks[1:])] for i in (0, 1))
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu), "total": total}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/default_prior.json", help="TrainConfig JSON")
    p.add_argument("--steps", type=int, default=8, help="steps to time (the first is dropped)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    p.add_argument("--subjects", type=int, default=2, help="training subjects to generate")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS,
                   help="TrainConfig.precision values to time, side by side")
    p.add_argument("--cache-dir", default=None,
                   help="volume cache folder (reused across runs; default: a temporary folder "
                        "shared by the precisions of this run)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TrainConfig.from_json(args.config)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for precision in args.precisions:
            cfg = dataclasses.replace(base, steps=args.steps, num_subjects=args.subjects,
                                      val_subjects=0, checkpoint_every=10**9,
                                      cache_dir=args.cache_dir or cache, precision=precision)
            res = time_steps(cfg)
            if res is None:
                return
            rows.append((precision, cfg, res))
    cuda = base.device == "cuda" or (base.device == "auto" and torch.cuda.is_available())
    dev = "cuda" if cuda else "cpu"
    first = rows[0][0]
    print(f"| config | precision | batch | micro-batches | threads | s/step (wall) | x {first} "
          f"| CPU s/step | x {first} | est. minutes for {base.steps} steps (wall / CPU) "
          "| total s (incl. data) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ref = rows[0][2]
    for precision, cfg, t in rows:
        dtype = str(resolve_precision(precision, dev)).replace("torch.", "")
        print(f"| {args.config} | {precision} ({dtype}) | {cfg.batch_size} | {cfg.micro_batches} "
              f"| {torch.get_num_threads()} | {t['wall']:.2f} | {ref['wall'] / t['wall']:.2f}x "
              f"| {t['cpu']:.2f} | {ref['cpu'] / t['cpu']:.2f}x "
              f"| {t['wall'] * base.steps / 60:.0f} / {t['cpu'] * base.steps / 60:.0f} "
              f"| {t['total']:.0f} |")


if __name__ == "__main__":
    main()
