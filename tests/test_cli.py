"""End-to-end tests of the command-line interface (``sirf_diffusion.cli.main``).

One 2D case is simulated per module (``simulate``) and reconstructed by the classical and the
diffusion methods; the error paths must exit with code 2 and a message naming the problem.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sirf_diffusion.cli import main
from sirf_diffusion.data.simulate import SimulationConfig, sinogram_geometry_for
from sirf_diffusion.io import read_case, read_image
from sirf_diffusion.physics.geometry import get_scanner
from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CASE_FILES = ("prompts.hs", "mult_factors.hs", "additive_term.hs", "PETRIC/reference_image.hv",
              "OSEM_image.hv", "simulation.json", "config.json")


@pytest.fixture(scope="module")
def case_dir(cli_case) -> Path:
    """The session's simulated 2D case (``conftest.cli_case``); tests must not change it."""
    return cli_case


def _reconstruct(case: Path, out: Path, *args: str) -> int:
    return main(["reconstruct", str(case), "--out", str(out), "--no-progress", *args])


def _check_image(path: Path, case) -> np.ndarray:
    arr, geometry = read_image(path)
    assert arr.shape == case.image_geometry.shape
    assert geometry == case.image_geometry
    assert np.isfinite(arr).all() and (arr >= 0).all()
    return arr


def _check_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


# --------------------------------------------------------------------------------- simulate
def test_simulate_writes_a_petric_case(case_dir):
    for name in CASE_FILES:
        assert (case_dir / name).is_file(), name
    case = read_case(case_dir)
    # geometry: one mMR ring, native (non-arc-corrected) sampling; one 128 x 128 plane
    cfg = SimulationConfig(seed=3)
    assert case.sinogram_geometry == sinogram_geometry_for(cfg, 1)
    assert case.sinogram_geometry.scanner == get_scanner("mMR").with_rings(1)
    assert case.image_geometry.shape == (1, 128, 128)
    assert math.isclose(case.image_geometry.voxel_size_mm[0], get_scanner("mMR").ring_spacing_mm)
    for name in ("prompts", "multiplicative", "additive"):
        arr = getattr(case, name)
        assert arr.shape == case.sinogram_geometry.shape, name
        assert np.isfinite(arr).all() and (arr >= 0).all(), name
    assert case.prompts.sum() > 0 and (case.multiplicative > 0).any()
    np.testing.assert_array_equal(case.prompts, np.round(case.prompts))  # Poisson counts
    for img in (case.reference, case.osem):
        assert img is not None and img.shape == case.image_geometry.shape
        assert np.isfinite(img).all() and (img >= 0).all() and img.max() > 0
    assert "brain" in case.masks and case.masks["brain"].shape == case.image_geometry.shape

    meta = json.loads((case_dir / "simulation.json").read_text())
    assert meta["simulation"]["seed"] == 3 and meta["simulation"]["scanner"] == "mMR"
    assert meta["psf_fwhm_mm"] == 4.5
    assert meta["info"]["prompt_counts"] == pytest.approx(float(case.prompts.sum()), rel=1e-6)
    config = json.loads((case_dir / "config.json").read_text())
    assert config["command"] == "simulate" and config["seed"] == 3 and config["dims"] == 2


# ------------------------------------------------------------------------------ reconstruct
@pytest.mark.parametrize("method, extra", [("osem", []), ("mapem-rdp", ["--beta", "1"])])
def test_reconstruct_classical(case_dir, tmp_path, method, extra):
    out = tmp_path / method
    assert _reconstruct(case_dir, out, "--method", method, "--iterations", "2", *extra) == 0
    case = read_case(case_dir)
    x = _check_image(out / "image.hv", case)
    assert x.max() > 0
    _check_png(out / "image.png")
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["nrmse"]) and 0 < metrics["nrmse"] < 2
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "reconstruct" and config["method"] == method
    assert config["iterations"] == 2 and config["subsets"] >= 1
    assert config["beta"] == (1.0 if method == "mapem-rdp" else None)


def test_reconstruct_lisch_with_a_tiny_model(case_dir, tmp_path, tiny_prior):
    out = tmp_path / "lisch"
    assert _reconstruct(case_dir, out, "--method", "lisch", "--model", str(tiny_prior),
                        "--steps", "3", "--samples", "2") == 0
    case = read_case(case_dir)
    _check_image(out / "image.hv", case)
    _check_image(out / "std.hv", case)
    _check_png(out / "image.png")
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["nrmse"])
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "lisch" and config["model"] == str(tiny_prior)
    assert config["sampler"]["num_steps"] == 3 and config["sampler"]["num_samples"] == 2
    assert config["num_network_evaluations"] > 0
    # DPS takes its step size from --zeta (default: METHOD_DEFAULTS)
    for extra, zeta in (((), METHOD_DEFAULTS["dps"]["step_size"]), (("--zeta", "750"), 750.0)):
        out = tmp_path / f"dps{len(extra)}"
        assert _reconstruct(case_dir, out, "--method", "dps", "--model", str(tiny_prior),
                            "--steps", "2", *extra) == 0
        assert json.loads((out / "config.json").read_text())["sampler"]["step_size"] == zeta


def test_reconstruct_diffusion_defaults_are_method_defaults(case_dir, tmp_path, tiny_prior,
                                                            capsys):
    """No option but --model: steps, K and chains are METHOD_DEFAULTS' (the best operating point
    of the speed study), and the last line summarises the run."""
    out = tmp_path / "lisch"
    assert _reconstruct(case_dir, out, "--method", "lisch", "--model", str(tiny_prior)) == 0
    d = METHOD_DEFAULTS["lisch"]
    sampler = json.loads((out / "config.json").read_text())["sampler"]
    assert sampler["num_steps"] == d["num_steps"]
    assert sampler["num_mlem_iterations"] == d["num_mlem_iterations"]
    assert sampler["num_samples"] == d["num_samples"] and sampler["eta"] == d["eta"]
    assert (out / "std.hv").is_file() == (d["num_samples"] > 1)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    nrmse = json.loads((out / "metrics.json").read_text())["nrmse"]
    assert summary.startswith("reconstruct: lisch (") and f"{d['num_steps']} steps" in summary
    assert f"NRMSE {nrmse:.4f}" in summary and str(out) in summary and " s," in summary


def test_reconstruct_map_beta_comes_from_the_case_else_the_default(case_dir, tmp_path, capsys):
    from sirf_diffusion.commands.reconstruct import CLASSICAL_DEFAULTS

    out = tmp_path / "default"
    assert _reconstruct(case_dir, out, "--method", "mapem-rdp", "--iterations", "1") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["beta"] == CLASSICAL_DEFAULTS["mapem-rdp"]["beta"]
    assert config["beta_source"] == "default"
    case = tmp_path / "case"
    shutil.copytree(case_dir, case)
    (case / "penalisation_factor.txt").write_text("0.125\n")
    for method in ("mapem-rdp", "mapem-quadratic"):
        out = tmp_path / method
        assert _reconstruct(case, out, "--method", method, "--iterations", "1") == 0
        config = json.loads((out / "config.json").read_text())
        assert config["beta"] == 0.125 and config["beta_source"] == "penalisation_factor.txt"
    out = tmp_path / "flag"
    assert _reconstruct(case, out, "--method", "mapem-rdp", "--iterations", "1",
                        "--beta", "2") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["beta"] == 2.0 and config["beta_source"] == "--beta"
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("reconstruct: mapem-rdp (1 iterations") and "beta 2" in summary


def test_help_shows_the_defaults():
    from sirf_diffusion.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    text = " ".join(sub["reconstruct"].format_help().split())
    for method in ("lisch", "dds", "dps"):
        d = METHOD_DEFAULTS[method]
        assert f"{method} {d['num_steps']}" in text and f"{method} {d['num_samples']}" in text
    assert f"(default: {METHOD_DEFAULTS['lisch']['num_mlem_iterations']})" in text
    assert f"(default: {METHOD_DEFAULTS['dps']['step_size']:g})" in text
    for command in ("simulate", "demo", "sample", "train"):
        assert "default" in sub[command].format_help()


@pytest.mark.parametrize("eta", ["0", "1"])
def test_sample_writes_a_grid_and_its_settings(tmp_path, eta):
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig, UNetConfig, save_model

    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=()),
        orientation="xy", image_size=(16, 16)))
    save_model(tmp_path / "tiny", model)
    png = tmp_path / "grid.png"
    assert main(["sample", "--model", str(tmp_path / "tiny"), "--out", str(png), "--n", "3",
                 "--steps", "4", "--eta", eta, "--no-progress"]) == 0
    _check_png(png)
    settings = json.loads(png.with_suffix(".json").read_text())
    assert settings["eta"] == float(eta) and settings["n"] == 3 and settings["steps"] == 4


def test_sample_takes_the_orientation_of_a_prior_folder(tmp_path, capsys):
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig, UNetConfig, save_model

    unet = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      attention_resolutions=())
    save_model(tmp_path / "prior" / "yz", ScoreModel(ScoreModelConfig(
        unet=unet, orientation="yz", image_size=(12, 16))))
    png = tmp_path / "grid.png"
    assert main(["sample", "--model", str(tmp_path / "prior"), "--orientation", "yz", "--out",
                 str(png), "--n", "2", "--steps", "2", "--no-progress"]) == 0
    _check_png(png)
    assert json.loads(png.with_suffix(".json").read_text())["orientation"] == "yz"
    # the folder has no xy model: the default orientation is refused with one line
    assert main(["sample", "--model", str(tmp_path / "prior"), "--out",
                 str(tmp_path / "xy.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no score model" in err and len(err.strip().splitlines()) == 1


def test_sample_rejects_eta_outside_0_1(tmp_path, capsys):
    assert main(["sample", "--out", str(tmp_path / "g.png"), "--eta", "1.5",
                 "--no-progress"]) == 2
    assert "--eta" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- errors
def test_missing_case_folder_exits_2(tmp_path, capsys):
    assert _reconstruct(tmp_path / "no_such_case", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "sirf-diffusion reconstruct: error" in err and "no_such_case" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["header", "truncated data"])
def test_corrupt_prompts_exits_2(case_dir, tmp_path, capsys, damage):
    case = tmp_path / "case"
    shutil.copytree(case_dir, case)
    if damage == "header":
        (case / "prompts.hs").write_text("this is not an Interfile header\n")
        expected = "prompts.hs"
    else:
        data = (case / "prompts.s").read_bytes()
        (case / "prompts.s").write_bytes(data[: len(data) // 2])
        expected = "truncated"
    assert _reconstruct(case, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "sirf-diffusion reconstruct: error" in err and expected in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("backend,module", [("stir", "stir"), ("sirf", "sirf")])
def test_unavailable_physics_backend_exits_2(case_dir, tmp_path, capsys, monkeypatch, backend,
                                             module):
    monkeypatch.setitem(sys.modules, module, None)   # as if the toolkit were not installed
    if module == "sirf":
        monkeypatch.setitem(sys.modules, "sirf.STIR", None)
    assert _reconstruct(case_dir, tmp_path / "out", "--physics", backend) == 2
    err = capsys.readouterr().err
    assert "not installed" in err and "conda install -c conda-forge" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()   # found after the folder was made: removed again


def test_argparse_rejects_unknown_method(case_dir, tmp_path, capsys):
    assert _reconstruct(case_dir, tmp_path / "out", "--method", "no-such-method") == 2
    err = capsys.readouterr().err
    assert err.startswith("sirf-diffusion reconstruct: error: argument --method: invalid choice")
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------ entry point
def test_python_m_help():
    res = subprocess.run([sys.executable, "-m", "sirf_diffusion", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for command in ("simulate", "reconstruct", "demo", "train", "sample"):
        assert command in res.stdout


# ------------------------------------------------------------------------------------ demo
@pytest.mark.slow
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    _check_png(out / "demo.png")
    table = (out / "metrics.md").read_text()
    assert "OSEM" in table and "MAP-EM-RDP" in table
    rows = json.loads((out / "metrics.json").read_text())
    assert rows and all(math.isfinite(r["nrmse"]) for r in rows.values())
    assert (out / "case" / "prompts.hs").is_file()


def _prior_trained_at(tiny_prior: Path, folder: Path, voxel_size_mm) -> Path:
    """A copy of ``tiny_prior`` whose config records a training voxel size."""
    shutil.copytree(tiny_prior, folder)
    cfg_path = folder / "xy" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["training_data"] = {"voxel_size_mm": list(voxel_size_mm)}
    cfg_path.write_text(json.dumps(cfg))
    return folder


def test_reconstruct_warns_of_a_prior_trained_at_another_voxel_size(case_dir, tmp_path,
                                                                     tiny_prior, capsys):
    """A prior trained on voxels twice the case's: one warning naming both voxel sizes, before
    any work; --resample-prior denoises on the prior's grid, without the warning."""
    vz, vy, vx = read_case(case_dir).image_geometry.voxel_size_mm
    prior = _prior_trained_at(tiny_prior, tmp_path / "coarse", (vz, 2 * vy, 2 * vx))
    args = ("--method", "lisch", "--model", str(prior), "--steps", "2", "--samples", "1")
    assert _reconstruct(case_dir, tmp_path / "a", *args) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "voxel size" in warned[0] and f"{2 * vy:g}" in warned[0]
    assert _reconstruct(case_dir, tmp_path / "b", *args, "--resample-prior") == 0
    assert "warning" not in capsys.readouterr().err
    # a prior that records no voxel size cannot be resampled: refused up front, nothing written
    assert _reconstruct(case_dir, tmp_path / "c", "--method", "lisch", "--model",
                        str(tiny_prior), "--resample-prior") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "voxel size" in err[0] and not (tmp_path / "c").exists()
    # and the flag is for the diffusion methods only
    assert _reconstruct(case_dir, tmp_path / "d", "--method", "osem", "--resample-prior") == 2
    assert "--resample-prior does not apply to method osem" in capsys.readouterr().err
