"""Previous contents set aside by a command that was then killed are never deleted."""

from __future__ import annotations

import pytest

from sirf_diffusion.commands.output import TRASH_PREFIX, entries


def _dead_pid() -> int:
    import os

    pid = 2 ** 22 - 1
    while True:                      # a pid that runs nothing
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_set_aside_contents_of_a_killed_run_come_back(tmp_path):
    out = tmp_path / "out"
    trash = out / f"{TRASH_PREFIX}{_dead_pid()}-abcd"
    (trash / "xy").mkdir(parents=True)
    (trash / "xy" / "model.safetensors").write_bytes(b"weights")
    with pytest.warns(UserWarning, match="put back"):
        found = entries(out, "--out")
    assert [p.name for p in found] == ["xy"]
    assert (out / "xy" / "model.safetensors").read_bytes() == b"weights"
    assert not trash.exists()


def test_set_aside_contents_are_kept_visibly_when_a_name_clashes(tmp_path):
    out = tmp_path / "out"
    trash = out / f"{TRASH_PREFIX}{_dead_pid()}-abcd"
    (trash / "xy").mkdir(parents=True)
    (trash / "xy" / "model.safetensors").write_bytes(b"old weights")
    (out / "xy").mkdir()                           # what the killed run had started to write
    with pytest.warns(UserWarning, match="kept in"):
        found = entries(out, "--out")
    kept = [p for p in found if p.name.startswith("sirf-diffusion-recovered-")]
    assert len(kept) == 1 and (kept[0] / "xy" / "model.safetensors").read_bytes() == b"old weights"
    assert {p.name for p in found} == {"xy", kept[0].name}
