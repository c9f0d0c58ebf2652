"""The commands of ``sirf-diffusion`` (one module each) and what they share.

Each command module has ``add_arguments(parser)`` and ``run(args) -> int``; only
:mod:`sirf_diffusion.cli` imports them.  :mod:`.arguments` validates flags, :mod:`.output`
writes a command's result set so that no result is lost or left half-written, :mod:`.case`
reads a PETRIC-layout case and builds its physics.  Nothing here is imported by the library.
"""

from __future__ import annotations

__all__: list[str] = []
