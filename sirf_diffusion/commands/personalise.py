"""``sirf-diffusion personalise``: a prior fine-tuned to one case's anatomy (its ``t1.hv``).

Training-split subjects are registered to the case's T1, their PET warped and mixed into
pseudo-PET images, and the base prior's ``xy`` model fine-tuned on them
(:func:`~sirf_diffusion.diffusion.personalise.personalise_prior`).  ``--out`` becomes a prior
folder that ``reconstruct --model`` reads.

Like ``train``, the run writes into ``--out`` itself so that ``--resume`` can continue it after
a kill: ``--out`` must be absent or empty, unless ``--resume`` (continue the run there) or
``--overwrite`` (replace all of it); it may not be inside the case folder or the base prior.  A
run that fails before its first checkpoint leaves nothing behind.  ``--resume`` keeps the run's
pseudo-PET set, so it refuses ``--subjects``, ``--registration``, ``--pseudo``, ``--seed`` or
``--tracer`` other than the run's, and ``--steps`` below the steps already made.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .arguments import (
    add_precision_argument,
    add_progress_argument,
    add_run_arguments,
    check_device,
    non_negative_int,
    positive_int,
)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``personalise``."""
    from ..data.registration import REGISTRATION_KINDS
    from ..diffusion.personalise import PersonaliseConfig

    d = PersonaliseConfig()
    p.add_argument("case", help="case folder in PETRIC's layout with the subject's T1 (t1.hv)")
    p.add_argument("--out", metavar="MODEL_DIR", required=True,
                   help="prior folder to write (absent or empty; or --resume / --overwrite)")
    p.add_argument("--subjects", metavar="N", type=positive_int, default=d.num_subjects,
                   help="training-split subjects registered to the case (default: %(default)s)")
    p.add_argument("--registration", choices=REGISTRATION_KINDS, default=d.registration,
                   help="T1 registration: none, affine, affine + B-spline, or affine + "
                        "diffeomorphic demons (default: %(default)s)")
    p.add_argument("--steps", metavar="N", type=positive_int, default=d.steps,
                   help="fine-tuning steps (default: %(default)s)")
    p.add_argument("--pseudo", metavar="N", type=positive_int, default=d.num_pseudo,
                   help="pseudo-PET images: random weighted averages of random subsets of the "
                        "warped subjects (default: %(default)s)")
    p.add_argument("--tracer", choices=("fdg", "amyloid"), default=None,
                   help="tracer of the subjects' PET (default: the case's simulation.json; "
                        "required for other cases)")
    p.add_argument("--base", metavar="DIR", default=None,
                   help="prior whose xy model is fine-tuned (default: the shipped prior)")
    p.add_argument("--seed", metavar="S", type=non_negative_int, default=d.seed,
                   help="seed of the pseudo-PET mixing and the fine-tuning (default: "
                        "%(default)s)")
    add_run_arguments(p, "replace what --out holds (all of it)")
    p.add_argument("--device", metavar="DEVICE", default="cpu",
                   help="torch device of the fine-tuning (default: %(default)s)")
    add_precision_argument(p)
    add_progress_argument(p)


def _tracer(args: argparse.Namespace, meta: dict) -> str:
    if args.tracer is not None:
        return args.tracer
    tracer = (meta.get("simulation") or {}).get("tracer")
    if not tracer:
        raise ValueError(f"--tracer: case {args.case} has no simulation.json naming its tracer; "
                         "give --tracer fdg or --tracer amyloid")
    return str(tracer)


def run(args: argparse.Namespace) -> int:
    """Personalise a prior to ``args.case`` (module docstring for what is refused)."""
    from ..diffusion.checkpointing import list_checkpoints
    from ..diffusion.personalise import PersonaliseConfig, personalise_prior
    from ..models import default_prior_dir
    from .case import load_case
    from .output import (
        abandon_run,
        check_location,
        check_replaceable,
        entries,
        make_folders,
        preview,
        set_aside,
    )

    device = check_device(args.device)
    base = args.base if args.base is not None else str(default_prior_dir())
    if not (Path(base) / "xy" / "config.json").is_file() and \
            not (Path(base) / "config.json").is_file():
        raise ValueError(f"--base {base}: no xy model there")
    folder = check_location(args.out, "--out", {"case folder": args.case, "base prior": base})
    old = entries(folder, "--out") if folder.is_dir() else []
    run_dir = folder / "checkpoints" / "xy"
    if args.resume and old and not list_checkpoints(run_dir):
        raise ValueError(f"--resume: --out {args.out} holds no personalisation run (no "
                         f"checkpoint in checkpoints/xy/, but {preview(old)}); choose another "
                         "folder")
    if old and not (args.resume or args.overwrite):
        hint = ("it holds a personalisation run: pass --resume to continue it, or --overwrite "
                "to replace it" if list_checkpoints(run_dir) else
                "pass --overwrite to replace its contents")
        raise ValueError(f"--out {args.out} is not empty (it holds {preview(old)}): {hint}, or "
                         "choose another folder")
    if args.overwrite and old:
        check_replaceable(folder, args.out)

    case, meta = load_case(args.case)
    if "t1" not in case.extra:
        raise ValueError(f"case {args.case} has no t1.hv: personalisation registers the "
                         "training subjects' MR to the case's T1")
    tracer = _tracer(args, meta)
    config = PersonaliseConfig(num_subjects=args.subjects, registration=args.registration,
                               num_pseudo=args.pseudo, steps=args.steps, seed=args.seed,
                               precision=args.precision, device=device)
    gm = case.masks.get("gm")
    created = make_folders(folder)
    # what --overwrite replaces is set aside until the new run has a result, put back if not
    trash = set_aside(folder, old) if old and args.overwrite else None
    try:
        result = personalise_prior(
            case.extra["t1"], case.image_geometry, folder, tracer=tracer, config=config,
            base_prior=base, target_gm=None if gm is None else gm > 0.5,
            target_name=str(args.case), resume=args.resume, overwrite=args.overwrite,
            progress=not args.no_progress)
    except BaseException:
        if not list_checkpoints(run_dir):  # else the checkpoints are kept for --resume
            abandon_run(folder, trash, created)
            trash = None
        raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    t = result.record["timings_s"]
    reg = result.record["registration"]
    dice = (f", grey-matter Dice {reg['mean_gm_dice']:.3f}" if "mean_gm_dice" in reg else "")
    print(f"personalise: {reg['num_subjects']} subjects registered ({reg['kind']}{dice}) and "
          f"{config.steps} fine-tuning steps in {t['total']:.0f} s (registration "
          f"{t.get('phantoms_and_registration', 0):.0f} s, fine-tuning {t['fine_tune']:.0f} s); "
          f"prior in {args.out}: reconstruct --model {args.out}")
    return 0
