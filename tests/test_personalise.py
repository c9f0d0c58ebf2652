"""Pseudo-PET sets (data/pseudo_pet.py), personalise_prior (diffusion/personalise.py) and the
``personalise`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sirf_diffusion.data.pseudo_pet import make_pseudo_pet

# ------------------------------------------------------------------------------ pseudo-PET


def _warped(n=5, shape=(1, 6, 7), seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def test_pseudo_pet_is_the_weighted_average_of_a_subset():
    w = _warped()
    s = make_pseudo_pet(w, 20, seed=3, subset_size=(2, 4))
    assert s.images.shape == (20, 1, 6, 7) and s.weights.shape == (20, 5)
    np.testing.assert_allclose(s.weights.sum(axis=1), 1.0, rtol=1e-12)
    sizes = (s.weights > 0).sum(axis=1)
    assert sizes.min() >= 2 and sizes.max() <= 4
    assert (s.weights >= 0).all()
    expected = np.einsum("mn,n...->m...", s.weights, w.astype(np.float64))
    np.testing.assert_allclose(s.images, expected, rtol=1e-6)


def test_pseudo_pet_is_reproducible_and_image_m_does_not_depend_on_how_many():
    w = _warped()
    a = make_pseudo_pet(w, 8, seed=1)
    b = make_pseudo_pet(w, 8, seed=1)
    c = make_pseudo_pet(w, 3, seed=1)
    d = make_pseudo_pet(w, 8, seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.images[:3], c.images)
    assert not np.array_equal(a.weights, d.weights)


def test_subsets_of_one_are_copies_of_warped_images():
    w = _warped()
    s = make_pseudo_pet(w, 6, seed=0, subset_size=(1, 1))
    for m in range(6):
        n = int(np.argmax(s.weights[m]))
        np.testing.assert_array_equal(s.images[m], w[n])


def test_concentration_controls_how_even_the_weights_are():
    w = _warped(n=4)
    even = make_pseudo_pet(w, 200, seed=0, subset_size=(4, 4), concentration=100.0)
    peaked = make_pseudo_pet(w, 200, seed=0, subset_size=(4, 4), concentration=0.05)
    assert even.weights.max(axis=1).mean() < 0.35 < 0.8 < peaked.weights.max(axis=1).mean()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_images=0), "num_images"),
    (dict(subset_size=(0, 2)), "subset_size"),
    (dict(subset_size=(2, 9)), "subset_size"),
    (dict(concentration=0.0), "concentration"),
    (dict(seed=-1), "seed"),
])
def test_pseudo_pet_bad_arguments(kwargs, match):
    args = dict(num_images=3, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        make_pseudo_pet(_warped(), **args)


def test_only_training_subjects_are_warped():
    from sirf_diffusion.data.pseudo_pet import warp_training_subjects
    from sirf_diffusion.physics.geometry import ImageGeometry

    geom = ImageGeometry((1, 8, 8), (4.0, 2.0, 2.0))
    with pytest.raises(ValueError, match=r"\[10\].*'train'"):
        warp_training_subjects(np.ones((1, 8, 8)), geom, [2, 10], tracer="fdg")


# ------------------------------------------------------------------------------ fine-tuning
pytest.importorskip("SimpleITK")

GRID = dict(shape=(1, 32, 32), voxel_size_mm=(4.0625, 8.34504, 8.34504))


@pytest.fixture(scope="module")
def target():
    from sirf_diffusion.data.phantoms import brain_phantom

    return brain_phantom(0, dims=2, **GRID)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A prior folder whose xy model (the conftest's tiny UNet, random weights) records the
    training config a fine-tune starts from."""
    from conftest import tiny_orientation_model

    from sirf_diffusion.diffusion import save_model

    model = tiny_orientation_model("xy", weights_seed=0)
    folder = tmp_path_factory.mktemp("base") / "prior"
    train_config = {"model": {"unet": model.config.unet.__dict__ | {
        "channel_mults": list(model.config.unet.channel_mults),
        "attention_resolutions": list(model.config.unet.attention_resolutions)}},
        "slice_shape": [16, 16], "psf_fwhm_mm": 4.5, "recipe": {}}
    save_model(folder / "xy", model, extra={"train_config": train_config})
    return folder


def _config(**changes):
    from sirf_diffusion.diffusion.personalise import PersonaliseConfig

    return PersonaliseConfig(**({"num_subjects": 2, "registration": "affine", "num_pseudo": 3,
                                 "steps": 2, "batch_size": 2, "checkpoint_every": 1,
                                 "warmup_steps": 1, "precision": "fp32"} | changes))


def test_personalised_prior_is_fine_tuned_recorded_and_loads(target, tiny_base, tmp_path):
    import hashlib

    from sirf_diffusion.diffusion import load_slice_prior
    from sirf_diffusion.diffusion.personalise import personalise_prior

    base_sha = hashlib.sha256((tiny_base / "xy" / "model.safetensors").read_bytes()).hexdigest()
    out = tmp_path / "personal"
    res = personalise_prior(target.t1, target.geometry, out, tracer="fdg", config=_config(),
                            base_prior=tiny_base, target_gm=target.masks["gm"],
                            progress=False)
    model = load_slice_prior(out)  # what reconstruct --model reads
    base = load_slice_prior(tiny_base)
    differ = [k for k, v in model.state_dict().items()
              if not np.array_equal(v.numpy(), base.state_dict()[k].numpy())]
    assert differ, "fine-tuning changed no weight"
    assert hashlib.sha256((tiny_base / "xy" / "model.safetensors").read_bytes()).hexdigest() \
        == base_sha  # the base prior is never modified
    meta = json.loads((out / "xy" / "config.json").read_text())
    stage = meta["extra"]["stages"][-1]
    assert stage["config"]["init_from"] == str(tiny_base / "xy") and stage["steps"] == 2
    assert meta["extra"]["init_from_weights_sha256"] == base_sha
    assert meta["model"]["training_data"]["source"] == "pseudo_pet"
    rec = meta["extra"]["personalisation"]
    assert rec["registration"]["seeds"] == [2, 3] and len(rec["registration"]["gm_dice"]) == 2
    assert set(rec["timings_s"]) >= {"phantoms_and_registration", "fine_tune", "total"}
    assert res.record == json.loads((out / "personalise.json").read_text())
    with np.load(out / "pseudo_pet.npz") as z:
        assert z["images"].shape == (3, 1, 32, 32) and z["warped"].shape == (2, 1, 32, 32)


def test_personalisation_resumes_and_refuses_a_non_empty_folder(target, tiny_base, tmp_path):
    from sirf_diffusion.diffusion.personalise import personalise_prior

    out = tmp_path / "p"
    kw = dict(tracer="fdg", base_prior=tiny_base, progress=False)
    personalise_prior(target.t1, target.geometry, out, config=_config(steps=1), **kw)
    with pytest.raises(FileExistsError, match="not empty"):
        personalise_prior(target.t1, target.geometry, out, config=_config(steps=1), **kw)
    res = personalise_prior(target.t1, target.geometry, out, config=_config(steps=2),
                            resume=True, **kw)
    stages = json.loads((out / "xy" / "config.json").read_text())["extra"]["stages"]
    assert stages[-1]["resumed_at"] == 1 and stages[-1]["steps"] == 2
    assert "phantoms_and_registration" in res.record["timings_s"]  # kept from the first call


def test_resume_refuses_settings_that_made_another_pseudo_pet_set(target, tiny_base, tmp_path):
    from sirf_diffusion.diffusion.personalise import personalise_prior

    out = tmp_path / "p"
    kw = dict(base_prior=tiny_base, progress=False, resume=True)
    personalise_prior(target.t1, target.geometry, out, tracer="fdg", config=_config(steps=2),
                      base_prior=tiny_base, progress=False)
    record = (out / "personalise.json").read_text()
    for changes, tracer, match in [
            ({"num_subjects": 3}, "fdg", r"num_subjects \(--subjects\): 2 -> 3"),
            ({"registration": "none"}, "fdg", "--registration"),
            ({"num_pseudo": 4}, "fdg", "--pseudo"),
            ({"seed": 1}, "fdg", "--seed"),
            ({}, "amyloid", "--tracer"),
            ({"steps": 1}, "fdg", r"--steps.*already made 2")]:
        with pytest.raises(ValueError, match=match):
            personalise_prior(target.t1, target.geometry, out, tracer=tracer,
                              config=_config(**({"steps": 2} | changes)), **kw)
    assert (out / "personalise.json").read_text() == record  # nothing was redone


def test_earlier_steps_seconds_adds_each_calls_last_time(tmp_path):
    from sirf_diffusion.diffusion.personalise import _earlier_steps_seconds

    rows = [(1, 1.0), (2, 2.0), (3, 3.5), (4, 0.5), (5, 1.25), (6, 0.75)]  # 3 calls
    (tmp_path / "loss.csv").write_text("step,loss,lr,grad_norm,seconds\n" + "".join(
        f"{s},0.1,1e-5,1.0,{t}\n" for s, t in rows))
    assert _earlier_steps_seconds(tmp_path, 6) == 3.5 + 1.25 + 0.75
    assert _earlier_steps_seconds(tmp_path, 5) == 3.5 + 1.25
    assert _earlier_steps_seconds(tmp_path, 3) == 3.5
    assert _earlier_steps_seconds(tmp_path / "absent", 3) == 0.0


def test_personalise_config_is_checked():
    from sirf_diffusion.diffusion.personalise import PersonaliseConfig

    with pytest.raises(ValueError, match="registration"):
        PersonaliseConfig(registration="rigid")
    with pytest.raises(ValueError, match="steps"):
        PersonaliseConfig(steps=0)
    with pytest.raises(ValueError, match="precision"):
        PersonaliseConfig(precision="fp8")


# ------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def small_case(tmp_path_factory) -> Path:
    """A simulated 2D case (test subject 0) with its T1 and simulation.json."""
    from sirf_diffusion.cli import main

    case = tmp_path_factory.mktemp("pcase") / "case"
    assert main(["simulate", "--out", str(case), "--seed", "0", "--no-progress"]) == 0
    return case


def test_cli_personalise_then_reconstruct(small_case, tiny_base, tmp_path, capsys):
    from sirf_diffusion.cli import main

    out = tmp_path / "model"
    args = ["personalise", str(small_case), "--out", str(out), "--subjects", "2", "--steps", "1",
            "--pseudo", "2", "--registration", "affine", "--base", str(tiny_base),
            "--precision", "fp32", "--no-progress"]
    assert main(args) == 0
    assert "reconstruct --model" in capsys.readouterr().out
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args[:-1] + ["--steps", "2", "--resume", "--subjects", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--subjects" in err and err.count("\n") == 1
    assert main(args[:-1] + ["--steps", "2", "--resume", "--no-progress"]) == 0
    assert main(["reconstruct", str(small_case), "--method", "dds", "--model", str(out),
                 "--steps", "1", "--samples", "1", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 0


@pytest.mark.parametrize("change, match", [
    ("no-t1", "has no t1.hv"),
    ("no-simulation", "--tracer"),
    ("inside", "inside the case folder"),
    ("bad-base", "--base"),
])
def test_cli_personalise_errors(small_case, tiny_base, tmp_path, capsys, change, match):
    from sirf_diffusion.cli import main

    case = tmp_path / "case"
    shutil.copytree(small_case, case)
    out = case / "m" if change == "inside" else tmp_path / "m"
    base = tmp_path if change == "bad-base" else tiny_base
    if change == "no-t1":
        (case / "t1.hv").unlink()
    if change == "no-simulation":
        (case / "simulation.json").unlink()
    assert main(["personalise", str(case), "--out", str(out), "--subjects", "2", "--steps", "1",
                 "--base", str(base), "--no-progress"]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def _interrupt_at(monkeypatch, step):
    """Make the fine-tuning raise KeyboardInterrupt after step ``step`` (and its checkpoint,
    if it has one), as a Ctrl-C there would."""
    import sirf_diffusion.diffusion.training as training

    real = training.train

    def interrupted(*args, **kwargs):
        def callback(info):
            if info["step"] == step:
                raise KeyboardInterrupt
        return real(*args, callback=callback, **kwargs)

    monkeypatch.setattr(training, "train", interrupted)


def test_cli_personalise_interrupted_before_a_checkpoint_leaves_nothing(
        small_case, tiny_base, tmp_path, capsys, monkeypatch):
    from sirf_diffusion.cli import main

    _interrupt_at(monkeypatch, 1)  # steps 2, checkpoint every 50: none yet at step 1
    out = tmp_path / "m"
    assert main(["personalise", str(small_case), "--out", str(out), "--subjects", "2",
                 "--registration", "none", "--steps", "2", "--pseudo", "2", "--base",
                 str(tiny_base), "--precision", "fp32", "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()


def test_cli_personalise_interrupted_after_a_checkpoint_resumes(small_case, tiny_base, tmp_path,
                                                                capsys, monkeypatch):
    from sirf_diffusion.cli import main
    from sirf_diffusion.training_loop import read_csv

    out = tmp_path / "m"
    args = ["personalise", str(small_case), "--out", str(out), "--subjects", "2",
            "--registration", "none", "--steps", "2", "--pseudo", "2", "--base", str(tiny_base),
            "--precision", "fp32", "--no-progress"]
    with monkeypatch.context() as m:
        _interrupt_at(m, 2)  # the last step: its checkpoint is written, then Ctrl-C
        assert main(args) == 130
    assert (out / "checkpoints" / "xy" / "loss.csv").is_file()
    assert not (out / "personalise.json").exists()  # the call did not finish
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    record = json.loads((out / "personalise.json").read_text())
    earlier = read_csv(out / "checkpoints" / "xy" / "loss.csv")["seconds"][-1]
    assert record["resumed_at_step"] == 2
    assert record["timings_s"]["fine_tune"] >= round(earlier, 2)  # the interrupted call's steps
    assert record["timings_s"]["phantoms_and_registration"] > 0  # kept from the first call


# ------------------------------------------------------------------------------ benchmark
def test_benchmark_ablation_table_compares_on_the_same_scans():
    """benchmarks/evaluate_personalised.py: a prior measured on one realisation only is compared
    with the generic prior on that realisation, not on all of the subject's scans."""
    from conftest import load_script

    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks"
                        / "evaluate_personalised.py")

    def r(nrmse):
        return {"nrmse": nrmse, "ssim": 0.5}

    rec = {"0/0": {"dds": {"generic": r(0.30), "demons": r(0.20), "demons4": r(0.25)}},
           "0/1": {"dds": {"generic": r(0.40), "demons": r(0.30)}},
           "10/0": {"dds": {"generic": r(0.50), "affine": r(0.45)}}}
    pers = {"0/demons4": {"registration": {"num_subjects": 4, "kind": "demons",
                                           "mean_gm_dice": 0.9}}}
    rows = [line.split(" | ") for line in bench._ablation_lines(rec, pers)
            if line.startswith("| dds")]
    got = {(row[1], row[2]): (row[6], row[7], row[8]) for row in rows}
    assert got == {("0 (2 scans)", "demons"): ("0.3500", "0.2500", "+0.1000"),
                   ("0 (1 scans)", "demons4"): ("0.3000", "0.2500", "+0.0500"),
                   ("10 (1 scans)", "affine"): ("0.5000", "0.4500", "+0.0500")}
    assert rows[1][3:6] == ["4", "demons", "0.900"]
    args = bench.build_parser().parse_args(["--subject-seeds", "10"])
    assert bench._test_subjects(args) == [10]
    with pytest.raises(SystemExit, match="--subject-seeds"):
        bench._test_subjects(bench.build_parser().parse_args(["--subject-seeds", "3"]))
