"""Unconditional samples against real held-out slices, drawn and measured the same way.

Judging a samples grid by eye needs a reference: what do real slices look like on the same grey
scale?  This script prepares the slices of test-split subjects exactly as training does
(``bench_prior_denoising.build_slices``: the model's own data settings, each slice divided by
its support mean, no augmentation), draws ``--n`` of them at random and ``--n`` unconditional
samples of the model (ancestral steps as ``sirf-diffusion sample``), and saves both grids with
the same renderer (:func:`sirf_diffusion.plotting.save_slice_grid`).  It also measures two
numbers per image, for every real slice and every sample:

* ``support``: the fraction of the field above ``support_threshold`` x the image's maximum
  (small values: low slices near the skull base or the vertex, or fragments);
* ``peak``: the 99.5th percentile inside that support over the support mean (large values: a
  hot or saturated interior);

and counts the samples whose two numbers both lie inside the central 98 % of the real slices'.

    python benchmarks/sample_realism.py --out docs/prior_realism --n 16 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prior_denoising as bpd  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="score model folder (default: the shipped xy)")
    p.add_argument("--subjects", type=int, default=4, help="test-split subjects (default 4)")
    p.add_argument("--n", type=int, default=16, help="samples and real slices shown (default 16)")
    p.add_argument("--steps", type=int, default=100, help="generative steps (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--volume-shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="phantom grid of the real slices (default: the model's training grid)")
    p.add_argument("--out", required=True, help="output folder (created; must be new or empty)")
    return p


def image_stats(x: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """``support`` and ``peak`` (module doc) of images ``[n, h, w]``."""
    x = np.clip(x, 0.0, None)
    supp = x > threshold * x.max(axis=(1, 2), keepdims=True)
    frac = supp.mean(axis=(1, 2))
    peak = np.array([np.quantile(im[s], 0.995) / max(im[s].mean(), 1e-12) if s.any() else 0.0
                     for im, s in zip(x, supp)])
    return {"support": frac, "peak": peak}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from sirf_diffusion.diffusion.modelio import load_model
    from sirf_diffusion.io.atomic import write_json
    from sirf_diffusion.models import default_prior_dir
    from sirf_diffusion.plotting import save_slice_grid
    from sirf_diffusion.samplers.unconditional import sample

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 1 or args.subjects < 1 or args.steps < 1:
        parser.exit(2, "sample_realism: --n, --subjects and --steps must be >= 1\n")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.exit(2, f"sample_realism: --out {out} is not empty\n")
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else default_prior_dir() / "xy"
    model = load_model(model_dir).eval()
    settings = bpd.data_settings(model_dir, None)
    if args.volume_shape is not None:
        settings["volume_shape"] = list(args.volume_shape)
    t0 = time.perf_counter()
    real = bpd.build_slices("test", args.subjects, settings, model.config.orientation, 0,
                            progress=False)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(real.x0.shape[0], size=min(args.n, real.x0.shape[0]), replace=False)
    h, w = model.config.image_size
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        xs = sample(model, (args.n, 1, h, w), args.steps, eta=1.0, generator=gen).float()
    xs = xs[:, 0].numpy()
    xr = real.x0[:, 0].numpy()
    thr = settings["support_threshold"]
    s_real, s_samp = image_stats(xr, thr), image_stats(xs, thr)
    bounds = {k: (float(np.quantile(v, 0.01)), float(np.quantile(v, 0.99)))
              for k, v in s_real.items()}
    inside = np.all([(s_samp[k] >= lo) & (s_samp[k] <= hi) for k, (lo, hi) in bounds.items()],
                    axis=0)
    save_slice_grid(xr[pick], out / "real_slices.png",
                    f"{len(pick)} real held-out slices (test split), normalised as in training")
    save_slice_grid(xs, out / "samples.png",
                    f"{args.n} samples of {model_dir}, {args.steps} steps, eta=1, seed {args.seed}")
    quant = lambda v: [round(float(q), 4) for q in np.quantile(v, [0.1, 0.5, 0.9])]  # noqa: E731
    result = {
        "command": "python benchmarks/sample_realism.py " + " ".join(argv or sys.argv[1:]),
        "model": str(model_dir), "num_real_slices": int(xr.shape[0]),
        "real_quantiles_10_50_90": {k: quant(v) for k, v in s_real.items()},
        "sample_quantiles_10_50_90": {k: quant(v) for k, v in s_samp.items()},
        "real_central_98": bounds,
        "samples": [{"support": round(float(a), 4), "peak": round(float(b), 3), "inside": bool(c)}
                    for a, b, c in zip(s_samp["support"], s_samp["peak"], inside)],
        "samples_inside": int(inside.sum()), "wall_s": round(time.perf_counter() - t0, 1)}
    write_json(out / "realism.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    print("per sample (support, peak, inside):",
          [(r["support"], r["peak"], r["inside"]) for r in result["samples"]])
    return result


if __name__ == "__main__":
    main()
