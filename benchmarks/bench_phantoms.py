"""Time brain-phantom generation (not a test).

Prints a Markdown table: building the cached MNI head model (first phantom of a voxel size),
then a 3D phantom, a 3D phantom with lesions and a 2D slice on the default grid (median of
``--repeats`` runs), and the peak memory.

Examples
--------
    python benchmarks/bench_phantoms.py
    python benchmarks/bench_phantoms.py --repeats 5 --tracer amyloid_pos
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sirf_diffusion.data import brain_phantom  # noqa: E402


def _time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per case (median reported)")
    ap.add_argument("--tracer", default="fdg", help="fdg, amyloid_neg or amyloid_pos")
    args = ap.parse_args()

    t0 = time.perf_counter()
    brain_phantom(0, tracer=args.tracer, dims=2)
    first = time.perf_counter() - t0
    rows = [("first phantom (loads templates, builds head model)", first)]
    seeds = iter(range(1, 10_000))
    rows.append(("3D 96x128x128", _time(lambda: brain_phantom(next(seeds), tracer=args.tracer),
                                        args.repeats)))
    rows.append(("3D 96x128x128 + 2 lesions",
                 _time(lambda: brain_phantom(next(seeds), tracer=args.tracer, lesions=True),
                       args.repeats)))
    rows.append(("2D 1x128x128", _time(lambda: brain_phantom(next(seeds), tracer=args.tracer,
                                                             dims=2), args.repeats)))
    print("| case | seconds |\n|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
