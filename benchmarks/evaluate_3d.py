"""Fully 3D evaluation: OSEM, MAP-EM-RDP, PET-LiSch-3D and PET-DDS-3D on held-out 3D subjects.

For every held-out subject (test split, :func:`~sirf_diffusion.data.splits.subject_seeds`) and
noise realisation a fully 3D FDG brain scan is simulated on the Siemens mMR geometry
(:func:`~sirf_diffusion.data.simulate.simulate_scan` with ``dims=3``): ``--planes`` planes of
2.03 mm (default 48: 24 rings), span 1 with every oblique segment up to
``--max-ring-difference`` (default: the simulation's, ``min(rings - 1, 4)``), ``--image-size``
squared voxels of 2.09 mm in-plane, 4.5 mm PSF, attenuation, normalisation, randoms and
scatter, ``--counts`` true counts per mm^3 (default 2.5).  Each scan is reconstructed by

* **OSEM** (``--subsets`` subsets), every epoch up to ``--osem-epochs``: the parameter is the
  epoch;
* **MAP-EM-RDP** (De Pierro's MAP-EM with STIR's relative difference prior, 26 neighbours,
  ``epsilon = 1e-3``), ``--map-iterations`` epochs from ``--map-init-epochs`` OSEM epochs, for
  every ``--rdp-beta``;
* **PET-LiSch-3D**: PET-LiSch with every option at its default
  (:data:`~sirf_diffusion.samplers.defaults.METHOD_DEFAULTS`) through the 3D perpendicular prior
  ``load_denoiser(--model, planes)``: the mean of the estimates of every slice orientation the
  prior folder holds (:class:`~sirf_diffusion.diffusion.prior3d.PerpendicularPrior3D`), slices
  denoised in chunks of ``--chunk-size``;
* **PET-DDS-3D**: PET-DDS at its defaults through the same prior plus the axial relative
  difference prior (``gamma = 2``) of weight ``--dds-axial-penalty``.  ``METHOD_DEFAULTS`` has no
  axial weight; by default it is the MAP-EM-RDP beta with the lowest NRMSE on the same scan
  (the RDP strength the data support, applied to the two axial neighbours only).

The best parameter of OSEM and MAP-EM-RDP (and of PET-DDS-3D when several axial weights are
given) is the one with the lowest NRMSE averaged over a subject's realisations: an oracle choice
with the ground truth that favours the baselines, whose parameter is swept, over the diffusion
methods, which run at one setting.

Metrics (:func:`~sirf_diffusion.metrics.image_metrics`): NRMSE, PSNR and 3D SSIM in the brain;
contrast recovery (:func:`~sirf_diffusion.metrics.crc`) of the hot and cold lesion against the
brain outside the lesions; wall and CPU time (CPU time is less sensitive to other jobs on a
shared machine), time per generative step, network and likelihood evaluations.

Subjects: the first ``--subjects`` test-split subjects whose lesions all lie inside the axial
field of view (so that every lesion has a CRC), or the test-split seeds ``--seeds``.  A volume
of fewer planes than the head's (96 planes cover it) is a slab: sagittal (``yz``) and coronal
(``xz``) models trained on slices of whole heads then see the head cut at both ends.

Outputs in ``--out`` (default ``docs/evaluation/3d``; a non-empty folder is refused unless
``--overwrite``, which replaces all of it): ``evaluation_3d.md``, ``results.json`` and
``views_<subject>.png`` (axial, coronal and sagittal planes through a lesion: reference, OSEM at
its best epoch, MAP-EM-RDP at its best beta, PET-LiSch-3D, PET-DDS-3D; realisation 0).
Examples::

    python benchmarks/evaluate_3d.py --threads 2
    python benchmarks/evaluate_3d.py --quick --out /tmp/eval3d
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_methods as ev  # noqa: E402  (a sibling script, not a package)

METHODS = ("osem", "mapem-rdp", "lisch", "dds")
DIFFUSION = ("lisch", "dds")
LABELS = {"osem": "OSEM", "mapem-rdp": "MAP-EM-RDP", "lisch": "PET-LiSch-3D",
          "dds": "PET-DDS-3D"}
PARAMETERS = {"osem": "epochs", "mapem-rdp": "beta", "lisch": "", "dds": "axial beta"}

#: Settings with different defaults in full and ``--quick`` runs.
FULL: dict[str, Any] = {"subjects": 2, "planes": 48, "image_size": 128, "num_views": None,
                        "subsets": 12, "osem_epochs": 10, "rdp_beta": [0.3, 1.0, 3.0, 10.0],
                        "map_iterations": 10, "steps": None, "samples": None,
                        "lisch_max_steps": None, "seeds": None}
QUICK: dict[str, Any] = {"subjects": 1, "planes": 8, "image_size": 128, "num_views": 42,
                         "subsets": 6, "osem_epochs": 3, "rdp_beta": [1.0, 10.0],
                         "map_iterations": 2, "steps": 2, "samples": 1, "lisch_max_steps": 2,
                         "seeds": [10]}


# ----------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    d = ev.defaults_note(FULL, QUICK)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=None,
                   help="number of test-split subjects, the first whose lesions lie inside the "
                        f"axial field of view {d('subjects')}")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="test-split subject seeds instead of --subjects "
                        f"{d('seeds', 'chosen by --subjects')}")
    p.add_argument("--realisations", type=int, default=1,
                   help="noise realisations per subject (default 1)")
    p.add_argument("--counts", type=float, default=2.5,
                   help="count level in true counts per mm^3 (default 2.5)")
    p.add_argument("--planes", type=int, default=None, help=f"image planes {d('planes')}")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"in-plane voxels per side (2.09 mm) {d('image_size')}")
    p.add_argument("--rings", type=int, default=None,
                   help="scanner rings (default: (planes + 1) // 2)")
    p.add_argument("--max-ring-difference", type=int, default=None,
                   help="largest ring difference of the oblique segments (default: the "
                        "simulation's, min(rings - 1, 4))")
    p.add_argument("--num-views", type=int, default=None,
                   help=f"sinogram views, a divisor of 252 {d('num_views', 'all 252')}")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to run (default: all)")
    p.add_argument("--model", default=None,
                   help="prior folder (one sub-folder per orientation: xy, yz, xz); default: "
                        "the shipped prior")
    p.add_argument("--chunk-size", type=int, default=4,
                   help="slices per network call of the 3D prior (bounds its memory; default 4: "
                        "faster per slice than 16 on a CPU, see bench_3d)")
    p.add_argument("--subsets", type=int, default=None,
                   help=f"OSEM / MAP-EM subsets {d('subsets')}")
    ev.add_classical_arguments(p, d, "OSEM epochs initialising MAP-EM (default 2)")
    p.add_argument("--dds-axial-penalty", type=float, nargs="+", default=None,
                   help="PET-DDS-3D axial RDP weights, swept (default: the best MAP-EM-RDP beta "
                        "of the same scan)")
    p.add_argument("--steps", type=int, default=None,
                   help="generative steps of both diffusion methods "
                        f"{d('steps', 'METHOD_DEFAULTS')}")
    p.add_argument("--samples", type=int, default=None,
                   help="chains per diffusion reconstruction (the image is their mean) "
                        f"{d('samples', 'METHOD_DEFAULTS')}")
    p.add_argument("--lisch-max-steps", type=int, default=None,
                   help="PET-LiSch cap on ascent steps per generative step "
                        f"{d('lisch_max_steps', 'METHOD_DEFAULTS')}")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed of the noise and the samplers (as evaluate_methods)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test settings: one subject, 8 planes, 42 views, 2 generative "
                        "steps of one chain, short sweeps")
    p.add_argument("--out", default="docs/evaluation/3d", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results already in --out (all of them)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _positive(name: str, value: Any) -> None:
    if value is not None and value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Explicit flags, else the ``--quick`` or full defaults; bad values raise ``ValueError``
    naming the flag."""
    base = QUICK if args.quick else FULL
    s = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    if args.subjects is not None and args.seeds is not None:
        raise ValueError("give --subjects or --seeds, not both")
    if args.subjects is not None:
        s["seeds"] = None
    for name in ("subjects", "planes", "image_size", "num_views", "subsets", "osem_epochs",
                 "map_iterations", "steps", "samples", "lisch_max_steps"):
        _positive(name, s[name])
    for name in ("realisations", "chunk_size", "threads", "map_init_epochs", "rings"):
        _positive(name, getattr(args, name))
    if s["planes"] < 2:
        raise ValueError(f"--planes must be >= 2 for a 3D evaluation, got {s['planes']}")
    if not args.counts > 0:
        raise ValueError(f"--counts must be > 0, got {args.counts}")
    if args.map_init_epochs > s["osem_epochs"]:
        raise ValueError("--map-init-epochs must be at most --osem-epochs")
    if any(not b > 0 for b in s["rdp_beta"]):
        raise ValueError("--rdp-beta values must be > 0")
    if args.dds_axial_penalty is not None and any(not b >= 0 for b in args.dds_axial_penalty):
        raise ValueError("--dds-axial-penalty values must be >= 0")
    if ("dds" in args.methods and args.dds_axial_penalty is None
            and "mapem-rdp" not in args.methods):
        raise ValueError("--dds-axial-penalty is needed when mapem-rdp is not run (its best "
                         "beta is the default)")
    if s["seeds"] is not None:
        from sirf_diffusion.data.splits import check_split

        check_split(list(s["seeds"]), "test")
    s.update(realisations=args.realisations, counts=float(args.counts), rings=args.rings,
             max_ring_difference=args.max_ring_difference, chunk_size=args.chunk_size,
             map_init_epochs=args.map_init_epochs, dds_axial_penalty=args.dds_axial_penalty,
             methods=[m for m in METHODS if m in args.methods], model=args.model,
             seed=args.seed, threads=args.threads, quick=args.quick)
    return s


# ----------------------------------------------------------------------------- subjects
def voxel_size_mm() -> tuple[float, float, float]:
    """The voxel size of :func:`simulate_scan`'s 3D images (mMR: ring spacing / 2 axially)."""
    from sirf_diffusion.data.phantoms import DEFAULT_VOXEL_SIZE_MM
    from sirf_diffusion.physics.geometry import get_scanner

    return (get_scanner("mMR").ring_spacing_mm / 2, *DEFAULT_VOXEL_SIZE_MM[1:])


def lesions_of(subject: int) -> list[dict[str, Any]]:
    """The lesions :func:`simulate_scan` inserts for ``subject`` (they do not depend on the
    grid): kind, centre and semi-axes ``(z, y, x)`` in mm (z from the image centre), contrast."""
    from sirf_diffusion.data.phantoms import brain_phantom

    ph = brain_phantom(subject, dims=3, shape=(2, 4, 4), voxel_size_mm=voxel_size_mm(),
                       lesions=2)
    return [{"kind": les.kind, "centre_mm": [float(c) for c in les.centre_mm],
             "semi_axes_mm": [float(a) for a in les.semi_axes_mm],
             "contrast": float(les.contrast)} for les in ph.lesions]


def axial_overlap(lesion: dict[str, Any], planes: int) -> str:
    """``'whole'``, ``'part'`` or ``'none'``: how much of the lesion's axial extent lies inside
    ``planes`` planes centred on the image centre."""
    half = planes * voxel_size_mm()[0] / 2
    z, a = abs(lesion["centre_mm"][0]), lesion["semi_axes_mm"][0]
    return "whole" if z + a <= half else "part" if z - a < half else "none"


def select_subjects(n: int, planes: int, max_candidates: int = 50) -> list[int]:
    """The first ``n`` test-split subjects whose lesions all lie inside the axial field of
    view of ``planes`` planes."""
    from sirf_diffusion.data.splits import subject_seeds

    chosen: list[int] = []
    for s in subject_seeds("test", max_candidates):
        if len(chosen) == n:
            break
        if all(axial_overlap(les, planes) == "whole" for les in lesions_of(s)):
            chosen.append(s)
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} of the first {max_candidates} test subjects have "
                         f"every lesion inside {planes} planes: pass --seeds or more --planes")
    return chosen


# ----------------------------------------------------------------------------- one scan
def load_prior(model: str | None, planes: int, chunk_size: int) -> Any:
    """``load_denoiser(model, planes)`` with slices denoised in chunks of ``chunk_size``."""
    from sirf_diffusion.diffusion import load_denoiser
    from sirf_diffusion.diffusion.prior3d import PerpendicularPrior3D

    prior = load_denoiser(model, planes)
    return PerpendicularPrior3D(prior.models, chunk_size=chunk_size)


def simulation_config(s: dict[str, Any], subject: int, noise_seed: int) -> Any:
    from sirf_diffusion.data.simulate import SimulationConfig

    return SimulationConfig(seed=subject, dims=3, counts_per_mm3=s["counts"],
                            noise_seed=noise_seed, num_views=s["num_views"], rings=s["rings"],
                            max_ring_difference=s["max_ring_difference"],
                            image_shape=(s["image_size"], s["image_size"]),
                            num_planes=s["planes"])


class _Clock:
    """Wall and CPU seconds since creation (CPU: this process, every thread)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {"time_s": time.perf_counter() - self.wall, "cpu_s": time.process_time() - self.cpu}


def run_scan(s: dict[str, Any], subject: int, realisation: int, denoiser: Any,
             bar: Any, progress: bool) -> dict[str, Any]:
    """Simulate one scan and run every method on it.

    Returns ``{"reference", "masks", "info", "geometry", "runs": {method: {parameter: {metrics,
    "time_s", "cpu_s", ..., "image"}}}}`` (images ``[z, y, x]`` float32 numpy).
    """
    from sirf_diffusion.data.simulate import simulate_scan
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.metrics import image_metrics
    from sirf_diffusion.recon import RelativeDifferencePrior, map_em, osem
    from sirf_diffusion.samplers.run import prepare

    seeds = ev.scan_seeds(s["seed"], subject, s["counts"], realisation)
    bar.set_postfix_str(f"subject {subject}, realisation {realisation}: simulating")
    scan = simulate_scan(simulation_config(s, subject, seeds["noise_seed"]), progress=False)
    model = scan.acquisition_model(s["subsets"])
    lik = PoissonLogLikelihood(model, scan.prompts)
    ref = scan.reference.numpy()
    shape = scan.image_geometry.shape
    runs: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in s["methods"]}

    def record(method: str, key: str, x: torch.Tensor, cost: dict[str, float],
               **extra: Any) -> None:
        image = x.detach().reshape(shape).cpu().numpy().astype(np.float32)
        runs[method][key] = {**image_metrics(image, ref, scan.masks), **cost, **extra,
                             "image": image}

    def stage(method: str) -> None:
        bar.set_postfix_str(f"subject {subject}, realisation {realisation}: {LABELS[method]}")

    # OSEM: every epoch (image, cumulative time); its epoch map_init_epochs starts MAP-EM
    epochs: list[tuple[torch.Tensor, dict[str, float]]] = []
    if "osem" in runs or "mapem-rdp" in runs:
        stage("osem")
        clock = _Clock()

        def on_update(d: dict[str, Any]) -> None:
            if d["iteration"] % s["subsets"] == 0:
                epochs.append((d["x"].detach().clone(), clock.read()))

        osem(lik, num_subsets=s["subsets"], num_epochs=s["osem_epochs"], callback=on_update,
             progress=False)
    if "osem" in runs:
        for e, (x, cost) in enumerate(epochs, 1):
            record("osem", f"{e}", x, cost)
        bar.update()

    if "mapem-rdp" in runs:
        stage("mapem-rdp")
        init_x, init_cost = epochs[s["map_init_epochs"] - 1]
        for beta in s["rdp_beta"]:
            prior = RelativeDifferencePrior(beta, voxel_size_mm=model.voxel_size_mm, epsilon=1e-3)
            clock = _Clock()
            x = map_em(lik, prior, init_x, num_iterations=s["map_iterations"],
                       num_subsets=s["subsets"], progress=False)
            cost = {k: init_cost[k] + v for k, v in clock.read().items()}
            record("mapem-rdp", f"{beta:g}", x, cost)
        bar.update()

    common = {"num_steps": s["steps"], "num_samples": s["samples"]}
    settings: list[tuple[str, str, dict[str, Any]]] = []
    if "lisch" in runs:
        settings.append(("lisch", "defaults", {**common,
                                               "max_likelihood_steps": s["lisch_max_steps"]}))
    if "dds" in runs:
        axial = s["dds_axial_penalty"]
        if axial is None:
            rdp = runs["mapem-rdp"]
            axial = [float(min(rdp, key=lambda b: rdp[b]["nrmse"]))]
        settings += [("dds", f"{a:g}", {**common, "axial_penalty": a}) for a in axial]
    for method, key, options in settings:
        stage(method)
        clock = _Clock()
        run = prepare(method, lik, denoiser,  # type: ignore[arg-type]
                      generator=torch.Generator().manual_seed(seeds["sampler_seed"]),
                      progress=False, **options)
        prepared = clock.read()
        run.run(progress=progress)
        cost = clock.read()
        res = run.result(wall_time_s=cost["time_s"])
        n = res.sigmas.numel() - 1
        record(method, key, res.mean, cost, init_s=prepared["time_s"],
               step_s=(cost["time_s"] - prepared["time_s"]) / n,
               step_cpu_s=(cost["cpu_s"] - prepared["cpu_s"]) / n, num_steps=n,
               num_samples=res.sample.shape[0], net_evals=res.num_network_evaluations,
               lik_evals=res.num_likelihood_evaluations + res.num_init_evaluations,
               config={k: v for k, v in res.config.items() if k != "mlem_pll"})
        bar.update()
    geometry = {"shape": list(shape), "voxel_size_mm": list(scan.image_geometry.voxel_size_mm),
                "rings": scan.sinogram_geometry.scanner.num_rings,
                "max_ring_difference": scan.sinogram_geometry.max_ring_difference,
                "sinograms": int(scan.prompts.shape[0]), "views": int(scan.prompts.shape[1]),
                "tangential": int(scan.prompts.shape[2])}
    return {"reference": ref.astype(np.float32), "masks": scan.masks, "runs": runs,
            "geometry": geometry, "info": {"prompt_counts": scan.info["prompt_counts"],
                                           "true_counts": scan.info["true_counts"],
                                           "lesions": lesions_of(subject)}}


# ----------------------------------------------------------------------------- analysis
METRICS = ("nrmse", "psnr", "ssim", "crc_hot", "crc_cold")
COSTS = ("time_s", "cpu_s", "step_s", "step_cpu_s", "net_evals", "lik_evals")


def analyse(scans: dict[int, list[dict[str, Any]]], methods: Sequence[str]) -> dict[str, Any]:
    """Per subject: every parameter's metrics (mean over realisations) and the best one
    (lowest mean NRMSE); per method: the metrics at each subject's best, pooled."""
    cases: dict[str, Any] = {}
    for subject, outs in scans.items():
        case: dict[str, Any] = {}
        for m in methods:
            sweep = {}
            for key in outs[0]["runs"][m]:
                rs = [o["runs"][m][key] for o in outs]
                sweep[key] = {k: [r[k] for r in rs] for k in (*METRICS, *COSTS) if k in rs[0]}
                if "config" in rs[0]:
                    sweep[key]["config"] = rs[0]["config"]
            best = min(sweep, key=lambda k: float(np.mean(sweep[k]["nrmse"])))
            case[m] = {"best": best, "sweep": sweep}
        cases[f"{subject}"] = case
    summary: dict[str, Any] = {}
    for m in methods:
        entries = [c[m]["sweep"][c[m]["best"]] for c in cases.values()]
        row: dict[str, Any] = {"best": [c[m]["best"] for c in cases.values()]}
        for k in (*METRICS, *COSTS):
            v = np.array([x for e in entries for x in e.get(k, [])], dtype=np.float64)
            ok = v[np.isfinite(v)]
            if ok.size:
                row[k] = [float(ok.mean()), float(ok.std(ddof=1)) if ok.size > 1 else 0.0]
        summary[m] = row
    for other in ("osem", "mapem-rdp"):
        for m in DIFFUSION:
            if m in methods and other in methods:
                ratios = [float(np.mean(c[m]["sweep"][c[m]["best"]]["nrmse"])
                                / np.mean(c[other]["sweep"][c[other]["best"]]["nrmse"]))
                          for c in cases.values()]
                summary[m][f"nrmse_ratio_{other}"] = ratios
    return {"cases": cases, "summary": summary}


# ----------------------------------------------------------------------------- figures
def view_point(masks: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """Voxel ``(z, y, x)`` the views go through: the centre of mass of the hot lesion, else the
    cold one, else the brain."""
    for name in ("lesion_hot", "lesion_cold", "brain"):
        m = np.asarray(masks.get(name, np.zeros(1)))
        if m.ndim == 3 and m.any():
            return tuple(int(round(float(c))) for c in np.argwhere(m).mean(axis=0))  # type: ignore[return-value]
    raise ValueError("no lesion or brain mask to centre the views on")


def orthogonal_views(image: np.ndarray, point: tuple[int, int, int]
                     ) -> dict[str, np.ndarray]:
    """Axial ``[y, x]``, coronal ``[z, x]`` and sagittal ``[z, y]`` planes through ``point``."""
    z, y, x = point
    return {"axial": image[z], "coronal": image[:, y, :], "sagittal": image[:, :, x]}


def plot_views(path: Path, subject: int, out: dict[str, Any], case: dict[str, Any],
               methods: Sequence[str]) -> Path:
    """Rows: axial, coronal, sagittal; columns: reference and each method at its best."""
    plt = ev._pyplot()
    point = view_point(out["masks"])
    vz, vy, vx = out["geometry"]["voxel_size_mm"]
    ref = out["reference"]
    vmax = float(np.percentile(ref, 99.9)) or 1.0
    panels = [("reference", ref)]
    for m in methods:
        best = case[m]["best"]
        r = out["runs"][m][best]
        par = f" ({PARAMETERS[m]} {best})" if PARAMETERS[m] else ""
        panels.append((f"{LABELS[m]}{par}\nNRMSE {r['nrmse']:.3f}, SSIM {r['ssim']:.3f}",
                       r["image"]))
    nz, ny, _ = ref.shape
    heights = [ny * vy, max(nz * vz, 0.15 * ny * vy), max(nz * vz, 0.15 * ny * vy)]
    fig, axes = plt.subplots(3, len(panels), squeeze=False,
                             figsize=(2.4 * len(panels), 1.0 + 2.2 * sum(heights) / heights[0]),
                             gridspec_kw={"height_ratios": heights})
    aspect = {"axial": vy / vx, "coronal": vz / vx, "sagittal": vz / vy}
    for j, (title, image) in enumerate(panels):
        for i, (name, plane) in enumerate(orthogonal_views(image, point).items()):
            ax = axes[i, j]
            # axial: y downwards (STIR's display); coronal/sagittal: z upwards
            ax.imshow(plane, cmap="gray", vmin=0, vmax=vmax, aspect=aspect[name],
                      origin="upper" if name == "axial" else "lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0:
                ax.set_title(title, fontsize=7)
    z, y, x = point
    fig.suptitle(f"Test subject {subject}, realisation 0: planes through voxel "
                 f"(z, y, x) = ({z}, {y}, {x})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- report
def _pm(v: list[float] | None, digits: int = 3) -> str:
    return "" if v is None else f"{v[0]:.{digits}g} ± {v[1]:.2g}"


def _edge_note(sweep: Sequence[str], best: str, name: str) -> str:
    keys = list(sweep)
    if len(keys) > 1 and best in (keys[0], keys[-1]):
        return f" {name}: best at the edge of the sweep ({best}); widen it."
    return ""


def write_markdown(path: Path, command: str, s: dict[str, Any], analysis: dict[str, Any],
                   scans: dict[int, list[dict[str, Any]]], prior_info: dict[str, Any],
                   wall: float) -> Path:
    """``evaluation_3d.md``: command, machine, setup, lesions, summary, per subject, sweeps."""
    from sirf_diffusion.metrics import metrics_table
    from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS

    methods = s["methods"]
    g = next(iter(scans.values()))[0]["geometry"]
    summary, cases = analysis["summary"], analysis["cases"]
    prompts = np.mean([o["info"]["prompt_counts"] for outs in scans.values() for o in outs])
    defaults = "; ".join(f"{LABELS[m]}: " + ", ".join(f"{k} {v}" for k, v in
                                                      METHOD_DEFAULTS[m].items())
                         for m in DIFFUSION if m in methods)
    overrides = {k: s[k] for k in ("steps", "samples", "lisch_max_steps") if s[k] is not None}
    lines = [
        "# Fully 3D reconstruction on held-out test subjects", "",
        f"Command: `{command}`", "",
        f"Machine: {ev.machine_line(1, s['threads'])}; total wall time {wall / 60:.1f} min.", "",
        f"Test-split subjects {list(scans)}, {s['realisations']} noise realisation(s) each, "
        f"FDG, {s['counts']:g} true counts/mm^3 (mean {prompts:,.0f} prompts). Image "
        f"{' x '.join(map(str, g['shape']))} voxels of "
        f"{' x '.join(f'{v:.3g}' for v in g['voxel_size_mm'])} mm; mMR geometry, "
        f"{g['rings']} rings, span 1, ring differences up to {g['max_ring_difference']} "
        f"({g['sinograms']} sinograms of {g['views']} views x {g['tangential']} bins), 4.5 mm "
        "PSF, attenuation, normalisation, randoms, scatter.", "",
        f"Prior: `{prior_info['model']}`, orientations {', '.join(prior_info['orientations'])} "
        f"(the mean of their estimates), {s['chunk_size']} slices per network call. "
        f"Diffusion methods at `METHOD_DEFAULTS` ({defaults})"
        + (", except " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())
           if overrides else "")
        + ". PET-DDS-3D adds the axial RDP (gamma 2) of weight "
        + ("the best MAP-EM-RDP beta of the same scan"
           if s["dds_axial_penalty"] is None else f"{s['dds_axial_penalty']}")
        + f". OSEM: {s['subsets']} subsets, epochs 1-{s['osem_epochs']}; MAP-EM-RDP: "
        f"{s['map_iterations']} epochs of {s['subsets']} subsets from {s['map_init_epochs']} "
        f"OSEM epochs, beta {s['rdp_beta']}.", "",
        "Best parameter: lowest NRMSE averaged over a subject's realisations (an oracle choice "
        "that favours the swept baselines). NRMSE, PSNR and 3D SSIM in the brain; CRC of the "
        "hot / cold lesion against the brain outside the lesions (1 = full recovery). Times "
        "per reconstruction: wall and CPU seconds (OSEM: up to its best epoch; MAP-EM: with "
        "its OSEM start; diffusion: with the initial MLEM/OSEM), and per generative step.", "",
        "## Summary", "",
    ]
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        r = summary[m]
        par = f"{PARAMETERS[m]} " + "/".join(r["best"]) if PARAMETERS[m] else "defaults"
        table[LABELS[m]] = {
            "best parameter": par, "NRMSE": _pm(r.get("nrmse")), "PSNR (dB)": _pm(r.get("psnr")),
            "SSIM": _pm(r.get("ssim")), "CRC hot": _pm(r.get("crc_hot")),
            "CRC cold": _pm(r.get("crc_cold")),
            "time (s)": f"{r['time_s'][0]:.0f}", "CPU (s)": f"{r['cpu_s'][0]:.0f}",
            "s / step": f"{r['step_s'][0]:.1f}" if "step_s" in r else "",
            "network evals": f"{r['net_evals'][0]:.0f}" if "net_evals" in r else "",
            "likelihood evals": f"{r['lik_evals'][0]:.1f}" if "lik_evals" in r else ""}
    lines += [metrics_table(table), ""]
    for m in DIFFUSION:
        for other in ("osem", "mapem-rdp"):
            ratios = summary.get(m, {}).get(f"nrmse_ratio_{other}")
            if ratios:
                lines.append(f"* {LABELS[m]} NRMSE / {LABELS[other]} at its best, per subject: "
                             + ", ".join(f"{v:.3f}" for v in ratios)
                             + f" (mean {np.mean(ratios):.3f}).")
    lines += ["", "## Per subject", ""]
    rows: dict[str, dict[str, Any]] = {}
    notes = []
    for subject, case in cases.items():
        for m in methods:
            best = case[m]["best"]
            e = case[m]["sweep"][best]
            mean = {k: float(np.nanmean(e[k])) if k in e and np.isfinite(e[k]).any() else None
                    for k in METRICS}
            rows[f"{subject}, {LABELS[m]}"] = {
                "best": best, "NRMSE": mean["nrmse"], "SSIM": mean["ssim"],
                "CRC hot": mean["crc_hot"], "CRC cold": mean["crc_cold"],
                "time (s)": float(np.mean(e["time_s"]))}
            if m in ("osem", "mapem-rdp"):
                note = _edge_note(case[m]["sweep"], best, f"subject {subject}, {LABELS[m]}")
                if note:
                    notes.append(note.strip())
    lines += [metrics_table(rows, first_column="subject, method"), ""]
    lines += [f"* {n}" for n in notes] + ([""] if notes else [])
    lines += ["Lesions (z from the image centre; one outside the axial field of view has no CRC, "
              "one partly inside is cut by the end of the volume):", ""]
    les_rows: dict[str, dict[str, Any]] = {}
    for subject, outs in scans.items():
        for i, les in enumerate(outs[0]["info"]["lesions"]):
            les_rows[f"{subject}, {i} ({les['kind']})"] = {
                "centre (z, y, x) mm": ", ".join(f"{c:.1f}" for c in les["centre_mm"]),
                "semi-axes mm": ", ".join(f"{a:.1f}" for a in les["semi_axes_mm"]),
                "contrast": f"{les['contrast']:.2f}",
                "inside the axial field of view": axial_overlap(les, g["shape"][0])}
    lines += [metrics_table(les_rows, first_column="subject, lesion"), "",
              "## Parameter sweeps (NRMSE, mean over subjects and realisations)", ""]
    sweep_rows: dict[str, dict[str, Any]] = {}
    for m in methods:
        keys = list(next(iter(cases.values()))[m]["sweep"])
        if len(keys) < 2:
            continue
        for k in keys:
            v = [x for c in cases.values() for x in c[m]["sweep"][k]["nrmse"]]
            t = [x for c in cases.values() for x in c[m]["sweep"][k]["time_s"]]
            sweep_rows[f"{LABELS[m]}, {PARAMETERS[m]} {k}"] = {
                "NRMSE": f"{np.mean(v):.4f}", "time (s)": f"{np.mean(t):.0f}"}
    if sweep_rows:
        lines += [metrics_table(sweep_rows, first_column="method, parameter"), ""]
    lines += [f"![orthogonal views, subject {sub}](views_{sub}.png)" for sub in scans] + [""]
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the evaluation (module docstring); returns what is written to ``results.json``."""
    from sirf_diffusion.commands.output import ResultSet
    from sirf_diffusion.io.atomic import write_json

    args = build_parser().parse_args(argv)
    try:
        s = resolve(args)
        results = ResultSet(args.out, overwrite=args.overwrite,
                            protect={"model folder": args.model})
    except ValueError as exc:
        raise SystemExit(f"evaluate_3d: {exc}") from None
    torch.set_num_threads(s["threads"])
    progress = not args.no_progress
    t_start = time.perf_counter()
    prior_info: dict[str, Any] = {"model": s["model"] or "shipped prior", "orientations": []}
    denoiser = None
    if any(m in DIFFUSION for m in s["methods"]):
        denoiser = load_prior(s["model"], s["planes"], s["chunk_size"])  # fail early
        prior_info["orientations"] = list(denoiser.orientations)
    seeds = s["seeds"] if s["seeds"] is not None else select_subjects(s["subjects"], s["planes"])
    s["seeds"] = list(seeds)
    axial = s["dds_axial_penalty"]
    stages = sum(len(axial or [0]) if m == "dds" else 1 for m in s["methods"])
    print(f"[evaluate_3d] subjects {seeds} x {s['realisations']} realisation(s), "
          f"{s['planes']} planes, methods {s['methods']}, prior orientations "
          f"{prior_info['orientations']}")
    bar = tqdm(total=len(seeds) * s["realisations"] * stages, desc="reconstructions",
               disable=not progress)
    scans: dict[int, list[dict[str, Any]]] = {}
    with results as staging:
        for subject in seeds:
            scans[subject] = [run_scan(s, subject, r, denoiser, bar, progress)
                              for r in range(s["realisations"])]
        bar.close()
        analysis = analyse(scans, s["methods"])
        wall = time.perf_counter() - t_start
        command = ("python benchmarks/evaluate_3d.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))).strip()
        write_markdown(staging / "evaluation_3d.md", command, s, analysis, scans, prior_info,
                       wall)
        for subject, outs in scans.items():
            plot_views(staging / f"views_{subject}.png", subject, outs[0],
                       analysis["cases"][f"{subject}"], s["methods"])
        out = {"command": command, "machine": ev.machine_line(1, s["threads"]),
               "settings": s, "prior": prior_info, "wall_time_s": wall,
               "scans": {f"{sub}": [{"geometry": o["geometry"], "info": o["info"]}
                                    for o in outs] for sub, outs in scans.items()},
               **analysis}
        write_json(staging / "results.json", out)
        report = (staging / "evaluation_3d.md").read_text()
    print(report.split("## Summary", 1)[-1].split("## Per subject", 1)[0].strip())
    print(f"[evaluate_3d] wrote {args.out} in {wall / 60:.1f} min")
    return out


if __name__ == "__main__":
    main()
