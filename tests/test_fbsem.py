"""FBSEM-net: the fusion step against its surrogate, gradients, bit-exact resumption, model files.

Oracles: the fusion step is checked against a brute-force maximisation of its per-voxel surrogate
and against its stationarity condition by finite differences; the network's gradient with respect
to the learned weight against central differences; a resumed training run against the
uninterrupted one, bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import poisson_problem
from test_sirf_adapter import problem  # noqa: F401  (the SIRF stand-in's problem fixture)

from sirf_diffusion.recon.fbsem import (
    FBSEMConfig,
    FBSEMNet,
    check_applicability,
    counts_per_voxel,
    fbsem_reconstruct,
    fusion_step,
    load_fbsem,
    save_fbsem,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = FBSEMConfig(num_iterations=2, num_subsets=2, channels=4, depth=3)


def _surrogate(z, s, x_em, x_reg, beta):
    return s * x_em * torch.log(z) - s * z - 0.5 * beta * (z - x_reg) ** 2


def _voxels(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = 0.1 + 5 * torch.rand(n, generator=g, dtype=torch.float64)
    x_em = 3 * torch.rand(n, generator=g, dtype=torch.float64)
    # regularised images below and far above x_em (both signs of s - beta x_R)
    x_reg = 8 * torch.rand(n, generator=g, dtype=torch.float64)
    beta = 0.05 + 3 * torch.rand(n, generator=g, dtype=torch.float64)
    return s, x_em, x_reg, beta


def test_fusion_step_is_the_brute_force_maximiser_of_its_surrogate():
    s, x_em, x_reg, beta = _voxels()
    z = fusion_step(x_em, x_reg, s, beta)
    grid = torch.linspace(1e-4, 12, 240_001, dtype=torch.float64)[:, None]
    best = grid[_surrogate(grid, s, x_em, x_reg, beta).argmax(dim=0), 0]
    assert torch.allclose(z, best, atol=1e-4)
    assert (z >= 0).all()


def test_fusion_step_is_stationary_by_finite_differences():
    s, x_em, x_reg, beta = _voxels(seed=1)
    x_em = x_em + 0.1  # an interior maximiser
    z = fusion_step(x_em, x_reg, s, beta)
    h = 1e-6
    derivative = (_surrogate(z + h, s, x_em, x_reg, beta)
                  - _surrogate(z - h, s, x_em, x_reg, beta)) / (2 * h)
    assert derivative.abs().max() < 1e-6 * s.max()
    q = [_surrogate(z + d, s, x_em, x_reg, beta) for d in (-1e-3, 0.0, 1e-3)]
    curvature = q[0] - 2 * q[1] + q[2]
    assert (curvature < 0).all()


def test_fusion_step_limits():
    s, x_em, x_reg, _ = _voxels(seed=2)
    # no coupling: the EM update; no sensitivity: 0
    assert torch.allclose(fusion_step(x_em, x_reg, s, 1e-12), x_em, rtol=1e-9, atol=1e-9)
    s0 = s.clone()
    s0[:5] = 0
    assert (fusion_step(x_em, x_reg, s0, 1.0)[:5] == 0).all()
    # strong coupling: the regularised image
    assert torch.allclose(fusion_step(x_em, x_reg, s, 1e9), x_reg, atol=1e-6)


def _tiny_net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = FBSEMNet(TINY).to(dtype)
    with torch.no_grad():  # a non-trivial CNN (the last layer starts at zero)
        for p in net.regulariser.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed),
                                      dtype=dtype))
    return net


def test_gradient_flows_to_beta_and_the_cnn_and_matches_finite_differences():
    lik, truth = poisson_problem(image_shape=(1, 6, 6), num_views=8, seed=3)
    net = _tiny_net(torch.float64)

    def loss():
        x = net(lik)
        return ((x - truth) ** 2).sum()

    value = loss()
    value.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["log_beta"].abs() > 0 and grads["beta_exponent"].abs() > 0
    assert all(grads[n].abs().sum() > 0 for n in grads if n.startswith("regulariser"))
    for name in ("log_beta", "regulariser.body.0.bias"):
        p = dict(net.named_parameters())[name]
        h = 1e-6
        with torch.no_grad():
            flat = p.view(-1)
            flat[0] += h
            up = float(loss())
            flat[0] -= 2 * h
            down = float(loss())
            flat[0] += h
        fd = (up - down) / (2 * h)
        assert math.isclose(float(grads[name].reshape(-1)[0]), fd, rel_tol=1e-5, abs_tol=1e-9)


def test_untrained_network_keeps_the_image_non_negative_and_counts_its_cost():
    lik, _ = poisson_problem(image_shape=(1, 6, 6), num_views=8, seed=4, dtype=torch.float32)
    net = FBSEMNet(TINY)
    meta = {"trained_on": {"image_shape": [1, 6, 6], "voxel_size_mm": [1.0, 1.0, 1.0],
                           "counts_per_voxel": [0.0, 1e9]}}
    res = fbsem_reconstruct(lik, net, meta=meta)
    assert res.image.shape == (1, 6, 6) and (res.image >= 0).all()
    assert res.num_network_evaluations == 4
    assert math.isclose(res.num_likelihood_evaluations, 2.0)  # 2 epochs of 2 subsets
    assert res.warnings == []


# ------------------------------------------------------------------------------ model files
def _trained_on(lik):
    nu = counts_per_voxel(lik)
    return {"image_shape": list(lik.image_shape), "voxel_size_mm": list(lik.voxel_size_mm),
            "data_shape": [1, 8, 6], "scanner": None, "counts_per_mm3": [1.0, 2.0],
            "counts_per_voxel": [nu / 2, nu * 2]}


def test_save_load_round_trip(tmp_path):
    lik, _ = poisson_problem(image_shape=(1, 6, 6), num_views=8, seed=5, dtype=torch.float32)
    net = _tiny_net()
    save_fbsem(tmp_path / "m", net, _trained_on(lik), extra={"note": "test"})
    loaded, meta = load_fbsem(tmp_path / "m")
    assert meta["extra"]["note"] == "test" and loaded.config == net.config
    for (n, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    with torch.no_grad():
        assert torch.equal(net(lik), loaded(lik))


def test_corrupt_or_missing_model_files_are_refused(tmp_path):
    lik, _ = poisson_problem(image_shape=(1, 6, 6), num_views=8, seed=5, dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_fbsem(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_fbsem(tmp_path / "empty")
    d = save_fbsem(tmp_path / "m", _tiny_net(), _trained_on(lik))
    weights = d / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_fbsem(d)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_fbsem(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_fbsem(d)
    (d / "config.json").write_text(json.dumps({"format": "sirf-diffusion-score-model/1"}))
    with pytest.raises(ValueError, match="not an FBSEM-net model config"):
        load_fbsem(d)
    # weights that do not fit the configured network
    d2 = save_fbsem(tmp_path / "m2", _tiny_net(), _trained_on(lik))
    meta = json.loads((d2 / "config.json").read_text())
    meta["network"]["channels"] = 8
    (d2 / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit the network"):
        load_fbsem(d2)


def test_applicability_refuses_other_voxels_and_warns_outside_the_dose_range():
    lik, _ = poisson_problem(image_shape=(1, 6, 6), num_views=8, seed=6, dtype=torch.float32)
    meta = {"trained_on": _trained_on(lik)}
    assert check_applicability(meta, lik) == []
    low = {"trained_on": {**meta["trained_on"], "counts_per_voxel": [1e6, 1e7]}}
    (message,) = check_applicability(low, lik)
    assert "outside" in message and "counts/mm^3" in message
    other = {"trained_on": {**meta["trained_on"], "voxel_size_mm": [1.0, 2.0, 2.0]}}
    with pytest.raises(ValueError, match="trained on voxels of 2 x 2 mm"):
        check_applicability(other, lik)
    grid = {"trained_on": {**meta["trained_on"], "image_shape": [1, 128, 128]}}
    assert "128 x 128" in check_applicability(grid, lik)[0]
    with pytest.warns(UserWarning, match="outside"):
        fbsem_reconstruct(lik, FBSEMNet(TINY), meta=low)


def test_config_validation():
    with pytest.raises(ValueError, match="num_subsets"):
        FBSEMConfig(num_subsets=0)
    with pytest.raises(ValueError, match="unknown FBSEM-net configuration keys"):
        FBSEMConfig.from_dict({"layers": 3})
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        FBSEMConfig(kernel_size=4)


def test_default_network_has_about_30k_parameters():
    assert 25_000 < FBSEMNet().num_parameters < 35_000


def test_shipped_model_loads_when_present():
    from sirf_diffusion.recon.fbsem import default_fbsem_dir

    if not (default_fbsem_dir() / "config.json").is_file():
        pytest.skip("no shipped FBSEM-net in this checkout")
    net, meta = load_fbsem()
    assert meta["trained_on"]["image_shape"] == [1, 128, 128]
    assert isinstance(net, FBSEMNet)
    assert Path(default_fbsem_dir() / "model.safetensors").stat().st_size < 1_000_000


def test_runs_on_a_sirf_objective_function_as_on_the_embedded_physics(problem):  # noqa: F811
    """Through SIRF's objective (the stand-in of tests/fake_sirf.py, STIR-like subsets) the
    network gives the image it gives on the dense oracle physics with the same subsets."""
    from test_sirf_adapter import IMG, _dense_subsets, _objective

    from sirf_diffusion.integrations.sirf import ObjectiveFunctionLikelihood
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.physics.base import DenseMatrixPhysics

    problem["am"].a = None  # the objective route's uniform image has no background to remove
    net = _tiny_net(torch.float64)
    lik = ObjectiveFunctionLikelihood(_objective(problem, TINY.num_subsets), problem["img"],
                                      num_subsets=TINY.num_subsets)
    plain = DenseMatrixPhysics(problem["dense"].matrix, IMG, problem["dense"].data_shape)
    dense = PoissonLogLikelihood(_dense_subsets(plain, TINY.num_subsets), problem["y"])
    with torch.no_grad():
        torch.testing.assert_close(net(lik).double(), net(dense), rtol=1e-4, atol=1e-5)
