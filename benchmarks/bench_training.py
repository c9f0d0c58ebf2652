"""Time the full training step of a :class:`TrainConfig` and estimate a run's wall time.

Runs :func:`~sirf_diffusion.diffusion.training.train` for a few steps on a small pool of
phantoms (data, micro-batches, clipping, EMA, logging included), then prints a Markdown table
with the median seconds per step and the time the config's ``steps`` would take.  Example::

    python benchmarks/bench_training.py --config configs/default_prior.json --threads 2
    torchrun --nproc_per_node 2 benchmarks/bench_training.py --threads 1

Use it to choose ``steps`` for a time budget on the machine that will train.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sirf_diffusion.diffusion.training import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/default_prior.json", help="TrainConfig JSON")
    p.add_argument("--steps", type=int, default=8, help="steps to time (the first is dropped)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    p.add_argument("--subjects", type=int, default=2, help="training subjects to generate")
    p.add_argument("--cache-dir", default=None, help="volume cache folder (reused across runs)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TrainConfig.from_json(args.config)
    cfg = dataclasses.replace(base, steps=args.steps, num_subjects=args.subjects, val_subjects=0,
                              checkpoint_every=10**9, cache_dir=args.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, tmp, progress=False)
        total = time.perf_counter() - t0
        log = Path(tmp) / "loss.csv"
        if not log.is_file():  # not rank 0
            return
        with open(log, newline="") as f:
            secs = [float(r["seconds"]) for r in csv.DictReader(f)]
    per_step = statistics.median(b - a for a, b in zip(secs[:-1], secs[1:]))
    print("| config | batch | micro-batches | threads | s/step | est. minutes for "
          f"{base.steps} steps | total s (incl. data) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.config} | {cfg.batch_size} | {cfg.micro_batches} | {torch.get_num_threads()} "
          f"| {per_step:.2f} | {per_step * base.steps / 60:.0f} | {total:.0f} |")


if __name__ == "__main__":
    main()
