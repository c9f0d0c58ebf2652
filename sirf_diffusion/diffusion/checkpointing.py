"""Checkpoints and logs of :func:`~.training.train`: atomic writes, checkpoint files with SHA-256
sidecars, the loss CSV files and the loss plot.

* ``checkpoints/step_XXXXXXXX.pt``: a ``torch.save`` payload (format
  ``sirf_diffusion.train_checkpoint/1``: model, EMA, optimiser, step, config), loadable with
  ``torch.load(..., weights_only=True)``, with a ``step_XXXXXXXX.sha256`` sidecar
  (``<hex digest>  <file name>``); both written atomically (temporary file, ``fsync``,
  :func:`os.replace`), the newest ``keep`` kept;
* ``loss.csv`` / ``val_loss.csv``: one row per step / validation, truncated to the resumed step
  on resume; ``loss.png``: :func:`plot_loss`.

Everything here is re-exported by :mod:`sirf_diffusion.diffusion.training`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["CheckpointError", "load_checkpoint", "list_checkpoints", "plot_loss"]

_CKPT_FORMAT = "sirf_diffusion.train_checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a training checkpoint."""



def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------ checkpoints
def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    d = Path(out_dir) / "checkpoints"
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def _save_checkpoint(out_dir: Path, payload: dict[str, Any], keep: int) -> Path:
    d = out_dir / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path = d / f"step_{payload['step']:08d}.pt"
    path.with_suffix(".sha256").unlink(missing_ok=True)  # never pair new data with an old hash
    _atomic_write_bytes(path, data)
    _atomic_write_text(path.with_suffix(".sha256"),
                       f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a training checkpoint (``weights_only=True``: tensors and primitives).

    Raises
    ------
    CheckpointError
        When the file is missing, fails its SHA-256 sidecar, cannot be unpickled (truncated or
        corrupt) or lacks the expected entries.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    sidecar = path.with_suffix(".sha256")
    if sidecar.is_file():
        fields = sidecar.read_text().split()
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
                              f"({type(exc).__name__}: {exc})") from exc
    required = {"format", "step", "model", "ema", "optimizer", "config"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT or required - set(ckpt):
        raise CheckpointError(f"{path} is not a sirf_diffusion training checkpoint "
                              f"(expected format {_CKPT_FORMAT!r} with {sorted(required)})")
    return ckpt


def _load_latest(out_dir: Path, verbose: bool) -> tuple[dict[str, Any], Path] | None:
    """Newest readable checkpoint, falling back to older ones (with a warning) if corrupt."""
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
        raise CheckpointError("no usable checkpoint in " f"{out_dir / 'checkpoints'}:\n  "
                              + "\n  ".join(errors))
    return None


# ---------------------------------------------------------------------------------- logging
_LOSS_FIELDS = ["step", "loss", "lr", "grad_norm", "seconds"]


def _truncate_csv(path: Path, last_step: int) -> None:
    """Keep the rows of ``path`` with ``step <= last_step`` (steps redone after a resume)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= last_step]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(kept)
    _atomic_write_text(path, buf.getvalue())


def _open_csv(path: Path, fields: list[str]):
    new = not path.is_file() or path.stat().st_size == 0
    f = open(path, "a", newline="")
    w = csv.writer(f, lineterminator="\n")
    if new:
        w.writerow(fields)
    return f, w


def _read_csv(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


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
    fig.savefig(path)
    return path
