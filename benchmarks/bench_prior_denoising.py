"""Does the score prior denoise held-out brain slices better than a tuned Gaussian filter?

The slice prior ``D(x, sigma)`` is a Tweedie (MMSE) denoiser of the training distribution.  This
benchmark checks it on slices it has never seen, prepared *exactly* like the training slices
(:class:`~sirf_diffusion.diffusion.datasets.SliceDataset`: 3D brain phantom of the model's
tracer and grid, Gaussian PSF blur, slicing in the model's orientation, centre crop/pad, slice
selection by support, division by the support mean):

1. test-split subjects (``subject_seeds('test', n)``, never used for training) give the test
   slices, validation-split subjects the tuning slices;
2. Gaussian noise ``sigma * eps`` is added at each ``sigma`` (normalised units: the support mean
   of a slice is 1), from explicit, seeded generators (the same noise for every denoiser);
3. denoisers: the identity, a Gaussian filter whose width is **tuned per sigma** on the
   validation slices (grid search minimising the MSE within the support), and the prior's
   ``D(x, sigma)``;
4. MSE per slice within the head support (pixels above ``support_threshold`` times the slice
   maximum, the support of :func:`~sirf_diffusion.diffusion.normalisation.support_mean`) and
   over the whole slice; means and standard errors over the test slices.

The data preparation is read from the model's ``config.json`` (``extra.train_config``, written
by training) or, failing that, from ``--train-config``.

Outputs in ``--out`` (default ``docs/prior_denoising``): ``prior_denoising.md`` (command, machine,
table), ``results.json``, ``examples.png`` (noisy / Gaussian / prior / truth per sigma) and
``mse_vs_sigma.png``.  Example::

    python benchmarks/bench_prior_denoising.py --subjects 4 --val-subjects 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0)
#: Gaussian widths (standard deviation, pixels) searched for every sigma; 0 is the identity.
DEFAULT_WIDTHS = tuple([0.0] + [round(float(w), 3) for w in np.geomspace(0.3, 8.0, 24)])
_TAG_TEST, _TAG_VAL = 1, 2


@dataclass
class SliceSet:
    """Normalised clean slices of one split.

    Attributes
    ----------
    x0
        ``[M, 1, H, W]`` float32, each slice divided by its support mean.
    support
        ``[M, H, W]`` boolean support (pixels above ``threshold * max`` of the slice).
    seeds
        ``[M]`` subject seed of each slice.
    index
        ``[M]`` slice number within its subject's volume (orientation of the model).
    """

    x0: torch.Tensor
    support: np.ndarray
    seeds: np.ndarray
    index: np.ndarray


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="score model folder (or prior folder with an orientation sub-folder); "
                        "default: the shipped prior")
    p.add_argument("--orientation", default="xy", choices=("xy", "yz", "xz"),
                   help="orientation of the slice model to test")
    p.add_argument("--train-config", default=str(REPO / "configs" / "default_prior.json"),
                   help="training config used for the data preparation when the model's "
                        "config.json has no extra.train_config")
    p.add_argument("--subjects", type=int, default=4, help="number of test-split subjects")
    p.add_argument("--val-subjects", type=int, default=2,
                   help="number of validation-split subjects for tuning the Gaussian width")
    p.add_argument("--slices-per-subject", type=int, default=24,
                   help="evenly spaced slices kept per subject among those training would keep "
                        "(0: all)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS),
                   help="noise levels in normalised units (support mean = 1)")
    p.add_argument("--widths", type=float, nargs="+", default=list(DEFAULT_WIDTHS),
                   help="Gaussian filter widths (std in pixels) of the grid search; 0 = identity")
    p.add_argument("--volume-shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="override the phantom grid of the training config (smoke tests only: "
                        "the slices then differ from the training slices)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per denoiser call")
    p.add_argument("--seed", type=int, default=0, help="seed of the added noise")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="docs/prior_denoising", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a report already in --out (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def data_settings(model_dir: Path, train_config: str | None) -> dict[str, Any]:
    """The data preparation of the model: ``extra.train_config`` of its ``config.json``, else
    the ``train_config`` file, else :class:`~sirf_diffusion.diffusion.training.TrainConfig`
    defaults; the model's own ``training_data`` (PSF, voxel size) and ``image_size`` win."""
    from sirf_diffusion.diffusion.training import TrainConfig

    meta = json.loads((model_dir / "config.json").read_text())
    tc = (meta.get("extra") or {}).get("train_config")
    source = f"{model_dir / 'config.json'} (extra.train_config)"
    if not tc and train_config and Path(train_config).is_file():
        tc = json.loads(Path(train_config).read_text())
        source = str(train_config)
    if not tc:
        tc, source = {}, "TrainConfig defaults"
    cfg = TrainConfig.from_dict(tc)
    mcfg = meta.get("model", {})
    td = mcfg.get("training_data") or {}
    norm = mcfg.get("normalisation") or {}
    return {
        "source": source,
        "tracer": td.get("tracer", cfg.tracer),
        "volume_shape": None if cfg.volume_shape is None else list(cfg.volume_shape),
        "voxel_size_mm": list(td.get("voxel_size_mm", cfg.voxel_size_mm)),
        "psf_fwhm_mm": td.get("psf_fwhm_mm", cfg.psf_fwhm_mm),
        "slice_shape": list(mcfg.get("image_size", cfg.slice_shape)),
        "support_threshold": norm.get("support_threshold", cfg.support_threshold),
        "min_support_fraction": cfg.min_support_fraction,
    }


def build_slices(split: str, n_subjects: int, settings: dict[str, Any], orientation: str,
                 per_subject: int, progress: bool) -> SliceSet:
    """Slices of ``n_subjects`` subjects of ``split``, prepared as in training (module doc)."""
    from sirf_diffusion.diffusion.datasets import (
        SliceDataset,
        build_volume_pool,
        phantom_volume_source,
        split_seeds,
    )
    from sirf_diffusion.diffusion.normalisation import support_mean

    seeds = split_seeds(split, n_subjects)  # checks that every seed belongs to the split
    source = phantom_volume_source(settings["tracer"], settings["volume_shape"],
                                   settings["voxel_size_mm"])
    pool = build_volume_pool(seeds, source, progress=progress)
    ds = SliceDataset(pool.volumes, orientation=orientation,
                      voxel_size_mm=settings["voxel_size_mm"], psf_fwhm_mm=settings["psf_fwhm_mm"],
                      slice_shape=settings["slice_shape"],
                      support_threshold=settings["support_threshold"],
                      min_support_fraction=settings["min_support_fraction"],
                      scale_range=(1.0, 1.0), flip=False, seed=0)
    keep: list[int] = []
    vol_of = ds.index[:, 0].numpy()
    for v in range(len(seeds)):
        rows = np.nonzero(vol_of == v)[0]
        if per_subject and len(rows) > per_subject:
            rows = rows[np.unique(np.round(np.linspace(0, len(rows) - 1, per_subject)).astype(int))]
        keep.extend(rows.tolist())
    idx = torch.as_tensor(keep)
    slices = ds.slices[idx].double()[:, None]
    s = support_mean(slices, None, settings["support_threshold"])
    x0 = (slices / s.reshape(-1, 1, 1, 1)).float()
    flat = slices[:, 0]
    support = (flat > settings["support_threshold"]
               * flat.amax(dim=(-2, -1), keepdim=True).clamp(min=0)).numpy()
    return SliceSet(x0=x0, support=support, seeds=np.asarray(seeds)[vol_of[keep]],
                    index=ds.index[idx, 1].numpy())


def noisy(x0: torch.Tensor, sigma: float, seed: int, tag: int, k: int) -> torch.Tensor:
    """``x0 + sigma * eps`` with ``eps`` from a generator seeded by ``(seed, tag, k)``."""
    from sirf_diffusion.diffusion.datasets import derive_seed

    g = torch.Generator().manual_seed(derive_seed(seed, tag, k))
    return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=x0.dtype)


def gaussian_denoise(y: torch.Tensor, width: float) -> torch.Tensor:
    """Gaussian filter of std ``width`` pixels on each slice (zero outside the image)."""
    if width <= 0:
        return y.clone()
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(y.numpy(), sigma=(0, 0, width, width), mode="constant")
    return torch.from_numpy(np.ascontiguousarray(out))


def per_slice_mse(x: torch.Tensor, x0: torch.Tensor, support: np.ndarray) -> tuple[np.ndarray,
                                                                                    np.ndarray]:
    """``(MSE within the support, MSE over the slice)`` per slice, float64."""
    d2 = ((x.double() - x0.double())[:, 0] ** 2).numpy()
    inside = (d2 * support).sum(axis=(1, 2)) / support.sum(axis=(1, 2))
    return inside, d2.mean(axis=(1, 2))


@torch.no_grad()
def prior_denoise(model: torch.nn.Module, y: torch.Tensor, sigma: float, batch: int,
                  progress: bool, desc: str) -> torch.Tensor:
    """``D(y, sigma)`` in batches of ``batch`` slices."""
    out = []
    for i in tqdm(range(0, y.shape[0], batch), desc=desc, disable=not progress, leave=False,
                  unit="batch"):
        out.append(model(y[i:i + batch], torch.tensor(float(sigma))).float())
    return torch.cat(out)


def tune_widths(val: SliceSet, sigmas: list[float], widths: list[float], seed: int,
                progress: bool) -> dict[float, dict[str, Any]]:
    """Per sigma, the width of the grid minimising the mean support MSE on ``val``."""
    out: dict[float, dict[str, Any]] = {}
    for k, sigma in enumerate(tqdm(sigmas, desc="tuning Gaussian widths", disable=not progress)):
        y = noisy(val.x0, sigma, seed, _TAG_VAL, k)
        mse = [float(per_slice_mse(gaussian_denoise(y, w), val.x0, val.support)[0].mean())
               for w in widths]
        best = int(np.argmin(mse))
        if best == len(widths) - 1 and widths[best] > 0:
            print(f"[warn] sigma {sigma}: best Gaussian width {widths[best]} is the largest of "
                  "the grid; extend --widths")
        out[sigma] = {"width": float(widths[best]), "val_mse_support": mse[best],
                      "grid_mse_support": mse}
    return out


def _mean_se(a: np.ndarray) -> tuple[float, float]:
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(a.size)) if a.size > 1 else 0.0


def _fmt(m: float, se: float) -> str:
    return f"{m:.3g} ± {se:.1g}"


def machine_line(threads: int) -> str:
    """CPU count, torch version and threads, Python, platform."""
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__} with {threads} thread(s), Python "
            f"{platform.python_version()}, {platform.system()}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_examples(path: Path, truth: torch.Tensor, rows: list[tuple[float, torch.Tensor,
                  torch.Tensor, torch.Tensor, float]], title: str) -> Path:
    """Grid: one row per sigma with noisy / Gaussian / prior / truth."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 4, figsize=(9.2, 2.4 * len(rows)), squeeze=False)
    vmax = float(np.percentile(truth.numpy(), 99.9)) or 1.0
    for r, (sigma, y, g, d, w) in enumerate(rows):
        for c, (img, name) in enumerate(((y, f"noisy, sigma {sigma:g}"),
                                         (g, f"Gaussian (width {w:g} px)"),
                                         (d, "prior D(x, sigma)"), (truth, "truth"))):
            ax = axes[r, c]
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_mse_plot(path: Path, sigmas: list[float], curves: dict[str, list[float]]) -> Path:
    """Support MSE vs sigma (log-log) per denoiser."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, ys in curves.items():
        ax.plot(sigmas, ys, marker="o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise sigma (normalised units)")
    ax.set_ylabel("MSE within the support")
    ax.set_title("Denoising held-out test slices", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the results written to ``results.json``."""
    from sirf_diffusion.diffusion import load_slice_prior
    from sirf_diffusion.io.atomic import write_json

    args = build_parser().parse_args(argv)
    if args.subjects < 1 or args.val_subjects < 1:
        raise SystemExit("--subjects and --val-subjects must be >= 1")
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    t_start = time.perf_counter()
    out = Path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        raise SystemExit(f"--out {out} holds a report: pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)

    model = load_slice_prior(args.model, args.orientation)
    model_dir = Path(args.model) if args.model else None
    if model_dir is None:
        from sirf_diffusion.models import default_prior_dir

        model_dir = default_prior_dir()
    if (model_dir / args.orientation / "config.json").is_file():
        model_dir = model_dir / args.orientation
    settings = data_settings(model_dir, args.train_config)
    if args.volume_shape:
        settings["volume_shape"] = list(args.volume_shape)
        settings["source"] += " (volume_shape overridden)"
    orientation = model.config.orientation
    print(f"[prior-denoising] model {model_dir} ({model.num_parameters:,} parameters, "
          f"{orientation}); data from {settings['source']}")

    test = build_slices("test", args.subjects, settings, orientation, args.slices_per_subject,
                        progress)
    val = build_slices("val", args.val_subjects, settings, orientation, args.slices_per_subject,
                       progress)
    sigmas = [float(s) for s in args.sigmas]
    tuned = tune_widths(val, sigmas, [float(w) for w in args.widths], args.seed, progress)

    # example slice: the test slice with the largest support
    ex = int(np.argmax(test.support.sum(axis=(1, 2))))
    rows: dict[str, dict[str, Any]] = {}
    per_sigma: list[dict[str, Any]] = []
    examples = []
    for k, sigma in enumerate(sigmas):
        y = noisy(test.x0, sigma, args.seed, _TAG_TEST, k)
        w = tuned[sigma]["width"]
        t0 = time.perf_counter()
        d = prior_denoise(model, y, sigma, args.batch_size, progress, f"prior, sigma {sigma:g}")
        t_prior = time.perf_counter() - t0
        g = gaussian_denoise(y, w)
        res: dict[str, Any] = {"sigma": sigma, "gaussian_width_px": w,
                               "prior_seconds_per_slice": t_prior / y.shape[0]}
        mse = {}
        for name, est in (("identity", y), ("gaussian", g), ("prior", d)):
            inside, overall = per_slice_mse(est, test.x0, test.support)
            mse[name] = inside
            res[name] = {"mse_support": _mean_se(inside), "mse_overall": _mean_se(overall)}
        res["prior_better_fraction"] = float((mse["prior"] < mse["gaussian"]).mean())
        res["prior_over_gaussian"] = float(mse["prior"].mean() / mse["gaussian"].mean())
        per_sigma.append(res)
        rows[f"{sigma:g}"] = {
            "identity (support)": _fmt(*res["identity"]["mse_support"]),
            "Gaussian width (px)": f"{w:g}",
            "Gaussian (support)": _fmt(*res["gaussian"]["mse_support"]),
            "prior (support)": _fmt(*res["prior"]["mse_support"]),
            "prior / Gaussian": f"{res['prior_over_gaussian']:.3f}",
            "slices prior better": f"{100 * res['prior_better_fraction']:.0f} %",
            "identity (overall)": _fmt(*res["identity"]["mse_overall"]),
            "Gaussian (overall)": _fmt(*res["gaussian"]["mse_overall"]),
            "prior (overall)": _fmt(*res["prior"]["mse_overall"]),
        }
        examples.append((sigma, y[ex, 0], g[ex, 0], d[ex, 0], w))

    from sirf_diffusion.metrics import metrics_table

    command = "python benchmarks/bench_prior_denoising.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    n_test, n_val = test.x0.shape[0], val.x0.shape[0]
    table = metrics_table(rows, first_column="sigma")
    md = [
        "# Score prior vs tuned Gaussian filter: denoising held-out slices", "",
        f"Command: `{command.strip()}`", "",
        f"Machine: {machine_line(args.threads)}; total {time.perf_counter() - t_start:.0f} s.", "",
        f"Model: `{model_dir}` ({model.num_parameters:,} parameters, orientation {orientation}). "
        f"Data preparation from {settings['source']}: {settings['tracer']} phantoms, grid "
        f"{settings['volume_shape']} at {settings['voxel_size_mm']} mm, PSF "
        f"{settings['psf_fwhm_mm']} mm FWHM, slices {settings['slice_shape']}, each divided by its "
        f"support mean (support threshold {settings['support_threshold']}).", "",
        f"Test: {n_test} slices of test-split subjects {sorted(set(test.seeds.tolist()))}; "
        f"Gaussian width tuned per sigma (grid of {len(args.widths)} widths, 0 = identity, "
        f"minimising the support MSE) on {n_val} slices of validation-split subjects "
        f"{sorted(set(val.seeds.tolist()))}. Noise seed {args.seed}.", "",
        "Mean squared error per slice (normalised units, support mean = 1), mean ± standard "
        "error over the test slices; *support*: pixels above the threshold times the slice "
        "maximum; *overall*: the whole slice.", "",
        table, "",
        "![examples](examples.png)", "", "![MSE vs sigma](mse_vs_sigma.png)", "",
    ]
    (out / "prior_denoising.md").write_text("\n".join(md))
    save_examples(out / "examples.png", test.x0[ex, 0], examples,
                  f"test subject {int(test.seeds[ex])}, slice {int(test.index[ex])} "
                  f"({orientation})")
    save_mse_plot(out / "mse_vs_sigma.png", sigmas, {
        name: [r[name]["mse_support"][0] for r in per_sigma]
        for name in ("identity", "gaussian", "prior")})
    results = {"command": command.strip(), "machine": machine_line(args.threads),
               "model": str(model_dir), "data": settings, "seed": args.seed,
               "num_test_slices": n_test, "num_val_slices": n_val,
               "test_subjects": sorted(set(test.seeds.tolist())),
               "val_subjects": sorted(set(val.seeds.tolist())),
               "widths_grid": [float(w) for w in args.widths],
               "tuning": {str(k): v for k, v in tuned.items()}, "results": per_sigma,
               "wall_time_s": time.perf_counter() - t_start}
    write_json(out / "results.json", results)
    print(table)
    print(f"[prior-denoising] wrote {out / 'prior_denoising.md'}")
    return results


if __name__ == "__main__":
    main()
