"""Validation of command-line values: argparse types, options per method, devices.

The argparse types reject a value with a message argparse prefixes with the flag's name
(``argument --iterations: must be a positive integer, got 0``).  ``None`` (the flag not given)
always means "the default", never ``0``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "unit_interval", "fraction", "flag_name", "check_applicable", "check_device"]


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


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1]."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


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
