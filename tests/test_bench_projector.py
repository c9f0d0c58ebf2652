"""``benchmarks/bench_projector.py``: the ratio table against the matrix rows (pure functions;
the measurements themselves are in docs/projector.md)."""

from __future__ import annotations

from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _row(case, impl, threads, fwd, adj, fwd_cpu, adj_cpu):
    return {"case": case, "implementation": impl, "threads": threads, "forward [s]": str(fwd),
            "adjoint [s]": str(adj), "forward CPU [s]": str(fwd_cpu),
            "adjoint CPU [s]": str(adj_cpu)}


def test_ratios_are_taken_against_the_matrix_of_the_same_case_and_threads():
    bench = load_script(ROOT / "benchmarks" / "bench_projector.py")
    rows = [_row("16rings", "matrix", 1, 0.2, 0.25, 0.2, 0.2),
            _row("16rings", "numba", 1, 0.5, 0.5, 0.4, 0.6),
            _row("16rings", "matrix", 2, 1.0, 1.0, 1.0, 1.0),
            _row("16rings", "numba", 2, 0.5, 2.0, 0.5, 1.5),
            {"case": "mmr-span11", "implementation": "numba", "threads": 2, "note": "skipped"},
            _row("2d", "numba", 1, 0.1, 0.1, 0.1, 0.1)]           # no matrix row: no ratio
    ratios = bench.ratio_rows(rows)
    assert [(r["case"], r["threads"]) for r in ratios] == [("16rings", 1), ("16rings", 2)]
    one, two = ratios
    assert (one["forward CPU / matrix"], one["adjoint CPU / matrix"]) == ("2.00", "3.00")
    assert (one["forward wall / matrix"], one["adjoint wall / matrix"]) == ("2.50", "2.00")
    assert one["forward + adjoint CPU / matrix"] == "2.50"
    assert (two["forward CPU / matrix"], two["adjoint wall / matrix"]) == ("0.50", "2.00")
    table = bench.markdown(ratios).splitlines()
    assert table[0].startswith("| case | implementation | threads | forward CPU / matrix")
    assert table[1] == "|" + "---|" * 8 and len(table) == 4


def test_full_mmr_cases_have_the_scanner_geometries():
    bench = load_script(ROOT / "benchmarks" / "bench_projector.py")
    for case, sinograms in (("mmr-span11", 837), ("mmr-span1", 4084)):
        sino, image = bench.geometries(case)
        assert (sino.num_sinograms, sino.num_views, sino.num_tangential) == (sinograms, 252, 344)
        assert image.shape == (127, 285, 285)
        assert {(case, "matrix"), (case, "stir")} <= bench.DEFAULT_SKIP
