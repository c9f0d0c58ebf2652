"""Validation of command-line values: argparse types, options per method, devices.

The argparse types reject a value with a message argparse prefixes with the flag's name
(``argument --iterations: must be a positive integer, got 0``).  ``None`` (the flag not given)
always means "the default", never ``0``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "unit_interval", "fraction", "flag_name", "check_applicable", "check_device",
           "add_precision_argument", "add_config_argument", "add_steps_argument",
           "add_run_arguments", "add_progress_argument", "load_config"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], requirement: str,
             name: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then require ``ok`` of the value."""

    def parse(text: str) -> Any:
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = f"Parse {requirement}."
    return parse


#: An integer >= 1.
positive_int = _checked(_int, lambda v: v >= 1, "a positive integer", "positive_int")
#: An integer >= 0.
non_negative_int = _checked(_int, lambda v: v >= 0, "a non-negative integer", "non_negative_int")
#: A finite number > 0.
positive_float = _checked(_float, lambda v: v > 0, "a positive number", "positive_float")
#: A finite number >= 0.
non_negative_float = _checked(_float, lambda v: v >= 0, "a non-negative number",
                              "non_negative_float")
#: A number in [0, 1].
unit_interval = _checked(_float, lambda v: 0 <= v <= 1, "in [0, 1]", "unit_interval")
#: A number in [0, 1).
fraction = _checked(_float, lambda v: 0 <= v < 1, "in [0, 1)", "fraction")


def flag_name(dest: str) -> str:
    """The flag of an argparse destination: ``mlem_iterations`` -> ``--mlem-iterations``."""
    return "--" + dest.replace("_", "-")


def check_applicable(args: argparse.Namespace, method: str,
                     applies_to: Mapping[str, Iterable[str]]) -> None:
    """Refuse options given (not ``None``) that do not apply to ``method``.

    ``applies_to`` maps an argparse destination to the methods it applies to.

    Raises
    ------
    ValueError
        Naming the first such flag, the method, and the methods it applies to.
    """
    for dest, methods in applies_to.items():
        methods = tuple(methods)
        if getattr(args, dest, None) is not None and method not in methods:
            raise ValueError(f"{flag_name(dest)} does not apply to method {method} "
                             f"(only to {', '.join(methods)})")


def add_precision_argument(p: argparse.ArgumentParser, default: str | None = "auto",
                           default_text: str = "%(default)s") -> None:
    """``--precision {auto,fp32,bf16}``: the score network's precision
    (:mod:`sirf_diffusion.diffusion.precision`)."""
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=default,
                   help="score-network precision: auto = bfloat16 autocast where the CPU/GPU "
                        "runs it natively (AVX512-BF16/AMX, Ampere+), else float32; fp32 for "
                        f"reference results (default: {default_text})")


# ------------------------------------------------------------------ the flags of a training run
def add_config_argument(p: argparse.ArgumentParser, what: str, example: str,
                        defaults: str) -> None:
    """``--config JSON``: the run's ``what`` config file (``None``: the ``defaults`` class's)."""
    p.add_argument("--config", metavar="JSON", default=None,
                   help=f"JSON {what} config, e.g. {example} (default: the {defaults} defaults)")


def add_steps_argument(p: argparse.ArgumentParser) -> None:
    """``--steps N``: optimiser steps replacing the config's."""
    p.add_argument("--steps", metavar="N", type=positive_int, default=None,
                   help="number of optimiser steps (default: the config's)")


def add_run_arguments(p: argparse.ArgumentParser, overwrite_help: str | None) -> None:
    """``--resume`` and (unless ``overwrite_help`` is ``None``) ``--overwrite``, exclusive."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint")
    if overwrite_help is not None:
        group.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_progress_argument(p: argparse.ArgumentParser, what: str = "progress bars") -> None:
    """``--no-progress``."""
    p.add_argument("--no-progress", action="store_true", help=f"hide {what}")


def load_config(path: str | None, read: Callable[[str], T], default: Callable[[], T]) -> T:
    """The config ``read(path)`` (``default()`` without ``--config``); a missing or invalid file
    raises ``ValueError`` naming ``--config`` and the file."""
    if path is None:
        return default()
    if not Path(path).is_file():
        raise ValueError(f"--config {path}: file not found")
    try:
        return read(path)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--config {path}: {exc}") from None


def check_device(name: str, flag: str = "--device") -> str:
    """Check that the torch device ``name`` exists on this machine; returns it.

    Raises
    ------
    ValueError
        The name is not a torch device, or it names CUDA/MPS hardware this machine (or this
        torch build) does not have.
    """
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {name}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: CUDA is not available on this machine "
                             "(no GPU, or torch was built without CUDA); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{flag} {name}: Apple MPS is not available on this machine")
    elif device.type != "cpu":
        raise ValueError(f"{flag} {name}: unsupported device type {device.type}; use cpu or cuda")
    return name
