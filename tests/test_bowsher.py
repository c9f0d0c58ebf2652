"""Bowsher's MR-selected neighbours (recon/bowsher.py) in the quadratic and RDP penalties."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sirf_diffusion.recon import QuadraticPrior, RelativeDifferencePrior, map_em
from sirf_diffusion.recon.bowsher import bowsher_prior, bowsher_selection, bowsher_weights

DT = torch.float64
VOX = (2.0, 1.0, 1.0)


def _random(shape=(3, 6, 7), seed=0, offset=0.1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=DT) + offset


@pytest.mark.parametrize("kind", ["quadratic", "rdp"])
@pytest.mark.parametrize("neighbourhood, full", [("26", 26), ("transaxial", 8)])
def test_all_neighbours_is_the_plain_prior_exactly(kind, neighbourhood, full):
    mr, x = _random(seed=1), _random(seed=2)
    plain = (QuadraticPrior if kind == "quadratic" else RelativeDifferencePrior)(
        0.7, neighbourhood=neighbourhood, voxel_size_mm=VOX)
    bowsher = bowsher_prior(kind, 0.7, mr, full, neighbourhood=neighbourhood, voxel_size_mm=VOX)
    assert torch.equal(bowsher.value(x), plain.value(x))
    assert torch.equal(bowsher.gradient(x), plain.gradient(x))
    assert torch.equal(bowsher.separable_curvature(x), plain.separable_curvature(x))


@pytest.mark.parametrize("kind, options", [("quadratic", {}), ("rdp", {"epsilon": 0.01}),
                                           ("rdp", {"gamma": 0.5})])
@pytest.mark.parametrize("symmetrise", ["mean", "or", "and"])
def test_gradient_matches_finite_differences(kind, options, symmetrise):
    mr, x = _random(seed=3), _random(seed=4)
    prior = bowsher_prior(kind, 1.3, mr, 5, voxel_size_mm=VOX, symmetrise=symmetrise, **options)
    g = prior.gradient(x)
    h = 1e-6
    for idx in [(0, 0, 0), (1, 2, 3), (2, 5, 6), (1, 0, 4)]:
        e = torch.zeros_like(x)
        e[idx] = h
        fd = (prior.value(x + e) - prior.value(x - e)) / (2 * h)
        assert float(g[idx]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_every_voxel_selects_b_neighbours_and_the_pair_weight_is_their_mean():
    mr = _random(seed=5)
    chosen = bowsher_selection(mr, 5, voxel_size_mm=VOX)
    count = sum(c.to(torch.int64) for c in chosen.values())
    assert torch.equal(count, torch.full_like(count, 5))
    w = bowsher_weights(mr, 5, voxel_size_mm=VOX)
    d = (0, 1, 1)
    r, s = (1, 2, 3), (1, 3, 4)
    expected = 0.5 * (float(chosen[d][r]) + float(chosen[(0, -1, -1)][s]))
    assert float(w[d][r]) == expected
    low, mean, high = (bowsher_weights(mr, 5, voxel_size_mm=VOX, symmetrise=s)
                       for s in ("and", "mean", "or"))
    for k in mean:
        assert (low[k] <= mean[k]).all() and (mean[k] <= high[k]).all()


def test_uniform_mr_selects_a_subset_the_nearest_neighbours():
    """A uniform MR ties every difference: each interior voxel keeps its B nearest neighbours
    (the 4 in-plane face neighbours of 8), a subset of the plain prior's pairs, so the Bowsher
    penalty is at most the plain one for every image."""
    mr = torch.ones(1, 7, 7, dtype=DT)
    w = bowsher_weights(mr, 4, voxel_size_mm=VOX)
    for d, t in w.items():
        assert ((t == 0) | (t == 0.5) | (t == 1)).all()
    assert (w[(0, 0, 1)] == 1).all() and (w[(0, 1, 0)] == 1).all()
    assert (w[(0, 1, 1)][1:-1, 1:-1] == 0).all()  # no diagonal pair between interior voxels
    plain = QuadraticPrior(1.0, voxel_size_mm=VOX)
    bowsher = bowsher_prior("quadratic", 1.0, mr, 4, voxel_size_mm=VOX)
    for seed in range(5):
        x = _random((1, 7, 7), seed=seed)
        assert float(bowsher.value(x)) <= float(plain.value(x))


def test_selection_is_invariant_to_increasing_affine_changes_of_the_mr():
    mr = _random(seed=6)
    a = bowsher_weights(mr, 6, voxel_size_mm=VOX)
    b = bowsher_weights(3.0 * mr + 7.0, 6, voxel_size_mm=VOX)
    for d in a:
        assert torch.equal(a[d], b[d])


def test_no_pair_across_an_mr_edge_so_a_matching_piecewise_constant_image_is_free():
    """An MR step edge: a voxel next to it has 5 in-plane neighbours on its side (3 across), 3 at
    the image border, so with B = 3 no pair crosses the edge and an activity image with the
    same edge is not penalised by the Bowsher prior (the plain prior penalises the edge)."""
    mr = torch.zeros(1, 8, 8, dtype=DT)
    mr[..., 4:] = 1.0
    x = 1.0 + 3.0 * mr
    bowsher = bowsher_prior("quadratic", 1.0, mr + 0.01 * _random((1, 8, 8), seed=7), 3,
                            voxel_size_mm=VOX)
    assert float(bowsher.value(x)) == 0.0
    assert float(QuadraticPrior(1.0, voxel_size_mm=VOX).value(x)) > 0


def test_map_em_with_the_bowsher_rdp_increases_the_objective():
    from conftest import poisson_problem

    from sirf_diffusion.recon.map import map_objective

    lik, _ = poisson_problem(image_shape=(1, 4, 4), seed=1)
    prior = bowsher_prior("rdp", 0.5, _random((1, 4, 4), seed=8), 3, epsilon=1e-3)
    x, hist = map_em(lik, prior, num_iterations=8, progress=False, return_history=True)
    values = [float(v) for v in hist.objective]
    assert all(b >= a - 1e-10 for a, b in zip(values, values[1:]))
    assert float(map_objective(lik, prior, x)) >= values[0]


@pytest.mark.parametrize("call, match", [
    (lambda mr: bowsher_weights(mr, 0), "num_neighbours"),
    (lambda mr: bowsher_weights(mr, 27), "num_neighbours"),
    (lambda mr: bowsher_weights(mr, 4, symmetrise="max"), "symmetrise"),
    (lambda mr: bowsher_weights(mr[0], 4), r"\[z, y, x\]"),
    (lambda mr: bowsher_prior("huber", 1.0, mr, 4), "kind"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(_random())


def test_weights_for_another_grid_are_refused():
    prior = bowsher_prior("quadratic", 1.0, _random((1, 5, 5)), 4)
    with pytest.raises(ValueError, match="pair_weights"):
        prior.value(_random((1, 6, 6)))
    with pytest.raises(ValueError, match="forward offset"):
        QuadraticPrior(1.0, neighbourhood="axial",
                       pair_weights=bowsher_weights(_random((2, 3, 3)), 4))


# ------------------------------------------------------------------------------ command line
def test_cli_bowsher_runs_and_differs_from_plain_map(cli_case, tmp_path):
    import json

    from sirf_diffusion.cli import main

    common = ["reconstruct", str(cli_case), "--method", "mapem-quadratic", "--iterations", "2",
              "--subsets", "4", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--bowsher"]) == 0
    assert main(common + ["--out", str(tmp_path / "b3"), "--bowsher", str(cli_case / "t1.hv"),
                          "--bowsher-neighbours", "3"]) == 0
    from sirf_diffusion.io.interfile import read_image

    plain, b, b3 = (read_image(tmp_path / n / "image.hv")[0] for n in ("plain", "b", "b3"))
    assert not np.array_equal(plain, b) and not np.array_equal(b, b3)
    cfg = json.loads((tmp_path / "b3" / "config.json").read_text())
    assert cfg["bowsher_neighbours"] == 3 and cfg["bowsher"] == str(cli_case / "t1.hv")
    assert (cfg["beta"], cfg["beta_source"]) == (3.2, "Bowsher default")  # BOWSHER_BETA


@pytest.mark.parametrize("extra, match", [
    (["--method", "osem", "--bowsher"], "--bowsher does not apply to method osem"),
    (["--method", "mapem-rdp", "--bowsher-neighbours", "3"], "needs --bowsher"),
    (["--method", "mapem-rdp", "--bowsher", "missing.hv"], "missing.hv: file not found"),
    (["--method", "mapem-rdp", "--bowsher", "--bowsher-neighbours", "0"], "bowsher-neighbours"),
])
def test_cli_bowsher_errors(cli_case, tmp_path, capsys, extra, match):
    from sirf_diffusion.cli import main

    assert main(["reconstruct", str(cli_case), "--out", str(tmp_path / "o")] + extra) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_bowsher_needs_the_case_t1_or_an_image(cli_case, tmp_path, capsys):
    from sirf_diffusion.cli import main

    case = tmp_path / "case"
    shutil.copytree(cli_case, case)
    (case / "t1.hv").unlink()
    (case / "t1.v").unlink()
    assert main(["reconstruct", str(case), "--method", "mapem-rdp", "--bowsher", "--out",
                 str(tmp_path / "o")]) == 2
    assert "has no t1.hv" in capsys.readouterr().err
