"""Personalised priors: the shipped slice prior fine-tuned on a target's pseudo-PET images.

Webber et al., "Personalized MR-informed diffusion models for 3D PET image reconstruction"
(IEEE TRPMS 2025, arXiv:2506.03804): register the training subjects' MR to the target's MR,
warp their PET with the same transforms, mix the warped images into pseudo-PET images and
train the diffusion model on them.  :func:`personalise_prior` does the three steps
(:mod:`sirf_diffusion.data.pseudo_pet`) and fine-tunes the ``xy`` model of a base prior (by
default the shipped one) with :func:`~.training.train` (``init_from`` = the base model, so the
run's lineage and stage are recorded in the exported model's ``extra.stages``; bf16 where the
hardware runs it; resumable from its checkpoints).

Layout of ``out_dir`` (a prior folder, read by ``reconstruct --model out_dir``)::

    xy/                      the fine-tuned model (config.json: extra.personalisation)
    yz/, xz/                 the base prior's other orientations, copied unchanged (3D cases)
    checkpoints/xy/          the fine-tuning run (checkpoints, loss.csv, train_config.json)
    pseudo_pet.npz           warped subjects, pseudo-PET images, mixing weights
    personalise.json         settings, registration accuracy and the cost of every step
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.pseudo_pet import PseudoPETSet, WarpedSubjects, make_pseudo_pet, warp_training_subjects
from ..data.registration import REGISTRATION_KINDS
from ..data.splits import subject_seeds
from ..io.atomic import atomic_write_bytes, atomic_write_text, make_dir, write_json
from ..physics.geometry import ImageGeometry
from .precision import check_precision

__all__ = ["PersonaliseConfig", "PersonalisedPrior", "personalise_prior", "PSEUDO_PET_FILE",
           "RECORD_FILE"]

PSEUDO_PET_FILE = "pseudo_pet.npz"
RECORD_FILE = "personalise.json"
_ORIENTATIONS = ("xy", "yz", "xz")


@dataclass
class PersonaliseConfig:
    """Settings of :func:`personalise_prior` (saved in ``personalise.json``).

    Attributes
    ----------
    num_subjects
        Training-split subjects registered to the target (the first ``num_subjects`` seeds).
    registration
        ``"none"``, ``"affine"``, ``"bspline"`` or ``"demons"``
        (:func:`~sirf_diffusion.data.registration.register_t1`).
    num_pseudo
        Pseudo-PET images (each a volume on the target's grid: one slice for a 2D case).
    subset_size, concentration
        Subset sizes ``(k_min, k_max)`` and Dirichlet parameter of the mixing
        (:func:`~sirf_diffusion.data.pseudo_pet.make_pseudo_pet`; ``None``: ``(2, N)``).
    seed
        Seed of the mixing and of the fine-tuning run.
    steps, batch_size, lr, warmup_steps, checkpoint_every
        The fine-tuning run (AdamW from the base weights, constant learning rate after the
        warm-up, EMA as the base prior's training).
    precision
        Network precision of the run (``"auto"``: bfloat16 where the hardware runs it).
    device
        Torch device of the run.
    """

    num_subjects: int = 16
    registration: str = "demons"
    num_pseudo: int = 64
    subset_size: tuple[int, int] | None = None
    concentration: float = 1.0
    seed: int = 0
    steps: int = 300
    batch_size: int = 8
    lr: float = 5e-5
    warmup_steps: int = 20
    checkpoint_every: int = 50
    precision: str = "auto"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.subset_size is not None:
            self.subset_size = (int(self.subset_size[0]), int(self.subset_size[1]))
        for key in ("num_subjects", "num_pseudo", "steps", "batch_size", "checkpoint_every"):
            v = getattr(self, key)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"PersonaliseConfig.{key} must be a positive int, got {v!r}")
        for key in ("seed", "warmup_steps"):
            v = getattr(self, key)
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise ValueError(f"PersonaliseConfig.{key} must be an int >= 0, got {v!r}")
        if self.registration not in REGISTRATION_KINDS:
            raise ValueError(f"PersonaliseConfig.registration must be one of "
                             f"{REGISTRATION_KINDS}, got {self.registration!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"PersonaliseConfig.lr must be > 0, got {self.lr!r}")
        check_precision(self.precision, "PersonaliseConfig.precision")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class PersonalisedPrior:
    """What :func:`personalise_prior` made: the prior folder and its record."""

    prior_dir: Path
    record: dict[str, Any]


class _PseudoPETSource:
    """Volume source of the fine-tuning run: training-run seed ``seeds[m]`` -> pseudo image
    ``m`` (the run draws its seeds from the training split; here they only number the images)."""

    def __init__(self, images: np.ndarray, seeds: list[int]) -> None:
        self.images = images
        self.index = {s: m for m, s in enumerate(seeds)}

    def __call__(self, seed: int) -> np.ndarray:
        return self.images[self.index[int(seed)]]


def _base_train_config(base_xy: Path) -> dict[str, Any]:
    meta = json.loads((base_xy / "config.json").read_text())
    tc = (meta.get("extra") or {}).get("train_config")
    if not isinstance(tc, dict):
        raise ValueError(f"{base_xy / 'config.json'}: the base model records no training config "
                         "(extra.train_config); personalisation fine-tunes a model trained by "
                         "`sirf-diffusion train`")
    return tc


def _fine_tune_config(cfg: PersonaliseConfig, base_xy: Path, geometry: ImageGeometry,
                      tracer: str) -> Any:
    from .training import TrainConfig

    base = _base_train_config(base_xy)
    return TrainConfig(
        orientation="xy", steps=cfg.steps, batch_size=cfg.batch_size, micro_batches=1,
        lr=cfg.lr, warmup_steps=cfg.warmup_steps, lr_decay="constant",
        checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, num_subjects=cfg.num_pseudo,
        val_subjects=0, tracer=tracer, volume_shape=None,
        voxel_size_mm=tuple(geometry.voxel_size_mm), slice_shape=base.get("slice_shape"),
        psf_fwhm_mm=base.get("psf_fwhm_mm"), support_threshold=base.get("support_threshold", 0.05),
        min_support_fraction=base.get("min_support_fraction", 0.05),
        scale_range=base.get("scale_range", (0.7, 1.4)), flip=base.get("flip", True),
        ema_decay=min(float(base.get("ema_decay", 0.999)), 0.99), device=cfg.device,
        model=base.get("model", {}), init_from=str(base_xy), precision=cfg.precision,
        recipe=base.get("recipe", {}))


#: What the pseudo-PET set depends on: PersonaliseConfig field -> its ``personalise`` flag.
_SET_FIELDS = {"num_subjects": "--subjects", "registration": "--registration",
               "num_pseudo": "--pseudo", "subset_size": None, "concentration": None,
               "seed": "--seed", "tracer": "--tracer"}


def _set_settings(cfg: PersonaliseConfig, tracer: str) -> dict[str, Any]:
    """The settings a pseudo-PET set was made with (saved with it, compared on resume)."""
    d = cfg.to_dict() | {"tracer": tracer}
    return {k: d[k] for k in _SET_FIELDS}


def _save_sets(path: Path, warped: WarpedSubjects, pseudo: PseudoPETSet,
               settings: dict[str, Any], timings: dict[str, float]) -> None:
    def write(f: Any) -> None:
        np.savez(f, warped=warped.pet, seeds=np.asarray(warped.seeds), images=pseudo.images,
                 weights=pseudo.weights,
                 warped_summary=np.asarray(json.dumps(warped.summary())),
                 registration_time_s=np.asarray(warped.time_s),
                 settings=np.asarray(json.dumps(settings)),
                 timings_s=np.asarray(json.dumps(timings)))
    atomic_write_bytes(path, write)


def _load_sets(path: Path) -> tuple[dict[str, Any], np.ndarray, dict[str, Any],
                                    dict[str, float]]:
    """Summary, images, settings and timings of a saved set (a set saved before the settings
    and timings were stored: the settings its summary and images show, no timings)."""
    with np.load(path, allow_pickle=False) as z:
        summary = json.loads(str(z["warped_summary"]))
        images = np.asarray(z["images"], np.float32)
        settings = json.loads(str(z["settings"])) if "settings" in z.files else {
            "num_subjects": summary["num_subjects"], "registration": summary["kind"],
            "num_pseudo": int(images.shape[0])}
        timings = json.loads(str(z["timings_s"])) if "timings_s" in z.files else {}
    return summary, images, settings, timings


def _check_same_set(saved: dict[str, Any], wanted: dict[str, Any], out: Path) -> None:
    """Refuse to resume a run whose pseudo-PET set was made with other settings (the run would
    go on training on the old set while recording the new settings)."""
    diff = [k for k in _SET_FIELDS if k in saved and saved[k] != wanted[k]]
    if diff:
        details = "; ".join(
            f"{k}{f' ({_SET_FIELDS[k]})' if _SET_FIELDS[k] else ''}: {saved[k]!r} -> "
            f"{wanted[k]!r}" for k in diff)
        raise ValueError(f"cannot resume the personalisation in {out}: its pseudo-PET set was "
                         f"made with other settings ({details}); resume with the run's "
                         "settings, or start again with overwrite (--overwrite)")


def _earlier_steps_seconds(run_dir: Path, upto: int) -> float:
    """Fine-tuning time of steps ``1..upto`` made by earlier calls, from ``loss.csv``: its
    ``seconds`` column restarts at every resumption, so the time is the sum of each call's last
    value."""
    from ..training_loop import read_csv

    log = read_csv(run_dir / "loss.csv")
    total, last = 0.0, 0.0
    for step, sec in zip(log.get("step", []), log.get("seconds", [])):
        if step > upto:
            break
        if sec < last:  # a new call started here
            total += last
        last = sec
    return total + last


def _annotate_model(xy_dir: Path, record: dict[str, Any]) -> None:
    """Say in the exported model's config what it was trained on (the weights are untouched, so
    their sha256 stays valid)."""
    path = xy_dir / "config.json"
    meta = json.loads(path.read_text())
    meta["model"]["training_data"] = {
        "source": "pseudo_pet", "tracer": record["tracer"],
        "voxel_size_mm": record["voxel_size_mm"],
        "subjects": record["registration"]["seeds"], "split": "train",
        "num_pseudo": record["config"]["num_pseudo"],
        "psf_fwhm_mm": meta["model"].get("training_data", {}).get("psf_fwhm_mm")}
    meta["extra"]["personalisation"] = {k: record[k] for k in
                                        ("target", "config", "registration", "pseudo_pet",
                                         "base_model", "timings_s")}
    atomic_write_text(path, json.dumps(meta, indent=2, allow_nan=False) + "\n")


def personalise_prior(target_t1: np.ndarray, geometry: ImageGeometry,
                      out_dir: str | os.PathLike[str], *, tracer: str,
                      config: PersonaliseConfig | None = None,
                      base_prior: str | os.PathLike[str] | None = None,
                      target_gm: np.ndarray | None = None, target_name: str = "",
                      resume: bool = False, overwrite: bool = False,
                      progress: bool = True) -> PersonalisedPrior:
    """Register, mix and fine-tune: a prior personalised to the subject of ``target_t1``.

    Parameters
    ----------
    target_t1
        The target's T1 ``[z, y, x]`` on ``geometry``.
    geometry
        The target's image grid (the training subjects are generated on it).
    out_dir
        The prior folder to write (module docstring).  It must be absent or empty unless
        ``resume`` (continue the fine-tuning run in it) or ``overwrite``.
    tracer
        Tracer of the target scan (the subjects' PET is made with it).
    config
        :class:`PersonaliseConfig` (default settings when ``None``).
    base_prior
        Prior folder whose ``xy`` model is fine-tuned (default: the shipped prior).
    target_gm
        Optional grey-matter mask of the target, for the registration's Dice in the record.
    target_name
        Recorded as the target (e.g. the case folder).
    resume, overwrite, progress
        As :func:`~.training.train` (``overwrite`` starts a new run and replaces the files this
        function writes; other files in ``out_dir`` are left alone).  ``resume`` reuses the
        saved pseudo-PET set and refuses (``ValueError``) settings that would have made another
        set (subjects, registration, pseudo-PET count and mixing, seed, tracer) and ``steps``
        below the steps already made.  The recorded fine-tuning time then adds the earlier
        calls' steps (from ``loss.csv``) to this call's.
    """
    from ..models import default_prior_dir
    from .checkpointing import latest_checkpoint_step
    from .training import train

    cfg = dataclasses.replace(config or PersonaliseConfig())
    out = Path(out_dir)
    base = Path(base_prior) if base_prior is not None else default_prior_dir()
    base_xy = base / "xy" if (base / "xy" / "config.json").is_file() else base
    if not (base_xy / "config.json").is_file():
        raise FileNotFoundError(f"no xy model in the base prior {base}")
    if (out.resolve() == base.resolve() or out.resolve() == base_xy.resolve()):
        raise ValueError(f"the output folder {out} is the base prior's folder")
    fine_tune = _fine_tune_config(cfg, base_xy, geometry, tracer)  # validates before any work
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise FileExistsError(f"{out} is not empty: continue its run with resume, or overwrite")
    make_dir(out)

    timings: dict[str, float] = {}
    sets_path = out / PSEUDO_PET_FILE
    run_dir = out / "checkpoints" / "xy"
    done = latest_checkpoint_step(run_dir) if resume else 0
    if done > cfg.steps:
        raise ValueError(f"PersonaliseConfig.steps (--steps) = {cfg.steps}: the run in {out} "
                         f"has already made {done} fine-tuning steps; resume with steps >= "
                         f"{done}")
    settings = _set_settings(cfg, tracer)
    if resume and sets_path.is_file():
        summary, images, saved, set_timings = _load_sets(sets_path)
        _check_same_set(saved, settings, out)
        if not set_timings and (out / RECORD_FILE).is_file():  # a set saved without them
            set_timings = json.loads((out / RECORD_FILE).read_text()).get("timings_s", {})
        timings.update({k: v for k, v in set_timings.items()
                        if k in ("phantoms_and_registration", "pseudo_pet")})
    else:
        seeds = subject_seeds("train", cfg.num_subjects)
        t0 = time.perf_counter()
        warped = warp_training_subjects(target_t1, geometry, seeds, tracer=tracer,
                                        kind=cfg.registration, target_gm=target_gm)
        timings["phantoms_and_registration"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pseudo = make_pseudo_pet(warped.pet, cfg.num_pseudo, seed=cfg.seed,
                                 subset_size=cfg.subset_size, concentration=cfg.concentration)
        timings["pseudo_pet"] = time.perf_counter() - t0
        _save_sets(sets_path, warped, pseudo, settings, timings)
        summary, images = warped.summary(), pseudo.images

    from .datasets import split_seeds

    source = _PseudoPETSource(images, split_seeds("train", cfg.num_pseudo))
    t0 = time.perf_counter()
    train(fine_tune, run_dir, resume=resume, progress=progress,
          volume_source=source, export_dir=out / "xy", overwrite=overwrite)
    # this call's wall time, plus the steps earlier calls made (a resumed run)
    timings["fine_tune"] = time.perf_counter() - t0 + (
        _earlier_steps_seconds(run_dir, done) if done else 0.0)
    for o in _ORIENTATIONS[1:]:  # a 3D case needs every orientation: the base's, unchanged
        if geometry.shape[0] > 1 and (base / o / "config.json").is_file() \
                and not (out / o).exists():
            shutil.copytree(base / o, out / o)
    timings["total"] = float(sum(timings.values()))
    record = {"target": target_name, "tracer": tracer,
              "image_shape": list(geometry.shape),
              "voxel_size_mm": list(geometry.voxel_size_mm), "config": cfg.to_dict(),
              "registration": summary,
              "pseudo_pet": {"num_images": cfg.num_pseudo, "seed": cfg.seed,
                             "subset_size": list(cfg.subset_size) if cfg.subset_size else None,
                             "concentration": cfg.concentration},
              "base_model": {"path": str(base_xy),
                             "weights_sha256": json.loads((base_xy / "config.json").read_text())
                             ["weights"]["sha256"]},
              "timings_s": {k: round(v, 2) for k, v in timings.items()},
              "resumed_at_step": done}
    write_json(out / RECORD_FILE, record)
    _annotate_model(out / "xy", record)
    return PersonalisedPrior(out, record)
