"""Smoke test of ``benchmarks/bench_mmr_sampler.py`` on its small geometry with a tiny untrained
model: the script runs end to end, times the projector and the network, and its NRMSEs are
finite.  Not the numbers (those are in docs/projector.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_threads():
    """The script sets torch's thread count (``--threads``); restore it for later tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_bench_mmr_sampler_runs_on_the_small_geometry(tmp_path, capsys):
    from sirf_diffusion.diffusion import ScoreModel, ScoreModelConfig, UNetConfig, save_model

    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=()), orientation="xy"))
    folder = save_model(tmp_path / "model", model)
    bench = load_script(ROOT / "benchmarks" / "bench_mmr_sampler.py")
    out = tmp_path / "rows.json"
    rows = bench.main(["--geometry", "small", "--steps", "2", "--threads", "1", "--model",
                       str(folder), "--json", str(out)])
    row, = rows
    assert json.loads(out.read_text())[0]["method"] == "dds"
    assert (row["steps"], row["samples"], row["grid"]) == (2, 1, [15, 32, 32])
    assert row["finite"] and row["projections_per_step"] > 0
    assert 0 < row["network_s"] and 0 < row["projection_s"] < row["step_s"]
    for key in ("nrmse", "nrmse_init", "nrmse_osem"):
        assert math.isfinite(row[key]) and row[key] > 0
    assert "| PET-DDS | 1 x 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--geometry", "small", "--steps", "0"])
