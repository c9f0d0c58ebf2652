"""The command line never loses a result and never leaves half-written output (issue 11, 1 and 4).

Every refusal must exit with code 2 and one line naming the flag or file, leave what was there
byte for byte, leave nothing stale and no empty folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sirf_diffusion.cli import main
from sirf_diffusion.commands.output import STAGING_PREFIX, TRASH_PREFIX


def _reconstruct(case: Path, out: Path, *args: str) -> int:
    return main(["reconstruct", str(case), "--out", str(out), "--no-progress", *args])


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (and '' for every folder) under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                         if p.is_file() else "")
            for p in sorted(folder.rglob("*"))}


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: " in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def _no_hidden_leftovers(folder: Path) -> None:
    left = [p.name for p in folder.rglob(".*")]
    assert not left, left


@pytest.fixture
def case(cli_case, tmp_path) -> Path:
    """A private copy of the session's simulated case."""
    folder = tmp_path / "case"
    shutil.copytree(cli_case, folder)
    return folder


@pytest.fixture
def earlier_result(case, tmp_path, tiny_prior) -> Path:
    """A folder holding a diffusion result (with ``posterior/`` and ``std.hv``)."""
    out = tmp_path / "earlier"
    assert _reconstruct(case, out, "--method", "lisch", "--model", str(tiny_prior),
                        "--steps", "2", "--samples", "2") == 0
    assert (out / "posterior").is_dir() and (out / "std.hv").is_file()
    return out


# --------------------------------------------------------------------- existing results
def test_reconstruct_refuses_a_folder_holding_a_result(case, earlier_result, capsys):
    before = _snapshot(earlier_result)
    capsys.readouterr()
    assert _reconstruct(case, earlier_result, "--iterations", "1") == 2
    _one_error_line(capsys, "--out", str(earlier_result), "not empty", "--overwrite")
    assert _snapshot(earlier_result) == before


def test_overwrite_replaces_the_whole_result_set(case, earlier_result):
    assert _reconstruct(case, earlier_result, "--iterations", "1", "--overwrite") == 0
    names = sorted(p.name for p in earlier_result.iterdir())
    assert names == ["config.json", "image.hv", "image.png", "image.v", "metrics.json"]
    assert json.loads((earlier_result / "config.json").read_text())["method"] == "osem"
    _no_hidden_leftovers(earlier_result)


def test_reconstruct_into_an_empty_existing_folder(case, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert _reconstruct(case, out, "--iterations", "1") == 0
    assert (out / "image.hv").is_file()
    _no_hidden_leftovers(out)


@pytest.mark.parametrize("where", ["case", "inside", "around"])
def test_out_equal_to_inside_or_around_the_case_is_refused(case, tmp_path, capsys, where):
    out = {"case": case, "inside": case / "results", "around": tmp_path}[where]
    before = _snapshot(tmp_path)
    extra = ("--overwrite",) if where == "around" else ()
    assert _reconstruct(case, out, "--iterations", "1", *extra) == 2
    word = "contains the case folder" if where == "around" else "inside the case folder"
    _one_error_line(capsys, "--out", word)
    assert _snapshot(tmp_path) == before


def test_out_inside_the_model_folder_is_refused(case, tmp_path, tiny_prior, capsys):
    before = _snapshot(tiny_prior)
    assert _reconstruct(case, tiny_prior / "results", "--method", "lisch", "--model",
                        str(tiny_prior)) == 2
    _one_error_line(capsys, "--out", "inside the model folder")
    assert _snapshot(tiny_prior) == before


def test_overwrite_never_replaces_the_working_folder(case, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep me")
    monkeypatch.chdir(work)
    assert _reconstruct(case, Path("."), "--iterations", "1", "--overwrite") == 2
    _one_error_line(capsys, "--out", "working folder")
    assert (work / "notes.txt").read_text() == "keep me"


def test_simulate_refuses_a_folder_holding_a_result(earlier_result, capsys):
    before = _snapshot(earlier_result)
    capsys.readouterr()
    assert main(["simulate", "--out", str(earlier_result), "--no-progress"]) == 2
    _one_error_line(capsys, "--out", "not empty")
    assert _snapshot(earlier_result) == before


def test_simulate_overwrite_leaves_no_stale_file(earlier_result, tmp_path):
    assert main(["simulate", "--out", str(earlier_result), "--overwrite", "--no-progress"]) == 0
    assert not (earlier_result / "image.hv").exists()       # would be read as part of the case
    assert not (earlier_result / "posterior").exists()
    assert (earlier_result / "prompts.hs").is_file()
    _no_hidden_leftovers(earlier_result)


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.md").write_text("earlier demo")
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 2
    _one_error_line(capsys, "--out", "not empty")
    assert (out / "metrics.md").read_text() == "earlier demo"


# -------------------------------------------------------------------------- unwritable
def test_out_that_is_a_file_is_refused(case, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert _reconstruct(case, target) == 2
    _one_error_line(capsys, "--out", "is a file")
    assert _reconstruct(case, target / "sub") == 2
    _one_error_line(capsys, "--out", "is a file")
    assert target.read_text() == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="file permissions do not bind root")
def test_read_only_parent_is_refused_before_any_work(case, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert _reconstruct(case, parent / "out") == 2
        _one_error_line(capsys, "--out", "no permission")
    finally:
        parent.chmod(0o755)
    assert not list(parent.iterdir())


def test_unwritable_location_is_refused_before_any_work(case, tmp_path, capsys, monkeypatch):
    """As a read-only mount (checked with os.access, which binds non-root users): refused
    before the case is read."""
    import sirf_diffusion.commands.case as case_module
    import sirf_diffusion.commands.output as output

    real_access = os.access
    monkeypatch.setattr(output.os, "access",
                        lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    monkeypatch.setattr(case_module, "load_case", lambda *a: pytest.fail("case was read"))
    assert _reconstruct(case, tmp_path / "out") == 2
    _one_error_line(capsys, "--out", "no permission to write in")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- failure mid-write
@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_while_writing_leaves_the_location_as_it_was(case, tmp_path, capsys,
                                                               monkeypatch, existing):
    import sirf_diffusion.plotting as plotting

    out = tmp_path / "a" / "b" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "image.hv").write_text("earlier result")
    before = _snapshot(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(args[1]))

    monkeypatch.setattr(plotting, "save_image_row", disk_full)
    extra = ("--overwrite",) if existing else ()
    assert _reconstruct(case, out, "--iterations", "1", *extra) == 2
    err = _one_error_line(capsys, "No space left on device", "image.png")
    assert "'" not in err
    assert _snapshot(tmp_path) == before      # no half-written files, no empty a/b/out


def test_ctrl_c_leaves_nothing(case, tmp_path, capsys, monkeypatch):
    import sirf_diffusion.commands.reconstruct as reconstruct

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reconstruct, "reconstruct_classical", interrupted)
    assert _reconstruct(case, tmp_path / "out", "--iterations", "1") == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_staging_left_by_a_killed_process_is_removed(case, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (out / f"{STAGING_PREFIX}{dead}-abcd").mkdir()
    (out / f"{STAGING_PREFIX}{dead}-abcd" / "image.v").write_bytes(b"half")
    assert _reconstruct(case, out, "--iterations", "1") == 0
    assert (out / "image.hv").is_file()
    _no_hidden_leftovers(out)


def test_sample_removes_what_a_killed_sample_left(tmp_path, tiny_prior):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f"{STAGING_PREFIX}{dead}-abcd").mkdir()
    assert main(["sample", "--model", str(tiny_prior), "--out", str(tmp_path / "grid.png"),
                 "--n", "1", "--steps", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "grid.png"]


def test_staging_of_a_running_process_is_refused(case, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (out / f"{TRASH_PREFIX}{other.pid}-abcd").mkdir()
            assert _reconstruct(case, out, "--iterations", "1") == 2
            _one_error_line(capsys, "--out", f"pid {other.pid}")
        finally:
            other.kill()


# ----------------------------------------------------------------------------- sample
def test_sample_refuses_an_existing_file_unless_overwrite(tmp_path, tiny_prior, capsys):
    png = tmp_path / "grid.png"
    png.write_bytes(b"an earlier grid")
    args = ["sample", "--model", str(tiny_prior), "--out", str(png), "--n", "1", "--steps", "1",
            "--no-progress"]
    assert main(args) == 2
    _one_error_line(capsys, "--out", "grid.png exists", "--overwrite")
    assert png.read_bytes() == b"an earlier grid" and not png.with_suffix(".json").exists()
    assert main([*args, "--overwrite"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and png.with_suffix(".json").is_file()
    _no_hidden_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "grid.png"]


# ------------------------------------------------------------------------------ train
def _exported_model(folder: Path, tiny_prior: Path) -> None:
    shutil.copytree(tiny_prior / "xy", folder / "xy")


def test_train_refuses_a_folder_holding_an_exported_model(tmp_path, tiny_prior, capsys):
    out = tmp_path / "prior"
    _exported_model(out, tiny_prior)
    before = _snapshot(out)
    assert main(["train", "--out", str(out), "--steps", "2", "--no-progress"]) == 2
    _one_error_line(capsys, "--out", "not empty", "--overwrite")
    assert main(["train", "--out", str(out), "--steps", "2", "--resume", "--no-progress"]) == 2
    _one_error_line(capsys, "--resume", "exported model", "not produced")
    assert _snapshot(out) == before


def test_train_into_an_existing_run_names_resume(tmp_path, capsys):
    out = tmp_path / "prior"
    (out / "checkpoints" / "xy" / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "xy" / "checkpoints" / "step_00000002.pt").write_bytes(b"x")
    assert main(["train", "--out", str(out), "--no-progress"]) == 2
    _one_error_line(capsys, "--out", "training run", "--resume")


def test_train_resume_on_a_folder_without_a_run_is_refused(tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "notes.txt").write_text("not a run")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    _one_error_line(capsys, "--resume", "holds no training run", "notes.txt")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


TINY_TRAINING = {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1,
                 "num_subjects": 1, "volume_shape": [4, 32, 32], "voxel_size_mm": [8, 8, 8],
                 "slice_shape": [16, 16], "psf_fwhm_mm": None,
                 "model": {"unet": {"base_channels": 8, "channel_mults": [1, 2],
                                    "num_res_blocks": 1, "attention_resolutions": []}}}


def test_train_never_replaces_its_model_and_resume_continues(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_TRAINING))
    out = tmp_path / "prior"
    args = ["train", "--config", str(config), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    model = _snapshot(out / "xy")
    assert main([*args, "--steps", "3"]) == 2
    _one_error_line(capsys, "--out", "training run", "--resume", "--overwrite")
    assert _snapshot(out / "xy") == model
    assert main([*args, "--steps", "3", "--resume"]) == 0
    assert (out / "checkpoints" / "xy" / "checkpoints" / "step_00000003.pt").is_file()
    assert json.loads((out / "xy" / "config.json").read_text())["extra"]["train_step"] == 3
    _no_hidden_leftovers(out)


def test_train_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "p"), "--resume", "--overwrite"]) == 2
    _one_error_line(capsys, "--overwrite", "--resume")


def test_train_with_no_usable_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "prior"
    ckpts = out / "checkpoints" / "xy" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step_00000002.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    _one_error_line(capsys, "no usable checkpoint", "step_00000002.pt")


def test_train_failing_before_a_checkpoint_leaves_nothing(tmp_path, capsys, monkeypatch):
    import sirf_diffusion.diffusion.training as training

    def fails(cfg, out_dir, **kwargs):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "train_config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training, "train", fails)
    out = tmp_path / "new" / "prior"
    assert main(["train", "--out", str(out), "--no-progress"]) == 2
    _one_error_line(capsys, "No space left on device")
    assert not (tmp_path / "new").exists()
    # with --overwrite the previous contents come back
    out.mkdir(parents=True)
    (out / "xy").mkdir()
    (out / "xy" / "config.json").write_text("earlier model")
    assert main(["train", "--out", str(out), "--overwrite", "--no-progress"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["xy"]
    assert (out / "xy" / "config.json").read_text() == "earlier model"


# ------------------------------------------------------------------------------ umask
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_created_files_and_folders_follow_the_umask(case, tmp_path, tiny_prior, umask):
    old = os.umask(umask)
    try:
        sim = tmp_path / "sim"
        assert main(["simulate", "--out", str(sim), "--seed", "10", "--counts", "0.5",
                     "--no-progress"]) == 0
        out = tmp_path / "nested" / "lisch"
        assert _reconstruct(case, out, "--method", "lisch", "--model", str(tiny_prior),
                            "--steps", "2", "--samples", "2") == 0
    finally:
        os.umask(old)
    for root in (sim, tmp_path / "nested"):
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode)
            expected = (0o777 if p.is_dir() else 0o666) & ~umask
            assert mode == expected, (p, oct(mode), oct(expected))


def test_json_outputs_are_strict(case, tmp_path, earlier_result):
    def no_constant(name):
        raise AssertionError(f"{name} in JSON")

    for p in [*earlier_result.rglob("*.json"), *case.rglob("*.json")]:
        json.loads(p.read_text(), parse_constant=no_constant)


@pytest.mark.parametrize("has_run, resume, overwrite, message", [
    (False, True, None, "--resume: --out d holds no FBSEM-net run"),
    (True, False, None, "it holds an FBSEM-net run: pass --resume to continue it, or choose"),
    (True, False, False, "pass --resume to continue it, or --overwrite to start again"),
    (False, False, False, "pass --overwrite to replace its contents"),
    (False, False, None, "it holds no run of this command"),
])
def test_check_run_folder_refuses_what_would_lose_work(tmp_path, has_run, resume, overwrite,
                                                      message):
    """One rule for every training command's --out: a non-empty folder is continued only if it
    holds the command's run, replaced only with --overwrite, and otherwise refused."""
    from sirf_diffusion.commands.output import check_run_folder

    old = [tmp_path / "notes.txt"]
    with pytest.raises(ValueError, match=re.escape(message)):
        check_run_folder(old, "d", kind="FBSEM-net run", has_run=has_run, resume=resume,
                         overwrite=overwrite, article="an")
    check_run_folder([], "d", kind="x", has_run=False, resume=resume, overwrite=overwrite)
    if resume or overwrite is not None:  # what may go ahead: resume a run, overwrite anything
        check_run_folder(old, "d", kind="x", has_run=True, resume=True, overwrite=overwrite)
        if overwrite is not None:
            check_run_folder(old, "d", kind="x", has_run=has_run, resume=False, overwrite=True)
