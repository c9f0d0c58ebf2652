"""FBSEM-net in the CIL and SIRF front ends: the same reconstruction as ``fbsem_reconstruct``.

Oracles: the CIL ``Algorithm`` (:class:`~sirf_diffusion.integrations.cil.FBSEMNetAlgorithm`),
stepped by CIL's ``run``, gives :func:`~sirf_diffusion.recon.fbsem.fbsem_reconstruct`'s image bit
for bit and records the negative Poisson log-likelihood of every iterate; the drop-in SIRF
reconstructor (``DiffusionReconstructor('fbsem')``) on the SIRF stand-in gives the image the
network gives on the dense oracle physics with the same (STIR-like) subsets.  Each CIL test runs
on ``tests/fake_cil.py`` and on the real CIL (``toolkit``); the real-SIRF tests are ``toolkit``
tests on a simulated mMR case with the shipped network.
"""

from __future__ import annotations

import math

import fake_sirf as fs
import numpy as np
import pytest
import torch
from conftest import poisson_problem, randomise_parameters
from test_cil_integration import cil, cil_image  # noqa: F401  (the fake/real CIL fixture)
from test_sirf_adapter import IMG, _dense_subsets, _objective, problem  # noqa: F401
from toolkits import require

from sirf_diffusion.integrations.sirf import DiffusionReconstructor
from sirf_diffusion.likelihood import PoissonLogLikelihood
from sirf_diffusion.physics.base import DenseMatrixPhysics
from sirf_diffusion.recon.fbsem import (
    FBSEMConfig,
    FBSEMNet,
    FBSEMRun,
    counts_per_voxel,
    fbsem_reconstruct,
    save_fbsem,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = FBSEMConfig(num_iterations=3, num_subsets=2, channels=4, depth=3,
                   reference_counts_per_voxel=2.0)


def _net(dtype=torch.float32, seed=0, config=TINY) -> FBSEMNet:
    """A tiny FBSEM-net with every weight drawn (a non-trivial regulariser and beta)."""
    return randomise_parameters(FBSEMNet(config), seed=seed, scale=0.2).to(dtype).eval()


def _meta(lik, counts=(0.5, 2.0)) -> dict:
    """A model's metadata whose count range is ``counts`` times the data's."""
    nu = counts_per_voxel(lik)
    return {"trained_on": {"image_shape": list(lik.image_shape),
                           "voxel_size_mm": list(lik.voxel_size_mm),
                           "counts_per_voxel": [counts[0] * nu, counts[1] * nu]}}


# ============================================================================ the runner
def test_run_steps_are_the_network_forward_bit_for_bit():
    """``FBSEMRun`` stepped by hand is ``FBSEMNet.forward`` (the training path) exactly."""
    lik, _ = poisson_problem(image_shape=(1, 6, 6), num_views=8, seed=1, dtype=torch.float32)
    net = _net()
    run = FBSEMRun(lik, net)
    seen = []
    while not run.done:
        seen.append(run.step()["subset"])
    assert seen == [0, 1, 0, 1, 0, 1] and run.index == run.num_updates == 6
    with torch.no_grad():
        assert torch.equal(run.x, net(lik))
    with pytest.raises(StopIteration):
        run.step()
    res = run.result()
    assert res.num_network_evaluations == 6 and math.isclose(res.num_likelihood_evaluations, 3.0)
    assert torch.equal(res.image, fbsem_reconstruct(lik, net).image)


def test_reconstruct_callback_sees_every_update_and_may_stop_it():
    lik, _ = poisson_problem(image_shape=(1, 6, 6), num_views=8, seed=2, dtype=torch.float32)
    net = _net(seed=1)
    seen = []

    def stop_after_3(info):
        seen.append((info["iteration"], info["subset"]))
        if info["iteration"] == 3:
            raise StopIteration

    res = fbsem_reconstruct(lik, net, callback=stop_after_3)
    assert seen == [(1, 0), (2, 1), (3, 0)] and res.num_network_evaluations == 3
    run = FBSEMRun(lik, net)
    for _ in range(3):
        run.step()
    assert torch.equal(res.image, run.x)


# ============================================================================ CIL
def test_cil_algorithm_is_fbsem_reconstruct_step_by_step(cil, tmp_path):  # noqa: F811
    from cil.optimisation.algorithms import Algorithm

    import sirf_diffusion.integrations as integrations

    assert integrations.FBSEMNetAlgorithm is cil.FBSEMNetAlgorithm
    lik, _ = poisson_problem(image_shape=(1, 4, 4), num_views=8, seed=3, dtype=torch.float32)
    net = _net(seed=2)
    ref = fbsem_reconstruct(lik, net)
    template = cil_image(np.zeros((1, 4, 4), np.float32))

    seen = []

    def record(algorithm):
        seen.append((algorithm.iteration, algorithm.step_info.get("subset")))

    algo = cil.FBSEMNetAlgorithm(lik, net, template=template)
    assert isinstance(algo, Algorithm) and algo.num_steps == 6
    algo.run(100, callbacks=[record])            # more iterations than updates: stops by itself
    assert algo.iteration == 6
    assert seen == [(0, None), (1, 0), (2, 1), (3, 0), (4, 1), (5, 0), (6, 1)]
    sol = algo.solution
    assert type(sol) is type(template) and sol.shape == template.shape
    np.testing.assert_array_equal(sol.as_array(), ref.image.numpy().reshape(sol.shape))
    assert torch.equal(algo.result().image, ref.image)            # bit for bit
    # the objective: -L of the initial image, then of every iterate
    assert algo.iterations == [-1, 1, 2, 3, 4, 5, 6] and len(algo.objective) == 7
    assert math.isclose(algo.objective[0], -float(lik.value(lik.uniform_image())), rel_tol=1e-6)
    assert math.isclose(algo.objective[-1], -float(lik.value(ref.image)), rel_tol=1e-6)
    with pytest.raises(StopIteration):
        algo.update()

    # a model folder, a numpy template, StopIteration from a callback, and continuing
    folder = save_fbsem(tmp_path / "m", net, _meta(lik)["trained_on"])

    def stop_at_2(algorithm):
        if algorithm.iteration >= 2:
            raise StopIteration

    algo2 = cil.FBSEMNetAlgorithm(lik, folder, template=np.zeros((1, 4, 4)),
                                  update_objective_interval=3)
    algo2.run(10, callbacks=[stop_at_2])
    assert algo2.iteration == 2 and algo2.run_state.index == 2 and algo2.iterations == [-1]
    algo2.run(10, callbacks=[])
    assert algo2.iteration == 6 and isinstance(algo2.solution, np.ndarray)
    assert algo2.iterations == [-1, 3, 6] and algo2.objective[-1] == algo.objective[-1]
    np.testing.assert_array_equal(algo2.solution, ref.image.numpy())
    # no template: a torch tensor; CIL's own progress callbacks work
    algo3 = cil.FBSEMNetAlgorithm(lik, net)
    algo3.run(6, verbose=0)
    assert isinstance(algo3.solution, torch.Tensor) and torch.equal(algo3.solution, ref.image)


def test_cil_algorithm_checks_the_data_against_the_model(cil, tmp_path):  # noqa: F811
    lik, _ = poisson_problem(image_shape=(1, 4, 4), num_views=8, seed=4, dtype=torch.float32)
    net = _net()
    far = _meta(lik, counts=(100.0, 200.0))
    with pytest.warns(UserWarning, match="outside"):
        algo = cil.FBSEMNetAlgorithm(lik, net, meta=far)
    assert len(algo.warnings) == 1 and algo.result().warnings == algo.warnings
    other = _meta(lik)
    other["trained_on"]["voxel_size_mm"] = [1.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="trained on voxels of 3 x 3 mm"):
        cil.FBSEMNetAlgorithm(lik, net, meta=other)
    with pytest.raises(ValueError, match="template has shape"):
        cil.FBSEMNetAlgorithm(lik, net, template=np.zeros((2, 4, 4)))
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        cil.FBSEMNetAlgorithm(lik, tmp_path / "absent")


# ============================================================================ SIRF (stand-in)
def _oracle(problem, K, *, background=True):  # noqa: F811
    """The dense oracle likelihood with the stand-in's subsets (float64)."""
    dense = problem["dense"]
    if not background:
        dense = DenseMatrixPhysics(dense.matrix, IMG, dense.data_shape)
    return PoissonLogLikelihood(_dense_subsets(dense, K), problem["y"])


def _reconstructor(problem, net, *, route: str, **kwargs):  # noqa: F811
    recon = DiffusionReconstructor("fbsem", fbsem_model=net, progress=False, **kwargs)
    if route == "objective":
        recon.set_objective_function(_objective(problem, net.config.num_subsets))
    else:
        recon.set_acquisition_model(problem["am"])
        recon.set_acquisition_data(problem["acq"])
    return recon


@pytest.mark.parametrize("route", ["projections", "objective"])
def test_sirf_reconstructor_is_the_network_on_the_oracle(problem, route):  # noqa: F811
    """SIRF's reconstructor calls, in SIRF's order, give the network's image on the dense
    oracle (the objective route without background: its uniform start has none to remove)."""
    if route == "objective":
        problem["am"].a = None
    net = _net(torch.float64, seed=3)
    K = net.config.num_subsets
    recon = _reconstructor(problem, net, route=route)
    assert recon.get_num_subsets() == K and recon.get_num_subiterations() == 6
    recon.set_num_subsets(K)                       # repeating the network's own values is fine
    recon.set_num_subiterations(6)
    if route == "objective":
        with pytest.warns(UserWarning, match="set_acquisition_model and set_acquisition_data"):
            recon.set_up(problem["img"])
    else:
        recon.set_up(problem["img"])
    recon.set_current_estimate(problem["img"].get_uniform_copy(1.0))
    recon.process()
    out = recon.get_output()
    assert isinstance(out, fs.ImageData) and out.shape == IMG and recon.denoiser is None
    ref = fbsem_reconstruct(_oracle(problem, K, background=route != "objective"), net)
    np.testing.assert_allclose(out.as_array(), ref.image.numpy(), rtol=1e-4, atol=1e-5)
    assert recon.result.num_network_evaluations == 6


def test_sirf_reconstructor_callback_and_model_folder(problem, tmp_path):  # noqa: F811
    net = _net(torch.float32, seed=4)
    lik = _oracle(problem, net.config.num_subsets)
    trained_on = {**_meta(lik, counts=(100.0, 200.0))["trained_on"],
                  "voxel_size_mm": [4.0, 2.0, 2.0]}          # the stand-in image's voxels
    folder = save_fbsem(tmp_path / "m", net, trained_on)
    recon = DiffusionReconstructor("fbsem", fbsem_model=str(folder), progress=False)
    recon.set_acquisition_model(problem["am"])
    recon.set_acquisition_data(problem["acq"])
    seen = []

    def stop_at_4(info):
        seen.append(info["iteration"])
        if info["iteration"] == 4:
            raise StopIteration

    recon.set_callback(stop_at_4)
    recon.set_up(problem["img"])
    recon.set_current_estimate(problem["img"])
    with pytest.warns(UserWarning, match="outside"):    # the count range of the model folder
        recon.process()
    assert seen == [1, 2, 3, 4] and recon.result.num_network_evaluations == 4
    assert len(recon.result.warnings) == 1


def test_sirf_reconstructor_refuses_what_fbsem_does_not_take(problem, tmp_path):  # noqa: F811
    net = _net()
    with pytest.raises(TypeError, match="do not apply to method 'fbsem'"):
        DiffusionReconstructor("fbsem", fbsem_model=net, num_mlem_iterations=3)
    with pytest.raises(ValueError, match="uses no diffusion prior"):
        DiffusionReconstructor("fbsem", object(), fbsem_model=net)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        DiffusionReconstructor("fbsem", fbsem_model=tmp_path / "absent")
    with pytest.raises(TypeError, match="fbsem_model for method 'lisch'"):
        DiffusionReconstructor("lisch", fbsem_model=net)     # fbsem's option on another method
    recon = _reconstructor(problem, net, route="projections")
    recon.set_num_subsets(3)
    with pytest.raises(ValueError, match=r"set_num_subsets\(3\).*2 subsets"):
        recon.set_up(problem["img"])
    recon = _reconstructor(problem, net, route="projections")
    recon.set_num_subiterations(24)
    with pytest.raises(ValueError, match=r"set_num_subiterations\(24\).*3 x 2 = 6"):
        recon.set_up(problem["img"])


# ============================================================================ real toolkits
@pytest.fixture(scope="module")
def sirf_case(tmp_path_factory):
    """The real SIRF and its model of a simulated mMR case (``tests/test_toolkits_sirf.py``)."""
    require("sirf")
    import sirf.STIR as pet
    from conftest import simulated_case_with_osem
    from test_toolkits_sirf import _sirf_model

    pet.set_verbosity(0)
    folder = simulated_case_with_osem(tmp_path_factory.mktemp("fbsem_sirf") / "case", seed=0)
    return pet, _sirf_model(pet, folder)


@pytest.mark.toolkit
def test_shipped_fbsem_in_the_real_sirf_reconstructor_and_cil_algorithm(sirf_case):
    """The shipped network through SIRF's reconstructor equals the library on SIRF's physics bit
    for bit (both are the same runner); the objective route (warned: its data scale is not the
    net counts) is within 10 %; the real CIL algorithm with a SIRF template gives the same image."""
    from sirf_diffusion.integrations.sirf import sirf_likelihood

    pet, (am, prompts, image) = sirf_case
    recon = DiffusionReconstructor("fbsem", progress=False)
    K = recon.get_num_subsets()
    recon.set_acquisition_model(am)
    recon.set_acquisition_data(prompts)
    recon.set_up(image)
    recon.set_current_estimate(image.get_uniform_copy(1.0))
    recon.process()
    out = recon.get_output()
    assert isinstance(out, pet.ImageData) and np.isfinite(out.as_array()).all()
    lik = sirf_likelihood(am, prompts, num_subsets=K)
    ref = fbsem_reconstruct(lik)
    np.testing.assert_array_equal(out.as_array(), ref.image.numpy().reshape(out.shape))

    obj = pet.make_Poisson_loglikelihood(prompts)
    obj.set_acquisition_model(am)
    via_obj = DiffusionReconstructor("fbsem", progress=False)
    via_obj.set_objective_function(obj)
    with pytest.warns(UserWarning, match="not the net counts"):
        via_obj.set_up(image)
    via_obj.set_current_estimate(image)
    via_obj.process()
    a, b = via_obj.get_output().as_array(), out.as_array()
    # the objective route's scale is the best uniform image's, not the net counts (warned)
    assert 0 < np.linalg.norm(a - b) / np.linalg.norm(b) < 0.1

    require("cil")
    from sirf_diffusion.integrations.cil import FBSEMNetAlgorithm

    algo = FBSEMNetAlgorithm(lik, template=image, update_objective_interval=10)
    algo.run(100, verbose=0)
    assert algo.iteration == algo.num_steps and isinstance(algo.solution, pet.ImageData)
    np.testing.assert_array_equal(algo.solution.as_array(), out.as_array())
    assert len(algo.objective) == 1 + algo.num_steps // 10
