"""Smoke tests of the fully 3D benchmarks (``benchmarks/evaluate_3d.py``, ``bench_3d.py``) on a
tiny untrained three-orientation prior, and the evaluation's subject selection.

They check that the scripts run end to end and write well-formed outputs, not the numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _restore_threads():
    """The scripts set torch's thread count (``--threads``); restore it for later tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _script(name: str):
    return load_script(ROOT / "benchmarks" / f"{name}.py")


def test_evaluate_3d_quick(tiny_prior_3d: Path, tmp_path: Path) -> None:
    mod = _script("evaluate_3d")
    out = tmp_path / "eval3d"
    args = ["--quick", "--model", str(tiny_prior_3d), "--out", str(out), "--no-progress"]
    res = mod.main(args)
    for name in ("evaluation_3d.md", "results.json", "views_10.png"):
        assert (out / name).is_file(), name
    assert (out / "views_10.png").read_bytes()[:8] == PNG_MAGIC

    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["seeds"] == [10] and data["settings"]["planes"] == 8
    assert data["prior"]["orientations"] == ["xy", "yz", "xz"]
    geometry = data["scans"]["10"][0]["geometry"]
    assert geometry["shape"] == [8, 128, 128] and geometry["max_ring_difference"] == 3
    summary = data["summary"]
    assert list(summary) == list(mod.METHODS)
    for method, row in summary.items():
        for key in ("nrmse", "psnr", "ssim", "crc_hot", "time_s", "cpu_s"):
            assert math.isfinite(row[key][0]), (method, key)
        assert row["time_s"][0] > 0
    case = data["cases"]["10"]
    assert list(case["osem"]["sweep"]) == ["1", "2", "3"]
    assert list(case["mapem-rdp"]["sweep"]) == ["1", "10"]
    for m in mod.DIFFUSION:
        assert summary[m]["net_evals"][0] == 2 and summary[m]["step_s"][0] > 0
        assert len(summary[m]["nrmse_ratio_osem"]) == 1
    # PET-DDS-3D's axial weight defaults to the best MAP-EM-RDP beta of the scan
    assert case["dds"]["best"] == case["mapem-rdp"]["best"]
    assert case["dds"]["sweep"][case["dds"]["best"]]["config"]["axial_penalty"] == \
        float(case["mapem-rdp"]["best"])
    assert res["summary"]["osem"]["nrmse"] == pytest.approx(summary["osem"]["nrmse"])

    md = (out / "evaluation_3d.md").read_text()
    assert "Command: `python benchmarks/evaluate_3d.py --quick" in md and "CPU cores" in md
    for label in mod.LABELS.values():
        assert f"| {label} |" in md
    assert "![orthogonal views, subject 10](views_10.png)" in md

    # a second run into the same folder is refused before any work, unless --overwrite
    with pytest.raises(SystemExit, match="--overwrite"):
        mod.main(args)


def test_evaluate_3d_lesion_overlap_and_subjects() -> None:
    mod = _script("evaluate_3d")
    vz = mod.voxel_size_mm()[0]
    les = {"centre_mm": [10.0, 0.0, 0.0], "semi_axes_mm": [5.0, 5.0, 5.0]}
    # half extents 16.25, 12.19, 4.06 mm: z range [5, 15] whole, part, none inside
    assert [mod.axial_overlap(les, n) for n in (16, 12, 4)] == ["whole", "part", "none"]
    assert 16 * vz / 2 >= 15 > 12 * vz / 2
    chosen = mod.select_subjects(2, 48)
    from sirf_diffusion.data.splits import subject_seeds

    seeds = subject_seeds("test", 10)
    assert all(s in seeds for s in chosen)
    for s in seeds[:seeds.index(chosen[-1]) + 1]:  # chosen iff every lesion lies inside
        inside = all(mod.axial_overlap(x, 48) == "whole" for x in mod.lesions_of(s))
        assert inside == (s in chosen), s


def test_evaluate_3d_refuses_bad_flags(tmp_path: Path) -> None:
    mod = _script("evaluate_3d")
    out = str(tmp_path / "o")
    for bad, match in ((["--seeds", "3"], "not 'test'"), (["--planes", "1"], "--planes"),
                       (["--subjects", "1", "--seeds", "10"], "--subjects or --seeds"),
                       (["--methods", "dds"], "--dds-axial-penalty")):
        with pytest.raises(SystemExit, match=match):
            mod.main([*bad, "--out", out])
    assert not (tmp_path / "o").exists()


def test_bench_3d_small(tiny_prior_3d: Path, tmp_path: Path, capsys) -> None:
    mod = _script("bench_3d")
    rows = mod.main(["--planes", "4", "--num-views", "42", "--samples", "1", "--steps", "1",
                     "--steps-total", "2", "--model", str(tiny_prior_3d), "--threads", "1",
                     "--chunk-size", "8", "--json", str(tmp_path / "rows.json")])
    assert [r["method"] for r in rows] == ["lisch", "dds"]
    for r in rows:
        assert r["grid"] == [4, 128, 128] and r["orientations"] == ["xy", "yz", "xz"]
        assert r["chunk_size"] == 8 and r["samples"] == 1 and r["steps_total"] == 2
        assert r["step_s"] > 0 and r["init_s"] > 0
        assert 0 < r["network_s"] <= r["step_s"] and 0 < r["dc_s"] <= r["step_s"]
        assert set(r["network_s_per_orientation"]) == {"xy", "yz", "xz"}
        assert r["estimated_full_run_s"] == pytest.approx(r["init_s"] + 2 * r["step_s"])
        assert r["rss_before_mib"] > 0
        assert r["peak_rss_mib"] is None or r["peak_rss_mib"] > 0
    assert json.loads((tmp_path / "rows.json").read_text()) == json.loads(json.dumps(rows))
    table = capsys.readouterr().out.split("| method |", 1)[1]
    assert table.count("| PET-LiSch-3D |") == 1 and table.count("| PET-DDS-3D |") == 1


def test_bench_3d_on_a_case_folder(tiny_prior_3d: Path, cli_case_3d: Path) -> None:
    mod = _script("bench_3d")
    (row,) = mod.main(["--case", str(cli_case_3d), "--methods", "dds", "--samples", "1",
                       "--steps", "1", "--steps-total", "2", "--model", str(tiny_prior_3d),
                       "--threads", "1"])
    assert row["grid"] == [3, 128, 128] and row["planes"] == 3 and row["ascent_steps"] == []
    assert 0 < row["network_s"] <= row["step_s"]
