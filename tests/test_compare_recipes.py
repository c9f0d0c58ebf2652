"""benchmarks/compare_recipes.py: the choice rule, the variant configs, the clock, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

from sirf_diffusion.diffusion.recipe import LossRecipe
from sirf_diffusion.diffusion.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cr():
    return load_script(ROOT / "benchmarks" / "compare_recipes.py")


def _results(ratios: dict[str, list[float]]) -> dict:
    sig = [0.05, 0.1, 0.2, 0.5, 1.0]
    start = [1e-3 * (k + 1) for k in range(len(sig))]
    return {"command": "python benchmarks/compare_recipes.py --minutes 1", "machine": "test",
            "minutes": 1.0, "threads": 1, "parallel": 2, "precision": "fp32",
            "init_from": "start", "config": "cfg.json", "sigmas": sig, "num_slices": 8,
            "val_seeds": [1], "start_mse": start,
            "variants": {n: {"steps": 10, "images": 160, "wall_s": 60.0,
                             "mse": [s * q for s, q in zip(start, r)], "mse_ratio": r}
                         for n, r in ratios.items()}}


def test_the_lowest_geometric_mean_ratio_is_chosen(cr):
    # "mixture" is worse at one sigma but better overall; "plain" better only at one
    res = _results({"plain": [0.8, 1.1, 1.1, 1.1, 1.1], "mixture": [0.9, 0.9, 0.9, 0.9, 1.02],
                    "lognormal": [1.0] * 5})
    assert cr.choose(res) == "mixture"


def test_report_marks_the_choice_and_rebuilds_from_results(cr, tmp_path):
    res = _results({"plain": [1.0] * 5, "mixture": [0.5] * 5})
    cr.write_report(res, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| mixture **(chosen)** | 10 | 160 |" in text
    assert "0.5 (0.50)" not in text and "0.0005 (0.50)" in text
    assert (tmp_path / "mse_ratio.png").stat().st_size > 1000
    first = text
    (tmp_path / "README.md").unlink()
    cr.main(["--from-results", "--out", str(tmp_path)])
    assert (tmp_path / "README.md").read_text() == first
    assert json.loads((tmp_path / "results.json").read_text())["variants"]["mixture"]["steps"] == 10


def test_variant_configs_are_valid_train_configs_with_a_constant_rate(cr):
    base = json.loads((ROOT / "configs" / "default_prior_stage3.json").read_text())
    for name, (_, overrides) in cr.VARIANTS.items():
        d = cr.variant_config(base, overrides, "start_dir", "cache_dir", "fp32")
        cfg = TrainConfig.from_dict(d)
        assert cfg.lr_decay == "constant" and cfg.init_from == "start_dir"
        assert cfg.cache_dir == "cache_dir" and cfg.precision == "fp32"
        LossRecipe(**cfg.recipe)
        for k, v in overrides.items():
            assert getattr(cfg, k) == v, name


def test_the_clock_counts_from_the_end_of_the_first_step(cr, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(cr.time, "perf_counter", lambda: now[0])
    clock = cr._Clock(10.0)
    clock({"step": 1})          # data preparation before this is not counted
    now[0] = 109.0
    clock({"step": 2})
    now[0] = 110.0
    with pytest.raises(StopIteration):
        clock({"step": 3})
    assert clock.steps == 3


def test_refuses_to_replace_a_report_without_overwrite(cr, tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match="--overwrite"):
        cr.main(["--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
