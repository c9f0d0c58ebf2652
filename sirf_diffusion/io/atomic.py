"""Atomic file writes with the user's umask: the one helper every writer of the package uses.

A file is written to a temporary name in its target folder, flushed and ``fsync``-ed, given the
permissions an ordinary ``open(path, "w")`` would give it (``0o666`` masked by the process
umask; :func:`tempfile.mkstemp` would leave ``0o600``), then moved into place with
:func:`os.replace`.  A reader therefore sees either the old file or the complete new one, never
a partial write, and a failure (including ``KeyboardInterrupt``) removes the temporary file.

Temporary names are ``.<name>.<random>.tmp``; :func:`remove_stale_temporaries` deletes those
left behind by a process that was killed mid-write.  A result that is a folder is built in
:func:`temporary_dir` (same naming, the umask's folder permissions; :func:`tempfile.mkdtemp`
would leave ``0o700``) and moved into place with :func:`os.replace`.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["current_umask", "file_mode", "dir_mode", "atomic_write", "atomic_write_bytes",
           "atomic_write_text", "write_json", "json_safe", "make_dir", "temporary_dir",
           "remove_stale_temporaries", "OutputExistsError", "TMP_SUFFIX"]

PathLike = str | os.PathLike[str]

#: Suffix of the temporary files written by :func:`atomic_write`.
TMP_SUFFIX = ".tmp"


class OutputExistsError(FileExistsError):
    """An output location holds results this call did not produce and must not replace.

    The message names the location and what to do (e.g. the ``--overwrite`` / ``--resume``
    flags); the command line reports it as one line with exit code 2.
    """


def current_umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new regular file under the current umask (``0o666 & ~umask``)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Permissions of a new folder under the current umask (``0o777 & ~umask``)."""
    return 0o777 & ~current_umask()


def make_dir(path: PathLike) -> Path:
    """``mkdir -p`` with the user's umask (as :meth:`pathlib.Path.mkdir`); returns the path."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def temporary_dir(folder: PathLike, name: str) -> Path:
    """A new empty folder ``folder/.<name>.<random>.tmp`` with the umask's permissions.

    Build a result folder in it, then move it onto ``folder/name`` with :func:`os.replace`;
    :func:`remove_stale_temporaries` (``name``) removes one left by a killed process.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=folder))
    os.chmod(tmp, dir_mode())
    return tmp


@contextmanager
def atomic_write(path: PathLike, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Open a binary temporary file beside ``path``; on a clean exit move it onto ``path``.

    Raises
    ------
    FileNotFoundError
        The target folder does not exist (the message names it).
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, or a function that writes into the open file) to ``path``."""
    with atomic_write(path) as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by ``None`` (JSON has no NaN), numpy/torch scalars
    as Python numbers, tuples as lists and unknown objects as ``str``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch arrays and scalars
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def write_json(path: PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (NaN -> ``null``, :func:`json_safe`) atomically."""
    text = json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def remove_stale_temporaries(folder: PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporaries :func:`atomic_write` / :func:`temporary_dir` leave when a process
    is killed mid-write.

    Only files and folders named ``.<name>.*.tmp`` (any name when ``name`` is ``None``) directly
    in ``folder`` are removed; returns them.  Call it when a run starts, for a folder that no
    other process writes at the same time (another writer's temporary would be removed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{glob.escape(name)}.*{TMP_SUFFIX}" if name else f".*{TMP_SUFFIX}"
    removed = []
    for p in sorted(folder.glob(pattern)):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
