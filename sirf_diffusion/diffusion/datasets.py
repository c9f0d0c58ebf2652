"""2D slice datasets for training score networks on PET brain images.

Pipeline (each step is explicit and recorded):

1. **Subjects** come from one split only (:func:`split_seeds`: ``'train'`` for training,
   ``'val'`` for validation), so that test subjects are never seen by a prior.
2. **Volume pool** (:func:`build_volume_pool`): one 3D activity volume ``[z, y, x]`` per subject
   from a *volume source* (a callable ``seed -> array``; by default the brain phantoms of
   :mod:`sirf_diffusion.data.phantoms`), generated once and cached in an ``.npz`` so that resumed
   and later runs do not regenerate it.
3. **Slices** (:class:`SliceDataset`): optional Gaussian PSF blur (e.g. 4.5 mm FWHM, a realistic
   "high-quality PET" target), then all 2D slices of one orientation

   ========  ============  ==================
   key       plane         slice array
   ========  ============  ==================
   ``xy``    axial         ``vol[z]``  ``[Y, X]``
   ``yz``    sagittal      ``vol[:, :, x]`` ``[Z, Y]``
   ``xz``    coronal       ``vol[:, y, :]`` ``[Z, X]``
   ========  ============  ==================

   centre-padded/cropped to ``slice_shape``; slices whose support (pixels above
   ``support_threshold`` times the volume maximum) covers less than ``min_support_fraction`` of
   the slice are dropped.
4. **Normalisation** per slice with the explicit transform of
   :mod:`sirf_diffusion.diffusion.normalisation`: ``x = slice / s`` with ``s`` the support mean
   (:func:`support_mean`, the same definition :meth:`IntensityNormalisation.fit` uses at
   reconstruction time), times a log-uniform augmentation factor ``a`` in ``scale_range``; the
   batch records ``IntensityNormalisation(s / a)`` so ``from_prior`` recovers the slice exactly.
   Left-right flips (the image ``x`` axis) are the only anatomically valid flip, so sagittal
   slices are never flipped.

Batches are *counter-based*: batch ``k`` is a pure function of ``(seed, k, rank, world_size)``
(:meth:`SliceDataset.batch`).  Samples are drawn without replacement within each epoch from a
permutation seeded by ``(seed, epoch)``; rank ``r`` of ``W`` gets the ``r``-th contiguous shard of
the global batch, so the union of the shards is the single-process batch and a resumed run sees
exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io.atomic import atomic_write_bytes, make_dir
from .normalisation import IntensityNormalisation, support_mean

__all__ = [
    "Orientation",
    "VolumeSource",
    "derive_seed",
    "split_seeds",
    "phantom_volume_source",
    "VolumePool",
    "build_volume_pool",
    "extract_slices",
    "SliceBatch",
    "SliceDataset",
]

Orientation = Literal["xy", "yz", "xz"]
#: ``seed -> activity volume [z, y, x]`` (numpy, non-negative).
VolumeSource = Callable[[int], np.ndarray]

_ORIENTATIONS = ("xy", "yz", "xz")
#: Axis of the slice array that is the patient's left-right (image x) axis, if any.
_LR_AXIS: dict[str, int | None] = {"xy": 1, "yz": None, "xz": 1}
_CACHE_FORMAT = "sirf_diffusion.volume_pool/1"

# Tags that keep the random streams of one seed independent of each other.
_TAG_PERMUTATION = 1
_TAG_AUGMENT = 2


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of the integer ``keys`` (``numpy.SeedSequence``).

    Used for counter-based randomness: e.g. ``derive_seed(seed, tag, step)``.
    """
    ints = [int(k) for k in keys]
    if any(k < 0 for k in ints):
        raise ValueError(f"derive_seed needs non-negative integers, got {keys}")
    state = np.random.SeedSequence(ints).generate_state(1, np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


def split_seeds(split: Literal["train", "val", "test"], n: int) -> list[int]:
    """The first ``n`` subject seeds of ``split`` (:mod:`sirf_diffusion.data.splits`).

    Every seed is checked with ``subject_split`` so that a bug in the split table can never leak
    validation or test subjects into training.
    """
    from ..data.splits import subject_seeds, subject_split

    if n <= 0:
        raise ValueError(f"number of subjects must be positive, got {n}")
    seeds = [int(s) for s in subject_seeds(split, n)]
    if len(seeds) != n:
        raise ValueError(f"split {split!r} returned {len(seeds)} seeds, asked for {n}")
    wrong = [s for s in seeds if subject_split(s) != split]
    if wrong:
        raise RuntimeError(f"seeds {wrong[:5]} returned for split {split!r} belong to another "
                           "split")
    return seeds


def _phantom_volume(seed: int, tracer: str, shape: tuple[int, int, int] | None,
                    voxel_size_mm: tuple[float, float, float] | None) -> np.ndarray:
    from ..data.phantoms import brain_phantom

    ph = brain_phantom(seed, tracer=tracer, dims=3, shape=shape, voxel_size_mm=voxel_size_mm)
    return np.asarray(ph.activity, dtype=np.float32)


def phantom_volume_source(tracer: str = "fdg", shape: Sequence[int] | None = None,
                          voxel_size_mm: Sequence[float] | None = None) -> VolumeSource:
    """Volume source drawing lesion-free 3D brain phantoms (``brain_phantom(seed, ...)``).

    The result is picklable (a :func:`functools.partial`), so it can be sent to worker processes.
    """
    return functools.partial(
        _phantom_volume, tracer=str(tracer),
        shape=None if shape is None else tuple(int(n) for n in shape),
        voxel_size_mm=None if voxel_size_mm is None else tuple(float(v) for v in voxel_size_mm))


@dataclass(frozen=True)
class VolumePool:
    """3D volumes of a set of subjects.

    Attributes
    ----------
    volumes
        ``[N, z, y, x]`` float32 activity.
    seeds
        ``[N]`` subject seeds, in the order of ``volumes``.
    meta
        What generated the volumes (source, tracer, grid...), as stored in the cache.
    """

    volumes: np.ndarray
    seeds: np.ndarray
    meta: dict[str, Any]


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    make_dir(path.parent)
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def _load_cache(path: Path, seeds: list[int], meta: dict[str, Any]) -> VolumePool | None:
    """The cached pool when it exists and matches ``seeds`` and ``meta``; else ``None``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored_meta = json.loads(str(z["meta"]))
            stored_seeds = z["seeds"]
            if stored_meta != meta or stored_seeds.tolist() != seeds:
                return None
            return VolumePool(np.ascontiguousarray(z["volumes"], dtype=np.float32),
                              stored_seeds.astype(np.int64), stored_meta)
    except FileNotFoundError:
        return None
    except Exception as exc:  # truncated / corrupt cache: it is only a cache, regenerate it
        warnings.warn(f"volume cache {path} is unreadable ({exc}); regenerating it", stacklevel=3)
        return None


def build_volume_pool(seeds: Sequence[int], source: VolumeSource, *,
                      cache_path: str | os.PathLike | None = None,
                      meta: dict[str, Any] | None = None,
                      progress: bool = True) -> VolumePool:
    """Volumes of ``seeds`` from ``source``, cached in ``cache_path`` (``.npz``).

    Parameters
    ----------
    seeds
        Subject seeds (take them from :func:`split_seeds`).
    source
        ``seed -> [z, y, x]`` activity.
    cache_path
        ``.npz`` file.  When it exists and was made from the same seeds and ``meta`` it is loaded
        instead of calling ``source``; otherwise the volumes are generated and (over)written
        atomically.
    meta
        JSON-serialisable description of the source (tracer, grid...), compared on load.
    progress
        Show a progress bar while generating.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("build_volume_pool needs at least one seed")
    meta = {"format": _CACHE_FORMAT, **(meta or {})}
    json.dumps(meta)  # fail early on a non-serialisable description
    path = None if cache_path is None else Path(cache_path)
    if path is not None:
        cached = _load_cache(path, seeds, meta)
        if cached is not None:
            return cached
    vols = []
    for s in tqdm(seeds, desc="generating training volumes", disable=not progress, unit="subject"):
        v = np.asarray(source(s), dtype=np.float32)
        if v.ndim != 3:
            raise ValueError(f"volume source returned shape {v.shape} for seed {s}; "
                             "expected [z, y, x]")
        if vols and v.shape != vols[0].shape:
            raise ValueError(f"volume source returned shape {v.shape} for seed {s}, "
                             f"but {vols[0].shape} for seed {seeds[0]}")
        if not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"volume of seed {s} has negative or non-finite values")
        vols.append(v)
    pool = VolumePool(np.stack(vols), np.asarray(seeds, dtype=np.int64), meta)
    if path is not None:
        _atomic_savez(path, volumes=pool.volumes, seeds=pool.seeds,
                      meta=np.asarray(json.dumps(meta, sort_keys=True)))
    return pool


def _psf_sigma_vox(fwhm_mm: float, voxel_size_mm: Sequence[float]) -> list[float]:
    s = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return [s / float(v) for v in voxel_size_mm]


def _fit(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop / zero-pad the last two axes of ``a`` to ``shape``."""
    out = a
    for axis, n in zip((-2, -1), shape):
        cur = out.shape[axis]
        if cur > n:
            start = (cur - n) // 2
            out = np.take(out, np.arange(start, start + n), axis=axis)
        elif cur < n:
            pad = [(0, 0)] * out.ndim
            before = (n - cur) // 2
            pad[axis] = (before, n - cur - before)
            out = np.pad(out, pad)
    return out


def extract_slices(volume: np.ndarray, orientation: Orientation) -> np.ndarray:
    """All 2D slices of ``volume`` ``[z, y, x]`` in ``orientation`` (see module docstring)."""
    if orientation == "xy":
        return volume
    if orientation == "yz":
        return np.moveaxis(volume, 2, 0)
    if orientation == "xz":
        return np.moveaxis(volume, 1, 0)
    raise ValueError(f"orientation must be one of {_ORIENTATIONS}, got {orientation!r}")


@dataclass
class SliceBatch:
    """One (shard of a) training batch.

    Attributes
    ----------
    x
        ``[b, 1, H, W]`` normalised slices (float32).
    normalisation
        ``IntensityNormalisation(scale [b])`` with ``normalisation.from_prior(x)`` equal to the
        (blurred, flipped) activity slices.
    indices
        ``[b]`` indices into the dataset's slices.
    flipped
        ``[b]`` whether each slice was flipped left-right.
    factor
        ``[b]`` intensity augmentation factors ``a`` (``x = a * slice / support_mean``).
    """

    x: torch.Tensor
    normalisation: IntensityNormalisation
    indices: torch.Tensor
    flipped: torch.Tensor
    factor: torch.Tensor


class SliceDataset:
    """2D slices of one orientation from a pool of 3D volumes (see module docstring).

    Parameters
    ----------
    volumes
        ``[N, z, y, x]`` activity (e.g. ``VolumePool.volumes``).
    orientation
        ``'xy'`` (axial), ``'yz'`` (sagittal) or ``'xz'`` (coronal).
    voxel_size_mm
        ``(vz, vy, vx)``; needed for the PSF blur.
    psf_fwhm_mm
        Isotropic Gaussian PSF applied in 3D before slicing; ``None`` or ``0`` for none.
    slice_shape
        ``(H, W)`` the slices are centre-cropped / zero-padded to; ``None`` keeps them.
    support_threshold
        Support = pixels above this fraction of the maximum (of the volume when selecting
        slices, of the slice in :func:`support_mean`).
    min_support_fraction
        Slices whose support covers less than this fraction of the slice are dropped.
    scale_range
        ``(lo, hi)`` of the log-uniform intensity augmentation; ``(1, 1)`` disables it.
    flip
        Random left-right flips (never applied to sagittal slices).
    seed
        Base seed of the data order and augmentation.
    """

    def __init__(self, volumes: np.ndarray, *, orientation: Orientation,
                 voxel_size_mm: Sequence[float], psf_fwhm_mm: float | None = None,
                 slice_shape: Sequence[int] | None = None, support_threshold: float = 0.05,
                 min_support_fraction: float = 0.05,
                 scale_range: tuple[float, float] = (0.7, 1.4), flip: bool = True,
                 seed: int = 0) -> None:
        volumes = np.asarray(volumes, dtype=np.float32)
        if volumes.ndim != 4:
            raise ValueError(f"volumes must be [N, z, y, x], got shape {volumes.shape}")
        if orientation not in _ORIENTATIONS:
            raise ValueError(f"orientation must be one of {_ORIENTATIONS}, got {orientation!r}")
        if len(voxel_size_mm) != 3 or min(voxel_size_mm) <= 0:
            raise ValueError(f"voxel_size_mm must be 3 positive numbers, got {voxel_size_mm}")
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if not 0 < support_threshold < 1 or not 0 <= min_support_fraction <= 1:
            raise ValueError("support_threshold must be in (0, 1) and min_support_fraction "
                             "in [0, 1]")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.orientation: Orientation = orientation
        self.voxel_size_mm = tuple(float(v) for v in voxel_size_mm)
        self.psf_fwhm_mm = float(psf_fwhm_mm or 0.0)
        self.support_threshold = float(support_threshold)
        self.min_support_fraction = float(min_support_fraction)
        self.scale_range = (lo, hi)
        self.flip = bool(flip) and _LR_AXIS[orientation] is not None
        self.seed = int(seed)

        kept, index = [], []
        for n, vol in enumerate(volumes):
            if self.psf_fwhm_mm > 0:
                from scipy.ndimage import gaussian_filter

                vol = gaussian_filter(vol, _psf_sigma_vox(self.psf_fwhm_mm, self.voxel_size_mm),
                                      mode="constant").astype(np.float32)
            vmax = float(vol.max())
            if vmax <= 0:
                continue
            sl = extract_slices(vol, orientation)
            if slice_shape is not None:
                sl = _fit(sl, (int(slice_shape[0]), int(slice_shape[1])))
            frac = (sl > self.support_threshold * vmax).mean(axis=(1, 2))
            keep = np.nonzero(frac >= max(self.min_support_fraction, 1e-12))[0]
            kept.append(np.ascontiguousarray(sl[keep]))
            index += [(n, int(k)) for k in keep]
        if not index:
            raise ValueError("no slice has a non-trivial support; check the volumes and "
                             "min_support_fraction")
        #: ``[M, H, W]`` activity slices (after PSF blur, before normalisation).
        self.slices = torch.from_numpy(np.concatenate(kept))
        #: ``[M, 2]`` (volume number, slice number in the volume) of each kept slice.
        self.index = torch.tensor(index, dtype=torch.int64)
        #: ``[M]`` support mean of each slice (float64).
        self.support_means = support_mean(self.slices.double()[:, None], None,
                                          self.support_threshold)
        self._perm_cache: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.slices.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return int(self.slices.shape[1]), int(self.slices.shape[2])

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (recorded beside trained models)."""
        return {"orientation": self.orientation, "num_slices": len(self),
                "slice_shape": list(self.slice_shape), "voxel_size_mm": list(self.voxel_size_mm),
                "psf_fwhm_mm": self.psf_fwhm_mm, "scale_range": list(self.scale_range),
                "flip_left_right": self.flip,
                "normalisation": {"kind": "divide_by_support_mean", "per": "slice",
                                  "support_threshold": self.support_threshold,
                                  "see": "IntensityNormalisation.fit(image, threshold="
                                         f"{self.support_threshold})"}}

    # ------------------------------------------------------------------ sampling
    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            g = _generator(self.seed, _TAG_PERMUTATION, epoch)
            self._perm_cache = (epoch, torch.randperm(len(self), generator=g))
        return self._perm_cache[1]

    def global_indices(self, step: int, batch_size: int) -> torch.Tensor:
        """Slice indices of global batch ``step`` (epoch-wise sampling without replacement)."""
        if step < 0 or batch_size <= 0:
            raise ValueError(f"need step >= 0 and batch_size > 0, got {step}, {batch_size}")
        m = len(self)
        pos = torch.arange(step * batch_size, (step + 1) * batch_size)
        out = torch.empty(batch_size, dtype=torch.int64)
        for epoch in torch.unique(pos // m).tolist():
            sel = pos // m == epoch
            out[sel] = self._permutation(int(epoch))[pos[sel] % m]
        return out

    def batch(self, step: int, batch_size: int, *, rank: int = 0,
              world_size: int = 1) -> SliceBatch:
        """Shard ``rank`` of global batch ``step`` (``batch_size`` = global batch size).

        A pure function of ``(seed, step, rank, world_size)``; the shards of all ranks
        concatenated are the ``world_size = 1`` batch.
        """
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by world size "
                             f"{world_size}")
        idx = self.global_indices(step, batch_size)
        g = _generator(self.seed, _TAG_AUGMENT, step)
        lo, hi = self.scale_range
        u = torch.rand(batch_size, generator=g, dtype=torch.float64)
        factor = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
        flips = torch.rand(batch_size, generator=g) < 0.5
        if not self.flip:
            flips = torch.zeros_like(flips)
        b = batch_size // world_size
        sl = slice(rank * b, (rank + 1) * b)
        idx, factor, flips = idx[sl], factor[sl], flips[sl]
        images = self.slices[idx].clone()
        if flips.any():
            images[flips] = torch.flip(images[flips], dims=(-1,))
        norm = IntensityNormalisation(self.support_means[idx] / factor)
        x = norm.to_prior(images[:, None]).to(torch.float32)
        return SliceBatch(x=x, normalisation=norm, indices=idx, flipped=flips, factor=factor)
