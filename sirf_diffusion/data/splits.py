"""A fixed split of subject seeds into training, validation and test subjects.

A phantom subject is identified by its seed (:func:`sirf_diffusion.data.brain_phantom`).  The
split is a pure function of the seed, so it never changes and needs no file:

.. math::  \\text{split}(s) = \\begin{cases} \\text{test} & s \\bmod 10 = 0 \\\\
           \\text{val} & s \\bmod 10 = 1 \\\\ \\text{train} & \\text{otherwise} \\end{cases}

i.e. 80 % / 10 % / 10 %.  Training code should draw seeds with ``subject_seeds("train", n)`` so a
prior never sees a test subject; evaluation uses ``subject_seeds("test", n)``.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Split", "SPLITS", "subject_split", "subject_seeds", "check_split"]

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
_RESIDUES: dict[str, tuple[int, ...]] = {"test": (0,), "val": (1,), "train": tuple(range(2, 10))}


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or int(seed) < 0:
        raise ValueError(f"a subject seed must be a non-negative int, got {seed!r}")
    return int(seed)


def subject_split(seed: int) -> Split:
    """``"test"`` if ``seed % 10 == 0``, ``"val"`` if ``seed % 10 == 1``, else ``"train"``."""
    r = _check_seed(seed) % 10
    return "test" if r == 0 else "val" if r == 1 else "train"


def subject_seeds(split: Split, n: int, start: int = 0) -> list[int]:
    """The first ``n`` seeds ``>= start`` (ascending) that belong to ``split``.

    Examples
    --------
    >>> subject_seeds("test", 3)
    [0, 10, 20]
    >>> subject_seeds("train", 4, start=5)
    [5, 6, 7, 8]
    """
    if split not in _RESIDUES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(n, bool) or int(n) < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    res = _RESIDUES[split]
    out: list[int] = []
    base = (_check_seed(start) // 10) * 10
    while len(out) < n:
        out.extend(s for s in (base + r for r in res) if s >= start)
        base += 10
    return out[:n]


def check_split(seeds: list[int], split: Split) -> None:
    """Raise ``ValueError`` naming the seeds that do not belong to ``split``."""
    if split not in _RESIDUES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    wrong = [s for s in seeds if subject_split(s) != split]
    if wrong:
        raise ValueError(f"seeds {wrong[:10]}{' ...' if len(wrong) > 10 else ''} are not "
                         f"{split!r} subjects")
