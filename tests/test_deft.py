"""PET-DEFT: the h-transform network, its sampling on the stepper, and its loss.

Oracles:

* an untrained h-network (zero-initialised output and time scale) makes DEFT sampling *equal*,
  bit for bit, to unconditional sampling with the same noise;
* on a Gaussian problem (``x0 ~ N(0, I)``, ``y = x0 + sigma_y n``) the optimal h-transform is
  known in closed form, ``eps_h* = -a b / (b^2 + sigma_y^2) (y - x0_hat)`` with
  ``a = sqrt(alpha_bar)``, ``b = sqrt(1 - alpha_bar)``, and so is the minimal loss, the
  conditional variance ``1 - b^2 - a^2 b^2 / (b^2 + sigma_y^2)`` per pixel: training must reach
  it;
* the likelihood features against their definitions (an MLEM step; the gradient).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import GaussianDenoiser, poisson_problem, randomise_parameters, tiny_score_model

from sirf_diffusion.diffusion.deft_training import deft_loss
from sirf_diffusion.diffusion.deftio import DEFTModel, load_deft_model, save_deft_model
from sirf_diffusion.diffusion.htransform import (
    HNetConfig,
    HTransformNet,
    likelihood_feature,
    output_scale,
    weights_fingerprint,
)
from sirf_diffusion.diffusion.normalisation import IntensityNormalisation
from sirf_diffusion.diffusion.schedules import ContinuousVP
from sirf_diffusion.diffusion.unet import UNetConfig
from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS
from sirf_diffusion.samplers.loop import reverse_diffusion
from sirf_diffusion.samplers.run import default_sigmas, prepare

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY_UNET = UNetConfig(in_channels=3, base_channels=8, channel_mults=(1, 2),
                       attention_resolutions=(), groupnorm_groups=4)


def tiny_hnet(gradient: str = "em", gain: float = 10.0) -> HTransformNet:
    return HTransformNet(HNetConfig(unet=TINY_UNET, gradient=gradient, feature_gain=gain,
                                    scale_channels=16), precision="fp32")


def deft_model_for(prior, likelihood, hnet=None, dose_range=(0.1, 1e4)) -> DEFTModel:
    return DEFTModel(hnet or tiny_hnet(), weights_fingerprint(prior),
                     {"scanner": "test", "image_shape": list(likelihood.image_shape),
                      "voxel_size_mm": list(likelihood.voxel_size_mm),
                      "data_shape": list(likelihood.physics.data_shape)},
                     dose_range, {"init_subsets": 1, "init_epochs": 3})


@pytest.fixture(scope="module")
def problem():
    lik, truth = poisson_problem(image_shape=(1, 8, 8), num_views=12, num_tangential=10)
    prior = tiny_score_model(precision="fp32", image_size=(8, 8)).eval()
    return lik, truth, prior


# ----------------------------------------------------------------------------- the network
def test_untrained_hnet_is_exactly_zero():
    h = tiny_hnet()
    x = torch.randn(3, 1, 8, 8)
    out = h(x, x, torch.randn(3, 1, 8, 8), torch.rand(3))
    assert torch.equal(out, torch.zeros_like(out))


def test_default_hnet_is_10_to_25_percent_of_the_shipped_prior():
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig

    prior = ScoreModel(ScoreModelConfig())  # the shipped architecture
    ratio = HTransformNet().num_parameters / prior.num_parameters
    assert 0.10 <= ratio <= 0.25


def test_hnet_output_is_unet_minus_scaled_feature():
    h = tiny_hnet(gain=3.0)
    randomise_parameters(h, seed=1)
    x, g, t = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.rand(2)
    u = h.unet(torch.cat([x, x, 3.0 * g], 1), t)
    expected = u - h.scale(t).reshape(-1, 1, 1, 1) * 3.0 * g
    torch.testing.assert_close(h(x, x, g, t), expected)


@pytest.mark.parametrize("bad", [dict(gradient="adjoint"), dict(feature_gain=0.0),
                                 dict(unet=UNetConfig(in_channels=1))])
def test_bad_hnet_configs_are_refused(bad):
    with pytest.raises(ValueError):
        HNetConfig(**bad)


# ----------------------------------------------------------------------------- the features
def test_features_match_their_definitions(problem):
    lik, truth, _ = problem
    norm = IntensityNormalisation(2.0)
    x0 = norm.to_prior(truth[None].float()) - 0.8   # some voxels negative
    plus = torch.clamp(norm.from_prior(x0), min=0)
    em = likelihood_feature(lik, norm, x0, "em")
    torch.testing.assert_close(em, norm.to_prior(lik.em_update(plus) - plus))
    raw = likelihood_feature(lik, norm, x0, "raw")
    torch.testing.assert_close(raw, 2.0 * norm.to_prior(2.0 * lik.gradient(plus)))
    # the EM step vanishes where max(x0, 0) = 0
    assert bool((x0 <= 0).any()) and torch.all(em[x0 <= 0] == 0)


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_zero_hnet_sampling_equals_unconditional_sampling_exactly(problem, eta):
    lik, _, prior = problem
    norm = IntensityNormalisation(2.0)
    model = deft_model_for(prior, lik)
    run = prepare("deft", lik, prior, norm, deft_model=model, num_steps=5, num_samples=3, eta=eta,
                  generator=torch.Generator().manual_seed(4)).run()
    result = run.result()
    sigmas = default_sigmas(prior, 5, METHOD_DEFAULTS["deft"]["t_start"])  # DEFT's levels
    assert torch.equal(run.sigmas.to(sigmas.dtype), sigmas)
    with torch.no_grad():
        x = reverse_diffusion(prior, sigmas, shape=(3, 1, 8, 8), eta=eta, progress=False,
                              generator=torch.Generator().manual_seed(4))
    expected = torch.clamp(norm.from_prior(x), min=0)
    assert torch.equal(result.sample, expected)
    assert result.num_network_evaluations == 10   # prior + the conditional call, per step


def test_trained_hnet_changes_the_samples(problem):
    lik, _, prior = problem
    norm = IntensityNormalisation(2.0)
    hnet = randomise_parameters(tiny_hnet(), seed=2, scale=0.05)
    a = prepare("deft", lik, prior, norm, deft_model=deft_model_for(prior, lik), num_steps=3,
                generator=torch.Generator().manual_seed(0)).run().result()
    b = prepare("deft", lik, prior, norm, deft_model=deft_model_for(prior, lik, hnet),
                num_steps=3, generator=torch.Generator().manual_seed(0)).run().result()
    assert not torch.equal(a.sample, b.sample)


def test_deft_refuses_another_prior_or_geometry(problem):
    lik, _, prior = problem
    norm = IntensityNormalisation(2.0)
    other = tiny_score_model(seed=1, precision="fp32", image_size=(8, 8)).eval()
    with pytest.raises(ValueError, match="another prior"):
        prepare("deft", lik, other, norm, deft_model=deft_model_for(prior, lik))
    model = deft_model_for(prior, lik)
    model.geometry["image_shape"] = [1, 16, 16]
    with pytest.raises(ValueError, match="trained for"):
        prepare("deft", lik, prior, norm, deft_model=model)


def test_deft_warns_outside_its_dose_range(problem):
    lik, _, prior = problem
    model = deft_model_for(prior, lik, dose_range=(1e5, 1e6))
    with pytest.warns(UserWarning, match="outside the DEFT model's training range"):
        run = prepare("deft", lik, prior, deft_model=model, num_steps=2)
    assert run.config["estimated_dose"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare("deft", lik, prior, deft_model=deft_model_for(prior, lik), num_steps=2)


def test_deft_model_round_trips_and_detects_tampering(problem, tmp_path):
    lik, _, prior = problem
    hnet = randomise_parameters(tiny_hnet(), seed=3)
    model = deft_model_for(prior, lik, hnet)
    save_deft_model(tmp_path / "m", model)
    back = load_deft_model(tmp_path / "m", precision="fp32")
    for k, v in hnet.state_dict().items():
        assert torch.equal(v, back.hnet.state_dict()[k])
    assert back.geometry == model.geometry and back.dose_range == model.dose_range
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256"):
        load_deft_model(tmp_path / "m")
    with pytest.raises(ValueError, match="not a DEFT model"):
        (tmp_path / "n").mkdir()
        (tmp_path / "n" / "config.json").write_text('{"format": "other"}')
        (tmp_path / "n" / "model.safetensors").write_bytes(b"")
        load_deft_model(tmp_path / "n")


# ----------------------------------------------------------------------------- the loss
class _GaussianPrior(GaussianDenoiser):
    """``x0 ~ N(0, 1)`` per pixel with a continuous VP schedule (the loss draws t from it)."""

    schedule = ContinuousVP()


def _optimal_loss(t: torch.Tensor, sigma_y: float) -> torch.Tensor:
    ab = ContinuousVP().alpha_bar(t)
    b2 = 1 - ab
    return 1 - b2 - ab * b2 / (b2 + sigma_y**2)


@pytest.mark.parametrize("scaling", ["none", "edm"])
def test_gaussian_h_transform_reaches_the_known_optimum(scaling):
    """Analytic case (module docstring): the loss falls from the unconditional level to the
    conditional variance (within 3 %), and s(t) approaches the optimal scale; with EDM's
    output scaling both are weighted by ``1 / kappa^2`` and ``s`` by ``1 / kappa``."""
    torch.manual_seed(0)
    sigma_y, gain, t_min = 0.5, 1.0, 0.05
    prior = _GaussianPrior(0.0, 1.0)
    config = HNetConfig(unet=TINY_UNET, gradient="raw", feature_gain=gain, scale_channels=32,
                        output_scaling=scaling, sigma_data=1.0)
    hnet = HTransformNet(config, precision="fp32")

    def weight(t: torch.Tensor) -> torch.Tensor:
        ab = ContinuousVP().alpha_bar(t)
        return output_scale(config, ((1 - ab) / ab).sqrt()) ** -2
    opt = torch.optim.Adam(hnet.parameters(), lr=1e-2)

    def batch(seed: int, n: int):
        g = torch.Generator().manual_seed(seed)
        x0 = torch.randn(n, 1, 4, 4, generator=g)
        y = x0 + sigma_y * torch.randn(n, 1, 4, 4, generator=g)
        return x0, (lambda x0_hat: (y - x0_hat) / sigma_y**2)

    def evaluate() -> tuple[float, float, float]:
        x0, feat = batch(10**6, 4096)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            loss = float(deft_loss(prior, hnet, x0, feat, g, t_min))
        g = torch.Generator().manual_seed(7)  # the same t as the loss drew
        t = t_min + (1 - t_min) * torch.rand(4096, generator=g)
        best = float((weight(t) * _optimal_loss(t, sigma_y)).mean())
        uncond = float((weight(t) * ContinuousVP().alpha_bar(t)).mean())
        return loss, best, uncond

    start, best, uncond = evaluate()
    assert start == pytest.approx(uncond, rel=0.03)       # h = 0: the unconditional loss
    assert best < 0.8 * uncond                            # the data are informative
    for step in range(400):
        x0, feat = batch(step, 256)
        loss = deft_loss(prior, hnet, x0, feat, torch.Generator().manual_seed(step), t_min)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final, best, _ = evaluate()
    assert best * 0.99 < final < best * 1.03
    t = torch.tensor([0.2, 0.5])
    a2 = ContinuousVP().alpha_bar(t)
    s_opt = (a2.sqrt() * (1 - a2).sqrt() * sigma_y**2 / ((1 - a2) + sigma_y**2)) / gain
    s_opt = s_opt * weight(t).sqrt()
    torch.testing.assert_close(hnet.scale(t).detach(), s_opt, rtol=0.15, atol=0.02)


# ----------------------------------------------------------------------------- training
def _train_config(**changes):
    from sirf_diffusion.diffusion.deft_training import DEFTTrainConfig

    base = dict(steps=4, batch_size=2, checkpoint_every=2, val_pairs=2, val_every=2,
                pairs=dict(image_shape=(32, 32), num_views=36, num_subjects=2,
                           plane_offsets_mm=(0.0, 8.125)),
                hnet={"unet": TINY_UNET.to_dict(), "scale_channels": 8}, init_subsets=4,
                init_epochs=1, precision="fp32", lr=1e-3, warmup_steps=1)
    return DEFTTrainConfig(**{**base, **changes})


def _state(folder):
    from sirf_diffusion.diffusion.checkpointing import list_checkpoints, load_checkpoint

    ckpt = load_checkpoint(list_checkpoints(folder)[-1])
    return ckpt, (folder / "loss.csv").read_text(), (folder / "val_loss.csv").read_text()


def test_training_resumes_bit_exactly(tmp_path):
    from sirf_diffusion.diffusion.deft_training import train_deft
    from sirf_diffusion.io.atomic import OutputExistsError

    prior = tiny_score_model(precision="fp32", image_size=(32, 32)).eval()
    cfg = _train_config()
    train_deft(cfg, tmp_path / "a", prior=prior, progress=False)

    def stop_at_2(info):
        if info["step"] == 2:
            raise StopIteration

    train_deft(cfg, tmp_path / "b", prior=prior, progress=False, callback=stop_at_2)
    with pytest.raises(OutputExistsError, match="--resume"):
        train_deft(cfg, tmp_path / "b", prior=prior, progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        train_deft(_train_config(lr=2e-3), tmp_path / "b", prior=prior, progress=False,
                   resume=True)
    model_dir = train_deft(cfg, tmp_path / "b", prior=prior, progress=False, resume=True)
    (a, loss_a, val_a), (b, loss_b, val_b) = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a["step"] == b["step"] == 4
    for state_a, state_b in ((a["model"], b["model"]),
                             (a["ema"]["shadow"], b["ema"]["shadow"])):
        assert state_a.keys() == state_b.keys()
        for name, v in state_a.items():
            assert torch.equal(v, state_b[name]), name
    assert [r.split(",")[:2] for r in loss_a.splitlines()] == \
        [r.split(",")[:2] for r in loss_b.splitlines()]
    assert val_a == val_b
    # the exported model: the EMA weights, the prior's fingerprint, the training geometry
    model = load_deft_model(model_dir, precision="fp32")
    assert model.prior_fingerprint == weights_fingerprint(prior)
    assert model.geometry["image_shape"] == [1, 32, 32] and model.dose_range == (0.5, 10.0)
    assert [s["resumed_at"] for s in model.extra["stages"]] == [0, 2]
    for name, v in model.hnet.state_dict().items():
        assert torch.equal(v, b["ema"]["shadow"][name])


def test_train_deft_command_refuses_to_overwrite(tmp_path, capsys):
    from sirf_diffusion.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train-deft", "--out", str(out), "--steps", "1", "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["train-deft", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "no DEFT training run" in capsys.readouterr().err
    assert main(["train-deft", "--out", str(tmp_path / "x"), "--config",
                 str(tmp_path / "missing.json")]) == 2
    assert "--config" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- front ends
def test_defaults_reach_the_run(problem):
    from sirf_diffusion.samplers.defaults import METHOD_DEFAULTS

    lik, _, prior = problem
    run = prepare("deft", lik, prior, deft_model=deft_model_for(prior, lik))
    d = METHOD_DEFAULTS["deft"]
    assert run.stepper.num_steps == d["num_steps"] == run.config["num_steps"]
    assert run.stepper.x.shape[0] == d["num_samples"] and run.config["eta"] == d["eta"]
    assert run.config["init_subsets"] == 1 and run.config["init_epochs"] == 3  # the model's


def test_cil_algorithm_is_reconstruct_step_by_step(problem, fake_cil):
    from sirf_diffusion.samplers.methods import reconstruct

    lik, _, prior = problem
    hnet = randomise_parameters(tiny_hnet(), seed=5, scale=0.05)
    model = deft_model_for(prior, lik, hnet)
    common = dict(num_steps=3, num_samples=2, eta=0.5, deft_model=model)
    ref = reconstruct("deft", lik, prior, generator=torch.Generator().manual_seed(1),
                      progress=False, **common)
    algo = fake_cil.PETDEFT(lik, prior, generator=torch.Generator().manual_seed(1), **common)
    algo.run(10)
    assert algo.iteration == 3
    assert torch.equal(algo.result().sample, ref.sample)


def test_reconstruct_command_runs_deft(cli_case, tiny_prior, tmp_path, capsys):
    import json

    from sirf_diffusion.cli import main
    from sirf_diffusion.diffusion.modelio import load_model

    prior = load_model(tiny_prior / "xy")
    geometry = {"scanner": "mMR", "image_shape": [1, 128, 128],
                "voxel_size_mm": [4.0625, 2.08626, 2.08626], "data_shape": [1, 252, 344]}
    model = DEFTModel(randomise_parameters(tiny_hnet(), seed=6, scale=0.02),
                      weights_fingerprint(prior), geometry, (0.5, 10.0),
                      {"init_subsets": 4, "init_epochs": 1})
    save_deft_model(tmp_path / "deft", model)
    args = ["reconstruct", str(cli_case), "--method", "deft", "--model", str(tiny_prior),
            "--deft-model", str(tmp_path / "deft"), "--steps", "2", "--samples", "2",
            "--no-progress", "--precision", "fp32"]
    assert main([*args, "--t-start", "0.9", "--out", str(tmp_path / "out")]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("reconstruct: deft (2 steps, mean of 2)")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["sampler"]["deft_model"] == str(tmp_path / "deft")
    assert cfg["sampler"]["t_start"] == 0.9
    assert 1.5 < cfg["sampler"]["estimated_dose"] < 4.0        # the case has 2.5 counts/mm^3
    # --deft-model is PET-DEFT's only; the shipped prior is not the one it was trained against
    assert main(["reconstruct", str(cli_case), "--method", "lisch", "--deft-model",
                 str(tmp_path / "deft"), "--out", str(tmp_path / "o2")]) == 2
    assert "--deft-model" in capsys.readouterr().err
    assert main(["reconstruct", str(cli_case), "--method", "dds", "--t-start", "0.9",
                 "--out", str(tmp_path / "o4")]) == 2
    assert "--t-start" in capsys.readouterr().err
    assert main([*args, "--t-start", "1.5", "--out", str(tmp_path / "o5")]) == 2
    assert "t_start" in capsys.readouterr().err
    assert main(["reconstruct", str(cli_case), "--method", "deft", "--deft-model",
                 str(tmp_path / "deft"), "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "o3")]) == 2
    assert "another prior" in capsys.readouterr().err


def test_bench_deft_runs_quickly(capsys):
    """benchmarks/bench_deft.py in its quickest setting (an untrained h-network, 1 step)."""
    from pathlib import Path

    from conftest import load_script

    mod = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_deft.py")
    md = mod.main(["--untrained", "--steps", "1", "--samples", "1", "--repeats", "1",
                   "--clock", "cpu", "--precision", "fp32"])
    assert "| chains | whole (s)" in md and "untrained h-network" in md
    assert md.splitlines()[-1].startswith("| 1 |")


def test_models_saved_before_the_output_scaling_load_with_deft_published_form(problem, tmp_path):
    """A config.json without ``output_scaling`` (saved before it existed) is DEFT's form."""
    import json

    lik, _, prior = problem
    model = deft_model_for(prior, lik, randomise_parameters(tiny_hnet(), seed=4))
    save_deft_model(tmp_path / "m", model)
    cfg = tmp_path / "m" / "config.json"
    meta = json.loads(cfg.read_text())
    assert meta["hnet"]["output_scaling"] == "edm"
    del meta["hnet"]["output_scaling"]
    cfg.write_text(json.dumps(meta))
    back = load_deft_model(tmp_path / "m", precision="fp32")
    assert back.hnet.config.output_scaling == "none"
    sigma = torch.tensor([0.1, 10.0])
    assert torch.equal(output_scale(back.hnet.config, sigma), torch.ones(2))
    kappa = output_scale(model.hnet.config, sigma)
    torch.testing.assert_close(kappa, 0.5 / torch.sqrt(sigma**2 + 0.25))


def test_t_start_sets_the_first_noise_level(problem):
    """``t_start``: steps uniform in t from it; the default (1) is the schedule's own levels;
    explicit ``sigmas`` replace the default but not an explicit ``t_start``."""
    from sirf_diffusion.diffusion.schedules import vp_sigmas
    from sirf_diffusion.samplers.run import default_sigmas

    lik, _, prior = problem
    model = deft_model_for(prior, lik)
    run = prepare("deft", lik, prior, deft_model=model, num_steps=3, t_start=0.8)
    torch.testing.assert_close(run.sigmas.to(torch.float64),
                               vp_sigmas(3, t_max=0.8, schedule=prior.schedule))
    assert run.config["sigma_max"] == pytest.approx(float(prior.schedule.sigma(torch.tensor(0.8))))
    torch.testing.assert_close(default_sigmas(prior, 4, 1.0), default_sigmas(prior, 4))
    sig = default_sigmas(prior, 2, 0.5)
    run = prepare("deft", lik, prior, deft_model=model, sigmas=sig)
    assert run.config["sigma_max"] == pytest.approx(float(sig[0]))
    with pytest.raises(ValueError, match="either sigmas or t_start"):
        prepare("deft", lik, prior, deft_model=model, sigmas=sig, t_start=0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="t_start"):
            prepare("deft", lik, prior, deft_model=model, num_steps=2, t_start=bad)


def test_deft_counts_the_projections_of_its_likelihood_feature(problem):
    """The h-network's feature (one EM step per generative step) is a likelihood evaluation:
    the run reports exactly what the likelihood's counter saw during the steps."""
    lik, _, prior = problem
    run = prepare("deft", lik, prior, deft_model=deft_model_for(prior, lik), num_steps=3,
                  num_samples=2)
    with lik.count_projections() as cost:
        run.run()
    result = run.result()
    assert cost.forward > 0
    assert result.num_likelihood_evaluations == pytest.approx(cost.forward)


def test_deft_prior_change_script_matches_the_checked_path_and_refuses_test_subjects(capsys):
    """benchmarks/deft_prior_change.py: with the prior the h-network was trained against, its
    fingerprint bypass gives exactly the NRMSE of the ordinary (checked) path; a test-split
    subject is refused with exit code 2."""
    from pathlib import Path

    import torch
    from conftest import load_script

    from sirf_diffusion.data.simulate import SimulationConfig, simulate_scan
    from sirf_diffusion.diffusion.loading import load_slice_prior
    from sirf_diffusion.likelihood import PoissonLogLikelihood
    from sirf_diffusion.metrics import image_metrics
    from sirf_diffusion.models import default_prior_dir
    from sirf_diffusion.samplers.deft import shipped_deft_model_dir
    from sirf_diffusion.samplers.methods import reconstruct

    mod = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "deft_prior_change.py")
    deft_dir, prior_dir = str(shipped_deft_model_dir()), str(default_prior_dir())
    with pytest.raises(SystemExit) as e:
        mod.main(["--pair", deft_dir, prior_dir, "--seeds", "0"])
    assert e.value.code == 2 and "not validation-split" in capsys.readouterr().err
    for flag, value in (("--doses", "0"), ("--threads", "0")):
        with pytest.raises(SystemExit) as e:
            mod.main(["--pair", deft_dir, prior_dir, flag, value])
        assert e.value.code == 2 and flag in capsys.readouterr().err
    got = mod.main(["--pair", deft_dir, prior_dir, "--seeds", "1", "--doses", "2.5"])
    scan = simulate_scan(SimulationConfig(seed=1, counts_per_mm3=2.5, noise_seed=7),
                         progress=False)
    lik = PoissonLogLikelihood(scan.acquisition_model(), scan.prompts)
    r = reconstruct("deft", lik, load_slice_prior(), deft_model=shipped_deft_model_dir(),
                    generator=torch.Generator().manual_seed(3), progress=False)
    want = image_metrics(r.mean, scan.reference, scan.masks)["nrmse"]
    assert list(got.values()) == [[pytest.approx(want, rel=1e-6)]]
