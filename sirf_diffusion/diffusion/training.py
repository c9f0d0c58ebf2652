"""Resumable, optionally distributed training of the 2D slice score networks.

One call of :func:`train` trains one orientation (``'xy'``, ``'yz'`` or ``'xz'``) of the slice
prior on simulated PET brain slices (:mod:`sirf_diffusion.diffusion.datasets`) with the
denoising score-matching loss of :meth:`ScoreModel.training_loss`:

* AdamW, linear learning-rate warm-up then constant (so ``steps`` can be extended on resume),
  gradient-norm clipping, parameter EMA (:class:`~.ema.EMA`);
* **counter-based randomness**: the data of step ``k``, the diffusion times and noise of the
  loss and any dropout are seeded by ``(seed, k, chunk)``; nothing depends on a global or
  carried-over RNG state, so a run interrupted after a checkpoint and resumed reproduces the
  uninterrupted run bit for bit (same device and number of CPU threads: a different thread
  count changes the order of floating-point reductions);
* the global batch is split into ``micro_batches`` equal chunks (gradient accumulation); under
  ``torchrun`` rank ``r`` of ``W`` takes chunks ``r*S/W ... (r+1)*S/W - 1`` and
  DistributedDataParallel averages the gradients, so a ``W``-process run computes the same
  update as a single-process run with the same ``micro_batches``;
* rank 0 writes everything in ``out_dir``:

  ================================  ==========================================================
  ``train_config.json``             the resolved :class:`TrainConfig` (+ world size, versions)
  ``loss.csv`` / ``val_loss.csv``   per-step training loss; EMA-model validation loss
  ``loss.png``                      loss curves
  ``checkpoints/step_XXXXXXXX.pt``  model, EMA, optimiser, step, run id (``torch.load(...,
                                    weights_only=True)``), with a ``.sha256`` sidecar; written
                                    atomically, the previous one of this run kept
  ``model/``                        the EMA model (:func:`~.modelio.save_model`), refreshed at
                                    every checkpoint
  ``data/volumes_*.npz``            cached training/validation volumes
  ================================  ==========================================================

  Every file and folder is created with the user's umask (:mod:`sirf_diffusion.io.atomic`).

* **nothing is lost**: a run folder that holds checkpoints is continued only with ``resume``
  (else :class:`~sirf_diffusion.io.atomic.OutputExistsError` naming ``--resume``); the export
  folder is replaced only when it is empty or holds a model exported by this run (the run id
  drawn when the run started, kept by its resumptions and recorded in the checkpoints and the
  exported model's ``extra``), unless ``overwrite``; temporary files of a write interrupted by
  a kill are removed when the next run starts.

The checkpoint and log helpers live in :mod:`sirf_diffusion.diffusion.checkpointing` and are
re-exported here.

Launch distributed training with e.g. ``torchrun --nproc_per_node 2 -m sirf_diffusion train
...``; :func:`train` initialises ``torch.distributed`` itself (gloo on CPU, nccl on CUDA) when
``WORLD_SIZE > 1`` is set and works unchanged in a single process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from ..io.atomic import (
    OutputExistsError,
    atomic_write_bytes,
    make_dir,
    remove_stale_temporaries,
    temporary_dir,
    write_json,
)
from ..io.config import check_fields, dataclass_from_dict
from ..training_loop import StepStats, TrainingLoop, check_counts, check_optimiser_fields
from .checkpointing import (  # noqa: F401  (re-exported: these helpers lived here)
    _CKPT_FORMAT,
    _LOSS_FIELDS,
    _RESUMABLE_CHANGES,
    CheckpointError,
    _delete_checkpoint,
    _load_latest,
    _open_csv,
    _read_csv,
    _save_checkpoint,
    _truncate_csv,
    check_run_folder,
    checkpoint_run_id,
    legacy_run_id,
    list_checkpoints,
    load_checkpoint,
    new_run_id,
    plot_loss,
    remove_stale_checkpoint_temporaries,
)
from .datasets import (
    Orientation,
    SliceDataset,
    VolumeSource,
    build_volume_pool,
    derive_seed,
    phantom_volume_source,
    split_seeds,
)
from .ema import EMA
from .precision import check_precision
from .recipe import LossRecipe

__all__ = ["TrainConfig", "CheckpointError", "OutputExistsError", "train", "load_checkpoint",
           "list_checkpoints", "plot_loss"]

# Tags of the counter-based random streams (see datasets.derive_seed).
_TAG_INIT, _TAG_NOISE, _TAG_DROPOUT, _TAG_VAL = 11, 12, 13, 14
_VAL_SEED_OFFSET = 1_000_003


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``train_config.json``).

    Attributes
    ----------
    orientation
        Slice orientation: ``'xy'`` axial, ``'yz'`` sagittal, ``'xz'`` coronal.
    steps
        Number of optimiser steps (may be raised when resuming).
    batch_size
        *Global* batch size (all ranks, all micro-batches together).
    micro_batches
        Chunks the global batch is split into (gradient accumulation); must be a multiple of the
        world size.  ``None``: the world size.  Fix it to make runs with different numbers of
        processes identical.
    lr, warmup_steps
        AdamW learning rate, reached linearly over ``warmup_steps``.
    lr_decay, min_lr
        After the warm-up: ``'constant'`` keeps ``lr``; ``'cosine'`` lowers it to ``min_lr`` at
        the last step along a half cosine (a function of the step only, so resumed runs follow
        the same schedule; raising ``steps`` on resume stretches it).
    weight_decay, betas
        AdamW decoupled weight decay and moment coefficients.
    grad_clip
        Maximum global gradient norm (``None``: no clipping).
    ema_decay, ema_warmup
        Parameter EMA (:class:`~.ema.EMA`).
    checkpoint_every, keep_checkpoints
        Checkpoint (and EMA-model export) period in steps; number of checkpoints kept (>= 2).
    seed
        Seed of everything random (initialisation, data order, augmentation, noise).
    num_subjects, val_subjects
        Subjects of the ``'train'`` split used for training and of the ``'val'`` split for the
        validation loss (0: no validation).
    val_every, val_batches
        Validation period (steps) and number of fixed batches of ``batch_size`` it averages.
    tracer, volume_shape, voxel_size_mm
        Brain phantoms: tracer and voxel grid ``(z, y, x)`` (``volume_shape=None``: the
        phantom's default shape).
    slice_shape
        ``(H, W)`` slices are centre-cropped / zero-padded to (``None``: as sliced).
    psf_fwhm_mm
        Gaussian PSF applied to the phantoms (high-quality PET targets; ``None``: none).
    support_threshold, min_support_fraction, scale_range, flip
        Slice selection, normalisation and augmentation (:class:`~.datasets.SliceDataset`).
    cache_dir
        Folder of the cached volumes (default ``out_dir/data``); share it between orientations.
    device
        ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'`` (CUDA when available); under
        ``torchrun`` with CUDA each rank uses ``cuda:LOCAL_RANK``.
    model
        :class:`~.model.ScoreModelConfig` fields (``unet``, ``parametrisation``, ``schedule``,
        ``t_min``); ``orientation``, ``image_size``, ``normalisation`` and ``training_data``
        are filled in from this config and the data.
    init_from
        A model folder (:func:`~.modelio.load_model`) whose weights start the network and its
        EMA: a warm start, e.g. to continue training the shipped prior (its architecture must
        match ``model``).  Only for a new run: a resumed run takes everything from its
        checkpoint.  ``{orientation}`` in the path is replaced by :attr:`orientation`, so one
        config (``--orientation all``) warm-starts each orientation from its own model, e.g.
        ``"sirf_diffusion/models/default/{orientation}"``.
    """

    orientation: Orientation = "xy"
    steps: int = 10_000
    batch_size: int = 16
    micro_batches: int | None = None
    lr: float = 2e-4
    warmup_steps: int = 200
    lr_decay: str = "constant"
    min_lr: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    num_subjects: int = 32
    val_subjects: int = 0
    val_every: int = 500
    val_batches: int = 4
    tracer: str = "fdg"
    volume_shape: tuple[int, int, int] | None = None
    voxel_size_mm: tuple[float, float, float] = (2.03125, 2.08626, 2.08626)
    slice_shape: tuple[int, int] | None = (112, 112)
    psf_fwhm_mm: float | None = 4.5
    support_threshold: float = 0.05
    min_support_fraction: float = 0.05
    scale_range: tuple[float, float] = (0.7, 1.4)
    flip: bool = True
    cache_dir: str | None = None
    device: str = "cpu"
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    precision: str = "auto"
    recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("betas", "voxel_size_mm", "scale_range"):
            setattr(self, key, tuple(float(v) for v in getattr(self, key)))
        for key in ("volume_shape", "slice_shape"):
            v = getattr(self, key)
            setattr(self, key, None if v is None else tuple(int(n) for n in v))
        if self.orientation not in ("xy", "yz", "xz"):
            raise ValueError(f"orientation must be 'xy', 'yz' or 'xz', got {self.orientation!r}")
        check_counts(self, "TrainConfig", positive=("steps", "batch_size", "checkpoint_every",
                                                    "num_subjects", "val_every", "val_batches"),
                     non_negative=("warmup_steps", "val_subjects", "seed"))
        check_optimiser_fields(self, "TrainConfig")
        if self.micro_batches is not None and (
                self.micro_batches <= 0 or self.batch_size % self.micro_batches):
            raise ValueError(f"micro_batches={self.micro_batches} must be positive and divide "
                             f"batch_size={self.batch_size}")
        if not isinstance(self.model, dict):
            raise TypeError("TrainConfig.model must be a dict of ScoreModelConfig fields")
        check_precision(self.precision, "TrainConfig.precision")
        if not isinstance(self.recipe, dict):
            raise TypeError("TrainConfig.recipe must be a dict of LossRecipe fields")
        check_fields(self.recipe, LossRecipe, "TrainConfig.recipe")
        LossRecipe(**self.recipe)  # validates
        clash = {"orientation", "image_size"} & set(self.model)
        if clash:
            raise ValueError(f"TrainConfig.model must not set {sorted(clash)}: they come from "
                             "the training config")

    def init_path(self) -> str | None:
        """The warm-start folder of this orientation: :attr:`init_from` with
        ``{orientation}`` replaced (``None`` without a warm start)."""
        return None if not self.init_from else self.init_from.replace("{orientation}",
                                                                      self.orientation)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists, a JSON-clean copy

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; unknown keys raise (keys starting with ``_`` are comments)."""
        return dataclass_from_dict(cls, d, comments=True)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a JSON file such as ``configs/default_prior.json``."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


# ---------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def _init_distributed(device: str) -> _Dist:
    """Join the process group ``torchrun`` describes in the environment (if any)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=timedelta(hours=2))
    return _Dist(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", "0")), True)


def _resolve_device(name: str, dist_ctx: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        if dist_ctx.world_size > 1:
            dev = torch.device("cuda", dist_ctx.local_rank)
        torch.cuda.set_device(dev)
    return dev


def _cpu_generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


class _seeded_rng:
    """Context manager: global RNGs of the CPU (and ``device``) seeded, restored on exit.

    Only draws that bypass explicit generators (dropout, default ``nn`` initialisation) see
    this state; the caller's global RNG state is left untouched.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = seed, device
        self._fork = torch.random.fork_rng(
            devices=[device] if device.type == "cuda" else [], device_type="cuda")

    def __enter__(self) -> None:
        self._fork.__enter__()
        torch.default_generator.manual_seed(self.seed)
        if self.device.type == "cuda":
            torch.cuda.default_generators[self.device.index or 0].manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


class _LossModule(nn.Module):
    """``forward`` = ``model.training_loss`` (DDP synchronises gradients through ``forward``)."""

    def __init__(self, model: nn.Module, recipe: LossRecipe | None = None) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe if recipe is not None and not recipe.is_default else None

    def forward(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.recipe is None:  # custom models need only training_loss(x0, generator)
            return self.model.training_loss(x0, generator)
        return self.model.training_loss(x0, generator, recipe=self.recipe)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of (0-based) step ``step``: linear warm-up, then constant or cosine decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant" or cfg.steps <= cfg.warmup_steps + 1:
        return cfg.lr
    frac = (step - cfg.warmup_steps) / (cfg.steps - 1 - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def _check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    # fields added after a checkpoint was written take their defaults (the behaviour it ran with)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    saved = {**{k: v for k, v in defaults.items() if k not in saved and k in current}, **saved}
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if diff:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume: the config differs from the checkpoint's in {details} "
                         f"(only {sorted(_RESUMABLE_CHANGES)} may change)")


# ------------------------------------------------------------------------------------ model
def _build_model(cfg: TrainConfig, dataset: SliceDataset, seeds: list[int],
                 model_factory: Callable[[], nn.Module] | None) -> nn.Module:
    if model_factory is not None:
        return model_factory()
    from .model import ScoreModel, ScoreModelConfig

    desc = dataset.describe()
    mcfg = ScoreModelConfig.from_dict({
        **cfg.model, "orientation": cfg.orientation, "image_size": list(dataset.slice_shape),
        "normalisation": desc["normalisation"],
        "training_data": {"source": "brain_phantom", "tracer": cfg.tracer, "split": "train",
                          "num_subjects": len(seeds), "seeds": seeds,
                          "psf_fwhm_mm": dataset.psf_fwhm_mm,
                          "voxel_size_mm": list(dataset.voxel_size_mm),
                          "num_slices": len(dataset), "scale_range": list(dataset.scale_range),
                          "flip_left_right": dataset.flip}})
    return ScoreModel(mcfg)


def _export_ema(model: nn.Module, ema: EMA, target: Path, extra: dict[str, Any],
                save: Callable[[Path, nn.Module, dict[str, Any]], Any] | None = None) -> Path:
    """Write the EMA weights to ``target`` (swapped in whole, never half-written); ``save(folder,
    ema_model, extra)`` writes another model format (the DEFT h-network's)."""
    out_dir = make_dir(target.parent)
    ema_model = copy.deepcopy(model).to("cpu")
    ema.copy_to(ema_model)
    tmp = temporary_dir(out_dir, target.name)
    try:
        if save is not None:
            save(tmp, ema_model, extra)
        elif hasattr(ema_model, "config") and hasattr(ema_model, "training_loss"):
            from .modelio import save_model

            save_model(tmp, ema_model, extra)
        else:  # a test/custom network without ScoreModelConfig: weights + extra only
            from safetensors.torch import save

            blob = save({k: v.contiguous() for k, v in ema_model.state_dict().items()})
            atomic_write_bytes(tmp / "model.safetensors", blob)  # save_file would give 0600
            write_json(tmp / "extra.json", extra)
        old = _previous_export(target)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


_STAGE_FIELDS = ("orientation", "steps", "batch_size", "lr", "lr_decay", "min_lr", "seed",
                 "recipe", "precision", "init_from")


def lineage(init_from: str | os.PathLike[str] | None) -> dict[str, Any]:
    """What a warm start inherits from its starting model: the sha256 of its weights and the
    training stages recorded in its ``config.json`` (``extra.stages``)."""
    if not init_from:
        return {}
    meta = json.loads((Path(init_from) / "config.json").read_text())
    stages = (meta.get("extra") or {}).get("stages") or []
    return {"init_from_weights_sha256": meta["weights"]["sha256"], "stages": list(stages)}


def stage_record(cfg_dict: dict[str, Any], step: int, start: int, wall_s: float,
                 device: torch.device, network_dtype: Any) -> dict[str, Any]:
    """One entry of ``extra.stages``: the run's config essentials, its steps, wall time and
    where it ran (``wall_s`` counts this process only; ``resumed_at`` is its first step)."""
    import platform

    return {"config": {k: cfg_dict.get(k) for k in _STAGE_FIELDS}, "steps": step,
            "resumed_at": start, "wall_s": round(wall_s, 1),
            "where": (f"{platform.machine()} {os.cpu_count()} CPUs, "
                      f"{torch.get_num_threads()} torch thread(s), device {device}, network "
                      f"{network_dtype}, torch {torch.__version__}")}


def _previous_export(target: Path) -> Path:
    """Where :func:`_export_ema` parks the previous export while swapping in the new one."""
    return target.parent / (target.name + ".old")


def _recover_export(target: Path) -> None:
    """Undo what a kill during :func:`_export_ema`'s swap left: stale temporary folders, and a
    previous export parked beside a missing ``target`` (moved back)."""
    remove_stale_temporaries(target.parent, target.name)
    old = _previous_export(target)
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)


def _export_owner(export_dir: Path) -> str | None:
    """Run id of the model in ``export_dir``: ``None`` when the folder is absent or empty, ``''``
    when what it holds was not exported by :func:`train` (models exported before run ids were
    recorded: :func:`~.checkpointing.legacy_run_id` of their training config)."""
    if not export_dir.exists() or (export_dir.is_dir() and not any(export_dir.iterdir())):
        return None
    for name, section in (("config.json", "extra"), ("extra.json", None)):
        try:
            meta = json.loads((export_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        extra = meta.get(section) if section and isinstance(meta, dict) else meta
        if not isinstance(extra, dict):
            continue
        if isinstance(extra.get("run_id"), str) and extra["run_id"]:
            return extra["run_id"]
        if isinstance(extra.get("train_config"), dict):
            return legacy_run_id(extra["train_config"])
    return ""


def _check_export_dir(export_dir: Path, out: Path, run_id: str | None, resume: bool,
                      overwrite: bool) -> None:
    """Refuse to replace a model in ``export_dir`` that the run ``run_id`` did not export."""
    if export_dir.exists() and not export_dir.is_dir():
        raise OutputExistsError(f"the model folder {export_dir} is a file; choose another "
                                "output folder")
    owner = _export_owner(export_dir)
    if owner is None or overwrite or (run_id is not None and owner == run_id):
        return
    what = "a model" if owner else "files"
    hint = ("pass --overwrite (overwrite=True) to replace it, or choose another output folder"
            if resume else "continue the run that wrote it with --resume (resume=True), or "
            "pass --overwrite (overwrite=True) to replace it")
    raise OutputExistsError(f"{export_dir} holds {what} that this training run ({out}) did not "
                            f"write; not replacing it: {hint}")


def _remove_stale_files(out: Path, export_dir: Path, cache_in_run: bool) -> None:
    """Temporary files and folders of writes a kill interrupted (the run's own folders only:
    a shared ``cache_dir`` may be written by another run at this moment)."""
    remove_stale_temporaries(out)
    remove_stale_checkpoint_temporaries(out)
    if cache_in_run:
        remove_stale_temporaries(out / "data")
    _recover_export(export_dir)


# ------------------------------------------------------------------------------------- data
def phantom_source(cfg: TrainConfig) -> tuple[VolumeSource, dict[str, Any]]:
    """The brain-phantom volume source of ``cfg`` and the metadata its volume cache is keyed by
    (a cache written with other metadata is regenerated)."""
    source = phantom_volume_source(cfg.tracer, cfg.volume_shape, cfg.voxel_size_mm)
    meta = {"source": "brain_phantom", "tracer": cfg.tracer,
            "volume_shape": cfg.volume_shape, "voxel_size_mm": list(cfg.voxel_size_mm)}
    return source, json.loads(json.dumps(meta))


def _datasets(cfg: TrainConfig, out_dir: Path, dist_ctx: _Dist, source: VolumeSource | None,
              progress: bool) -> tuple[SliceDataset, SliceDataset | None, list[int]]:
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "data"
    if source is None:
        source, meta = phantom_source(cfg)
    else:
        meta = json.loads(json.dumps({
            "source": getattr(source, "__qualname__", type(source).__name__),
            "voxel_size_mm": list(cfg.voxel_size_mm)}))

    def pool(split: str, n: int) -> tuple[Any, list[int]]:
        seeds = split_seeds(split, n)  # type: ignore[arg-type]
        path = cache / f"volumes_{split}.npz"
        if dist_ctx.is_main:  # rank 0 generates and caches; the others read the cache
            p = build_volume_pool(seeds, source, cache_path=path, meta=meta, progress=progress)
        dist_ctx.barrier()
        if not dist_ctx.is_main:
            p = build_volume_pool(seeds, source, cache_path=path, meta=meta, progress=False)
        return p, seeds

    common = dict(orientation=cfg.orientation, voxel_size_mm=cfg.voxel_size_mm,
                  psf_fwhm_mm=cfg.psf_fwhm_mm, slice_shape=cfg.slice_shape,
                  support_threshold=cfg.support_threshold,
                  min_support_fraction=cfg.min_support_fraction)
    train_pool, seeds = pool("train", cfg.num_subjects)
    train_ds = SliceDataset(train_pool.volumes, scale_range=cfg.scale_range, flip=cfg.flip,
                            seed=cfg.seed, **common)
    val_ds = None
    if cfg.val_subjects > 0:
        val_pool, _ = pool("val", cfg.val_subjects)
        val_ds = SliceDataset(val_pool.volumes, scale_range=(1.0, 1.0), flip=False,
                              seed=cfg.seed + _VAL_SEED_OFFSET, **common)
    return train_ds, val_ds, seeds


@torch.no_grad()
def _validation_loss(model: nn.Module, ema: EMA, val_ds: SliceDataset, cfg: TrainConfig,
                     device: torch.device) -> float:
    """Loss of the EMA model on ``val_batches`` fixed batches with fixed noise."""
    m = copy.deepcopy(model)
    ema.copy_to(m)
    m.eval()
    total = 0.0
    for i in range(cfg.val_batches):
        b = val_ds.batch(i, cfg.batch_size)
        g = _cpu_generator(cfg.seed, _TAG_VAL, i)
        with _seeded_rng(derive_seed(cfg.seed, _TAG_VAL, i, 1), device):
            total += float(m.training_loss(b.x.to(device), g))
    return total / cfg.val_batches


# ------------------------------------------------------------------------------------ train
def _step(cfg: TrainConfig, step: int, lr: float, model: nn.Module, loss_module: nn.Module,
          opt: torch.optim.Optimizer, data: SliceDataset, dist_ctx: _Dist,
          device: torch.device) -> tuple[float, float]:
    """One optimiser step (0-based ``step``) on this rank's chunks; returns (loss, grad norm).

    Chunk ``c`` of the ``micro_batches`` chunks of the global batch gets the data shard ``c``,
    the noise generator ``(seed, step, c)`` and dropout seed ``(seed, step, c)``; each chunk's
    loss is divided by the chunks per rank and DDP averages over ranks, so the gradient is that
    of the mean loss over the global batch whatever the world size.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    chunks = cfg.micro_batches // dist_ctx.world_size
    total = torch.zeros((), dtype=torch.float64, device=device)
    for j, c in enumerate(range(dist_ctx.rank * chunks, (dist_ctx.rank + 1) * chunks)):
        b = data.batch(step, cfg.batch_size, rank=c, world_size=cfg.micro_batches)
        g = _cpu_generator(cfg.seed, _TAG_NOISE, step, c)
        # DDP all-reduces gradients only on the last chunk of the step
        last = j == chunks - 1 or dist_ctx.world_size == 1
        sync = contextlib.nullcontext() if last else loss_module.no_sync()
        with sync, _seeded_rng(derive_seed(cfg.seed, _TAG_DROPOUT, step, c), device):
            loss = loss_module(b.x.to(device), g) / chunks
            loss.backward()
        total += loss.detach().double()
    if dist_ctx.world_size > 1:
        torch.distributed.all_reduce(total)
        total /= dist_ctx.world_size
    loss_value = float(total)
    return loss_value, optimiser_step(model, opt, cfg.grad_clip, loss_value, step)


def optimiser_step(model: nn.Module, opt: torch.optim.Optimizer, grad_clip: float | None,
                   loss_value: float, step: int) -> float:
    """Clip the gradients to ``grad_clip`` (or only measure their norm), refuse a non-finite
    loss (``FloatingPointError`` naming the 1-based step), take the optimiser step and clear
    the gradients; returns the gradient norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None:
        gn = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    else:
        gn = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"non-finite training loss {loss_value} at step {step + 1}")
    opt.step()
    opt.zero_grad(set_to_none=True)
    return gn


def train(config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
          progress: bool = True, volume_source: VolumeSource | None = None,
          model_factory: Callable[[], nn.Module] | None = None,
          callback: Callable[[dict[str, Any]], None] | None = None,
          export_dir: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Train one orientation of the slice score prior (see module docstring).

    Parameters
    ----------
    config
        The run's :class:`TrainConfig`.
    out_dir
        Run folder (created).  Without ``resume`` it must not hold checkpoints yet (unless
        ``overwrite``).
    resume
        Continue from the newest readable checkpoint in ``out_dir`` (falling back to the
        previous one, with a warning, if the newest is corrupt); starts afresh if there is none.
    progress
        Progress bars (rank 0 only).
    volume_source
        ``seed -> [z, y, x]`` volume replacing the brain phantoms (tests, own data).  Seeds still
        come from the train/val splits.
    model_factory
        Builds the network instead of :class:`~.model.ScoreModel` (tests); it must have a
        ``training_loss(x0, generator)`` method.  Called with the global RNG seeded from
        ``config.seed`` (and restored afterwards).
    callback
        Called on every rank after each step with ``{'step', 'loss', 'lr', 'grad_norm',
        'checkpoint'}``; raising ``StopIteration`` ends training after checkpointing.  Under
        ``torchrun`` it must behave the same on every rank.
    export_dir
        Where the EMA model is exported (default ``out_dir/model``), e.g. ``prior/xy`` of a
        prior folder read by :func:`~.modelio.load_prior`.  It must be absent, empty or hold
        an earlier export of this run (a resumed run replaces its own export).
    overwrite
        Start a new run even though ``out_dir`` holds checkpoints (they are deleted), and
        replace whatever model ``export_dir`` holds (at the first export, so a run that fails
        before it leaves that model in place).

    Returns
    -------
    Path
        The folder of the exported EMA model.

    Raises
    ------
    OutputExistsError
        ``out_dir`` holds checkpoints but neither ``resume`` nor ``overwrite`` is given, or
        ``export_dir`` holds a model (or other files) this run did not export and
        ``overwrite`` is not given; raised before any work.
    CheckpointError
        ``resume`` and ``out_dir`` holds checkpoint files none of which can be loaded.
    ValueError
        ``resume`` with a configuration that differs from the checkpoint's in a field that
        must not change.
    """
    cfg = dataclasses.replace(config)  # validated copy
    out = Path(out_dir)
    dist_ctx = _init_distributed("cuda" if cfg.device.startswith("cuda") or (
        cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        return _train(cfg, out, dist_ctx, resume, progress, volume_source, model_factory,
                      callback, Path(export_dir) if export_dir is not None else out / "model",
                      overwrite)
    finally:
        if dist_ctx.owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, dist_ctx: _Dist, resume: bool, progress: bool,
           volume_source: VolumeSource | None, model_factory: Callable[[], nn.Module] | None,
           callback: Callable[[dict[str, Any]], None] | None, export_dir: Path,
           overwrite: bool) -> Path:
    main = dist_ctx.is_main
    device = _resolve_device(cfg.device, dist_ctx)
    existing = check_run_folder(  # before any rank deletes anything
        out, resume, overwrite, "a training run: continue it with --resume (resume=True), or "
        "pass --overwrite (overwrite=True) to start again")
    if main:
        make_dir(out)
        _remove_stale_files(out, export_dir, cache_in_run=cfg.cache_dir is None)
        if existing and not resume:  # overwrite: a new run, the old checkpoints go
            for path in existing:
                _delete_checkpoint(path)
    dist_ctx.barrier()

    ckpt = None
    if resume:
        found = _load_latest(out, verbose=main)
        if found is None:
            if main:
                tqdm.write(f"no checkpoint in {out}; starting a new run")
        else:
            ckpt, ckpt_path = found
            saved = json.loads(ckpt["config"])
            if cfg.micro_batches is None:
                cfg.micro_batches = saved.get("micro_batches")
    # the run's identity: drawn by a new run, kept by its resumptions
    run_id = new_run_id(ckpt)
    _check_export_dir(export_dir, out, run_id if ckpt is not None else None, resume, overwrite)
    if cfg.micro_batches is None:
        cfg.micro_batches = dist_ctx.world_size
    if cfg.micro_batches % dist_ctx.world_size or cfg.batch_size % cfg.micro_batches:
        raise ValueError(f"micro_batches={cfg.micro_batches} must be a multiple of the world size "
                         f"{dist_ctx.world_size} and divide batch_size={cfg.batch_size}")
    cfg_dict = cfg.to_dict()
    if ckpt is not None:
        _check_resumable(json.loads(ckpt["config"]), cfg_dict)

    train_ds, val_ds, seeds = _datasets(cfg, out, dist_ctx, volume_source, progress and main)
    with _seeded_rng(derive_seed(cfg.seed, _TAG_INIT), device):
        model = _build_model(cfg, train_ds, seeds, model_factory)
    if not callable(getattr(model, "training_loss", None)):
        raise TypeError("the model must have a training_loss(x0, generator) method")
    if ckpt is None and cfg.init_from:
        from .modelio import load_model

        warm = load_model(cfg.init_path())
        try:
            model.load_state_dict(warm.state_dict())
        except RuntimeError as e:
            raise ValueError(f"init_from={cfg.init_path()!r} does not fit the configured model: "
                             f"{e}") from None
        if main:
            tqdm.write(f"warm start from {cfg.init_path()}")
    model.to(device)
    if hasattr(model, "precision"):
        model.precision = cfg.precision
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        ema.to(device)
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        if main:
            tqdm.write(f"resuming from {ckpt_path.name} (step {start})")
        del ckpt

    run_lineage: dict[str, Any] = {}
    dtype = getattr(model, "network_dtype", lambda: None)()
    if main:
        # the starting model's lineage, read when the run started (init_from may change later)
        if start > 0 and (out / "train_config.json").is_file():
            run_lineage = json.loads((out / "train_config.json").read_text()).get("_lineage", {})
        elif cfg.init_from:
            run_lineage = lineage(cfg.init_path())
        resolved = {**cfg_dict, "_world_size": dist_ctx.world_size, "_lineage": run_lineage,
                    "_torch": str(torch.__version__),
                    "_sirf_diffusion": __version__, "_dataset": train_ds.describe(),
                    "_network_dtype": str(dtype),
                    "_train_seeds": seeds, "_run_id": run_id}
        write_json(out / "train_config.json", resolved)

    loss_module: nn.Module = _LossModule(model, LossRecipe(**cfg.recipe))
    if dist_ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    extra = {"train_config": cfg_dict, "dataset": train_ds.describe(), "run_id": run_id}
    t_start = time.perf_counter()

    def export(step: int) -> None:
        if main:
            stage = stage_record(cfg_dict, step, start, time.perf_counter() - t_start, device,
                                 dtype)
            _export_ema(model, ema, export_dir, {
                **extra, "train_step": step, "ema_num_updates": ema.num_updates, **run_lineage,
                "stages": run_lineage.get("stages", []) + [stage]})

    def checkpoint(step: int) -> Path | None:
        path = None
        if main:
            payload = {"format": _CKPT_FORMAT, "step": step, "run_id": run_id,
                       "model": model.state_dict(), "ema": ema.state_dict(),
                       "optimizer": opt.state_dict(), "config": json.dumps(cfg_dict),
                       "rng": {"scheme": "counter-based: every draw of step k is seeded by "
                                         "derive_seed(seed, tag, k, chunk)",
                               "seed": cfg.seed, "next_step": step},
                       "world_size": dist_ctx.world_size, "torch_version": str(torch.__version__)}
            path = _save_checkpoint(out, payload, cfg.keep_checkpoints)
            export(step)
            plot_loss(out)
        dist_ctx.barrier()
        return path

    def one_step(step: int) -> StepStats:
        lr = _lr_at(cfg, step)
        loss_value, gn = _step(cfg, step, lr, model, loss_module, opt, train_ds, dist_ctx, device)
        ema.update(model)
        return StepStats(loss_value, lr, gn)

    model.train()
    TrainingLoop(
        out, cfg.steps, start, cfg.checkpoint_every, checkpoint, val_every=cfg.val_every,
        validate=(None if val_ds is None else
                  lambda step: _validation_loss(model, ema, val_ds, cfg, device)),
        callback=callback, progress=progress, desc=f"training {cfg.orientation} prior",
        main=main, smoothing=0.98).run(one_step)
    return export_dir

