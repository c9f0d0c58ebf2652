"""The fully 3D path from the command line: ``simulate --dims 3`` then ``reconstruct`` with
PET-LiSch and PET-DDS through the perpendicular prior of a prior folder with three orientations.

Oracles: the case's geometry follows from ``--rings`` (``2 R - 1`` planes, segments up to
``min(R - 1, 4)``); every orientation's model denoises every slice of its orientation at every
generative step (plus the one-slice try of each model before any work), in network calls of at
most ``chunk_size`` slices (the bound on the prior's memory).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sirf_diffusion.cli import main
from sirf_diffusion.diffusion.prior3d import PerpendicularPrior3D
from sirf_diffusion.io import read_case, read_image
from sirf_diffusion.physics.geometry import get_scanner

RINGS = 2
PLANES = 2 * RINGS - 1


@pytest.fixture(scope="module")
def case_3d(cli_case_3d) -> Path:
    """``conftest.cli_case_3d``: ``simulate --dims 3 --rings 2``."""
    return cli_case_3d


def test_simulate_3d_images_the_planes_of_its_rings(case_3d):
    case = read_case(case_3d)
    assert case.image_geometry.shape == (PLANES, 128, 128)
    sino = case.sinogram_geometry
    assert sino.scanner == get_scanner("mMR").with_rings(RINGS)
    assert sino.max_ring_difference == RINGS - 1  # oblique segments +-1
    # span 1: one sinogram per ring pair (R direct, R - 1 in each oblique segment)
    assert case.prompts.shape[0] == RINGS + 2 * (RINGS - 1)
    assert case.osem is not None and (case.osem[[0, -1]] > 0).any()  # the end planes are seen
    meta = json.loads((case_3d / "simulation.json").read_text())
    assert meta["simulation"]["dims"] == 3 and meta["simulation"]["rings"] == RINGS


@pytest.mark.parametrize("method", ["lisch", "dds"])
def test_reconstruct_3d_uses_every_orientation_in_chunks(case_3d, tiny_prior_3d, tmp_path,
                                                         monkeypatch, method):
    from sirf_diffusion.diffusion import loading

    calls: list[tuple[str, int]] = []
    chunk: list[int] = []
    real = loading.load_denoiser

    def spy(model_dir, num_slices, *args):
        prior = real(model_dir, num_slices, *args)
        assert isinstance(prior, PerpendicularPrior3D)
        chunk.append(prior.chunk_size)
        for o, m in prior.models.items():
            m.register_forward_pre_hook(lambda mod, inp, o=o: calls.append((o, inp[0].shape[0])))
        return prior

    monkeypatch.setattr(loading, "load_denoiser", spy)
    out = tmp_path / method
    steps, samples = 2, 2
    assert main(["reconstruct", str(case_3d), "--method", method, "--model", str(tiny_prior_3d),
                 "--steps", str(steps), "--samples", str(samples), "--out", str(out),
                 "--no-progress"]) == 0
    image, geometry = read_image(out / "image.hv")
    assert image.shape == (PLANES, 128, 128) and geometry.shape == image.shape
    assert np.isfinite(image).all() and (image >= 0).all() and image.max() > 0
    assert read_image(out / "std.hv")[0].shape == image.shape
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["nrmse"]) and np.isfinite(metrics["ssim"])
    config = json.loads((out / "config.json").read_text())
    assert config["num_network_evaluations"] == steps

    slices = {"xy": PLANES, "yz": 128, "xz": 128}  # slices of one volume per orientation
    assert sorted({o for o, _ in calls}) == sorted(slices)
    for o, n in slices.items():
        sizes = [b for oo, b in calls if oo == o]
        assert sum(sizes) == 1 + steps * samples * n, o
        assert max(sizes) <= chunk[0], o


def test_dds_takes_the_axial_penalty_on_a_3d_case_only(case_3d, tiny_prior_3d, tmp_path,
                                                       cli_case, capsys):
    common = ["--method", "dds", "--model", str(tiny_prior_3d), "--steps", "2", "--samples", "1",
              "--no-progress"]
    assert main(["reconstruct", str(case_3d), *common, "--out", str(tmp_path / "plain")]) == 0
    assert main(["reconstruct", str(case_3d), *common, "--axial-penalty", "2",
                 "--out", str(tmp_path / "rdp")]) == 0
    sampler = json.loads((tmp_path / "rdp" / "config.json").read_text())["sampler"]
    assert sampler["axial_penalty"] == 2.0 and sampler["penalty"] == "RelativeDifferencePrior"
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())["sampler"]
    assert plain["axial_penalty"] is None
    a = read_image(tmp_path / "plain" / "image.hv")[0]
    b = read_image(tmp_path / "rdp" / "image.hv")[0]
    assert not np.allclose(a, b)
    capsys.readouterr()
    # one plane: refused before any work; another method: refused by name
    assert main(["reconstruct", str(cli_case), *common, "--axial-penalty", "2",
                 "--out", str(tmp_path / "2d")]) == 2
    assert "--axial-penalty" in capsys.readouterr().err and not (tmp_path / "2d").exists()
    assert main(["reconstruct", str(case_3d), "--method", "lisch", "--axial-penalty", "2",
                 "--out", str(tmp_path / "l"), "--no-progress"]) == 2
    assert "--axial-penalty does not apply to method lisch" in capsys.readouterr().err
