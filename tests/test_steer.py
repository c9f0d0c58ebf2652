"""Steerable conditional diffusion (samplers/steer.py): schedule, loss gradient, fits that lower
the misfit, a fresh adapter per run on a copy, options, CIL / SIRF pass-through, the CLI."""

from __future__ import annotations

import copy

import fake_sirf as fs
import numpy as np
import pytest
import torch
from conftest import gaussian_denoiser, poisson_problem, tiny_score_model

from sirf_diffusion.diffusion.grid import slice_models
from sirf_diffusion.diffusion.lora import LoRALayer
from sirf_diffusion.samplers.methods import reconstruct
from sirf_diffusion.samplers.run import prepare
from sirf_diffusion.samplers.steer import steer_denoiser, steering_schedule

pytestmark = pytest.mark.usefixtures("one_thread")
IMG = (1, 8, 8)


def _problem():
    return poisson_problem(image_shape=IMG, num_views=6, num_tangential=12, dtype=torch.float32)


def _model(precision: str = "fp32"):
    return tiny_score_model(seed=1, precision=precision).eval()


STEER = {"steer": True, "steer_rank": 2, "steer_steps": 2, "steer_adam_steps": 3,
         "steer_lr": 1e-2}


def test_schedule_follows_the_ct_code_shifted_by_one():
    # CT code, 20 steps, skip 5: adapted at steps 4, 9, 14, 19 and the last four (16-19);
    # here each fit is used from the next step on, so fits follow steps 3, 8, 13, 15-18
    assert steering_schedule(20, 5) == (3, 8, 13, 15, 16, 17, 18)
    assert steering_schedule(6, 1) == (0, 1, 2, 3, 4)
    assert steering_schedule(3, 10) == (0, 1)
    assert steering_schedule(10, [7, 2, 2]) == (2, 7)
    for bad in ([9], [-1], []):
        with pytest.raises(ValueError, match="steer_steps"):
            steering_schedule(10, bad)
    with pytest.raises(ValueError, match="steer_steps"):
        steering_schedule(10, 0)


def test_misfit_gradient_is_the_gradient_of_the_poisson_nll():
    """The surrogate backward (grad L from the likelihood object) equals autograd through the
    Poisson NLL of the embedded (differentiable) physics."""
    lik, truth = _problem()
    from sirf_diffusion.diffusion.normalisation import IntensityNormalisation

    norm = IntensityNormalisation(2.0)
    s = steer_denoiser(_model(), lik, norm, 4, rank=2, steps=1, adam_steps=1, lr=1e-3)
    lora = s.adaptation.adapters[0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # non-zero up-projections: every adapter weight gets a gradient
        for p in lora.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(2, 1, 8, 8, generator=g) * 0.5 + 1.0
    sigma = torch.full((2,), 0.4)
    params = list(lora.parameters())
    loss = -float(s.adaptation.misfit_backward(s.denoiser, x, sigma).sum())
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    u = norm.from_prior(torch.clamp(s.denoiser(x, sigma), min=0)) * s.adaptation._fov
    nll = -lik.value(u).sum()
    nll.backward()
    assert loss == pytest.approx(float(nll.detach()), rel=1e-6)
    for a, p in zip(ours, params):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_smoothed_misfit_gradient_is_the_blurred_likelihood_gradient():
    """With steer_smoothing_mm the adapter's gradient is -(du/dtheta)^T G grad L, G the
    Gaussian of that FWHM: the same as autograd through <G grad L(u0), u> at u0 = u."""
    from sirf_diffusion.diffusion.normalisation import IntensityNormalisation
    from sirf_diffusion.physics.geometry import ImageGeometry
    from sirf_diffusion.physics.psf import GaussianPSF

    lik, _ = _problem()
    norm = IntensityNormalisation(2.0)
    s = steer_denoiser(_model(), lik, norm, 4, rank=2, steps=1, adam_steps=1, lr=1e-3,
                       smoothing_mm=6.0)
    assert s.config["steer_smoothing_mm"] == 6.0
    lora = s.adaptation.adapters[0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lora.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(2, 1, 8, 8, generator=g) * 0.5 + 1.0
    sigma = torch.full((2,), 0.4)
    params = list(lora.parameters())
    s.adaptation.misfit_backward(s.denoiser, x, sigma)
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    u = norm.from_prior(torch.clamp(s.denoiser(x, sigma), min=0)) * s.adaptation._fov
    _, grad = lik.value_and_gradient(u.detach())
    blur = GaussianPSF(ImageGeometry(IMG, tuple(lik.voxel_size_mm)), 6.0, 6.0)
    blurred = blur(grad.to(u.dtype))
    assert not torch.allclose(blurred, grad.to(u.dtype))          # the blur does something
    (-(blurred * u).sum()).backward()
    for a, p in zip(ours, params):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    unsmoothed = steer_denoiser(_model(), lik, norm, 4, rank=2, steps=1, adam_steps=1, lr=1e-3)
    assert unsmoothed.config["steer_smoothing_mm"] is None


@pytest.mark.parametrize("method,options", [("lisch", {"num_mlem_iterations": 5}),
                                            ("dds", {"num_subsets": 2})])
def test_steered_run_fits_a_fresh_adapter_on_a_copy(method, options):
    lik, _ = _problem()
    model = _model("bf16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses: list[list[float]] = []
    common = dict(num_steps=5, num_samples=2, progress=False, **options)

    def run(**kw):
        return reconstruct(method, lik, model, generator=torch.Generator().manual_seed(4),
                           callback=lambda d: losses.append(d.get("steer_loss")), **common, **kw)

    plain = run()
    losses.clear()
    steered = run(**STEER)
    fits = [ls for ls in losses if ls]
    # fits after steps 0, 2 (interval 2, last four) ... = steering_schedule(5, 2)
    assert steered.config["steer_steps"] == [0, 1, 2, 3] and len(fits) == 4
    assert all(len(ls) == 3 for ls in fits)
    # the first fit lowers the misfit of its estimate (Adam on one fixed iterate)
    assert fits[0][-1] < fits[0][0]
    # the adapter changes the reconstruction; the caller's network is untouched
    assert not torch.equal(plain.mean, steered.mean)
    assert not any(isinstance(m, LoRALayer) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # one re-noising evaluation of the unadapted network per step, K per fit
    assert steered.num_network_evaluations == plain.num_network_evaluations + 5 + 4 * 3
    assert steered.num_likelihood_evaluations >= plain.num_likelihood_evaluations + 4 * 3
    # a fresh adapter per run: the same seed gives the same result bit for bit
    again = run(**STEER)
    assert torch.equal(again.sample, steered.sample)
    assert steered.config["steer_parameters"] > 0 and steered.config["steer_rank"] == 2


def test_stepper_renoises_with_the_unadapted_network():
    lik, _ = _problem()
    model = _model()
    r = prepare("lisch", lik, model, num_steps=4, num_mlem_iterations=3, **STEER)
    assert r.stepper.noise_denoiser is model
    assert r.stepper.denoiser is not model and r.stepper.adapt is not None
    assert any(isinstance(m, LoRALayer) for m in r.stepper.denoiser.modules())
    r.run()
    assert not any(isinstance(m, LoRALayer) for m in model.modules())


def test_steering_options_are_checked():
    lik, _ = _problem()
    model = _model()
    with pytest.raises(ValueError, match="apply only with steer=True"):
        prepare("lisch", lik, model, num_steps=3, num_mlem_iterations=2, steer_rank=4)
    with pytest.raises(ValueError, match="do not apply to method 'dps'"):
        prepare("dps", lik, model, num_steps=3, steer=True)
    with pytest.raises(ValueError, match="steer must be True or False"):
        prepare("lisch", lik, model, num_steps=3, num_mlem_iterations=2, steer="yes")
    with pytest.raises(ValueError, match="steer_lr"):
        prepare("lisch", lik, model, num_steps=3, num_mlem_iterations=2, steer=True,
                steer_lr=-1.0)
    with pytest.raises(ValueError, match="ScoreModel-based prior"):
        prepare("lisch", lik, gaussian_denoiser(IMG), num_steps=3, num_mlem_iterations=2,
                steer=True)
    for bad, needle in [({"steer_layers": "deep"}, "steer_layers must be one of"),
                        ({"steer_weight_decay": -1.0}, "steer_weight_decay"),
                        ({"steer_discrepancy": 0.0}, "steer_discrepancy"),
                        ({"steer_smoothing_mm": 0.0}, "steer_smoothing_mm"),
                        ({"steer_smoothing_mm": -2.0}, "steer_smoothing_mm")]:
        with pytest.raises(ValueError, match=needle):
            prepare("lisch", lik, model, num_steps=3, num_mlem_iterations=2, steer=True, **bad)
    with pytest.raises(TypeError, match="did you mean steer_lr"):
        prepare("lisch", lik, model, num_steps=3, steer_lrr=1.0)


def test_discrepancy_stops_the_fits_at_the_poisson_deviance():
    """Morozov: a fit stops before an Adam step once the deviance per bin is at most the
    target.  An unreachable target never stops (every Adam step runs); a target above every
    deviance stops each fit before its first step, so the adapter stays zero and the result is
    the unsteered one bit for bit."""
    lik, _ = _problem()
    model = _model()
    y = lik.data.double()
    pos = y > 0
    sat = float(torch.where(pos, y * torch.log(torch.where(pos, y, 1.0)) - y, 0.0).sum())
    common = dict(num_steps=5, num_samples=2, num_mlem_iterations=3, progress=False)
    fits: list[tuple[list[float], list[float]]] = []

    def run(**kw):
        fits.clear()
        return reconstruct("lisch", lik, model, generator=torch.Generator().manual_seed(4),
                           callback=lambda d: fits.append((d["steer_loss"], d["steer_deviance"]))
                           if "steer_loss" in d else None, **common, **kw)

    plain = reconstruct("lisch", lik, model, generator=torch.Generator().manual_seed(4),
                        **common)
    run(**STEER, steer_discrepancy=1e-12)
    assert len(fits) == 4 and all(len(lo) == len(dev) == 3 for lo, dev in fits)
    for losses, devs in fits:   # D = 2 (L_sat - L) / M, the chains' mean; loss = -sum L
        for loss, dev in zip(losses, devs):
            assert dev == pytest.approx((2 * sat + loss) / y.numel(), rel=1e-5)  # float32 L
    stopped = run(**STEER, steer_discrepancy=1e12)
    assert len(fits) == 4 and all(len(lo) == 1 for lo, _ in fits)
    assert torch.equal(stopped.sample, plain.sample)
    assert stopped.config["steer_discrepancy"] == 1e12


def test_weight_decay_and_deepest_layers():
    lik, _ = _problem()
    model = _model()
    kw = dict(num_steps=4, num_mlem_iterations=3, **{**STEER, "steer_adam_steps": 4})

    def adapter_norm(**extra):
        r = prepare("lisch", lik, model, **kw, **extra)
        r.run()
        ad = r.stepper.adapt
        return sum(float(p.detach().square().sum()) for a in ad.adapters
                   for p in a.parameters()), r

    free, r = adapter_norm(steer_weight_decay=0.0)
    assert type(r.stepper.adapt.optimizer) is torch.optim.Adam
    decayed, r = adapter_norm(steer_weight_decay=50.0)   # lr 1e-2: 50 % shrink per step
    assert isinstance(r.stepper.adapt.optimizer, torch.optim.AdamW)
    assert decayed < 0.9 * free and r.config["steer_weight_decay"] == 50.0
    _, deep = adapter_norm(steer_layers="deepest")
    from sirf_diffusion.diffusion.lora import lowest_resolution_layers

    (adapted,) = slice_models(deep.stepper.denoiser).values()
    wrapped = {n for n, m in adapted.named_modules() if isinstance(m, LoRALayer)}
    assert wrapped == set(lowest_resolution_layers(model))
    assert deep.config["steer_layers"] == "deepest"


def test_cil_algorithm_passes_the_steering_options(fake_cil):
    lik, _ = _problem()
    model = _model()
    common = dict(num_steps=4, num_mlem_iterations=3, **STEER)
    ref = reconstruct("lisch", lik, model, generator=torch.Generator().manual_seed(1),
                      progress=False, **common)
    algo = fake_cil.LikelihoodScheduledDiffusion(lik, model,
                                                 generator=torch.Generator().manual_seed(1),
                                                 **common)
    algo.run(10)
    assert torch.equal(algo.samples, ref.sample)
    assert algo.result().config["steer_steps"] == ref.config["steer_steps"]


def test_sirf_objective_route_steers_like_the_embedded_physics():
    """Steering needs only the likelihood's value and gradient: through a SIRF objective
    function (no projector, no autograd) it gives the embedded physics' result."""
    from test_sirf_adapter import IMG as SIRF_IMG
    from test_sirf_adapter import _objective
    from test_sirf_adapter import problem as problem_fixture

    from sirf_diffusion import PoissonLogLikelihood
    from sirf_diffusion.integrations.sirf import ObjectiveFunctionLikelihood

    problem = problem_fixture.__wrapped__()
    lik = ObjectiveFunctionLikelihood(_objective(problem), problem["img"])
    dense = PoissonLogLikelihood(problem["dense"], problem["y"].float())
    assert SIRF_IMG[1] % 2 == 0
    model = _model()
    kw = dict(num_steps=4, num_mlem_iterations=3, progress=False, **STEER)
    a = reconstruct("lisch", lik, copy.deepcopy(model), generator=torch.Generator().manual_seed(2),
                    **kw)
    b = reconstruct("lisch", dense, model, generator=torch.Generator().manual_seed(2), **kw)
    np.testing.assert_allclose(a.mean.numpy(), b.mean.numpy(), rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="steer_discrepancy needs a likelihood that holds"):
        prepare("lisch", lik, model, num_steps=4, num_mlem_iterations=3, **STEER,
                steer_discrepancy=1.0)
    assert isinstance(problem["img"], fs.ImageData)


# ------------------------------------------------------------------------- command line
def test_cli_reconstruct_steer(cli_case, tiny_prior, tmp_path, capsys):
    import json

    from sirf_diffusion.cli import main

    out = tmp_path / "out"
    assert main(["reconstruct", str(cli_case), "--method", "lisch", "--model", str(tiny_prior),
                 "--steps", "3", "--mlem-iterations", "2", "--samples", "1", "--steer",
                 "--steer-rank", "2", "--steer-adam-steps", "1", "--steer-lr", "0.01",
                 "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    s = config["sampler"]
    assert s["steer"] is True and s["steer_rank"] == 2 and s["steer_steps"] == [0, 1]
    assert s["steer_adam_steps"] == 1 and s["steer_lr"] == 0.01
    assert "steered (rank 2)" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["--method", "lisch", "--steer-rank", "4"], "--steer-rank applies only with --steer"),
    (["--method", "osem", "--steer"], "--steer does not apply to method osem"),
    (["--method", "dps", "--steer"], "--steer does not apply to method dps"),
    (["--method", "lisch", "--steer", "--steer-lr", "0"], "argument --steer-lr"),
    (["--method", "lisch", "--steer-layers", "deepest"], "--steer-layers applies only with"),
    (["--method", "lisch", "--steer", "--steer-layers", "deep"], "argument --steer-layers"),
    (["--method", "lisch", "--steer", "--steer-weight-decay", "-1"],
     "argument --steer-weight-decay"),
    (["--method", "lisch", "--steer", "--steer-discrepancy", "0"],
     "argument --steer-discrepancy"),
    (["--method", "lisch", "--steer", "--steer-smoothing-mm", "0"],
     "argument --steer-smoothing-mm"),
    (["--method", "lisch", "--steer-smoothing-mm", "8"], "--steer-smoothing-mm applies only with"),
])
def test_cli_steer_flags_are_checked(cli_case, tmp_path, capsys, args, needle):
    from sirf_diffusion.cli import main

    out = tmp_path / "out"
    assert main(["reconstruct", str(cli_case), *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not out.exists()


# ------------------------------------------------------------------------- the benchmark
def test_evaluate_steering_quick(tiny_prior, tmp_path):
    import json
    from pathlib import Path

    from conftest import load_script

    mod = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "evaluate_steering.py")
    out = tmp_path / "steering"
    res = mod.main(["--quick", "--model", str(tiny_prior / "xy"), "--num-views", "84",
                    "--steps", "3", "--steer-adam-steps", "1", "--domains", "fdg-lesions",
                    "--lesion-load", "3", "--out", str(out), "--no-progress"])
    md = (out / "steering.md").read_text()
    assert "## fdg-lesions (3 lesions)" in md and "## amyloid" not in md
    assert md.count("| PET-LiSch-SCD |") == 1 and "hot spots" in md
    assert (out / "steering.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(res))
    assert data["settings"]["steer"]["steer"] is True
    jobs = data["jobs"]
    assert {j["tracer"] for j in jobs} == {"fdg"} and {j["subject"] for j in jobs} == {0}
    assert {j["lesions"] for j in jobs} == {3} and len(jobs) == 2
    for domain in ("fdg-lesions",):
        summary = data["results"][domain]["summary"]
        assert list(summary) == list(mod.METHODS)
        assert summary["lisch-scd"]["net_evals"] > summary["lisch"]["net_evals"]


def test_evaluate_steering_flags():
    from pathlib import Path

    from conftest import load_script

    mod = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "evaluate_steering.py")
    p = mod.build_parser()
    one = mod.steering_options(p.parse_args(["--steer-steps", "3"]))
    assert one["steer_steps"] == 3 and one["steer_layers"] == "all"
    args = p.parse_args(["--split", "val", "--steer-steps", "0", "1", "2", "--steer-layers",
                         "deepest", "--steer-weight-decay", "5", "--steer-discrepancy", "1.1"])
    opts = mod.steering_options(args)
    assert args.split == "val" and opts["steer_steps"] == [0, 1, 2]
    assert opts["steer_layers"] == "deepest" and opts["steer_weight_decay"] == 5.0
    assert opts["steer_discrepancy"] == 1.1
    with pytest.raises(SystemExit):
        p.parse_args(["--steer-layers", "deep"])
