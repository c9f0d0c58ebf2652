"""Training FBSEM-net (:mod:`.fbsem`) on paired data: resumable bit for bit, optional EMA.

The loss of one pair (ground truth ``x*``, its noisy scan) is the squared error of the unrolled
reconstruction relative to the truth's energy,

.. math:: \\ell = \\frac{\\lVert \\mathrm{FBSEM}_\\theta(y) - x^* \\rVert^2}{\\lVert x^* \\rVert^2},

(the paper's MSE, normalised per pair so that every dose weighs the same; its square root is the
NRMSE the evaluation reports), averaged over a batch and minimised with Adam through the whole
unrolled network (the embedded projector is differentiable).  Pairs come from the training
subjects at doses drawn log-uniformly over a range; the validation loss is the mean over a fixed
set of validation-split pairs; test subjects are never used.

Like the prior's trainer (:mod:`sirf_diffusion.diffusion.training`, whose checkpoint files and
logs this reuses, :mod:`sirf_diffusion.diffusion.checkpointing`), randomness is counter-based:
the pairs of step ``k`` are a pure function of ``(seed, k)``, the network's initial weights of
``seed``; a run interrupted after a checkpoint and resumed reproduces the uninterrupted run bit
for bit (same device and thread count).  ``out_dir`` holds ``train_config.json``, ``loss.csv``,
``val_loss.csv``, ``checkpoints/`` and the exported model (``model/``, refreshed at every
checkpoint, :func:`~.fbsem.save_fbsem`), whose ``config.json`` records the geometry and the
count range of the training data (:func:`~.fbsem.check_applicability`) and the training cost.

Paired data: :mod:`sirf_diffusion.data.pairs` (``PairConfig``, ``PairedDataset``), the pairs
PET-DEFT trains on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..diffusion.checkpointing import (
    _CKPT_FORMAT,
    _delete_checkpoint,
    _load_latest,
    _save_checkpoint,
    check_run_folder,
    new_run_id,
    remove_stale_checkpoint_temporaries,
)
from ..diffusion.datasets import derive_seed
from ..diffusion.ema import EMA
from ..diffusion.training import _check_resumable, optimiser_step
from ..io.atomic import make_dir, write_json
from ..training_loop import StepStats, TrainingLoop, check_counts, check_optimiser_fields
from .fbsem import FBSEMConfig, FBSEMNet, counts_per_voxel, save_fbsem

__all__ = ["FBSEMTrainConfig", "train_fbsem", "relative_squared_error", "pair_sources"]

_TAG_INIT, _TAG_PAIRS, _TAG_VAL = 21, 22, 23


@dataclass
class FBSEMTrainConfig:
    """Everything that defines an FBSEM-net training run (``train_config.json``).

    Attributes
    ----------
    steps, batch_size, lr, warmup_steps, grad_clip
        Adam steps, pairs per step, learning rate (linear warm-up), gradient-norm clip.
    ema_decay
        Parameter EMA decay exported as the model (``0``: no averaging, the last weights).
    seed
        Seed of the pairs and of the initial weights.
    network
        :class:`~.fbsem.FBSEMConfig` fields (``reference_counts_per_voxel`` is set from the
        data).
    train_subjects, val_subjects, val_pairs, dose_range
        Training and validation subjects (first seeds of each split), validation pairs, and the
        dose range in counts/mm^3 (log-uniform).
    val_every, checkpoint_every, keep_checkpoints, device
        Housekeeping: with ``steps``, what may change on resume (the prior trainer's rule,
        :func:`sirf_diffusion.diffusion.training._check_resumable`).
    """

    steps: int = 300
    batch_size: int = 2
    lr: float = 1e-3
    warmup_steps: int = 10
    grad_clip: float | None = 1.0
    ema_decay: float = 0.95
    seed: int = 0
    network: dict[str, Any] = field(default_factory=dict)
    train_subjects: int = 16
    val_subjects: int = 2
    val_pairs: int = 4
    dose_range: tuple[float, float] = (0.5, 10.0)
    val_every: int = 25
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.dose_range = tuple(float(v) for v in self.dose_range)  # type: ignore[assignment]
        check_counts(self, "FBSEMTrainConfig",
                     positive=("steps", "batch_size", "train_subjects", "val_subjects",
                               "val_every", "checkpoint_every"),
                     non_negative=("warmup_steps", "val_pairs", "seed"))
        check_optimiser_fields(self, "FBSEMTrainConfig")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        lo, hi = self.dose_range
        if len(self.dose_range) != 2 or not 0 < lo <= hi or not math.isfinite(hi):
            raise ValueError(f"dose_range must be (low, high) counts/mm^3 with 0 < low <= high, "
                             f"got {self.dose_range}")
        FBSEMConfig.from_dict(self.network)  # validates the network fields
        if self.device != "cpu":
            raise ValueError(f"device must be 'cpu' (the pairs and their physics live there), "
                             f"got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dose_range"] = list(self.dose_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FBSEMTrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"an FBSEM-net training config must be a JSON object, got {d!r}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown FBSEM-net training config keys {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "FBSEMTrainConfig":
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d)


def pair_sources(cfg: FBSEMTrainConfig) -> tuple[Any, Any]:
    """The training and validation pair streams of a run (:mod:`sirf_diffusion.data.pairs`)."""
    from ..data.pairs import PairConfig, PairedDataset
    train = PairedDataset(PairConfig(split="train", num_subjects=cfg.train_subjects,
                                     dose_range=cfg.dose_range),
                          seed=derive_seed(cfg.seed, _TAG_PAIRS))
    val = PairedDataset(PairConfig(split="val", num_subjects=cfg.val_subjects,
                                   dose_range=cfg.dose_range),
                        seed=derive_seed(cfg.seed, _TAG_VAL))
    return train, val


def relative_squared_error(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``||x - x*||^2 / ||x*||^2`` (the training loss of one pair)."""
    reference = reference.to(x).reshape(x.shape)
    return ((x - reference) ** 2).sum() / (reference ** 2).sum()


def _likelihood(source: Any, example: Any) -> Any:
    return example.likelihood(getattr(source, "projector", None))


# ----------------------------------------------------------------------------- training
def _lr_at(cfg: FBSEMTrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def _trained_on(cfg: FBSEMTrainConfig, probes: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Geometry and count range of the training data, from a few probe pairs."""
    lik0 = probes[0][1]
    ratios = [counts_per_voxel(lik) / float(ex.dose) for ex, lik in probes]
    lo, hi = cfg.dose_range
    physics = getattr(lik0, "physics", None)
    geometry = getattr(physics, "sinogram_geometry", None)
    scanner = getattr(getattr(geometry, "scanner", None), "name", None)
    return {"image_shape": list(lik0.image_shape), "voxel_size_mm": list(lik0.voxel_size_mm),
            "data_shape": list(getattr(physics, "data_shape", [])), "scanner": scanner,
            "counts_per_mm3": [lo, hi],
            "counts_per_voxel": [min(ratios) * lo, max(ratios) * hi]}


def train_fbsem(config: FBSEMTrainConfig, out_dir: str | Path, *, resume: bool = False,
                overwrite: bool = False, progress: bool = True,
                sources: tuple[Any, Any] | None = None,
                callback: Callable[[dict[str, Any]], None] | None = None,
                export_dir: str | Path | None = None,
                command: str | None = None) -> Path:
    """Train an FBSEM-net (module docstring); returns the exported model folder.

    Parameters
    ----------
    config
        The run's :class:`FBSEMTrainConfig`.
    out_dir
        Run folder.  Without ``resume`` it must not hold checkpoints (unless ``overwrite``).
    resume
        Continue from the newest readable checkpoint (starts afresh if there is none).
    sources
        ``(train, val)`` pair streams replacing :func:`pair_sources` (tests, own data): objects
        with ``example(index)`` returning pairs with ``image``, ``dose`` and
        ``likelihood(projector)``, and optionally ``describe()`` and ``projector``.
    callback
        Called after each step with ``{'step', 'loss', 'lr', 'grad_norm', 'checkpoint'}``;
        ``StopIteration`` ends training after checkpointing.
    export_dir
        Where the model goes (default ``out_dir/model``).
    command
        The command line recorded in the model's metadata.

    Raises
    ------
    OutputExistsError
        ``out_dir`` holds checkpoints and neither ``resume`` nor ``overwrite`` is given.
    CheckpointError
        ``resume`` and none of the checkpoint files can be loaded.
    ValueError
        ``resume`` with a config that differs in a field that must not change.
    """
    cfg = dataclasses.replace(config)
    out = Path(out_dir)
    export_path = Path(export_dir) if export_dir is not None else out / "model"
    device = torch.device(cfg.device)
    existing = check_run_folder(out, resume, overwrite, "an FBSEM-net run: continue it with "
                                "--resume, or choose another folder")
    make_dir(out)
    remove_stale_checkpoint_temporaries(out)
    ckpt = None
    if resume:
        found = _load_latest(out, verbose=True)
        if found is not None:
            ckpt = found[0]
            _check_resumable(json.loads(ckpt["config"]), cfg.to_dict())
    elif existing:  # overwrite
        for p in existing:
            _delete_checkpoint(p)
    run_id = new_run_id(ckpt)

    train_src, val_src = sources if sources is not None else pair_sources(cfg)
    val_set = [(ex, _likelihood(val_src, ex))
               for ex in (val_src.example(i) for i in range(cfg.val_pairs))]
    probes = val_set or [(ex, _likelihood(train_src, ex))
                         for ex in (train_src.example(0),)]
    trained_on = _trained_on(cfg, probes)
    nu_lo, nu_hi = trained_on["counts_per_voxel"]
    net_cfg = FBSEMConfig.from_dict({**cfg.network,
                                     "reference_counts_per_voxel": math.sqrt(nu_lo * nu_hi)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, _TAG_INIT))
        net = FBSEMNet(net_cfg)
    ema = EMA(net, cfg.ema_decay, warmup=True)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    start, wall_before = 0, 0.0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        wall_before = float(ckpt.get("wall_s", 0.0))
        tqdm.write(f"resuming from step {start}")
    cfg_dict = cfg.to_dict()
    write_json(out / "train_config.json", {
        **cfg_dict, "_run_id": run_id, "_network": net_cfg.to_dict(),
        "_num_parameters": net.num_parameters, "_trained_on": trained_on,
        "_data": {"train": _describe(train_src), "val": _describe(val_src)},
        "_torch": str(torch.__version__), "_sirf_diffusion": __version__})

    t0 = time.perf_counter()

    def export(step: int, val_loss: float | None) -> None:
        model = FBSEMNet(net_cfg)
        ema.copy_to(model)
        wall = wall_before + time.perf_counter() - t0
        save_fbsem(export_path, model, trained_on, extra={
            "train_config": cfg_dict, "run_id": run_id, "train_step": step,
            "validation_loss": val_loss, "wall_time_s": wall, "command": command,
            "where": {"device": str(device), "threads": torch.get_num_threads(),
                      "machine": platform.machine(), "processor": platform.processor() or None},
            "data": {"train": _describe(train_src), "val": _describe(val_src)},
            "beta": {"log_beta": model.log_beta.item(), "exponent":
                     model.beta_exponent.item()}})

    def checkpoint(step: int, val_loss: float | None) -> Path:
        payload = {"format": _CKPT_FORMAT, "step": step, "run_id": run_id,
                   "model": net.state_dict(), "ema": ema.state_dict(),
                   "optimizer": opt.state_dict(), "config": json.dumps(cfg_dict),
                   "wall_s": wall_before + time.perf_counter() - t0,
                   "rng": {"scheme": "counter-based: the pairs of step k are "
                                     "example(k * batch_size + j) of a seeded stream"}}
        path = _save_checkpoint(out, payload, cfg.keep_checkpoints)
        export(step, val_loss)
        return path

    def one_step(step: int) -> StepStats:
        lr = _lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        total = 0.0
        for j in range(cfg.batch_size):
            ex = train_src.example(step * cfg.batch_size + j)
            x = net(_likelihood(train_src, ex))
            loss = relative_squared_error(x, ex.image) / cfg.batch_size
            loss.backward()
            total += float(loss.detach())
        gn = optimiser_step(net, opt, cfg.grad_clip, total, step)
        ema.update(net)
        return StepStats(total, lr, gn)

    net.train()
    loop = TrainingLoop(
        out, cfg.steps, start, cfg.checkpoint_every, lambda s: checkpoint(s, loop.val_loss),
        val_every=cfg.val_every,
        validate=(lambda s: _validation_loss(net_cfg, ema, val_set)) if val_set else None,
        val_log=True, callback=callback, progress=progress, desc="training FBSEM-net")
    loop.run(one_step)
    return export_path


def _describe(source: Any) -> Any:
    return source.describe() if callable(getattr(source, "describe", None)) else None


@torch.no_grad()
def _validation_loss(net_cfg: FBSEMConfig, ema: EMA, val_set: list[tuple[Any, Any]]) -> float:
    """Mean relative squared error of the EMA network over the validation pairs."""
    model = FBSEMNet(net_cfg)
    ema.copy_to(model)
    model.eval()
    losses = [float(relative_squared_error(model(lik), ex.image)) for ex, lik in val_set]
    return float(np.mean(losses))
