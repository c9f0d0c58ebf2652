"""What the command-line interface runs: simulate, reconstruct, train, sample (and the demo).

Each function takes the parsed ``argparse`` namespace, calls the library, writes its outputs and
the resolved configuration (``config.json``) into the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .diffusion.loading import _default_prior_dir, load_denoiser
from .io.atomic import write_json
from .metrics import image_metrics
from .samplers.defaults import METHOD_DEFAULTS

__all__ = ["cmd_simulate", "cmd_reconstruct", "cmd_demo", "cmd_train", "cmd_sample",
           "load_case", "case_physics", "reconstruct_classical"]

#: Names that moved out of this module: name -> (module, attribute).
_MOVED = {
    "load_slice_prior": ("sirf_diffusion.diffusion.loading", "load_slice_prior"),
    "load_denoiser": ("sirf_diffusion.diffusion.loading", "load_denoiser"),
    "_default_prior_dir": ("sirf_diffusion.diffusion.loading", "_default_prior_dir"),
    "image_metrics": ("sirf_diffusion.metrics", "image_metrics"),
    "write_json": ("sirf_diffusion.io.atomic", "write_json"),
}


def __getattr__(name: str) -> Any:
    """Deprecated names: the loaders, metrics and JSON writer moved to the library layers."""
    import importlib

    if name == "DPS_DEFAULT_ZETA":
        warnings.warn("sirf_diffusion.workflows.DPS_DEFAULT_ZETA is deprecated: use "
                      "sirf_diffusion.samplers.defaults.METHOD_DEFAULTS['dps']['step_size']",
                      DeprecationWarning, stacklevel=2)
        return float(METHOD_DEFAULTS["dps"]["step_size"])
    if name in _MOVED:
        module, attr = _MOVED[name]
        warnings.warn(f"sirf_diffusion.workflows.{name} is deprecated: use {module}.{attr}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- cases
def load_case(folder: str | Path):
    """Read a PETRIC-layout case and its optional ``simulation.json`` (PSF, settings)."""
    from .io.petric import read_case

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"case folder {folder} does not exist")
    case = read_case(folder)
    meta_path = folder / "simulation.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return case, meta


def case_physics(case, meta: dict, *, num_subsets: int = 1, device: str = "cpu",
                 physics: str = "torch", folder: str | Path | None = None):
    """The physics of a case: the embedded model with the case's ``m``, ``b`` and PSF
    (``physics='torch'``), or STIR's projector through SIRF (``'sirf'``) or STIR's Python
    bindings (``'stir'``) on the case's files in ``folder``."""
    psf = meta.get("psf_fwhm_mm") or None
    if physics in ("sirf", "stir"):
        if folder is None:
            raise ValueError(f"--physics {physics} reads the case files: give the case folder")
        if physics == "sirf":
            from .integrations.sirf import sirf_case_likelihood

            return sirf_case_likelihood(folder, psf_fwhm_mm=psf, num_subsets=num_subsets,
                                        device=device).physics
        from stir_wrappers import stir_case_physics

        return stir_case_physics(folder, psf_fwhm_mm=psf, num_subsets=num_subsets)
    if physics != "torch":
        raise ValueError(f"physics must be 'torch', 'sirf' or 'stir', got {physics!r}")
    from .physics.model import AcquisitionModel

    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)  # noqa: E731
    return AcquisitionModel(case.sinogram_geometry, case.image_geometry,
                            multiplicative=t(case.multiplicative), additive=t(case.additive),
                            psf_fwhm_mm=psf, num_subsets=num_subsets)


def reconstruct_classical(method: str, likelihood, *, iterations: int, subsets: int,
                          beta: float | None = None, x0: torch.Tensor | None = None,
                          progress: bool = True) -> torch.Tensor:
    """MLEM, OSEM or MAP-EM (De Pierro, RDP or quadratic prior) with STIR's conventions."""
    from .recon import QuadraticPrior, RelativeDifferencePrior, map_em, mlem, osem

    if method == "mlem":
        return mlem(likelihood, x0, num_iterations=iterations, progress=progress)
    if method == "osem":
        return osem(likelihood, x0, num_subsets=subsets, num_epochs=iterations, progress=progress)
    if method in ("mapem-rdp", "mapem-quadratic"):
        if beta is None:
            raise ValueError(f"--beta is required for {method}")
        vox = likelihood.physics.voxel_size_mm
        prior = (RelativeDifferencePrior(beta, voxel_size_mm=vox) if method == "mapem-rdp"
                 else QuadraticPrior(beta, voxel_size_mm=vox))
        return map_em(likelihood, prior, x0, num_iterations=iterations, num_subsets=subsets,
                      progress=progress)
    raise ValueError(f"unknown classical method {method!r}")


# ----------------------------------------------------------------------------- commands
def cmd_simulate(args: argparse.Namespace) -> int:
    from .data.simulate import SimulationConfig, simulate_scan, write_simulated_case
    from .likelihood import PoissonLogLikelihood
    from .recon import osem

    cfg = SimulationConfig(seed=args.seed, tracer=args.phantom.split("-")[1], dims=args.dims,
                           counts_per_mm3=args.counts, scanner=args.scanner, rings=args.rings,
                           max_ring_difference=args.max_ring_difference, lesions=args.lesions,
                           psf_fwhm_mm=args.psf_fwhm, randoms_fraction=args.randoms_fraction,
                           scatter_fraction=args.scatter_fraction, noise_seed=args.noise_seed)
    scan = simulate_scan(cfg, progress=not args.no_progress)
    model = scan.acquisition_model()
    lik = PoissonLogLikelihood(model, scan.prompts)
    x_osem = osem(lik, num_subsets=_default_subsets(model), num_epochs=3, progress=not args.no_progress)
    folder = write_simulated_case(args.out, scan, osem_image=x_osem)
    write_json(folder / "config.json", {"command": "simulate", **vars(args)})
    print(f"wrote {folder}: {scan.info['prompt_counts']:.0f} prompts, "
          f"{scan.info['true_counts']:.0f} trues ({cfg.counts_per_mm3} counts/mm^3), "
          f"subject {cfg.seed} ({scan.info['split']} split)")
    return 0


def _default_subsets(model) -> int:
    """A number of subsets dividing the views; for STIR's projectors (SIRF/STIR physics) it
    divides a quarter of the views, as STIR needs with its default symmetries."""
    from .integrations.subsets import ToolkitSubsets

    views = model.data_shape[1]
    if isinstance(model, ToolkitSubsets) and views % 4 == 0:
        views //= 4
    for k in (12, 14, 9, 7, 6, 4, 3, 2):
        if views % k == 0:
            return k
    return 1


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .io.interfile import write_image
    from .likelihood import PoissonLogLikelihood
    from .plotting import save_image_row

    case, meta = load_case(args.case)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = case_physics(case, meta, device=args.device, physics=args.physics, folder=args.case)
    prompts = torch.as_tensor(case.prompts, dtype=torch.float32, device=args.device)
    lik = PoissonLogLikelihood(model, prompts)
    progress = not args.no_progress
    resolved: dict[str, Any] = {"command": "reconstruct", **vars(args)}
    t0 = time.perf_counter()
    extra_row = None
    if args.method in ("lisch", "dds", "dps"):
        result = run_diffusion_method(args.method, lik, model_dir=args.model, num_steps=args.steps,
                                      num_mlem_iterations=args.mlem_iterations,
                                      num_samples=args.samples, seed=args.seed, progress=progress,
                                      step_size=getattr(args, "zeta", None))
        x = result.mean
        resolved["sampler"] = result.config
        resolved.update(num_network_evaluations=result.num_network_evaluations,
                        num_likelihood_evaluations=result.num_likelihood_evaluations)
        result.save(out / "posterior", plot=True)
        if result.sample.shape[0] > 1:
            extra_row = {"posterior std": result.std.reshape(case.image_geometry.shape)}
            write_image(out / "std.hv", extra_row["posterior std"].cpu().numpy(), case.image_geometry)
    else:
        subsets = args.subsets or (1 if args.method == "mlem" else _default_subsets(model))
        iterations = args.iterations or (50 if args.method == "mlem" else 10)
        beta = args.beta
        resolved.update(iterations=iterations, subsets=subsets, beta=beta)
        x = reconstruct_classical(args.method, lik, iterations=iterations, subsets=subsets, beta=beta,
                                  progress=progress)
    resolved["wall_time_s"] = time.perf_counter() - t0
    x = x.reshape(case.image_geometry.shape)
    write_image(out / "image.hv", x.detach().cpu().numpy(), case.image_geometry)
    images = {args.method: x}
    titles = {args.method: args.method}
    if case.reference is not None:
        m = image_metrics(x, case.reference, case.masks)
        write_json(out / "metrics.json", m)
        images = {"reference": case.reference, **images}
        titles[args.method] = f"{args.method}\nNRMSE {m['nrmse']:.3f}  SSIM {m['ssim']:.3f}"
    save_image_row(images, out / "image.png", titles=titles, extra_row=extra_row)
    write_json(out / "config.json", resolved)
    print(f"wrote {out / 'image.hv'} ({resolved['wall_time_s']:.1f} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), counts_per_mm3=args.counts, subject_index=args.seed, quick=args.quick,
             progress=not args.no_progress)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one or all orientations: checkpoints in ``OUT/checkpoints/<o>``, the EMA model
    exported to ``OUT/<o>`` (the layout :func:`~sirf_diffusion.diffusion.load_prior` reads)."""
    import dataclasses

    from .diffusion.training import TrainConfig, train

    cfg = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    orientations = ("xy", "yz", "xz") if args.orientation == "all" else (args.orientation,)
    out = Path(args.out)
    for o in orientations:
        changes: dict[str, Any] = {"orientation": o}
        if args.steps:
            changes["steps"] = args.steps
        if args.device:
            changes["device"] = args.device
        c = dataclasses.replace(cfg, **changes)
        train(c, out / "checkpoints" / o, resume=args.resume, progress=not args.no_progress,
              export_dir=out / o)
        print(f"trained {o}: model in {out / o}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .diffusion.sampling import sample_grid_png

    model = args.model or _default_prior_dir("xy")
    g = torch.Generator().manual_seed(args.seed)
    if not 0.0 <= args.eta <= 1.0:
        raise ValueError(f"--eta must be in [0, 1], got {args.eta}")
    path = sample_grid_png(model, args.out, n=args.n, num_steps=args.steps, generator=g,
                           eta=args.eta, progress=not args.no_progress)
    write_json(Path(args.out).with_suffix(".json"), {"command": "sample", **vars(args), "model": str(model)})
    print(f"wrote {path}")
    return 0


def run_diffusion_method(method: str, likelihood, *, model_dir: str | Path | None = None,
                         num_steps: int | None = None, num_mlem_iterations: int | None = None,
                         num_samples: int | None = None, seed: int = 0, progress: bool = True,
                         step_size: float | None = None):
    """PET-LiSch / PET-DDS / DPS on a 2D case with a slice prior (3D: a perpendicular prior).

    ``None`` means the method's default (steps, samples, ``K``, DPS's misfit-normalised
    ``zeta`` = ``step_size``) from :data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`.
    """
    from .samplers.methods import reconstruct

    defaults = METHOD_DEFAULTS[method]
    denoiser = load_denoiser(model_dir, likelihood.physics.image_shape[0])
    options: dict[str, Any] = {}
    if method == "lisch":
        options["num_mlem_iterations"] = (defaults["num_mlem_iterations"]
                                          if num_mlem_iterations is None else num_mlem_iterations)
    if method == "dps":
        options["step_size"] = defaults["step_size"] if step_size is None else step_size
    g = torch.Generator().manual_seed(seed)
    return reconstruct(method, likelihood, denoiser,
                       num_steps=defaults["num_steps"] if num_steps is None else num_steps,
                       num_samples=defaults["num_samples"] if num_samples is None else num_samples,
                       eta=defaults["eta"], generator=g, progress=progress, **options)


def settings_dict(obj: Any) -> dict:
    """A JSON-friendly dict of a dataclass."""
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v))
            for k, v in asdict(obj).items()}
