"""Flags, data and devices are validated up front, and failures are one line (issue 11, 2 and 3).

Each case exits with code 2 and one line ``sirf-diffusion CMD: error: ...`` naming the flag or
the file; no output folder is created.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sirf_diffusion.cli import main


def _one_error_line(capsys, command: str, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"sirf-diffusion {command}: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture
def case(cli_case, tmp_path) -> Path:
    folder = tmp_path / "case"
    shutil.copytree(cli_case, folder)
    return folder


# ------------------------------------------------------------------------- flag values
@pytest.mark.parametrize("command, args, flag", [
    ("reconstruct", ["--iterations", "0"], "--iterations"),
    ("reconstruct", ["--subsets", "0"], "--subsets"),
    ("reconstruct", ["--method", "lisch", "--steps", "0"], "--steps"),
    ("reconstruct", ["--method", "lisch", "--mlem-iterations", "0"], "--mlem-iterations"),
    ("reconstruct", ["--method", "lisch", "--samples", "0"], "--samples"),
    ("reconstruct", ["--method", "mapem-rdp", "--beta", "0"], "--beta"),
    ("reconstruct", ["--method", "mapem-rdp", "--beta", "nan"], "--beta"),
    ("reconstruct", ["--method", "dps", "--zeta", "-1"], "--zeta"),
    ("reconstruct", ["--iterations", "two"], "--iterations"),
    ("train", ["--steps", "0"], "--steps"),
    ("sample", ["--steps", "0"], "--steps"),
    ("sample", ["--n", "0"], "--n"),
    ("simulate", ["--counts", "0"], "--counts"),
    ("simulate", ["--counts", "-1"], "--counts"),
    ("simulate", ["--randoms-fraction", "1"], "--randoms-fraction"),
    ("simulate", ["--seed", "-3"], "--seed"),
    ("demo", ["--counts", "0"], "--counts"),
])
def test_zero_negative_or_invalid_values_name_the_flag(cli_case, tmp_path, capsys, command, args,
                                                       flag):
    out = tmp_path / ("out.png" if command == "sample" else "out")
    head = ["reconstruct", str(cli_case)] if command == "reconstruct" else [command]
    assert main([*head, "--out", str(out), *args, "--no-progress"]) == 2
    _one_error_line(capsys, command, f"argument {flag}: ")
    assert not out.exists()


@pytest.mark.parametrize("method, args, flag", [
    ("osem", ["--beta", "1"], "--beta"),
    ("mlem", ["--subsets", "4"], "--subsets"),
    ("osem", ["--steps", "10"], "--steps"),
    ("osem", ["--model", "somewhere"], "--model"),
    ("osem", ["--seed", "1"], "--seed"),
    ("dds", ["--mlem-iterations", "10"], "--mlem-iterations"),
    ("lisch", ["--zeta", "100"], "--zeta"),
    ("lisch", ["--iterations", "3"], "--iterations"),
    ("dps", ["--beta", "1"], "--beta"),
])
def test_options_that_do_not_apply_to_the_method_are_errors(cli_case, tmp_path, capsys, method,
                                                            args, flag):
    assert main(["reconstruct", str(cli_case), "--out", str(tmp_path / "out"), "--method", method,
                 *args, "--no-progress"]) == 2
    _one_error_line(capsys, "reconstruct", f"{flag} does not apply to method {method}")
    assert not (tmp_path / "out").exists()


def test_simulate_3d_only_flags_with_2d(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "c"), "--rings", "4", "--no-progress"]) == 2
    _one_error_line(capsys, "simulate", "--rings", "--dims 3")
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- devices
@pytest.mark.parametrize("command", ["reconstruct", "train"])
def test_cuda_without_cuda_is_refused_up_front(cli_case, tmp_path, capsys, monkeypatch, command):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    head = ["reconstruct", str(cli_case)] if command == "reconstruct" else ["train"]
    assert main([*head, "--out", str(tmp_path / "out"), "--device", "cuda", "--no-progress"]) == 2
    _one_error_line(capsys, command, "--device cuda", "CUDA is not available")
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_refused(cli_case, tmp_path, capsys):
    assert main(["reconstruct", str(cli_case), "--out", str(tmp_path / "out"), "--device",
                 "gpu0", "--no-progress"]) == 2
    _one_error_line(capsys, "reconstruct", "--device gpu0", "not a torch device")


# -------------------------------------------------------------------------------- data
@pytest.mark.parametrize("name, damage, words", [
    ("prompts", "nan", "NaN"),
    ("prompts", "negative", "negative"),
    ("prompts", "zero", "every bin is 0"),
    ("mult_factors", "nan", "NaN"),
    ("mult_factors", "negative", "negative"),
    ("mult_factors", "zero", "every multiplicative factor is 0"),
    ("additive_term", "nan", "NaN"),
])
def test_bad_sinogram_values_name_the_file(case, tmp_path, capsys, name, damage, words):
    from sirf_diffusion.io.interfile import read_sinogram, write_sinogram

    arr, geometry = read_sinogram(case / f"{name}.hs")
    if damage == "zero":
        write_sinogram(case / f"{name}.hs", np.zeros_like(arr), geometry)
    else:   # the writer refuses NaN: change the raw float32 data file
        raw = np.fromfile(case / f"{name}.s", dtype="<f4")
        assert raw.size == arr.size
        raw[raw.size // 2] = np.nan if damage == "nan" else -1.0
        raw.tofile(case / f"{name}.s")
    assert main(["reconstruct", str(case), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    _one_error_line(capsys, "reconstruct", f"{name}.hs", words)
    assert not (tmp_path / "out").exists()


def test_geometry_mismatch_does_not_print_the_geometry(case, tmp_path, capsys):
    from sirf_diffusion.io.interfile import read_sinogram, write_sinogram
    from sirf_diffusion.physics.geometry import SinogramGeometry

    arr, g = read_sinogram(case / "mult_factors.hs")
    other = SinogramGeometry(g.scanner, g.num_views // 2, arc_corrected=g.arc_corrected)
    write_sinogram(case / "mult_factors.hs", np.ones(other.shape, np.float32), other)
    assert main(["reconstruct", str(case), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = _one_error_line(capsys, "reconstruct", "mult_factors.hs", "num_views")
    assert "SinogramGeometry(" not in err and "Scanner(" not in err


def test_train_config_errors_name_the_config(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "p"), "--config", str(tmp_path / "no.json"),
                 "--no-progress"]) == 2
    _one_error_line(capsys, "train", "--config", "no.json", "not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"batch_size": 0}')
    assert main(["train", "--out", str(tmp_path / "p"), "--config", str(bad),
                 "--no-progress"]) == 2
    _one_error_line(capsys, "train", "--config", "bad.json", "batch_size")
    assert not (tmp_path / "p").exists()


def test_sample_needs_a_png_name(tmp_path, capsys):
    assert main(["sample", "--out", str(tmp_path / "grid.jpg"), "--no-progress"]) == 2
    _one_error_line(capsys, "sample", "--out", ".png")


def test_missing_model_folder_is_one_line(cli_case, tmp_path, capsys):
    assert main(["reconstruct", str(cli_case), "--out", str(tmp_path / "out"), "--method",
                 "lisch", "--model", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    _one_error_line(capsys, "reconstruct", "no score model", "nowhere")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- prior before physics
def test_a_prior_that_cannot_take_the_grid_is_refused_before_the_physics(cli_case, tmp_path,
                                                                        capsys, monkeypatch):
    import sirf_diffusion.commands.case as case_module
    import sirf_diffusion.diffusion.loading as loading

    class OnlyEvenSlices:
        """A denoiser that refuses this grid, as a UNet refuses sizes it cannot downsample."""

        def __call__(self, x, sigma):
            raise ValueError(f"UNet input size {tuple(x.shape[2:])} is not divisible by 256")

    monkeypatch.setattr(loading, "load_denoiser", lambda *a, **k: OnlyEvenSlices())
    monkeypatch.setattr(case_module, "case_physics",
                        lambda *a, **k: pytest.fail("the physics was built"))
    assert main(["reconstruct", str(cli_case), "--out", str(tmp_path / "out"), "--method",
                 "lisch", "--no-progress"]) == 2
    _one_error_line(capsys, "reconstruct", "cannot denoise this case's 1 x 128 x 128 image",
                    "not divisible by 256")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------- bugs vs. errors
def test_an_unexpected_error_shows_a_traceback_and_asks_for_a_report(cli_case, tmp_path,
                                                                     capsys, monkeypatch):
    import sirf_diffusion.commands.reconstruct as reconstruct

    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(reconstruct, "reconstruct_classical", bug)
    assert main(["reconstruct", str(cli_case), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "bug" in err and "report" in err
    assert not (tmp_path / "out").exists()
