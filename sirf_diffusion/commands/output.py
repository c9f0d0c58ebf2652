"""A command's result set: checked before any work, written aside, moved into place at the end.

Rules (``docs/cli.md``):

* the output location is checked before any work starts: it is not a file, nothing on its path
  is a file, the nearest existing folder is writable, and it is neither inside nor around an
  input (the case folder, the model folder, the config file);
* an existing, non-empty output folder (or an existing output file) is refused unless
  ``--overwrite`` is given; with ``--overwrite`` the *whole* previous result set is replaced,
  so nothing stale (an old ``posterior/``) survives, but never the working folder, the home
  folder or a filesystem root;
* the command writes into a hidden staging folder ``.sirf-diffusion-partial-<pid>-<token>``
  inside the output folder; on success the previous contents move into a hidden
  ``.sirf-diffusion-old-<pid>-<token>`` folder, the new ones into place (renames in one
  folder), and the old ones are deleted.  On any failure (including Ctrl-C) the staging folder
  and every folder the command created are removed: the output location is as before;
* hidden folders left by a process that was killed (its pid no longer runs) are dealt with at
  the next start: a staging folder is removed; a folder of previous contents is never deleted
  (the kill may have come before the new result was in place): its entries move back when no
  entry of the same name is there, else it is renamed to a visible
  ``sirf-diffusion-recovered-<token>`` folder, with a warning.  Those of a running process make
  the command refuse the folder.

Folders are created with :func:`os.mkdir`, i.e. with the user's umask.
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ResultSet", "check_location", "check_replaceable", "entries", "make_folders",
           "remove_folders", "preview", "set_aside", "abandon_run",
           "STAGING_PREFIX", "TRASH_PREFIX"]

STAGING_PREFIX = ".sirf-diffusion-partial-"
TRASH_PREFIX = ".sirf-diffusion-old-"

PathLike = str | os.PathLike[str]


def _owner(name: str) -> int | None:
    """The pid in the name of a staging/trash folder of this module, else ``None``."""
    for prefix in (STAGING_PREFIX, TRASH_PREFIX):
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def entries(folder: Path, flag: str, *, shared: bool = False) -> list[Path]:
    """The entries of ``folder`` (sorted), leaving out the staging/trash folders of this module.

    Those of killed processes are deleted; one of another running process raises
    ``ValueError``, unless the folder is ``shared`` (several commands write their own files
    into it, as ``sample`` does).
    """
    out = []
    for e in sorted(folder.iterdir()):
        pid = _owner(e.name)
        if pid is None:
            out.append(e)
        elif pid == os.getpid() or (shared and _running(pid)):
            continue
        elif _running(pid):
            raise ValueError(f"{flag} {folder}: another sirf-diffusion process (pid {pid}) is "
                             f"writing into it ({e.name})")
        elif e.name.startswith(TRASH_PREFIX) and e.is_dir():
            out.extend(_recover(folder, e))
        else:
            shutil.rmtree(e, ignore_errors=True)
    return sorted(dict.fromkeys(p for p in out if p.exists()))


def _recover(folder: Path, trash: Path) -> list[Path]:
    """Previous contents left by a killed process: moved back, or kept visibly (``entries``)."""
    moved = list(trash.iterdir())
    if not any((folder / e.name).exists() for e in moved):
        for e in moved:
            e.rename(folder / e.name)
        trash.rmdir()
        warnings.warn(f"{folder}: a killed sirf-diffusion process left the previous contents "
                      f"aside; they were put back ({preview(moved)})", stacklevel=3)
        return [folder / e.name for e in moved]
    kept = folder / f"sirf-diffusion-recovered-{secrets.token_hex(4)}"
    trash.rename(kept)
    warnings.warn(f"{folder}: a killed sirf-diffusion process left the previous contents "
                  f"aside; they are kept in {kept}", stacklevel=3)
    return [kept]


def preview(items: Sequence[Path]) -> str:
    """The first few names of ``items`` for a message (folders with a trailing ``/``)."""
    names = ", ".join(e.name + ("/" if e.is_dir() else "") for e in items[:3])
    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
    return names + more


def check_location(folder: PathLike, flag: str = "--out",
                   protect: Mapping[str, PathLike | None] | None = None, *,
                   replaces_folder: bool = True) -> Path:
    """Check an output folder before any work; returns it resolved.

    Parameters
    ----------
    folder
        The output folder (need not exist).
    flag
        The flag that gave it, for messages.
    protect
        Inputs by description (``{"case folder": case}``): the folder must be neither one of
        them nor inside one; with ``replaces_folder`` it must not contain one either.
    replaces_folder
        The command may replace the folder's whole contents (``--overwrite``).

    Raises
    ------
    ValueError
        Naming the flag and the problem.
    """
    shown = Path(folder)
    real = shown.resolve()
    if shown.exists() and not shown.is_dir():
        raise ValueError(f"{flag} {shown} is a file, not a folder")
    anc = real
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{flag} {shown}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {shown}: no permission to write in {anc}")
    for label, path in (protect or {}).items():
        if path is None:
            continue
        p = Path(path).resolve()
        if real == p or p in real.parents:
            raise ValueError(f"{flag} {shown} is inside the {label} {path}: write the results "
                             "elsewhere")
        if replaces_folder and real in p.parents:
            raise ValueError(f"{flag} {shown} contains the {label} {path}: write the results "
                             "elsewhere")
    return real


def check_run_folder(old: Sequence[Path], shown: PathLike, *, kind: str, has_run: bool,
                     resume: bool, overwrite: bool | None, where: str = "no checkpoint",
                     article: str = "a") -> None:
    """Refuse to start or continue a training run in ``--out`` when that would lose something.

    Parameters
    ----------
    old
        The folder's entries (:func:`entries`; empty for an absent or empty folder, where any
        run may start).
    shown
        The folder as the user wrote it.
    kind
        What a run of this command is called (``'DEFT training run'``).
    has_run
        Whether the folder holds this command's checkpoints.
    resume
        ``--resume``: continue the run in the folder; a non-empty folder without one is refused.
    overwrite
        ``--overwrite`` (a new run replaces the folder's contents; the caller sets them aside);
        ``None`` for a command without the flag, whose non-empty folder is only ever resumed.
    where
        Where the checkpoints were looked for, for the refusal of ``--resume``.
    article
        The indefinite article before ``kind`` (``'an'`` for "an FBSEM-net run").
    """
    if not old:
        return
    if resume:
        if not has_run:
            raise ValueError(f"--resume: --out {shown} holds no {kind} ({where}, but "
                             f"{preview(old)}): there is nothing to continue; choose another "
                             "folder")
        return
    if overwrite:
        return
    if has_run:
        hint = f"it holds {article} {kind}: pass --resume to continue it" + (
            ", or --overwrite to start again" if overwrite is not None else "")
    else:
        hint = "pass --overwrite to replace its contents" if overwrite is not None else \
            "it holds no run of this command"
    raise ValueError(f"--out {shown} is not empty (it holds {preview(old)}): {hint}, or choose "
                     "another folder")


def check_replaceable(folder: Path, shown: PathLike, flag: str = "--out") -> None:
    """Refuse to replace the contents of the working folder, a folder above it, the home
    folder or a filesystem root (``--overwrite`` on them would delete unrelated files)."""
    cwd = Path.cwd().resolve()
    if (folder == cwd or folder in cwd.parents or folder == Path.home().resolve()
            or folder == Path(folder.anchor)):
        raise ValueError(f"{flag} {shown} is the working folder, a folder above it, the home "
                         "folder or a filesystem root: --overwrite would delete its contents; "
                         "choose a folder for the results")


def make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder`` (user's umask); returns the folders created, outermost first."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
    except OSError as exc:
        remove_folders(created)
        raise ValueError(f"cannot create folder {p}: {exc.strerror}") from None
    return created


def set_aside(folder: Path, old: Sequence[Path]) -> Path:
    """Move ``old`` (entries of ``folder``) into a new trash folder inside ``folder``, so that a
    run writing into ``folder`` itself can replace them and :func:`abandon_run` put them back."""
    trash = folder / f"{TRASH_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    trash.mkdir()
    for e in old:
        e.rename(trash / e.name)
    return trash


def abandon_run(folder: Path, trash: Path | None, created: Sequence[Path]) -> None:
    """Undo a run that failed with nothing worth keeping: delete what it wrote in ``folder``,
    put the entries :func:`set_aside` moved into ``trash`` back, and remove the folders
    :func:`make_folders` ``created``."""
    for e in folder.iterdir():
        if e != trash:
            shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
    if trash is not None:
        for e in trash.iterdir():
            e.rename(folder / e.name)
        trash.rmdir()
    remove_folders(created)


def remove_folders(created: Sequence[Path]) -> None:
    """Remove the (empty) folders :func:`make_folders` created, innermost first."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            pass


class ResultSet:
    """The outputs of one command (module docstring); a context manager over the staging folder.

    Parameters
    ----------
    folder
        Output folder.
    flag
        The flag that gave the output location, for messages.
    overwrite
        Replace an existing result set (``--overwrite``).
    names
        ``None``: the whole folder is the result set (it must be empty unless ``overwrite``).
        Otherwise the file names in ``folder`` that make up the result set (``sample`` writes
        ``grid.png`` and ``grid.json`` into an existing folder); only those are refused/replaced.
    protect
        Inputs the output must not be inside of (or contain), by description.
    shown
        How to show the output location in messages (default ``folder``).

    Examples
    --------
    >>> with ResultSet(out, overwrite=args.overwrite) as staging:   # doctest: +SKIP
    ...     write_image(staging / "image.hv", x, geometry)
    """

    def __init__(self, folder: PathLike, *, flag: str = "--out", overwrite: bool = False,
                 names: Sequence[str] | None = None,
                 protect: Mapping[str, PathLike | None] | None = None,
                 shown: PathLike | None = None) -> None:
        self.flag = flag
        self.shown = Path(shown if shown is not None else folder)
        self.overwrite = overwrite
        self.names = None if names is None else tuple(names)
        self.folder = check_location(folder, flag, protect, replaces_folder=names is None)
        self._created: list[Path] = []
        self._staging: Path | None = None
        if self.folder.is_dir():
            self._previous()  # refuse a non-empty folder before any work

    def _previous(self) -> list[Path]:
        """The entries the result set replaces (refusing them without ``overwrite``)."""
        if not self.folder.is_dir():
            return []
        if self.names is None:
            old = entries(self.folder, self.flag)
            if old and not self.overwrite:
                raise ValueError(f"{self.flag} {self.shown} is not empty (it holds "
                                 f"{preview(old)}): pass --overwrite to replace its contents, "
                                 "or choose another folder")
            if old:
                check_replaceable(self.folder, self.shown, self.flag)
            return old
        entries(self.folder, self.flag, shared=True)  # removes what killed runs left
        old = []
        for name in self.names:
            p = self.folder / name
            if p.is_dir() and not p.is_symlink():
                raise ValueError(f"{self.flag} {self.shown}: {p} is a folder")
            if p.exists() or p.is_symlink():
                if not self.overwrite:
                    raise ValueError(f"{self.flag} {self.shown}: {p} exists: pass --overwrite "
                                     "to replace it")
                old.append(p)
        return old

    @property
    def staging(self) -> Path:
        """The hidden folder the command writes into (after :meth:`open`)."""
        if self._staging is None:
            raise RuntimeError("ResultSet.open() was not called")
        return self._staging

    def open(self) -> Path:
        """Create the output folder (if needed) and the staging folder; returns the latter."""
        self._created = make_folders(self.folder)
        self._previous()
        staging = self.folder / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
        except OSError as exc:
            remove_folders(self._created)
            raise ValueError(f"{self.flag} {self.shown}: cannot write in {self.folder}: "
                             f"{exc.strerror}") from None
        self._staging = staging
        return staging

    def commit(self) -> Path:
        """Replace the previous result set by the staged one; returns the output folder."""
        staging = self.staging
        old = self._previous()
        trash = None
        if old:
            trash = self.folder / f"{TRASH_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            trash.mkdir()
            for e in old:
                e.rename(trash / e.name)
        moved: list[str] = []
        try:
            for e in sorted(staging.iterdir()):
                e.rename(self.folder / e.name)
                moved.append(e.name)
        except BaseException:
            for name in moved:
                (self.folder / name).rename(staging / name)
            if trash is not None:
                for e in trash.iterdir():
                    e.rename(self.folder / e.name)
                trash.rmdir()
            raise
        staging.rmdir()
        self._staging = None
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
            if trash.exists():
                warnings.warn(f"could not delete the previous results in {trash}", stacklevel=2)
        return self.folder

    def abort(self) -> None:
        """Delete the staging folder and the folders :meth:`open` created."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        remove_folders(self._created)
        self._created = []

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
