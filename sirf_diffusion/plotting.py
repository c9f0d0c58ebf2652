"""Figures people look at (matplotlib, imported lazily, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["central_slice", "save_image_row", "save_curves", "save_slice_grid"]


def central_slice(image: Any) -> np.ndarray:
    """A 2D view of an image ``[z, y, x]`` (or ``[y, x]``): the middle axial plane."""
    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    return a


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_png(plt: Any, fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, save it as a PNG at ``path`` (parent folders created), close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_image_row(images: Mapping[str, Any], path: str | Path, *,
                   titles: Mapping[str, str] | None = None, vmax: float | None = None,
                   cmap: str = "gray", extra_row: Mapping[str, Any] | None = None,
                   extra_cmap: str = "magma", suptitle: str | None = None) -> Path:
    """Save images side by side (one shared intensity scale) as a PNG.

    Parameters
    ----------
    images
        Name -> image ([z, y, x] or [y, x]); the central axial plane is shown.
    titles
        Optional per-image title (defaults to the name), e.g. with metrics.
    vmax
        Upper display limit (default: the 99.9th percentile of the first image).
    extra_row
        Optional second row (e.g. standard-deviation maps), each with its own scale.
    """
    plt = _pyplot()
    names = list(images)
    ncols = max(len(names), len(extra_row or {}))
    nrows = 2 if extra_row else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 3.0 * nrows), squeeze=False)
    slices = {k: central_slice(v) for k, v in images.items()}
    if vmax is None:
        vmax = float(np.percentile(slices[names[0]], 99.9)) or 1.0
    for ax in axes.ravel():
        ax.axis("off")
    for j, k in enumerate(names):
        axes[0, j].imshow(slices[k], cmap=cmap, vmin=0, vmax=vmax, origin="upper")
        axes[0, j].set_title((titles or {}).get(k, k), fontsize=8)
    for j, (k, v) in enumerate((extra_row or {}).items()):
        s = central_slice(v)
        im = axes[1, j].imshow(s, cmap=extra_cmap, vmin=0,
                               vmax=float(np.percentile(s, 99.5)) or 1.0)
        axes[1, j].set_title(k, fontsize=8)
        fig.colorbar(im, ax=axes[1, j], fraction=0.046, pad=0.02)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _save_png(plt, fig, path)


def save_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                xlabel: str, ylabel: str, title: str | None = None, logx: bool = False) -> Path:
    """Save line plots ``name -> (x, y)`` as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (x, y) in curves.items():
        ax.plot(list(x), list(y), marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(plt, fig, path)


def save_slice_grid(slices: Any, path: str | Path, title: str) -> Path:
    """Save 2D slices ``[n, h, w]`` as a grid PNG (atomically) and return its path.

    Every panel shares one grey scale, from 0 to the 99.5th percentile of all slices (dark is
    hot), so that panels can be compared with each other and with another grid drawn the same
    way (e.g. unconditional samples against real slices).
    """
    import io

    from matplotlib.figure import Figure

    from .io.atomic import atomic_write_bytes, make_dir

    x = np.asarray(slices.detach().cpu() if hasattr(slices, "detach") else slices,
                   dtype=np.float32)
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"slices must be [n, h, w] with n >= 1, got shape {x.shape}")
    n, h, w = x.shape
    cols = int(min(n, max(1, round(n**0.5 * 1.2))))
    rows = -(-n // cols)
    vmax = float(max(1e-12, np.quantile(x, 0.995)))
    fig = Figure(figsize=(1.6 * cols * w / max(h, w), 1.6 * rows * h / max(h, w) + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            ax.imshow(x[k], cmap="gray_r", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.suptitle(title, fontsize=8)
    out = Path(path)
    make_dir(out.parent)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format=out.suffix.lstrip(".").lower() or "png")
    return atomic_write_bytes(out, buf.getvalue())
