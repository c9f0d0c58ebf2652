"""Personalised priors on held-out subjects: registration accuracy, cost, and reconstructions.

Stages (``--stages``, run in order; each writes into ``--out`` and later stages read it):

``registration``
    For each test subject (``subject_seeds('test', --subjects)``) the first ``--reg-subjects``
    training subjects' T1 are registered to the subject's T1 by every kind of
    :func:`~sirf_diffusion.data.registration.register_t1` (none, affine, affine + B-spline,
    affine + demons); grey-matter Dice after warping (warped GM fraction >= 1/2 against the
    target's GM mask), T1 mean squared difference and time per registration.
``personalise``
    For each test subject and variant (``--variants``: ``demons`` = affine + demons with
    ``--num-subjects`` subjects; ``affine`` = affine only; ``demonsN`` = demons with N
    subjects) :func:`~sirf_diffusion.diffusion.personalise.personalise_prior` fine-tunes the
    shipped xy prior for ``--finetune-steps`` steps; the models go to ``--models``
    (an existing one is resumed, not redone) and the time of every step is recorded.
``reconstruct``
    For each test subject and ``--realisations`` noise realisations at ``--counts``
    counts/mm^3 (the scans of ``evaluate_methods.py``: same noise seeds) the methods OSEM
    (``--osem-epochs``), MAP-EM with the RDP, MAP-EM with the Bowsher-weighted quadratic and RDP
    penalties (the subject's T1, ``--bowsher-neighbours``) for each ``--beta`` and PET-DDS
    (``METHOD_DEFAULTS``, ``--samples`` chains) with the generic and every personalised prior.
``report``
    ``results.json``, ``personalised.md`` (tables) and ``personalised.png`` (figure) in
    ``--out``.  Classical methods are reported at their best parameter (lowest mean NRMSE over
    the scans: an oracle choice, as in ``evaluate_methods.py``).

The simulated subjects all derive from one template by smooth deformations, so a registration
can undo them almost exactly: the personalised gain measured here is an upper bound.

Example (the small run of docs/personalised.md)::

    python benchmarks/evaluate_personalised.py --subjects 2 --realisations 2 \\
        --finetune-steps 300 --out docs/personalised --models runs/personalised
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("none", "affine", "bspline", "demons")
METHODS = ("osem", "mapem-rdp", "bowsher", "dds-generic", "dds-personalised", "lisch-generic",
           "lisch-personalised")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", nargs="+", default=["registration", "personalise", "reconstruct",
                                                   "report"],
                   choices=("registration", "personalise", "reconstruct", "report", "pairs",
                            "ants"))
    p.add_argument("--pairs", default=None,
                   help="pairs / ants stages: .npz of (target, subject) T1 and GM images")
    p.add_argument("--subjects", type=int, default=2, help="held-out test subjects")
    p.add_argument("--subject-seeds", type=int, nargs="+", default=None,
                   help="these test-split seeds instead of the first --subjects (e.g. 10: "
                        "run one subject's stage while another process runs another's)")
    p.add_argument("--reg-subjects", type=int, default=8,
                   help="training subjects per target in the registration table")
    p.add_argument("--variants", nargs="+", default=["demons"],
                   help="personalised priors: demons, affine, demonsN (N subjects)")
    p.add_argument("--num-subjects", type=int, default=16,
                   help="training subjects per personalised prior")
    p.add_argument("--num-pseudo", type=int, default=64, help="pseudo-PET images")
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--counts", type=float, default=2.5)
    p.add_argument("--realisations", type=int, default=2)
    p.add_argument("--osem-epochs", type=int, nargs="+", default=[2, 3, 4, 6])
    p.add_argument("--rdp-beta", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    p.add_argument("--bowsher-beta", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--quadratic-beta", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--bowsher-neighbours", type=int, default=4)
    p.add_argument("--map-iterations", type=int, default=10)
    p.add_argument("--subsets", type=int, default=12)
    p.add_argument("--samples", type=int, default=2, help="chains averaged (PET-DDS, PET-LiSch)")
    p.add_argument("--steps", type=int, default=None,
                   help="PET-DDS / PET-LiSch steps (default: METHOD_DEFAULTS)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="reconstruct stage: methods to run (results of other runs are kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="runs/personalised", help="folder of the personalised "
                                                                 "priors")
    p.add_argument("--out", default="docs/personalised", help="output folder")
    return p


# ----------------------------------------------------------------------------- helpers
def _target(seed: int) -> Any:
    """The 2D test subject as ``sirf-diffusion simulate`` makes it (grid of its cases)."""
    from sirf_diffusion.data.phantoms import DEFAULT_VOXEL_SIZE_MM, brain_phantom
    from sirf_diffusion.physics.geometry import get_scanner

    vox = (get_scanner("mMR").ring_spacing_mm, DEFAULT_VOXEL_SIZE_MM[1], DEFAULT_VOXEL_SIZE_MM[2])
    return brain_phantom(seed, dims=2, shape=(1, 128, 128), voxel_size_mm=vox)


def _test_subjects(args: argparse.Namespace) -> list[int]:
    """``--subject-seeds`` (each checked to be a test-split seed) or the first ``--subjects``
    test-split seeds."""
    from sirf_diffusion.data.splits import check_split, subject_seeds

    if args.subject_seeds is None:
        return subject_seeds("test", args.subjects)
    try:
        check_split(args.subject_seeds, "test")
    except ValueError as e:
        raise SystemExit(f"--subject-seeds: {e}") from None
    return list(args.subject_seeds)


def _variant(name: str, default_n: int) -> tuple[str, int]:
    if name == "affine":
        return "affine", default_n
    if name.startswith("demons"):
        return "demons", int(name[6:]) if name[6:] else default_n
    raise ValueError(f"unknown variant {name!r}: demons, affine or demonsN")


def _finished(models: str) -> dict[str, dict[str, Any]]:
    """Records of the finished personalisations in ``models`` by ``"<subject>/<variant>"``
    (each folder's ``personalise.json`` is written when its fine-tuning has ended)."""
    out = {}
    for f in sorted(Path(models).glob("subject*_*/personalise.json")):
        subject, variant = f.parent.name[len("subject"):].split("_", 1)
        out[f"{subject}/{variant}"] = json.loads(f.read_text())
    return out


def _records(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    """The personalisation records of ``out/personalise.json`` (earlier runs, whose models may
    be gone) updated by the finished ones in ``--models``."""
    return _load(out / "personalise.json") | _finished(args.models)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    from sirf_diffusion.io.atomic import write_json

    write_json(path, data)


# ----------------------------------------------------------------------------- stages
def stage_registration(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from sirf_diffusion.data.phantoms import brain_phantom
    from sirf_diffusion.data.registration import dice, register_t1
    from sirf_diffusion.data.splits import subject_seeds

    rows: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    for t in _test_subjects(args):
        tgt = _target(t)
        vox = tgt.geometry.voxel_size_mm
        for s in subject_seeds("train", args.reg_subjects):
            mv = brain_phantom(s, dims=2, shape=tgt.geometry.shape, voxel_size_mm=vox)
            for kind in KINDS:
                r = register_t1(tgt.t1, mv.t1, vox, kind=kind)
                rows[kind].append({"target": t, "subject": s, "time_s": r.time_s,
                                   "t1_mse": r.metric,
                                   "gm_dice": dice(r.warp(mv.fractions["gm"]) >= 0.5,
                                                   tgt.masks["gm"]),
                                   "wm_dice": dice(r.warp(mv.fractions["wm"]) >= 0.5,
                                                   tgt.masks["wm"])})
                print(f"registration target {t} subject {s} {kind}: "
                      f"GM Dice {rows[kind][-1]['gm_dice']:.3f} in {r.time_s:.2f} s", flush=True)
    summary = {k: {m: [float(np.mean([r[m] for r in v])), float(np.std([r[m] for r in v]))]
                   for m in ("gm_dice", "wm_dice", "t1_mse", "time_s")} for k, v in rows.items()}
    result = {"rows": rows, "summary": summary, "pairs": len(rows["none"])}
    _save(out / "registration.json", result)
    return result


def stage_personalise(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from sirf_diffusion.diffusion.personalise import PersonaliseConfig, personalise_prior

    record = _finished(args.models)
    for t in _test_subjects(args):
        tgt = _target(t)
        for name in args.variants:
            kind, n = _variant(name, args.num_subjects)
            folder = Path(args.models) / f"subject{t}_{name}"
            cfg = PersonaliseConfig(num_subjects=n, registration=kind, num_pseudo=args.num_pseudo,
                                    steps=args.finetune_steps, batch_size=args.batch_size,
                                    lr=args.lr, seed=args.seed)
            done = (folder / "xy" / "config.json").is_file() and \
                f"{t}/{name}" in record and record[f"{t}/{name}"]["config"]["steps"] == cfg.steps
            if done:
                continue
            res = personalise_prior(tgt.t1, tgt.geometry, folder, tracer="fdg", config=cfg,
                                    target_gm=tgt.masks["gm"], target_name=f"test subject {t}",
                                    resume=folder.is_dir(), progress=False)
            record = _finished(args.models)
            _save(out / "personalise.json", _records(args, out))
            print(f"personalised subject {t} ({name}): {res.record['timings_s']}", flush=True)
    _save(out / "personalise.json", _records(args, out))
    return record


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Results of two runs of the stage on one scan (another process may run other methods)."""
    out = {m: dict(v) for m, v in old.items()}
    for m, v in new.items():
        out.setdefault(m, {}).update(v)
    return out


def _bowsher(kind: str, beta: float, t1: Any, vox: Any, b: int) -> Any:
    from sirf_diffusion.recon.bowsher import bowsher_prior

    extra = {"epsilon": 1e-3} if kind == "rdp" else {}
    return bowsher_prior(kind, beta, t1, b, voxel_size_mm=vox, **extra)


def stage_reconstruct(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch
    from evaluate_methods import scan_seeds

    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
    from sirf_diffusion.diffusion import load_slice_prior
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.metrics import image_metrics
    from sirf_diffusion.recon import RelativeDifferencePrior, map_em, osem
    from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS
    from sirf_diffusion.samplers.methods import reconstruct

    results = _load(out / "reconstructions.json")
    images: dict[str, np.ndarray] = {}
    priors = {"generic": load_slice_prior(None, "xy")}
    for t in _test_subjects(args):
        done = _finished(args.models)
        variants = [v for v in args.variants
                    if done.get(f"{t}/{v}", {}).get("config", {}).get("steps")
                    == args.finetune_steps]
        for name in variants:
            priors[f"{t}/{name}"] = load_slice_prior(Path(args.models) / f"subject{t}_{name}",
                                                     "xy")
        for r in range(args.realisations):
            key = f"{t}/{r}"
            seeds = scan_seeds(args.seed, t, args.counts, r)
            scan = simulate_scan(SimulationConfig(seed=t, counts_per_mm3=args.counts,
                                                  noise_seed=seeds["noise_seed"]), progress=False)
            model = scan.acquisition_model(args.subsets)
            lik = PoissonLogLikelihood(model, scan.prompts)
            vox = model.voxel_size_mm
            t1 = torch.as_tensor(scan.t1)
            runs = results.setdefault(key, {})

            def record(method: str, param: Any, x: torch.Tensor, wall: float) -> None:
                img = x.detach().reshape(scan.image_geometry.shape).numpy().astype(np.float32)
                m = image_metrics(img, scan.reference.numpy(), scan.masks)
                runs.setdefault(method, {})[str(param)] = {**m, "time_s": wall}
                images[f"{key}/{method}/{param}"] = img
                print(f"subject {t} realisation {r} {method} {param}: NRMSE {m['nrmse']:.4f} "
                      f"SSIM {m['ssim']:.4f} ({wall:.1f} s)", flush=True)

            epochs: list[torch.Tensor] = []
            t0 = time.perf_counter()
            osem(lik, num_subsets=args.subsets, num_epochs=max(args.osem_epochs),
                 callback=lambda d: epochs.append(d["x"].detach().clone())
                 if d["iteration"] % args.subsets == 0 else None, progress=False)
            wall = time.perf_counter() - t0
            for e in args.osem_epochs if "osem" in args.methods else ():
                record("osem", e, epochs[e - 1], wall * e / max(args.osem_epochs))
            init = epochs[1]
            for beta in args.rdp_beta if "mapem-rdp" in args.methods else ():
                t0 = time.perf_counter()
                prior = RelativeDifferencePrior(beta, voxel_size_mm=vox, epsilon=1e-3)
                x = map_em(lik, prior, init, num_iterations=args.map_iterations,
                           num_subsets=args.subsets, progress=False)
                record("mapem-rdp", beta, x, time.perf_counter() - t0)
            bowsher = (("rdp", args.bowsher_beta), ("quadratic", args.quadratic_beta))
            for kind, betas in bowsher if "bowsher" in args.methods else ():
                for beta in betas:
                    t0 = time.perf_counter()
                    prior = _bowsher(kind, beta, t1, vox, args.bowsher_neighbours)
                    x = map_em(lik, prior, init, num_iterations=args.map_iterations,
                               num_subsets=args.subsets, progress=False)
                    b = args.bowsher_neighbours
                    record(f"bowsher-{kind}" + ("" if b == 4 else f"-B{b}"), beta, x,
                           time.perf_counter() - t0)
            for sampler in ("dds", "lisch"):
                names = ["generic"] if f"{sampler}-generic" in args.methods else []
                if f"{sampler}-personalised" in args.methods:
                    names += [f"{t}/{v}" for v in variants]
                for pname in names:
                    g = torch.Generator().manual_seed(seeds["sampler_seed"])
                    res = reconstruct(sampler, lik, priors[pname], generator=g,
                                      num_steps=args.steps or METHOD_DEFAULTS[sampler]["num_steps"],
                                      num_samples=args.samples, progress=False)
                    label = "generic" if pname == "generic" else pname.split("/")[1]
                    record(sampler, label, res.mean, res.wall_time_s)
            _save(out / "reconstructions.json", _load(out / "reconstructions.json") | {
                key: _merge(_load(out / "reconstructions.json").get(key, {}), runs)})
            if r == 0:
                path = out / f"images_subject{t}.npz"
                kept = dict(np.load(path)) if path.is_file() else {}
                kept.update({k.split("/", 1)[1].replace("/", "_"): v
                             for k, v in images.items() if k.startswith(f"{t}/0/")})
                kept["reference"] = scan.reference.numpy()
                np.savez_compressed(path, **kept)
    return results


def stage_pairs(args: argparse.Namespace, out: Path) -> Path:
    """Write the registration stage's (target, subject) T1 / GM pairs for :func:`stage_ants`."""
    from sirf_diffusion.data.phantoms import brain_phantom
    from sirf_diffusion.data.splits import subject_seeds

    arrays: dict[str, np.ndarray] = {}
    for t in _test_subjects(args):
        tgt = _target(t)
        arrays[f"t{t}_t1"], arrays[f"t{t}_gm"] = tgt.t1[0], tgt.masks["gm"][0]
        for s in subject_seeds("train", args.reg_subjects):
            mv = brain_phantom(s, dims=2, shape=tgt.geometry.shape,
                               voxel_size_mm=tgt.geometry.voxel_size_mm)
            arrays[f"s{s}_t1"], arrays[f"s{s}_gm"] = mv.t1[0], mv.fractions["gm"][0]
    arrays["spacing_yx"] = np.asarray(tgt.geometry.voxel_size_mm[1:])
    path = Path(args.pairs or out / "pairs.npz")
    np.savez_compressed(path, **arrays)
    return path


def stage_ants(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """antspyx's affine and affine + SyN on the pairs of :func:`stage_pairs` (needs only numpy
    and antspyx: run it in an environment that has antspyx)."""
    import ants

    z = dict(np.load(args.pairs or out / "pairs.npz"))
    spacing = tuple(float(v) for v in z["spacing_yx"][::-1])
    targets = sorted(k[1:-3] for k in z if k.startswith("t") and k.endswith("_t1"))
    subjects = sorted(k[1:-3] for k in z if k.startswith("s") and k.endswith("_t1"))

    def image(a: np.ndarray) -> Any:  # ants arrays are (x, y): transpose the [y, x] slices
        return ants.from_numpy(np.ascontiguousarray(a.T, dtype=np.float32), spacing=spacing)

    rows: dict[str, list[dict[str, float]]] = {"ants-affine": [], "ants-syn": []}
    for t in targets:
        fixed, gm_t = image(z[f"t{t}_t1"]), z[f"t{t}_gm"] > 0.5
        for s in subjects:
            moving = image(z[f"s{s}_t1"])
            for name, kind in (("ants-affine", "Affine"), ("ants-syn", "SyN")):
                t0 = time.perf_counter()
                reg = ants.registration(fixed, moving, type_of_transform=kind,
                                        random_seed=0)
                wall = time.perf_counter() - t0
                gm = ants.apply_transforms(fixed, image(z[f"s{s}_gm"]),
                                           reg["fwdtransforms"]).numpy().T >= 0.5
                d = 2 * (gm & gm_t).sum() / (gm.sum() + gm_t.sum())
                rows[name].append({"target": int(t), "subject": int(s), "gm_dice": float(d),
                                   "time_s": wall})
                print(f"{name} target {t} subject {s}: GM Dice {d:.3f} in {wall:.2f} s",
                      flush=True)
    summary = {k: {m: [float(np.mean([r[m] for r in v])), float(np.std([r[m] for r in v]))]
                   for m in ("gm_dice", "time_s")} for k, v in rows.items()}
    result = {"rows": rows, "summary": summary, "antspyx": ants.__version__}
    (out / "registration_ants.json").write_text(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- report
def _best(results: dict[str, Any], method: str) -> tuple[str, list[dict[str, float]]]:
    """The parameter of ``method`` with the lowest NRMSE averaged over all scans."""
    params = sorted({p for runs in results.values() for p in runs.get(method, {})})
    best = min(params, key=lambda p: np.mean([runs[method][p]["nrmse"]
                                              for runs in results.values()]))
    return best, [runs[method][best] for runs in results.values()]


def _pm(values: list[float], scale: float = 1.0) -> str:
    return f"{scale * np.mean(values):.4f} ± {scale * np.std(values):.4f}"


def stage_report(args: argparse.Namespace, out: Path, command: str, wall: float) -> Path:
    reg = _load(out / "registration.json")
    pers = _records(args, out)
    rec = _load(out / "reconstructions.json")
    lines = ["# Personalised priors: results", "",
             f"Command: `{command}`", "",
             f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), Python "
             f"{platform.python_version()}; this call's wall time {wall / 60:.1f} min.", ""]
    if reg:
        lines += ["## Registration of training subjects' T1 to the target's T1", "",
                  f"{reg['pairs']} (target, training subject) pairs, 2D slices 128 x 128, "
                  "2.09 mm voxels.", "",
                  "| registration | GM Dice | WM Dice | T1 MSE | time per pair (s) |",
                  "|---|---|---|---|---|"]
        for k, s in reg["summary"].items():
            lines.append(f"| {k} | {s['gm_dice'][0]:.3f} ± {s['gm_dice'][1]:.3f} | "
                         f"{s['wm_dice'][0]:.3f} ± {s['wm_dice'][1]:.3f} | "
                         f"{s['t1_mse'][0]:.5f} | {s['time_s'][0]:.2f} |")
        lines.append("")
    if pers:
        lines += ["## Cost of personalising one subject", "",
                  "| subject / variant | subjects | registration | mean GM Dice | phantoms + "
                  "registration (s) | fine-tune steps | fine-tune (s) | total (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, r in pers.items():
            tm = r["timings_s"]
            lines.append(f"| {key} | {r['registration']['num_subjects']} | "
                         f"{r['registration']['kind']} | "
                         f"{r['registration'].get('mean_gm_dice', float('nan')):.3f} | "
                         f"{tm.get('phantoms_and_registration', float('nan')):.1f} | "
                         f"{r['config']['steps']} | {tm['fine_tune']:.0f} | {tm['total']:.0f} |")
        lines.append("")
    if rec:
        lines += ["## Reconstructions", "",
                  f"{len(rec)} scans (test subjects x realisations) at {args.counts} "
                  "counts/mm^3; mean ± std over the scans; classical methods at their best "
                  "parameter (lowest mean NRMSE).", "",
                  "| method | parameter | NRMSE | SSIM | CRC hot | CRC cold | time (s) |",
                  "|---|---|---|---|---|---|---|"]
        methods = sorted({m for runs in rec.values() for m in runs})
        for m in methods:
            params = [None] if m not in ("dds", "lisch") else sorted(
                {p for runs in rec.values() for p in runs.get(m, {})})
            for p in params:
                if p is None:
                    p, rows = _best(rec, m)
                else:
                    rows = [runs[m][p] for runs in rec.values() if p in runs.get(m, {})]
                crc = {k: [r[k] for r in rows if r.get(k) is not None] for k in
                       ("crc_hot", "crc_cold")}
                lines.append(f"| {m} | {p} | {_pm([r['nrmse'] for r in rows])} | "
                             f"{_pm([r['ssim'] for r in rows])} | "
                             f"{_pm(crc['crc_hot']) if crc['crc_hot'] else '-'} | "
                             f"{_pm(crc['crc_cold']) if crc['crc_cold'] else '-'} | "
                             f"{np.mean([r['time_s'] for r in rows]):.1f} |")
        for sampler in ("dds", "lisch"):
            variants = sorted({v for runs in rec.values() for v in runs.get(sampler, {})}
                              - {"generic"})
            for v in variants:
                gains = {k: runs[sampler]["generic"]["nrmse"] - runs[sampler][v]["nrmse"]
                         for k, runs in rec.items()
                         if v in runs.get(sampler, {}) and "generic" in runs[sampler]}
                lines += ["", f"{sampler} NRMSE, generic minus personalised ({v}), per scan "
                              "(subject/realisation): "
                              + ", ".join(f"{k} {g:+.4f}" for k, g in gains.items())
                              + f"; mean {np.mean(list(gains.values())):+.4f}."]
        lines += [""] + _ablation_lines(rec, pers)
        lines.append("")
        _figure(args, out)
    _pseudo_figure(args, out)
    path = out / "personalised.md"
    from sirf_diffusion.io.atomic import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _ablation_lines(rec: dict[str, Any], pers: dict[str, Any]) -> list[str]:
    """Per test subject, PET-DDS / PET-LiSch with the generic and each personalised prior (mean
    over that subject's realisations) and the gain, so priors measured on different subjects
    are compared on the same scans."""
    lines = ["## Ablation: registration and number of training subjects", "",
             "Mean over each subject's realisations; gain = generic minus personalised NRMSE.",
             "", "| sampler | subject | prior | training subjects | registration | mean GM Dice "
             "| NRMSE generic | NRMSE personalised | gain | SSIM personalised |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    subjects = sorted({k.split("/")[0] for k in rec}, key=int)
    for sampler in ("dds", "lisch"):
        for t in subjects:
            scans = [runs for k, runs in rec.items() if k.split("/")[0] == t
                     and "generic" in runs.get(sampler, {})]
            variants = sorted({v for runs in scans for v in runs[sampler]} - {"generic"})
            for v in variants:
                both = [runs[sampler] for runs in scans if v in runs[sampler]]
                gen = np.mean([r["generic"]["nrmse"] for r in both])
                per = np.mean([r[v]["nrmse"] for r in both])
                reg = pers.get(f"{t}/{v}", {}).get("registration", {})
                lines.append(
                    f"| {sampler} | {t} ({len(both)} scans) | {v} | "
                    f"{reg.get('num_subjects', '-')} | {reg.get('kind', '-')} | "
                    f"{reg.get('mean_gm_dice', float('nan')):.3f} | {gen:.4f} | {per:.4f} | "
                    f"{gen - per:+.4f} | {np.mean([r[v]['ssim'] for r in both]):.3f} |")
    return lines


def _figure(args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    rec = _load(out / "reconstructions.json")
    files = [out / f"images_subject{t}.npz" for t in _test_subjects(args)]
    files = [f for f in files if f.is_file()]
    if not files:
        return
    best = {m: _best(rec, m)[0] for m in ("osem", "mapem-rdp", "bowsher-rdp")
            if any(m in runs for runs in rec.values())}
    cols = [("reference", "reference")] + [(f"0_{m}_{p}", f"{m} ({p})") for m, p in best.items()]
    cols += [("0_dds_generic", "PET-DDS generic")] + [(f"0_dds_{v}", f"PET-DDS personal. ({v})")
                                                       for v in args.variants]
    fig, axes = plt.subplots(len(files), len(cols), figsize=(2.3 * len(cols), 2.5 * len(files)),
                             squeeze=False)
    for i, f in enumerate(files):
        with np.load(f) as z:
            ref = z["reference"][0]
            t = f.stem.replace("images_subject", "")
            for j, (k, title) in enumerate(cols):
                name = k
                ax = axes[i, j]
                ax.axis("off")
                if name in z:
                    ax.imshow(z[name][0][8:120, 8:120], cmap="gray_r", vmin=0,
                              vmax=float(np.percentile(ref, 99)))  # not the hot lesion's max
                    if k != "reference":
                        n = rec[f"{t}/0"][k.split("_")[1]][k.split("_", 2)[2]]["nrmse"]
                        title = f"{title}\nNRMSE {n:.3f}"
                ax.set_title(title if i == 0 or k != "reference" else f"subject {t}",
                             fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "personalised.png", dpi=110)
    plt.close(fig)


def _pseudo_figure(args: argparse.Namespace, out: Path) -> None:
    """Target T1, its reference activity, warped training subjects and pseudo-PET images of the
    first test subject's first personalised prior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sirf_diffusion.data.splits import subject_seeds

    t = subject_seeds("test", 1)[0]
    folder = Path(args.models) / f"subject{t}_{args.variants[0]}"
    if not (folder / "pseudo_pet.npz").is_file():
        return
    tgt = _target(t)
    with np.load(folder / "pseudo_pet.npz") as z:
        warped, images, weights = z["warped"], z["images"], z["weights"]
    panels = [(tgt.t1[0], "target T1"), (tgt.activity[0], "target PET (truth)")]
    panels += [(warped[i, 0], f"warped subject {i + 1}") for i in range(2)]
    panels += [(images[m, 0], f"pseudo-PET {m + 1} ({int((weights[m] > 0).sum())} subjects)")
               for m in range(2)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.6))
    for ax, (a, title) in zip(axes, panels):
        ax.imshow(a[8:120, 8:120], cmap="gray_r" if "T1" not in title else "gray")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "pseudo_pet.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    command = "python benchmarks/evaluate_personalised.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    t0 = time.perf_counter()
    if "ants" in args.stages:  # another environment: numpy and antspyx only
        stage_ants(args, out)
        return
    import torch

    torch.set_num_threads(1)
    if "pairs" in args.stages:
        print(f"wrote {stage_pairs(args, out)}")
    if "registration" in args.stages:
        stage_registration(args, out)
    if "personalise" in args.stages:
        stage_personalise(args, out)
    if "reconstruct" in args.stages:
        stage_reconstruct(args, out)
    if "report" in args.stages:
        print(f"wrote {stage_report(args, out, command, time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
