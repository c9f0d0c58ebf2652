"""The per-step bookkeeping every trainer of the package shares.

A trainer (the slice prior's :func:`sirf_diffusion.diffusion.training.train`, PET-DEFT's
:func:`~sirf_diffusion.diffusion.deft_training.train_deft`, FBSEM-net's
:func:`~sirf_diffusion.recon.fbsem_training.train_fbsem`) supplies what is its own: one
optimiser step, a checkpoint writer and a validation loss.  :class:`TrainingLoop` does the rest,
the same way for all of them:

* ``loss.csv`` (:data:`LOSS_FIELDS`, one row per step, ``repr`` of the floats so that a resumed
  run's rows compare bit for bit) and ``val_loss.csv`` (:data:`VAL_FIELDS`), started afresh by a
  new run and cut back to the resumed step by a resumed one (:func:`reset_logs`);
* validation at every ``val_every``-th step and at the last one;
* a checkpoint at every ``checkpoint_every``-th step and at the last one;
* the callback protocol: ``callback({'step', 'loss', 'lr', 'grad_norm', 'checkpoint'})`` after
  each step; raising ``StopIteration`` ends the run, after a checkpoint of that step if it has
  none yet (so it can be resumed exactly there);
* a progress bar and the ``seconds`` column, counted from the start of :meth:`TrainingLoop.run`.

Under ``torchrun`` only the main process (``main=True``) writes the logs, validates and shows
the bar; every process steps, checkpoints (a collective call where the trainer makes it one) and
calls the callback.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from tqdm.auto import tqdm

from .io.atomic import atomic_write_text

__all__ = ["LOSS_FIELDS", "VAL_FIELDS", "StepStats", "TrainingLoop", "check_counts",
           "check_optimiser_fields", "reset_logs", "read_csv"]

#: Columns of ``loss.csv``.
LOSS_FIELDS = ["step", "loss", "lr", "grad_norm", "seconds"]
#: Columns of ``val_loss.csv``.
VAL_FIELDS = ["step", "loss"]
_LOGS = ("loss.csv", "val_loss.csv")


def check_counts(cfg: Any, name: str, positive: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = ()) -> None:
    """Refuse a training config whose integer fields are out of range.

    Raises ``ValueError('NAME.FIELD must be a positive integer, got V')`` for a field of
    ``positive`` that is not a Python ``int`` >= 1 (the configs are written to JSON; booleans
    are not integers here), and the same with "a non-negative integer" for the fields of
    ``non_negative``.
    """
    for keys, low, what in ((positive, 1, "a positive"), (non_negative, 0, "a non-negative")):
        for key in keys:
            v = getattr(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}.{key} must be {what} integer, got {v!r}")


def check_optimiser_fields(cfg: Any, name: str) -> None:
    """Refuse a training config whose optimiser or checkpoint-retention fields are invalid.

    Checks the fields ``cfg`` has of: ``lr`` (finite, > 0), ``weight_decay`` (>= 0), ``min_lr``
    (in ``[0, lr]``), ``lr_decay`` (``'constant'`` or ``'cosine'``), ``grad_clip`` (> 0 or
    ``None``) and ``keep_checkpoints`` (>= 2: retention keeps the previous checkpoint beside
    the newest, :mod:`sirf_diffusion.diffusion.checkpointing`).  Messages name ``NAME.FIELD``.
    """
    lr = getattr(cfg, "lr")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"{name}.lr must be > 0, got {lr!r}")
    if getattr(cfg, "weight_decay", 0.0) < 0:
        raise ValueError(f"{name}.weight_decay must be >= 0, got {cfg.weight_decay}")
    if not 0 <= getattr(cfg, "min_lr", 0.0) <= lr:
        raise ValueError(f"{name}.min_lr must be in [0, lr], got {cfg.min_lr}")
    if getattr(cfg, "lr_decay", "constant") not in ("constant", "cosine"):
        raise ValueError(f"{name}.lr_decay must be 'constant' or 'cosine', got {cfg.lr_decay!r}")
    clip = getattr(cfg, "grad_clip", None)
    if clip is not None and not clip > 0:
        raise ValueError(f"{name}.grad_clip must be > 0 or None, got {clip}")
    keep = getattr(cfg, "keep_checkpoints", 2)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
        raise ValueError(f"{name}.keep_checkpoints must be an integer >= 2 (the previous "
                         f"checkpoint is kept), got {keep!r}")


class StepStats(NamedTuple):
    """What one optimiser step reports: its loss, learning rate and gradient norm."""

    loss: float
    lr: float
    grad_norm: float


# ---------------------------------------------------------------------------------- the CSVs
def truncate_csv(path: Path, last_step: int) -> None:
    """Keep the rows of ``path`` with ``step <= last_step`` (the steps a resumed run redoes go)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= last_step]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(kept)
    atomic_write_text(path, buf.getvalue())


def open_csv(path: Path, fields: list[str]) -> tuple[TextIO, Any]:
    """Open ``path`` for appending rows (writing the header ``fields`` into a new or empty file);
    returns the file and its ``csv.writer``."""
    new = not path.is_file() or path.stat().st_size == 0
    f = open(path, "a", newline="")
    w = csv.writer(f, lineterminator="\n")
    if new:
        w.writerow(fields)
    return f, w


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns of a log written here (``{}`` when the file is absent)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def reset_logs(out: Path, start: int) -> None:
    """Delete the logs of ``out`` for a new run (``start == 0``), or cut them back to step
    ``start`` for a run resumed there."""
    for name in _LOGS:
        if start == 0:
            (out / name).unlink(missing_ok=True)
        else:
            truncate_csv(out / name, start)


def _due(step: int, every: int, last: int) -> bool:
    """Whether 1-based ``step`` is one of every ``every``-th or the ``last``."""
    return step % every == 0 or step == last


# ---------------------------------------------------------------------------------- the loop
@dataclass
class TrainingLoop:
    """Steps ``start + 1 ... steps`` of a run in ``out`` with its logs, checkpoints, validation,
    callback and progress bar (module docstring).

    Attributes
    ----------
    out
        The run folder (``loss.csv`` and ``val_loss.csv`` go there).
    steps, start
        The last step of the run and the step it starts after (0 for a new run).
    checkpoint_every, checkpoint
        Checkpoint period and writer: ``checkpoint(step)`` returns the file written (``None``
        where this process writes none).
    val_every, validate
        Validation period and the validation loss ``validate(step)`` (``None``: no validation).
    val_log
        Whether ``val_loss.csv`` is kept (``None``: when ``validate`` is given).
    callback
        Called after each step (module docstring).
    progress, desc
        Progress bar and its label.
    main
        Whether this process writes the logs, validates and shows the bar.
    smoothing
        Weight of the previous value in the loss the bar shows (0: the step's loss).
    """

    out: Path
    steps: int
    start: int
    checkpoint_every: int
    checkpoint: Callable[[int], Path | None]
    val_every: int = 1
    validate: Callable[[int], float] | None = None
    val_log: bool | None = None
    callback: Callable[[dict[str, Any]], None] | None = None
    progress: bool = True
    desc: str = "training"
    main: bool = True
    smoothing: float = 0.0
    #: The latest validation loss (``None`` before the first validation).
    val_loss: float | None = field(default=None, init=False)
    _t0: float = field(default=0.0, init=False, repr=False)

    def elapsed(self) -> float:
        """Seconds since :meth:`run` started."""
        return time.perf_counter() - self._t0

    def run(self, step: Callable[[int], StepStats]) -> int:
        """Take ``step(k)`` for the 0-based ``k = start ... steps - 1`` (each an optimiser step,
        EMA update included) until the last one or a ``StopIteration`` of the callback; returns
        the number of the last step taken."""
        val_log = self.validate is not None if self.val_log is None else self.val_log
        loss_f = val_f = loss_w = val_w = None
        if self.main:
            reset_logs(self.out, self.start)
            loss_f, loss_w = open_csv(self.out / "loss.csv", LOSS_FIELDS)
            if val_log:
                val_f, val_w = open_csv(self.out / "val_loss.csv", VAL_FIELDS)
        bar = tqdm(total=self.steps, initial=self.start, disable=not (self.progress and self.main),
                   desc=self.desc, unit="step", dynamic_ncols=True)
        self._t0 = time.perf_counter()
        last_ckpt = self.start if self.start > 0 else -1
        shown = None
        done = self.start
        try:
            while done < self.steps:
                stats = step(done)
                done += 1
                if loss_w is not None:
                    loss_w.writerow([done, repr(stats.loss), repr(stats.lr),
                                     repr(stats.grad_norm), f"{self.elapsed():.3f}"])
                    loss_f.flush()  # type: ignore[union-attr]
                shown = stats.loss if shown is None else (
                    self.smoothing * shown + (1 - self.smoothing) * stats.loss)
                bar.update(1)
                bar.set_postfix(loss=f"{shown:.4f}", refresh=False)
                if self.validate is not None and self.main and _due(done, self.val_every,
                                                                    self.steps):
                    self.val_loss = self.validate(done)
                    if val_w is not None:
                        val_w.writerow([done, repr(self.val_loss)])
                        val_f.flush()  # type: ignore[union-attr]
                path = None
                if _due(done, self.checkpoint_every, self.steps):
                    path = self.checkpoint(done)
                    last_ckpt = done
                if self.callback is not None:
                    try:
                        self.callback({"step": done, "loss": stats.loss, "lr": stats.lr,
                                       "grad_norm": stats.grad_norm, "checkpoint": path})
                    except StopIteration:
                        if last_ckpt != done:
                            self.checkpoint(done)
                        break
        finally:
            bar.close()
            for f in (loss_f, val_f):
                if f is not None:
                    f.close()
        return done
