"""``sirf-diffusion reconstruct``: a PETRIC-layout case by a classical or a diffusion method.

Order of work: every flag is validated (values, options that do not apply to the method, the
device), the output location is checked, the case is read and checked, the prior is loaded and
tried on one slice of the image grid; only then is the physics built and the reconstruction
run.  The results are written aside and moved into place at the end (:mod:`.output`); the last
line printed summarises the run (method, time, NRMSE when the case has a reference, where the
files are).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..samplers.defaults import METHOD_DEFAULTS, STEER_LAYERS
from .arguments import (
    add_precision_argument,
    check_applicable,
    check_device,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

__all__ = ["add_arguments", "run", "reconstruct_classical", "run_diffusion_method",
           "CLASSICAL", "DIFFUSION", "SUPERVISED", "CLASSICAL_DEFAULTS", "APPLIES_TO",
           "default_beta", "BOWSHER_NEIGHBOURS", "BOWSHER_BETA"]

CLASSICAL = ("mlem", "osem", "mapem-rdp", "mapem-quadratic")
DIFFUSION = ("lisch", "dds", "dps", "deft")
#: Trained reconstruction networks (FBSEM-net, :mod:`sirf_diffusion.recon.fbsem`).
SUPERVISED = ("fbsem",)
_MAP = ("mapem-rdp", "mapem-quadratic")

#: Defaults of the classical methods.  ``beta``: the MAP penalisation factor used when neither
#: ``--beta`` nor the case's ``penalisation_factor.txt`` gives one; chosen by the study in
#: docs/cli.md (3 held-out test subjects, 2.5 counts/mm^3, 2D mMR, CLI defaults otherwise).
CLASSICAL_DEFAULTS: dict[str, dict[str, float]] = {
    "mlem": {"iterations": 50},
    "osem": {"iterations": 10},
    "mapem-rdp": {"iterations": 10, "beta": 1.0},
    "mapem-quadratic": {"iterations": 10, "beta": 0.5},
}

#: Neighbours Bowsher's prior keeps per voxel unless ``--bowsher-neighbours`` is given, and
#: the MAP-EM beta with ``--bowsher`` when neither ``--beta`` nor the case's
#: ``penalisation_factor.txt`` gives one: with fewer pairs than the plain prior it needs a larger
#: beta (docs/personalised.md: best mean NRMSE on 2 held-out subjects x 2 realisations,
#: 2.5 counts/mm^3, 2D mMR).
BOWSHER_NEIGHBOURS = 4
BOWSHER_BETA: dict[str, float] = {"mapem-rdp": 4.0, "mapem-quadratic": 3.2}

#: The methods each method-specific option applies to (argparse destinations).
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "iterations": CLASSICAL,
    "subsets": ("osem", *_MAP),
    "beta": _MAP,
    "bowsher": _MAP,
    "bowsher_neighbours": _MAP,
    "model": DIFFUSION,
    "steps": DIFFUSION,
    "samples": DIFFUSION,
    "seed": DIFFUSION,
    "mlem_iterations": ("lisch",),
    "zeta": ("dps",),
    "axial_penalty": ("dds",),
    "deft_model": ("deft",),
    "t_start": ("deft",),
    "resample_prior": DIFFUSION,
    "fbsem_model": ("fbsem",),
    "steer": ("lisch", "dds"),
    "steer_rank": ("lisch", "dds"),
    "steer_steps": ("lisch", "dds"),
    "steer_adam_steps": ("lisch", "dds"),
    "steer_lr": ("lisch", "dds"),
    "steer_layers": ("lisch", "dds"),
    "steer_weight_decay": ("lisch", "dds"),
    "steer_discrepancy": ("lisch", "dds"),
    "steer_smoothing_mm": ("lisch", "dds"),
}
#: The flags that tune steering (``--steer`` switches it on).
STEER_FLAGS = ("steer_rank", "steer_steps", "steer_adam_steps", "steer_lr", "steer_layers",
               "steer_weight_decay", "steer_discrepancy", "steer_smoothing_mm")


def _per_method(key: str, table: Any, methods: tuple[str, ...]) -> str:
    return ", ".join(f"{m} {table[m][key]:g}" for m in methods if key in table[m])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``reconstruct`` with their defaults in the help."""
    d = METHOD_DEFAULTS
    p.add_argument("case", help="case folder in PETRIC's layout (prompts.hs, mult_factors.hs, "
                                "additive_term.hs, ...)")
    p.add_argument("--method", choices=CLASSICAL + DIFFUSION + SUPERVISED, default="osem",
                   help="reconstruction method (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="output folder: created, or empty, or replaced with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results already in --out (all of them)")
    p.add_argument("--iterations", metavar="N", type=positive_int, default=None,
                   help="classical methods: iterations (epochs for OSEM/MAP-EM) (default: "
                        f"{_per_method('iterations', CLASSICAL_DEFAULTS, CLASSICAL)})")
    p.add_argument("--subsets", metavar="N", type=positive_int, default=None,
                   help="OSEM/MAP-EM: number of view subsets (default: 12, or the largest of "
                        "14, 9, 7, 6, 4, 3, 2 that divides the views)")
    p.add_argument("--beta", metavar="B", type=positive_float, default=None,
                   help="MAP-EM: penalisation factor (default: the case's "
                        "penalisation_factor.txt, else "
                        f"{_per_method('beta', CLASSICAL_DEFAULTS, _MAP)}; with --bowsher "
                        + ", ".join(f"{m} {b:g}" for m, b in BOWSHER_BETA.items()) + ")")
    p.add_argument("--bowsher", metavar="MR.hv", nargs="?", const="t1", default=None,
                   help="MAP-EM: keep only each voxel's --bowsher-neighbours most MR-similar "
                        "neighbours in the penalty (Bowsher et al. 2004), from this MR image on "
                        "the case's grid; without a value the case's t1.hv (default: off)")
    p.add_argument("--bowsher-neighbours", metavar="B", type=positive_int, default=None,
                   help=f"MAP-EM with --bowsher: neighbours kept per voxel out of the 3x3x3 "
                        f"window (8 in-plane on a single plane) (default: {BOWSHER_NEIGHBOURS})")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="diffusion methods: prior folder (default: the shipped prior)")
    p.add_argument("--steps", metavar="N", type=positive_int, default=None,
                   help="diffusion methods: number of generative steps (default: "
                        f"{_per_method('num_steps', d, DIFFUSION)})")
    p.add_argument("--mlem-iterations", metavar="K", type=positive_int, default=None,
                   help="PET-LiSch: MLEM iteration count K that sets the prior/data balance "
                        f"(default: {d['lisch']['num_mlem_iterations']})")
    p.add_argument("--samples", metavar="N", type=positive_int, default=None,
                   help="diffusion methods: posterior samples (chains) averaged into the image "
                        f"(default: {_per_method('num_samples', d, DIFFUSION)})")
    p.add_argument("--zeta", metavar="Z", type=positive_float, default=None,
                   help="DPS: misfit-normalised step size; depends on the data (default: "
                        f"{d['dps']['step_size']:g})")
    p.add_argument("--axial-penalty", metavar="W", type=positive_float, default=None,
                   help="PET-DDS on a 3D case: weight of the axial relative difference prior "
                        "between neighbouring planes (PET-DDS's 3D regulariser, Singh et al. "
                        "2024; default: none)")
    p.add_argument("--steer", action="store_const", const=True, default=None,
                   help="PET-LiSch / PET-DDS: steerable conditional diffusion, LoRA adapters "
                        "fitted to the data during sampling, for scans unlike the prior's "
                        "training images (docs/steering.md; default: off)")
    p.add_argument("--steer-rank", metavar="R", type=positive_int, default=None,
                   help=f"with --steer: LoRA rank (default: {d['lisch']['steer_rank']})")
    p.add_argument("--steer-steps", metavar="N", type=positive_int, default=None,
                   help="with --steer: fit the adapter every N-th step (counted back from the "
                        f"end) and at the last few (default: {d['lisch']['steer_steps']})")
    p.add_argument("--steer-adam-steps", metavar="K", type=positive_int, default=None,
                   help="with --steer: Adam steps per fit (default: "
                        f"{d['lisch']['steer_adam_steps']})")
    p.add_argument("--steer-lr", metavar="LR", type=positive_float, default=None,
                   help=f"with --steer: Adam learning rate (default: {d['lisch']['steer_lr']:g})")
    p.add_argument("--steer-layers", choices=STEER_LAYERS, default=None,
                   help="with --steer: adapt every layer of the residual and attention blocks, "
                        "or only those at the network's coarsest resolution (default: "
                        f"{d['lisch']['steer_layers']})")
    p.add_argument("--steer-weight-decay", metavar="W", type=non_negative_float, default=None,
                   help="with --steer: AdamW weight decay tying the adapter to zero (default: "
                        f"{d['lisch']['steer_weight_decay']:g})")
    p.add_argument("--steer-discrepancy", metavar="D", type=positive_float, default=None,
                   help="with --steer: stop each fit once the estimate's Poisson deviance per "
                        "bin is at most D (Morozov's discrepancy principle; default: "
                        f"{d['lisch']['steer_discrepancy'] or 'off'})")
    p.add_argument("--steer-smoothing-mm", metavar="FWHM", type=positive_float, default=None,
                   help="with --steer: blur the data misfit's gradient by a Gaussian of this "
                        "FWHM (mm) before it reaches the adapter, so that the fit sees the "
                        "misfit at coarser scales only (docs/steering.md section 6; default: "
                        f"{d['lisch']['steer_smoothing_mm'] or 'off'})")
    p.add_argument("--deft-model", metavar="DIR", default=None,
                   help="PET-DEFT: the h-network's model folder, trained for --model's prior by "
                        "`sirf-diffusion train-deft` (default: the shipped one, for the shipped "
                        "prior, mMR 2D 128 x 128, 0.5-10 counts/mm^3)")
    p.add_argument("--t-start", metavar="T", type=positive_float, default=None,
                   help="PET-DEFT: the first noise level, as a time of the prior's VP schedule "
                        "in (0.001, 1]; the steps are uniform in t from it (default: "
                        f"{d['deft']['t_start']:g})")
    p.add_argument("--resample-prior", action="store_const", const=True, default=None,
                   help="diffusion methods: denoise on the prior's training voxel size "
                        "(value-preserving resampling at the prior boundary); for images whose "
                        "voxel size differs from it by more than 10 %% (default: off, with a "
                        "warning)")
    p.add_argument("--fbsem-model", metavar="DIR", default=None,
                   help="FBSEM-net: model folder, or a train-fbsem run folder (default: the "
                        "shipped model)")
    p.add_argument("--physics", choices=("torch", "stir", "sirf"), default="torch",
                   help="physics backend; stir/sirf need the toolkits (default: %(default)s)")
    p.add_argument("--seed", metavar="S", type=non_negative_int, default=None,
                   help="diffusion methods: seed of the sampler's randomness (default: 0)")
    p.add_argument("--device", metavar="DEVICE", default="cpu",
                   help="torch device, e.g. cpu or cuda (default: %(default)s)")
    add_precision_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


# ------------------------------------------------------------------------------- classical
def default_beta(method: str, case: Any) -> tuple[float, str]:
    """The MAP penalisation factor of a case and where it came from: the case's
    ``penalisation_factor.txt`` when present, else :data:`CLASSICAL_DEFAULTS`."""
    if case.penalisation_factor is not None:
        return float(case.penalisation_factor), "penalisation_factor.txt"
    return float(CLASSICAL_DEFAULTS[method]["beta"]), "default"


def reconstruct_classical(method: str, likelihood: Any, *, iterations: int, subsets: int,
                          beta: float | None = None, kappa: torch.Tensor | None = None,
                          x0: torch.Tensor | None = None, progress: bool = True,
                          pair_weights: dict[Any, torch.Tensor] | None = None) -> torch.Tensor:
    """MLEM, OSEM or MAP-EM (De Pierro; STIR's RDP or quadratic prior, optional ``kappa`` and
    ``pair_weights``, e.g. :func:`~sirf_diffusion.recon.bowsher.bowsher_weights`)."""
    from ..recon import QuadraticPrior, RelativeDifferencePrior, map_em, mlem, osem

    if method == "mlem":
        return mlem(likelihood, x0, num_iterations=iterations, progress=progress)
    if method == "osem":
        return osem(likelihood, x0, num_subsets=subsets, num_epochs=iterations, progress=progress)
    if method in _MAP:
        if beta is None:
            raise ValueError(f"--beta is required for {method}")
        prior_class = RelativeDifferencePrior if method == "mapem-rdp" else QuadraticPrior
        prior = prior_class(beta, voxel_size_mm=likelihood.physics.voxel_size_mm, kappa=kappa,
                            pair_weights=pair_weights)
        return map_em(likelihood, prior, x0, num_iterations=iterations, num_subsets=subsets,
                      progress=progress)
    raise ValueError(f"unknown classical method {method}")


# ------------------------------------------------------------------------------- diffusion
def _to_device(denoiser: Any, device: str) -> Any:
    for m in getattr(denoiser, "models", {}).values():
        if isinstance(m, torch.nn.Module):
            m.to(device)
    if isinstance(denoiser, torch.nn.Module):
        denoiser.to(device)
    return denoiser


def check_prior_fits(denoiser: Any, image_shape: tuple[int, int, int], where: str) -> None:
    """Refuse a prior that cannot denoise images of ``image_shape``, before any work.

    One zero slice of each orientation the denoiser uses is denoised once (one network call per
    orientation, on the slice shape the reconstruction will use); whatever the denoiser refuses
    (a grid its network cannot take, a missing orientation) is reported as a ``ValueError``.
    """
    from ..diffusion.prior3d import to_slices

    volume = torch.zeros(1, 1, *image_shape)
    models = getattr(denoiser, "models", None)
    tries = ({o: (m, to_slices(volume, o)[:1]) for o, m in models.items()} if models
             else {"xy": (denoiser, volume[:, :, 0])})
    for orientation, (model, slice_) in tries.items():
        p = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
        if p is not None:
            slice_ = slice_.to(device=p.device, dtype=p.dtype)
        try:
            with torch.no_grad():
                model(slice_, torch.ones(1, device=slice_.device, dtype=slice_.dtype))
        except (ValueError, RuntimeError) as exc:
            z, y, x = image_shape
            raise ValueError(f"the prior {where} cannot denoise this case's {z} x {y} x {x} "
                             f"image ({orientation} slices of {tuple(slice_.shape[2:])}): "
                             f"{exc}") from None


def run_diffusion_method(method: str, likelihood: Any, denoiser: Any, *,
                         num_steps: int | None = None, num_mlem_iterations: int | None = None,
                         num_samples: int | None = None, step_size: float | None = None,
                         axial_penalty: float | None = None, seed: int = 0,
                         progress: bool = True, steer: dict[str, Any] | None = None,
                         deft_model: Any = None, t_start: float | None = None) -> Any:
    """PET-LiSch / PET-DDS / DPS / PET-DEFT of ``likelihood`` with ``denoiser``.

    ``None`` means the method's default (steps, samples, ``K``, DPS's misfit-normalised
    ``zeta`` = ``step_size``, ``eta``) from
    :data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`.  ``steer``: the steering options
    (``steer=True`` and any of ``steer_rank``...; :mod:`~sirf_diffusion.samplers.steer`).
    """
    from ..samplers.methods import reconstruct

    d = METHOD_DEFAULTS[method]
    options: dict[str, Any] = {}
    if method == "lisch":
        options["num_mlem_iterations"] = (d["num_mlem_iterations"] if num_mlem_iterations is None
                                          else num_mlem_iterations)
    if method == "dps":
        options["step_size"] = d["step_size"] if step_size is None else step_size
    if axial_penalty is not None:
        options["axial_penalty"] = axial_penalty
    options.update(steer or {})
    if method == "deft":
        options.update(deft_model=deft_model, t_start=t_start)
    return reconstruct(method, likelihood, denoiser,
                       num_steps=d["num_steps"] if num_steps is None else num_steps,
                       num_samples=d["num_samples"] if num_samples is None else num_samples,
                       eta=d["eta"], generator=torch.Generator().manual_seed(seed),
                       progress=progress, **options)


def _describe(method: str, config: dict[str, Any]) -> str:
    if method in SUPERVISED:
        return f"{method} ({config['fbsem']['num_iterations']} iterations x " \
               f"{config['fbsem']['num_subsets']} subsets, trained network)"
    if method in DIFFUSION:
        s = config["sampler"]
        extra = f", K {s['num_mlem_iterations']}" if "num_mlem_iterations" in s else ""
        extra += f", zeta {s['step_size']:g}" if "step_size" in s else ""
        extra += f", steered (rank {s['steer_rank']})" if s.get("steer") else ""
        return f"{method} ({s['num_steps']} steps{extra}, mean of {s['num_samples']})"
    beta = f", beta {config['beta']:g}" if config.get("beta") is not None else ""
    if config.get("bowsher_neighbours"):
        beta += f", Bowsher {config['bowsher_neighbours']} neighbours"
    return f"{method} ({config['iterations']} iterations x {config['subsets']} subsets{beta})"


def _bowsher_weights(args: argparse.Namespace, case: Any) -> dict[Any, torch.Tensor]:
    """Bowsher's pair weights from ``--bowsher`` (the case's ``t1.hv`` without a value)."""
    from ..io.interfile import read_image
    from ..recon.bowsher import bowsher_weights

    if args.bowsher == "t1":
        if "t1" not in case.extra:
            raise ValueError(f"--bowsher: case {args.case} has no t1.hv; give the MR image "
                             "(--bowsher MR.hv)")
        mr = case.extra["t1"]
    else:
        path = Path(args.bowsher)
        if not path.is_file():
            raise ValueError(f"--bowsher {args.bowsher}: file not found")
        mr, geometry = read_image(path)
        if tuple(np.shape(mr)) != tuple(case.image_geometry.shape):
            raise ValueError(f"--bowsher {args.bowsher}: the MR image is "
                             f"{' x '.join(map(str, np.shape(mr)))}, the case's images "
                             f"{' x '.join(map(str, case.image_geometry.shape))}; resample it "
                             "to the PET grid first")
    if not np.ptp(np.asarray(mr)) > 0:
        raise ValueError(f"--bowsher {args.bowsher}: the MR image is constant, it selects "
                         "nothing")
    return bowsher_weights(mr, args.bowsher_neighbours or BOWSHER_NEIGHBOURS,
                           voxel_size_mm=case.image_geometry.voxel_size_mm)


# --------------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    """Run ``reconstruct`` (module docstring)."""
    from ..diffusion.grid import check_prior_grid, fit_prior_to_grid
    from ..diffusion.loading import load_denoiser
    from ..io.atomic import write_json
    from ..io.interfile import write_image
    from ..likelihood import PoissonLogLikelihood
    from ..metrics import image_metrics
    from ..plotting import save_image_row
    from .case import case_physics, default_subsets, load_case
    from .output import ResultSet

    method = args.method
    check_applicable(args, method, APPLIES_TO)
    unused = [f for f in STEER_FLAGS if getattr(args, f) is not None]
    if unused and not args.steer:
        raise ValueError(f"--{unused[0].replace('_', '-')} applies only with --steer")
    device = check_device(args.device)
    results = ResultSet(args.out, overwrite=args.overwrite,
                        protect={"case folder": args.case, "model folder": args.model,
                                 "FBSEM-net model folder": args.fbsem_model,
                                 "DEFT model folder": args.deft_model})
    case, meta = load_case(args.case)
    shape = case.image_geometry.shape
    if args.axial_penalty is not None and shape[0] < 2:
        raise ValueError(f"--axial-penalty: case {args.case} has a single plane; the axial "
                         "prior needs a 3D case")
    if args.bowsher_neighbours is not None and args.bowsher is None:
        raise ValueError("--bowsher-neighbours needs --bowsher (the MR image that selects them)")
    pair_weights = _bowsher_weights(args, case) if args.bowsher is not None else None
    denoiser = None
    if method in DIFFUSION:
        denoiser = _to_device(load_denoiser(args.model, shape[0], args.precision), device)
        check_prior_fits(denoiser, shape, args.model or "shipped with the package")
        voxel = case.image_geometry.voxel_size_mm
        if args.resample_prior:
            denoiser = fit_prior_to_grid(denoiser, shape, voxel, resample=True, warn=False)
        # a field of view larger than the prior's is handled by prepare (a window around the
        # object); the voxel size is the user's to decide: say so, once, before any work
        for message in check_prior_grid(denoiser, shape, voxel, field_of_view=False):
            print(f"sirf-diffusion reconstruct: warning: {message}", file=sys.stderr)

    fbsem = None
    if method == "fbsem":
        from ..recon.fbsem import load_fbsem

        fbsem = load_fbsem(args.fbsem_model, map_location=device)

    progress = not args.no_progress
    resolved: dict[str, Any] = {"command": "reconstruct", **vars(args)}
    with results as staging:
        model = case_physics(case, meta, device=device, physics=args.physics, folder=args.case)
        prompts = torch.as_tensor(case.prompts, dtype=torch.float32, device=device)
        lik = PoissonLogLikelihood(model, prompts)
        t0 = time.perf_counter()
        extra_row = None
        if fbsem is not None:
            from ..recon.fbsem import fbsem_reconstruct

            res = fbsem_reconstruct(lik, fbsem[0], meta=fbsem[1], warn=False, progress=progress)
            for message in res.warnings:
                print(f"sirf-diffusion reconstruct: warning: {message}", file=sys.stderr)
            x = res.image
            resolved.update(fbsem=fbsem[0].config.to_dict(), fbsem_warnings=res.warnings,
                            num_network_evaluations=res.num_network_evaluations,
                            num_likelihood_evaluations=res.num_likelihood_evaluations)
        elif denoiser is not None:
            result = run_diffusion_method(
                method, lik, denoiser, num_steps=args.steps,
                num_mlem_iterations=args.mlem_iterations, num_samples=args.samples,
                step_size=args.zeta, axial_penalty=args.axial_penalty, seed=args.seed or 0,
                progress=progress,
                steer={k: getattr(args, k) for k in ("steer", *STEER_FLAGS)} if args.steer
                else None, deft_model=args.deft_model, t_start=args.t_start)
            x = result.mean
            resolved["sampler"] = result.config
            resolved.update(num_network_evaluations=result.num_network_evaluations,
                            num_likelihood_evaluations=result.num_likelihood_evaluations)
            result.save(staging / "posterior", plot=True)
            if result.sample.shape[0] > 1:
                std = result.std.reshape(shape)
                extra_row = {"posterior std": std}
                write_image(staging / "std.hv", std.cpu().numpy(), case.image_geometry)
        else:
            d = CLASSICAL_DEFAULTS[method]
            subsets = args.subsets or (1 if method == "mlem" else default_subsets(model))
            iterations = args.iterations or int(d["iterations"])
            beta, source = (args.beta, "--beta") if args.beta is not None else (
                default_beta(method, case) if method in _MAP else (None, None))
            if pair_weights is not None and source == "default":
                beta, source = BOWSHER_BETA[method], "Bowsher default"
            kappa = case.extra.get("kappa") if method in _MAP else None
            resolved.update(iterations=iterations, subsets=subsets, beta=beta,
                            beta_source=source, kappa=kappa is not None)
            if pair_weights is not None:
                resolved["bowsher_neighbours"] = args.bowsher_neighbours or BOWSHER_NEIGHBOURS
                pair_weights = {d: w.to(device) for d, w in pair_weights.items()}
            x = reconstruct_classical(
                method, lik, iterations=iterations, subsets=subsets, beta=beta,
                kappa=None if kappa is None else torch.as_tensor(kappa, device=device),
                progress=progress, pair_weights=pair_weights)
        resolved["wall_time_s"] = time.perf_counter() - t0
        x = x.reshape(shape).detach()
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{method} produced non-finite values; nothing was "
                                     "written")
        write_image(staging / "image.hv", x.cpu().numpy(), case.image_geometry)
        images: dict[str, Any] = {method: x}
        titles = {method: method}
        metrics = None
        if case.reference is not None:
            metrics = image_metrics(x, case.reference, case.masks)
            write_json(staging / "metrics.json", metrics)
            images = {"reference": case.reference, **images}
            titles[method] = f"{method}\nNRMSE {metrics['nrmse']:.3f}  SSIM {metrics['ssim']:.3f}"
        save_image_row(images, staging / "image.png", titles=titles, extra_row=extra_row)
        write_json(staging / "config.json", resolved)
        written = sorted(p.name + ("/" if p.is_dir() else "") for p in staging.iterdir())
    nrmse = f", NRMSE {metrics['nrmse']:.4f}" if metrics is not None else ""
    print(f"reconstruct: {_describe(method, resolved)} in {resolved['wall_time_s']:.1f} s{nrmse}; "
          f"wrote {Path(args.out)} ({', '.join(written)})")
    return 0
