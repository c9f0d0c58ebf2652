"""Smoke tests of the evaluation benchmarks (``benchmarks/evaluate_methods.py`` and
``benchmarks/bench_prior_denoising.py``) in their quickest settings with a tiny untrained model.

They check that the scripts run end to end and write well-formed outputs, not the numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as a module."""
    return load_script(ROOT / "benchmarks" / f"{name}.py")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 45k-parameter xy ScoreModel saved with ``save_model``."""
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig, UNetConfig, save_model

    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=()), orientation="xy"))
    return save_model(tmp_path_factory.mktemp("tiny_model"), model)


@pytest.fixture(autouse=True)
def _restore_threads():
    """The scripts set torch's thread count (``--threads``); restore it for later tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _table_rows(md: str) -> list[list[str]]:
    """Rows (cells) of the first Markdown table of ``md``, without header and rule."""
    lines, started = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            started = True
            lines.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif started:
            break
    return lines[2:]


def _run_quick(script: str, tiny_model: Path, out: Path):
    """Run ``benchmarks/<script>.py --quick`` on the tiny model (84 views, 2 samples, at most 2
    PET-LiSch steps) into ``out``; returns the loaded module and what its ``main`` returned."""
    mod = _load(script)
    res = mod.main(["--quick", "--model", str(tiny_model), "--num-views", "84",
                    "--lisch-max-steps", "2", "--samples", "2", "--out", str(out),
                    "--no-progress"])
    return mod, res


def test_evaluate_methods_quick(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    mod, res = _run_quick("evaluate_methods", tiny_model, out)
    for name in ("evaluation.md", "results.json", "bias_variance.png", "nrmse_vs_parameter.png",
                 "examples.png", "lesions.png"):
        assert (out / name).is_file(), name
    for name in ("bias_variance.png", "nrmse_vs_parameter.png", "examples.png", "lesions.png"):
        assert _is_png(out / name), name

    md = (out / "evaluation.md").read_text()
    assert md.startswith("# ")
    assert "Command: `python benchmarks/evaluate_methods.py --quick" in md
    assert "CPU cores" in md and f"torch {torch.__version__}" in md
    assert "posterior mean of 2 chains" in md
    rows = _table_rows(md.split("## ", 1)[1])
    assert [r[0] for r in rows] == [mod.LABELS[m] for m in mod.METHODS]

    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(res))
    for key in ("command", "machine", "settings", "summary", "cases", "jobs", "wall_time_s"):
        assert key in data, key
    assert data["settings"]["counts"] == [2.5] and data["settings"]["realisations"] == 2
    assert len(data["jobs"]) == 2 and all(j["samples"] == 2 for j in data["jobs"])
    assert {j["noise_seed"] for j in data["jobs"]}.__len__() == 2  # noise varies
    assert {j["subject"] for j in data["jobs"]} == {0}  # a test-split subject, fixed
    summary = data["summary"]["2.5"]
    assert list(summary) == list(mod.METHODS)
    for method, row in summary.items():
        for key in ("nrmse", "ssim", "psnr"):
            assert all(math.isfinite(v) for v in row[key]), (method, key)
        for key in ("gm_bias", "gm_std", "voxel_bias", "voxel_std", "time_s", "lik_evals"):
            assert math.isfinite(row[key]), (method, key)
        assert "crc_hot" in row and "crc_cold" in row and "bv" in row
        assert (row["net_evals"] > 0) == (method in mod.DIFFUSION)
    # every parameter of every sweep is in the case record
    case = data["cases"]["2.5/0"]
    assert list(case["methods"]["osem"]["sweep"]) == ["1", "2", "3", "4"]
    assert len(case["methods"]["lisch"]["sweep"]) == len(mod.QUICK["lisch_k"])

    # per lesion: the reference's own report (CRC 1), every method's rows at its best parameter
    assert set(case["lesions"]) == {"1", "2"}
    assert all(r["crc"] == pytest.approx(1.0) and r["kind"] in ("hot", "cold")
               for r in case["lesions"].values())
    verdicts = {"recovered", "partly erased", "erased", "partly filled", "filled", "exaggerated"}
    for method, row in summary.items():
        assert [(r["subject"], r["label"]) for r in row["lesions"]] == [(0, 1), (0, 2)], method
        for r in row["lesions"]:
            assert r["kind"] == case["lesions"][str(r["label"])]["kind"]
            for key in ("crc", "bias") + (("std_ratio",) if method in mod.DIFFUSION else ()):
                assert all(math.isfinite(v) for v in r[key]), (method, key)
            assert ("std_ratio" in r) == (method in mod.DIFFUSION)
            assert r["verdict"] in verdicts
    lesion_md = md.split("### Per lesion: contrast recovery and posterior uncertainty", 1)[1]
    lesion_rows = _table_rows(lesion_md)
    assert [r[0] for r in lesion_rows] == [f"0/{k}, {mod.LABELS[m]}" for k in (1, 2)
                                           for m in mod.METHODS]
    for r in lesion_rows:  # CRC, verdict, bias filled in; std ratio for diffusion methods only
        assert r[4] != "-" and r[5] in verdicts and r[6] != "-"
        assert (r[7] != "") == any(r[0].endswith(mod.LABELS[m]) for m in mod.DIFFUSION)
    assert "Where the diffusion methods erase, fill or exaggerate a lesion:" in lesion_md
    assert "![lesions](lesions.png)" in md
    with np.load(out / "reconstructions.npz") as raw:
        sweeps = {"dps": "dps_zeta", "dds": "dds_beta", "lisch": "lisch_k"}
        assert {k for k in raw.files if k.endswith("/std")} == {
            f"{i}/{m}/{v}/std" for i in range(2) for m in mod.DIFFUSION
            for v in mod.QUICK[sweeps[m]]}


def test_speed_accuracy_quick(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "speed"
    mod, res = _run_quick("speed_accuracy", tiny_model, out)
    assert _is_png(out / "speed_accuracy.png")
    md = (out / "speed_accuracy.md").read_text()
    assert "Command: `python benchmarks/speed_accuracy.py --quick" in md and "CPU cores" in md
    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(res))
    # 1 subject x 2 realisations x 2 step counts, the same scans at every N
    jobs = data["jobs"]
    assert sorted(j["steps"] for j in jobs) == [4, 4, 8, 8]
    assert len({j["noise_seed"] for j in jobs}) == 2
    pts = data["points"]["2.5"]
    for m in ("dds", "lisch"):
        best = [q for q in pts[m] if q["best"]]
        assert sorted(q["steps"] for q in best) == [4, 8]
        # network passes: one per step and chain batch
        assert all(q["net_evals"] == q["steps"] for q in pts[m])
        for q in best:   # the best point is one of the swept points of the same N
            same = [r["nrmse"] for r in pts[m] if not r["best"] and r["steps"] == q["steps"]]
            assert q["nrmse"] == pytest.approx(min(same), rel=1e-9)
    assert len(data["comparisons"]["2.5"]["dds->lisch"]) == 2
    # the report can be redone from results.json alone, with the same numbers
    again = mod.main(["--from-results", str(out / "results.json"), "--out", str(tmp_path / "re")])
    assert json.loads(json.dumps(again["points"])) == data["points"]
    assert (tmp_path / "re" / "speed_accuracy.md").read_text() == md


def test_speed_accuracy_comparison_rule() -> None:
    mod = _load("speed_accuracy")

    def pt(steps, value, nrmse, t, best=False):
        return {"steps": steps, "value": value, "nrmse": nrmse, "time_s": t, "best": best}

    pts = {"dds": [pt(20, 0.1, 0.23, 20.0), pt(20, [0.1], 0.23, 20.0, True),
                   pt(50, 0.1, 0.25, 50.0), pt(50, [0.1], 0.25, 50.0, True)],
           "lisch": [pt(20, 20, 0.24, 19.0), pt(50, 20, 0.22, 45.0), pt(30, 15, 0.25, 30.0)]}
    rows = mod.compare(pts, "dds", "lisch")
    # DDS at 20 steps (0.23): only LiSch at 50 steps reaches it, and takes longer
    assert rows[0]["match"]["steps"] == 50 and rows[0]["at_least_as_fast"] is False
    # DDS at 50 steps (0.25): LiSch at 20 steps is the fastest with NRMSE <= 0.25
    assert rows[1]["match"]["steps"] == 20 and rows[1]["at_least_as_fast"] is True
    none = mod.compare({"dds": [pt(20, [0], 0.1, 1.0, True)], "lisch": pts["lisch"]},
                       "dds", "lisch")
    assert none[0]["match"] is None and none[0]["at_least_as_fast"] is None


def test_evaluate_methods_regions() -> None:
    mod = _load("evaluate_methods")
    wm = np.zeros((1, 32, 32), bool)
    wm[0, 4:28, 4:28] = True
    gm = np.zeros_like(wm)
    gm[0, 0:4] = True
    lesion = np.zeros_like(wm)
    lesion[0, 14:18, 14:18] = True
    masks = {"wm": wm, "gm": gm, "lesion": lesion}
    rois = mod.white_matter_rois(masks, block=8, min_voxels=16)
    assert len(rois) >= 4
    union = np.any(rois, axis=0)
    assert not (union & lesion).any() and not (union & ~wm).any()
    assert all(not (a & b).any() for i, a in enumerate(rois) for b in rois[i + 1:])
    assert (mod.grey_matter_roi(masks) == gm).all()


def test_bench_prior_denoising_quick(tiny_model: Path, tmp_path: Path) -> None:
    mod = _load("bench_prior_denoising")
    out = tmp_path / "denoising"
    res = mod.main(["--model", str(tiny_model), "--subjects", "1", "--val-subjects", "1",
                    "--slices-per-subject", "3", "--volume-shape", "6", "112", "112",
                    "--sigmas", "0.1", "0.5", "--widths", "0", "1", "2", "--out", str(out),
                    "--no-progress"])
    for name in ("prior_denoising.md", "results.json", "examples.png", "mse_vs_sigma.png"):
        assert (out / name).is_file(), name
    assert _is_png(out / "examples.png") and _is_png(out / "mse_vs_sigma.png")
    md = (out / "prior_denoising.md").read_text()
    assert "Command: `python benchmarks/bench_prior_denoising.py" in md and "CPU cores" in md
    rows = _table_rows(md)
    assert [r[0] for r in rows] == ["0.1", "0.5"]

    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(res))
    assert data["test_subjects"] == [0] and data["val_subjects"] == [1]
    assert data["num_test_slices"] == 3
    assert data["data"]["psf_fwhm_mm"] == 4.5
    for r in data["results"]:
        assert r["gaussian_width_px"] in (0.0, 1.0, 2.0)
        for name in ("identity", "gaussian", "prior"):
            for key in ("mse_support", "mse_overall"):
                assert all(math.isfinite(v) for v in r[name][key]), (name, key)
        # the identity's error is the added noise: sigma^2 on average
        assert r["identity"]["mse_support"][0] == pytest.approx(r["sigma"] ** 2, rel=0.1)
        assert 0.0 <= r["prior_better_fraction"] <= 1.0
    # the tuned width is the best of the grid on the validation slices
    for t in data["tuning"].values():
        assert t["val_mse_support"] == min(t["grid_mse_support"])


def test_lesion_section_says_where_a_lesion_is_lost() -> None:
    """The plain-words findings of the per-lesion table, on constructed summary rows."""
    from sirf_diffusion.metrics import lesion_verdict

    mod = _load("evaluation_lesions")
    labels = {"osem": "OSEM", "lisch": "PET-LiSch"}

    def row(label, kind, crc, std_ratio=None, true=0.4):
        r = {"subject": 3, "label": label, "kind": kind, "true_contrast": true, "voxels": 50,
             "crc": [crc, 0.05], "bias": [0.1, 0.02]}
        if std_ratio is not None:
            r["std_ratio"] = [std_ratio, 0.1]
        r["verdict"] = lesion_verdict(kind, crc)
        return r

    rows = {"osem": {"lesions": [row(1, "hot", 0.9, true=3.0), row(2, "cold", 0.8)]},
            "lisch": {"lesions": [row(1, "hot", 1.0, 1.4, true=3.0), row(2, "cold", 0.3, 0.7)]}}
    text = "\n".join(mod.lesion_section(rows, ["osem", "lisch"], labels, ["lisch"]))
    assert ("- PET-LiSch **partly filled** the cold lesion 3/2 (true contrast 0.4, 50 voxels): "
            "CRC 0.3 ± 0.05 against OSEM 0.8 ± 0.05; posterior std in the lesion 0.7 x its "
            "background's (no more uncertain than around it).") in text
    assert "3/1" not in text.split("erase, fill or exaggerate a lesion:")[1]  # recovered
    table = _table_rows(text.split("### Per lesion")[1])
    assert [r[0] for r in table] == ["3/1, OSEM", "3/1, PET-LiSch", "3/2, OSEM", "3/2, PET-LiSch"]
    assert [r[5] for r in table] == ["recovered", "recovered", "recovered", "partly filled"]
    assert [r[7] for r in table] == ["", "1.4 ± 0.1", "", "0.7 ± 0.1"]
    # nothing lost: one sentence says so; a lesion without contrast is not judged
    rows["lisch"]["lesions"][1] = row(2, "cold", 0.9, 1.1)
    rows["osem"]["lesions"].append(row(4, "none", float("nan"), true=1.02))
    text = "\n".join(mod.lesion_section(rows, ["osem", "lisch"], labels, ["lisch"]))
    assert ("- no diffusion method (PET-LiSch) erased, filled or exaggerated a lesion: every "
            "judged CRC in [0.5, 1.5].") in text
    assert "- lesion 3/4: true contrast 1.02 against its surroundings, too low for a CRC" in text
    assert mod.lesion_section({"osem": {"lesions": []}}, ["osem"], labels, ["lisch"]) == []


# ------------------------------------------------------- precision benchmarks (issue 12)
def test_bench_denoiser_prints_every_precision_side_by_side(capsys) -> None:
    mod = _load("bench_denoiser")
    mod.main(["--sizes", "tiny", "--hw", "16", "16", "--batch", "2", "--infer-batch", "2",
              "--repeats", "1", "--no-compile"])
    out = capsys.readouterr().out
    rows = _table_rows(out.split("###", 1)[1])
    assert [r[0] for r in rows] == list(mod.VARIANTS)
    assert rows[0][2] == rows[0][5] == rows[0][7] == "1.00x"   # fp32 is the reference
    assert all(float(c) > 0 for r in rows for c in (r[1], r[4], r[6]))
    assert "precision='auto' here:" in out


def test_bench_training_prints_fp32_and_bf16(monkeypatch, capsys) -> None:
    """The table logic on a stand-in for ``train`` whose steps take known wall and CPU times."""
    mod = _load("bench_training")
    clock = {"wall": 0.0, "cpu": 0.0}
    seen = []

    class FakeTime:
        perf_counter = staticmethod(lambda: clock["wall"])
        process_time = staticmethod(lambda: clock["cpu"])

    def fake_train(cfg, out, progress=False, callback=None):
        seen.append(cfg)
        cpu = 2.0 if cfg.precision == "fp32" else 0.8
        for step in range(1, cfg.steps + 1):
            clock["wall"] += 3 * cpu + (10.0 if step == 1 else 0.0)  # a slow first step
            clock["cpu"] += cpu
            callback({"step": step})
        (Path(out) / "loss.csv").write_text("step,loss\n")

    monkeypatch.setattr(mod, "train", fake_train)
    monkeypatch.setattr(mod, "time", FakeTime)
    mod.main(["--config", str(ROOT / "configs" / "default_prior.json"), "--steps", "4"])
    rows = _table_rows(capsys.readouterr().out)
    assert [r[1] for r in rows] == ["fp32 (float32)", "bf16 (bfloat16)"]
    assert [r[5:9] for r in rows] == [["6.00", "1.00x", "2.00", "1.00x"],
                                      ["2.40", "2.50x", "0.80", "2.50x"]]
    assert [c.precision for c in seen] == ["fp32", "bf16"]
    assert seen[0].cache_dir == seen[1].cache_dir and seen[0].steps == 4   # phantoms shared


def test_bench_precision_quick(tiny_model: Path, tmp_path: Path) -> None:
    mod = _load("bench_precision")
    out = tmp_path / "precision"
    res = mod.main(["--model", str(tiny_model), "--subjects", "1", "--realisations", "1",
                    "--steps", "2", "--samples", "1", "--lisch-k", "2", "--num-views", "84",
                    "--sigmas", "0.5", "--slices-per-subject", "2", "--volume-shape", "6", "112",
                    "112", "--sample-n", "2", "--sample-steps", "2", "--sample-repeats", "2",
                    "--out", str(out), "--no-progress"])
    md = (out / "precision.md").read_text()
    assert "## (c) Unconditional sampling, 2 slices" in md
    assert "Command: `python benchmarks/bench_precision.py --model" in md and "CPU cores" in md
    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(res))
    (scan,) = data["reconstruction"]["scans"]
    assert scan["subject"] == 0 and scan["order"] == ["fp32", "bf16"]
    for p in ("fp32", "bf16"):
        # the hooks see every network evaluation of the sampler (2 steps, 1 chain)
        assert scan[p]["network_calls"] == scan[p]["network_evaluations"] == 2
        assert math.isfinite(scan[p]["nrmse"])
        assert scan[p]["wall_s"] >= scan[p]["network_wall_s"] > 0
        assert scan[p]["cpu_s"] >= scan[p]["network_cpu_s"] > 0
    # an untrained eps-network outputs 0 in any precision: identical images and estimates
    assert scan["nrmse_difference"] == 0.0 and scan["image_rel_rms_difference"] == 0.0
    sp = data["sampling"]
    assert sp["shape"][:2] == [2, 1] and all(len(sp["all_cpu_s"][p]) == 2 for p in ("fp32", "bf16"))
    assert sp["cpu_speedup"] == sp["cpu_s_fp32"] / sp["cpu_s_bf16"] > 0
    assert 0 <= sp["rel_rms_sample_difference"] < 1  # (0 here: see above)
    (row,) = data["tweedie"]["rows"]
    assert row["sigma"] == 0.5 and row["rel_rms_bf16_vs_fp32"] == 0.0
    assert row["rel_rms_other_draw"] > 0 and data["tweedie"]["num_slices"] == 2
    assert data["settings"]["lisch_options"]["num_steps"] == 2


def test_evaluate_supervised_cache_round_trips_without_pickle(tmp_path: Path, monkeypatch) -> None:
    """The baseline cache gives back what the runner gave (arrays, nested dicts with numeric
    keys, tensors as arrays) and does not run the job a second time; new prior weights at the
    same model path make a new key."""
    import numpy as np
    import torch

    sup = _load("evaluate_supervised")
    calls = []
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    result = {"reference": image, "masks": {"brain": image > 3},
              "info": {"counts": 2.5, "name": "x", "none": None},
              "runs": {"osem": {3: {"image": image * 2, "time_s": 1.5, "x": torch.ones(2)}},
                       "mapem-rdp": {0.5: {"image": image, "list": [1, 2.0]}}}}

    def fake(job):
        calls.append(job)
        return result

    monkeypatch.setattr(sup.ev, "run_job", fake)
    job = sup.ev.Job(subject=0, counts=2.5, realisation=0, noise_seed=1, sampler_seed=2,
                     num_views=None, subsets=12, osem_epochs=3, map_init_epochs=2,
                     map_iterations=2, rdp_beta=[0.5], dps_zeta=[], dds_beta=[], dds_subsets=4,
                     dds_epochs=1, lisch_k=[], lisch_max_steps=None, steps=2,
                     methods=["osem"], model=None, threads=1)
    first = sup.cached_run_job(job, str(tmp_path))
    second = sup.cached_run_job(job, str(tmp_path))
    assert len(calls) == 1 and first is result
    np.testing.assert_array_equal(second["reference"], image)
    np.testing.assert_array_equal(second["masks"]["brain"], image > 3)
    np.testing.assert_array_equal(second["runs"]["osem"][3]["image"], image * 2)
    np.testing.assert_array_equal(second["runs"]["osem"][3]["x"], np.ones(2, np.float32))
    assert second["runs"]["mapem-rdp"][0.5]["list"] == [1, 2.0]
    assert second["info"] == {"counts": 2.5, "name": "x", "none": None}
    other = sup.ev.Job(**{**job.__dict__, "realisation": 1})
    sup.cached_run_job(other, str(tmp_path))
    assert len(calls) == 2
    # new weights at the same prior path are a new key, the same weights are not
    prior = tmp_path / "prior" / "xy"
    prior.mkdir(parents=True)
    (prior / "config.json").write_text('{"weights": {"sha256": "aa"}}')
    at_path = sup.ev.Job(**{**job.__dict__, "model": str(prior.parent)})
    cache = str(tmp_path / "cache")
    sup.cached_run_job(at_path, cache)
    sup.cached_run_job(at_path, cache)
    assert len(calls) == 3
    (prior / "config.json").write_text('{"weights": {"sha256": "bb"}}')
    sup.cached_run_job(at_path, cache)
    assert len(calls) == 4


def test_sample_realism_statistics_and_quick_run(tiny_model: Path, tmp_path: Path,
                                                  capsys) -> None:
    """``sample_realism``: the per-image measures against a hand computation, then a quick run
    that writes both grids and the JSON, and refuses a non-empty output folder."""
    mod = _load("sample_realism")
    im = np.zeros((1, 10, 10))
    im[0, 2:6, 2:6] = 1.0
    im[0, 3, 3] = 3.0
    st = mod.image_stats(im, 0.05)
    # 16 of 100 pixels above 0.05 x 3; the 99.5th percentile of 15 ones and a 3 (linear
    # interpolation at position 14.925) over their mean 18/16
    assert st["support"][0] == pytest.approx(0.16)
    assert st["peak"][0] == pytest.approx((1 + 0.925 * 2) / (18 / 16))
    out = tmp_path / "realism"
    res = mod.main(["--model", str(tiny_model), "--subjects", "1", "--n", "4", "--steps", "2",
                    "--volume-shape", "6", "112", "112", "--out", str(out)])
    assert _is_png(out / "real_slices.png") and _is_png(out / "samples.png")
    data = json.loads((out / "realism.json").read_text())
    assert data["samples_inside"] == sum(s["inside"] for s in data["samples"]) == \
        res["samples_inside"] and len(data["samples"]) == 4
    lo, hi = data["real_central_98"]["support"]
    assert 0 < lo <= hi <= 1 and data["num_real_slices"] >= 1
    with pytest.raises(SystemExit) as e:
        mod.main(["--model", str(tiny_model), "--out", str(out)])
    assert e.value.code == 2 and "not empty" in capsys.readouterr().err


def test_save_slice_grid_writes_a_png_and_refuses_bad_shapes(tmp_path: Path) -> None:
    from sirf_diffusion.plotting import save_slice_grid

    path = save_slice_grid(np.random.default_rng(0).random((5, 16, 12)), tmp_path / "g.png", "t")
    assert path == tmp_path / "g.png" and _is_png(path)
    with pytest.raises(ValueError, match=r"\[n, h, w\]"):
        save_slice_grid(np.zeros((16, 16)), tmp_path / "bad.png", "t")
