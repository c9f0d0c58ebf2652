"""Dataclass configurations from JSON-like dicts, refusing fields the class does not have."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["check_fields", "dataclass_from_dict"]

T = TypeVar("T")


def check_fields(d: Mapping[str, Any], cls: type, name: str) -> None:
    """Raise ``ValueError('unknown NAME fields: [...]')`` for keys of ``d`` that are not fields
    of the dataclass ``cls``."""
    unknown = set(d) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    if unknown:
        raise ValueError(f"unknown {name} fields: {sorted(unknown)}")


def dataclass_from_dict(cls: type[T], d: Mapping[str, Any], *, comments: bool = False) -> T:
    """``cls(**d)`` after :func:`check_fields` (named by the class); with ``comments``, keys
    starting with ``_`` are dropped first (comments in JSON configuration files)."""
    if comments:
        d = {k: v for k, v in d.items() if not k.startswith("_")}
    check_fields(d, cls, cls.__name__)
    return cls(**d)
