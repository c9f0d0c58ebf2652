"""Checkpoints of the trainers: checkpoint files with SHA-256 sidecars and their housekeeping,
and the loss plot.

* ``checkpoints/step_XXXXXXXX.pt``: a ``torch.save`` payload (format
  ``sirf_diffusion.train_checkpoint/1``: model, EMA, optimiser, step, config, run id), loadable
  with ``torch.load(..., weights_only=True)``, with a ``step_XXXXXXXX.sha256`` sidecar
  (``<hex digest>  <file name>``); both written atomically with the user's umask
  (:mod:`sirf_diffusion.io.atomic`);
* retention keeps the newest ``keep`` checkpoints *of this run*: only files that load
  (:func:`load_checkpoint`: right format tag, checksum, weights-only unpickling) and carry this
  run's id (:func:`checkpoint_run_id`) are counted or deleted.  A truncated, corrupt or
  foreign file is left alone and never counted, so the last good checkpoint is never deleted
  because of it;
* :func:`remove_stale_checkpoint_temporaries` removes the temporary files of a write that a
  kill interrupted (called when a run starts);
* ``loss.png``: :func:`plot_loss` of the ``loss.csv`` / ``val_loss.csv`` logs that
  :mod:`sirf_diffusion.training_loop` writes.

Everything here is re-exported by :mod:`sirf_diffusion.diffusion.training`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io.atomic import (
    OutputExistsError,
    atomic_write_bytes,
    atomic_write_text,
    make_dir,
    remove_stale_temporaries,
)
from ..training_loop import LOSS_FIELDS as _LOSS_FIELDS  # noqa: F401  (re-exported)
from ..training_loop import open_csv as _open_csv  # noqa: F401
from ..training_loop import read_csv as _read_csv
from ..training_loop import truncate_csv as _truncate_csv  # noqa: F401

__all__ = ["CheckpointError", "load_checkpoint", "list_checkpoints", "checkpoint_step",
           "latest_checkpoint_step", "checkpoint_run_id",
           "check_run_folder", "new_run_id", "remove_stale_checkpoint_temporaries", "plot_loss"]

_CKPT_FORMAT = "sirf_diffusion.train_checkpoint/1"
#: Fields of a training config that may differ between an interrupted run and its resumption.
_RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep_checkpoints", "device",
                                "val_every", "precision"})


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a training checkpoint."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------------------ checkpoints
def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run folder (``step_*.pt``, readable or not), oldest first."""
    d = Path(out_dir) / "checkpoints"
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a checkpoint's file name (``step_XXXXXXXX.pt``), or None for another name."""
    stem = Path(path).stem
    digits = stem[len("step_"):] if stem.startswith("step_") else ""
    return int(digits) if digits.isdigit() else None


def latest_checkpoint_step(out_dir: str | os.PathLike) -> int:
    """The largest step among a run folder's checkpoint file names (0 without one); the files
    are not read."""
    steps = (checkpoint_step(p) for p in list_checkpoints(out_dir))
    return max((s for s in steps if s is not None), default=0)


def legacy_run_id(config: dict[str, Any]) -> str:
    """Run id of a checkpoint or exported model written before run ids were recorded: a hash of
    its training config without the fields a resumed run may change."""
    fixed = {k: v for k, v in config.items() if k not in _RESUMABLE_CHANGES}
    digest = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()
    return f"config-{digest[:16]}"


def checkpoint_run_id(ckpt: dict[str, Any]) -> str:
    """The id of the training run that wrote ``ckpt`` (a loaded checkpoint).

    A new run draws a random id that its resumptions keep; checkpoints from before run ids
    were recorded get :func:`legacy_run_id` of their config.
    """
    rid = ckpt.get("run_id")
    if isinstance(rid, str) and rid:
        return rid
    return legacy_run_id(json.loads(ckpt["config"]))


def remove_stale_checkpoint_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a kill during a checkpoint write left in ``out_dir/checkpoints``
    (``.step_*.tmp``, and ``step_*.tmp`` of older versions); returns them."""
    d = Path(out_dir) / "checkpoints"
    removed = remove_stale_temporaries(d)
    if d.is_dir():
        for p in sorted(d.glob("step_*.tmp")):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _delete_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".sha256").unlink(missing_ok=True)


def check_run_folder(out: Path, resume: bool, overwrite: bool, run: str) -> list[Path]:
    """The checkpoint files in the run folder ``out`` (:func:`list_checkpoints`), refusing a
    file, and checkpoints without ``resume`` or ``overwrite`` (:class:`OutputExistsError`:
    ``'<out> already holds the checkpoints of <run>'``, ``run`` saying how to go on)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"the training run folder {out} is a file")
    existing = list_checkpoints(out)
    if existing and not (resume or overwrite):
        raise OutputExistsError(f"{out} already holds the checkpoints of {run}")
    return existing


def new_run_id(ckpt: dict[str, Any] | None) -> str:
    """The run id of a resumed run (its checkpoint ``ckpt``'s), or a fresh one (``None``)."""
    return checkpoint_run_id(ckpt) if ckpt is not None else uuid.uuid4().hex


def _checkpoints_of_run(out_dir: Path, run_id: str) -> list[Path]:
    """The readable checkpoints in ``out_dir`` written by run ``run_id``, oldest first."""
    good = []
    for path in list_checkpoints(out_dir):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:
            continue  # unreadable: left alone, not counted
        if checkpoint_run_id(ckpt) == run_id:
            good.append(path)
    return good


def _save_checkpoint(out_dir: Path, payload: dict[str, Any], keep: int) -> Path:
    """Write ``payload`` (with its ``run_id``) and keep the newest ``keep`` of that run's
    readable checkpoints (module docstring)."""
    d = make_dir(out_dir / "checkpoints")
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path = d / f"step_{payload['step']:08d}.pt"
    path.with_suffix(".sha256").unlink(missing_ok=True)  # never pair new data with an old hash
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_suffix(".sha256"),
                      f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    for old in _checkpoints_of_run(out_dir, payload["run_id"])[:-keep]:
        _delete_checkpoint(old)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a training checkpoint (``weights_only=True``: tensors and primitives).

    Raises
    ------
    CheckpointError
        When the file is missing, fails its SHA-256 sidecar, cannot be unpickled (truncated or
        corrupt) or lacks the expected entries; the message is one line naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from exc
    sidecar = path.with_suffix(".sha256")
    if sidecar.is_file():
        fields = sidecar.read_text(errors="replace").split()
        expected = fields[0] if fields else ""
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated: its SHA-256 "
                                  f"does not match {sidecar.name} ({len(data)} bytes)")
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only load failed" in str(exc).lower():
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects that "
                                  "torch.load(weights_only=True) refuses; it was not written by "
                                  "this trainer") from exc
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be loaded "
                              f"({_first_line(exc)})") from exc
    required = {"format", "step", "model", "ema", "optimizer", "config"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT or required - set(ckpt):
        raise CheckpointError(f"{path} is not a sirf_diffusion training checkpoint "
                              f"(expected format {_CKPT_FORMAT!r} with {sorted(required)})")
    try:
        json.loads(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unreadable config "
                              f"({_first_line(exc)})") from exc
    return ckpt


def _load_latest(out_dir: Path, verbose: bool) -> tuple[dict[str, Any], Path] | None:
    """Newest readable checkpoint, falling back to older ones (with a warning) if corrupt.

    Raises
    ------
    CheckpointError
        There are checkpoint files but none is usable (one line naming the folder and why).
    """
    files = list_checkpoints(out_dir)
    errors = []
    for path in reversed(files):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            if verbose:
                warnings.warn(f"{exc}; falling back to the previous checkpoint", stacklevel=3)
            continue
        if errors and verbose:
            tqdm.write(f"resuming from the previous good checkpoint {path.name}")
        return ckpt, path
    if files:
        raise CheckpointError(f"no usable checkpoint in {out_dir / 'checkpoints'} to resume "
                              f"from ({len(files)} unreadable: " + "; ".join(errors) + ")")
    return None


def plot_loss(out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Plot ``loss.csv`` (and ``val_loss.csv``) of a run to ``loss.png``; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    path = Path(path) if path is not None else out_dir / "loss.png"
    tr, va = _read_csv(out_dir / "loss.csv"), _read_csv(out_dir / "val_loss.csv")
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if tr.get("step"):
        steps, loss = tr["step"], tr["loss"]
        ax.plot(steps, loss, lw=0.5, alpha=0.4, color="C0", label="training loss (per step)")
        w = max(1, len(loss) // 50)
        if w > 1:
            c = np.concatenate([[0.0], np.cumsum(loss)])
            i = np.arange(1, len(loss) + 1)
            lo = np.maximum(0, i - w)
            ax.plot(steps, (c[i] - c[lo]) / (i - lo), color="C0",
                    label=f"running mean ({w} steps)")
    if va.get("step"):
        ax.plot(va["step"], va["loss"], "o-", color="C1", label="validation loss (EMA model)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("denoising score-matching loss")
    if tr.get("loss") and min(tr["loss"]) > 0:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    atomic_write_bytes(path, png.getvalue())
    return path
