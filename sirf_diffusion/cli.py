"""Command-line interface ``sirf-diffusion`` (also ``python -m sirf_diffusion``): a thin layer.

Each command lives in :mod:`sirf_diffusion.commands` (``add_arguments`` + ``run``); this module
builds the parser and turns failures into exit codes:

* a wrong flag or value: one line ``sirf-diffusion CMD: error: ...`` naming the flag, exit 2;
* an expected failure at run time (bad or missing files, no permission, a toolkit or device that
  is not there, an unreadable checkpoint, a diverged run): one line naming the problem, exit 2;
* Ctrl-C: one line, exit 130;
* anything else is a bug: the traceback and a request to report it, exit 1.

What each command refuses, and why, is listed in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main", "build_parser"]

#: command -> (module in sirf_diffusion.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulate",
                 "simulate a PET scan of a brain phantom as a PETRIC-layout case folder"),
    "reconstruct": ("reconstruct", "reconstruct a PETRIC-layout case folder"),
    "demo": ("demo", "simulate a low-count brain scan and compare reconstructions"),
    "train": ("train", "train 2D score networks on simulated PET slices"),
    "personalise": ("personalise", "fine-tune the prior to a case's anatomy (MR-registered "
                                   "pseudo-PET)"),
    "train-deft": ("train_deft", "train PET-DEFT's h-network for a prior on paired scans"),
    "sample": ("sample", "draw unconditional samples from a prior and save a PNG grid"),
    "train-fbsem": ("train_fbsem", "train an FBSEM-net (unrolled EM with a CNN regulariser) "
                                   "on paired simulated data"),
}

class UsageError(Exception):
    """A command-line error found by argparse (the parser's ``prog`` and the message)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) raised as
    :class:`UsageError`, so that :func:`main` returns 2 instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def _command_module(name: str):
    return importlib.import_module(f"sirf_diffusion.commands.{COMMANDS[name][0]}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``sirf-diffusion`` with every command and its flags."""
    parser = _Parser(prog="sirf-diffusion",
                     description="Diffusion-model priors for PET reconstruction "
                                 "(STIR/SIRF/CIL plugin).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:])
        _command_module(name).add_arguments(p)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can fix: reported in one line with exit code 2."""
    import torch

    from .diffusion.checkpointing import CheckpointError

    return (ValueError, OSError, ImportError, CheckpointError, ArithmeticError,
            torch.cuda.OutOfMemoryError)


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an OSError as ``file: reason``, without quotes)."""
    if isinstance(exc, OSError) and exc.strerror:
        names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        message = f"{' -> '.join(names)}: {exc.strerror}" if names else exc.strerror
    else:
        message = str(exc) or type(exc).__name__
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:1] + ["; ".join(lines[1:])]).strip() if lines else message


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sirf-diffusion`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    prog = f"sirf-diffusion {args.command}"
    try:
        return int(_command_module(args.command).run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into expected failures and bugs below
        if isinstance(exc, _expected_errors()):
            print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"{prog}: internal error ({type(exc).__name__}): this is a bug in sirf-diffusion; "
              "please report it to its maintainers with the command line and the traceback "
              "above", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
