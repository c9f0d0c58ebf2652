"""Time and peak memory of the projector implementations, side by side (not a test).

Cases: a 2D mMR slice, a 16-ring mMR-like 3D scanner (span 1), the full Siemens mMR in span
11 (837 sinograms x 252 views x 344 bins, 127 x 285 x 285 voxels) and in span 1 with a maximum
ring difference of 60 (4084 sinograms).  Implementations: the
embedded projector with stored matrices (``matrix``), matrix-free with the numba kernels
(``numba``) and with chunked torch matrices (``torch``), and STIR's
``ProjMatrixByBinUsingRayTracing`` through ``stir_wrappers.STIRPhysics`` (``stir``, when STIR's
Python module imports: ``source /work/toolkits/env.sh`` first).

Every (case, implementation) runs in a subprocess of its own, so that its peak resident memory
(``ru_maxrss``) is its own; the table is printed as Markdown.  Columns: setup (construction,
ray tracing or matrix build, JIT, first forward + adjoint), forward and adjoint over all views,
and one OSEM epoch (forward + adjoint of every subset, after the setup; subset matrices are
built during it for ``matrix``), each as the best wall time and the best process CPU time
(``time.process_time``, all threads: on a shared machine it is less inflated by the load than
the wall time; with ``--threads 1`` it is the single-thread cost).  ``--threads`` takes several
counts, one row each.  A second table gives every implementation's times over those of the
``matrix`` row of the same case and thread count.  The load average is printed with the tables.

Examples
--------
    python benchmarks/bench_projector.py                              # every case, 2 threads
    python benchmarks/bench_projector.py --cases 2d 16rings --implementations matrix numba
    python benchmarks/bench_projector.py --cases 2d 16rings --implementations matrix numba \
        --threads 1 2 --repeats 3          # CPU time on one thread and wall time on two
    python benchmarks/bench_projector.py --device cuda --implementations matrix torch
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sirf_diffusion.physics.geometry import (  # noqa: E402
    ImageGeometry,
    SinogramGeometry,
    get_scanner,
)

CASES = ("2d", "16rings", "mmr-span11", "mmr-span1")
IMPLEMENTATIONS = ("matrix", "numba", "torch", "stir")
#: implementations left out of a case by default: the matrix of the full mMR needs more memory
#: than the 8 GiB target, STIR's matrix would take hours there, the torch path is the fallback
DEFAULT_SKIP = {(case, impl) for case in ("mmr-span11", "mmr-span1")
                for impl in ("matrix", "stir", "torch")}


def geometries(case: str, rings: int = 16) -> tuple[SinogramGeometry, ImageGeometry]:
    """Sinogram and image geometry of a benchmark case."""
    mmr = get_scanner("mMR")
    vx = mmr.default_bin_size_mm
    if case == "2d":
        return SinogramGeometry.two_d("mMR"), ImageGeometry((1, 128, 128),
                                                            (mmr.ring_spacing_mm, vx, vx))
    if case == "16rings":
        sc = mmr.with_rings(rings)
        return (SinogramGeometry(sc, 252, span=1, max_ring_difference=(rings - 2) // 2),
                ImageGeometry((2 * rings - 1, 128, 128), (mmr.ring_spacing_mm / 2, vx, vx)))
    if case in ("mmr-span11", "mmr-span1"):
        return (SinogramGeometry(mmr, 252, span=11 if case == "mmr-span11" else 1,
                                 max_ring_difference=60),
                ImageGeometry((127, 285, 285), (mmr.ring_spacing_mm / 2, vx, vx)))
    raise ValueError(f"unknown case {case!r}; known: {', '.join(CASES)}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stir_physics(sino: SinogramGeometry, image: ImageGeometry, num_subsets: int):
    """STIR's ray-tracing matrix pair for the geometries (templates written as Interfile)."""
    from sirf_diffusion.io.interfile import write_image, write_sinogram
    from stir_wrappers.physics import STIRPhysics, require_stir

    stir = require_stir()
    folder = Path(tempfile.mkdtemp(prefix="bench_projector_"))
    write_sinogram(folder / "template.hs", torch.zeros(sino.shape).numpy(), sino)
    write_image(folder / "image.hv", torch.zeros(image.shape).numpy(), image)
    template = stir.ProjData.read_from_file(str(folder / "template.hs"))
    img = stir.FloatVoxelsOnCartesianGrid.read_from_file(str(folder / "image.hv"))
    return STIRPhysics(template, img, num_subsets=num_subsets)


def run_one(case: str, implementation: str, *, num_subsets: int, device: str, dtype: str,
            repeats: int, rings: int) -> dict:
    """Measure one implementation on one case in this process."""
    from sirf_diffusion.physics.base import ViewSubset
    from sirf_diffusion.physics.projector import RayTracingProjector

    dev, dt = torch.device(device), getattr(torch, dtype)
    sino, image = geometries(case, rings)
    x = torch.rand(image.shape, generator=torch.Generator().manual_seed(0)).to(dev, dt)
    t0 = time.perf_counter()
    if implementation == "stir":
        phys = _stir_physics(sino, image, num_subsets)
        fwd = phys.forward_linear
        adj = phys.adjoint
        subsets = [ViewSubset(k, num_subsets) for k in range(num_subsets)]
        extra = {}
    else:
        mode, kernels = (("matrix", "auto") if implementation == "matrix"
                         else ("matrix-free", implementation))
        P = RayTracingProjector(sino, image, mode=mode, kernels=kernels)
        fwd, adj = P.forward, P.adjoint
        subsets = [torch.arange(k, sino.num_views, num_subsets) for k in range(num_subsets)]
        extra = {"2D elements": f"{len(P.elements().rows) / 1e6:.1f} M"}
    y = fwd(x)
    adj(y)
    _sync(dev)
    setup = time.perf_counter() - t0

    def best(fn) -> tuple[float, float]:
        """Shortest wall time and shortest process CPU time (all threads) of ``repeats`` runs."""
        wall, cpu = [], []
        for _ in range(repeats):
            _sync(dev)
            t, c = time.perf_counter(), time.process_time()
            fn()
            _sync(dev)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        return min(wall), min(cpu)

    t_fwd, c_fwd = best(lambda: fwd(x))
    t_adj, c_adj = best(lambda: adj(y))

    def epoch() -> None:
        for s in subsets:
            adj(fwd(x, s), s)
    t_epoch, c_epoch = best(epoch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20       # KiB -> GiB
    if dev.type == "cuda":
        extra["GPU peak [GiB]"] = f"{torch.cuda.max_memory_allocated(dev) / 2 ** 30:.2f}"
    return {"setup [s]": f"{setup:.2f}", "forward [s]": f"{t_fwd:.3f}",
            "adjoint [s]": f"{t_adj:.3f}", f"OSEM epoch, {num_subsets} subsets [s]":
            f"{t_epoch:.2f}", "forward CPU [s]": f"{c_fwd:.3f}", "adjoint CPU [s]":
            f"{c_adj:.3f}", "epoch CPU [s]": f"{c_epoch:.2f}", "peak RSS [GiB]": f"{peak:.2f}",
            **extra}


def _measure(case: str, impl: str, threads: int, env: dict, args) -> dict:
    """One (case, implementation, threads) row, measured in a worker subprocess."""
    cmd = [sys.executable, __file__, "--worker", case, impl, "--device", args.device,
           "--dtype", args.dtype, "--threads", str(threads), "--repeats",
           str(args.repeats if not case.startswith("mmr") else 1), "--rings", str(args.rings),
           "--subsets-2d", str(args.subsets_2d), "--subsets-3d", str(args.subsets_3d)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if lines:
            result = json.loads(lines[-1][7:])
        else:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            result = {"note": f"failed: {tail[:120]}"}
    except subprocess.TimeoutExpired:
        result = {"note": f"timed out after {args.timeout:g} s"}
    result["wall [s]"] = f"{time.perf_counter() - t0:.1f}"
    print(f"done: {case} / {impl} / {threads} threads ({result['wall [s]']} s)",
          file=sys.stderr, flush=True)
    return result


#: columns of the ratio table: (title, column of the main table)
RATIOS = (("forward CPU", "forward CPU [s]"), ("adjoint CPU", "adjoint CPU [s]"),
          ("forward wall", "forward [s]"), ("adjoint wall", "adjoint [s]"))


def ratio_rows(rows: list[dict]) -> list[dict]:
    """Every measured row's times over those of the ``matrix`` row of its case and threads."""
    base = {(r["case"], r["threads"]): r for r in rows
            if r["implementation"] == "matrix" and "forward [s]" in r}
    out = []
    for r in rows:
        b = base.get((r["case"], r["threads"]))
        if b is None or r["implementation"] == "matrix" or "forward [s]" not in r:
            continue
        row = {"case": r["case"], "implementation": r["implementation"],
               "threads": r["threads"]}
        for title, key in RATIOS:
            row[f"{title} / matrix"] = f"{float(r[key]) / max(float(b[key]), 1e-9):.2f}"
        both = [sum(float(x[k]) for k in ("forward CPU [s]", "adjoint CPU [s]")) for x in (r, b)]
        row["forward + adjoint CPU / matrix"] = f"{both[0] / max(both[1], 1e-9):.2f}"
        out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    """``rows`` as a Markdown table (the union of their keys as columns)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def _subsets_for(case: str, args) -> int:
    return args.subsets_2d if case == "2d" else args.subsets_3d


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS,
                        default=list(IMPLEMENTATIONS))
    parser.add_argument("--all", action="store_true",
                        help="also run the default-skipped pairs (matrix, torch and STIR on the "
                             "full mMR)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="CPU threads (torch, numba, STIR); several: one row each")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (best is kept)")
    parser.add_argument("--rings", type=int, default=16, help="rings of the 16rings case")
    parser.add_argument("--subsets-2d", type=int, default=21, help="OSEM subsets, 2D case")
    parser.add_argument("--subsets-3d", type=int, default=21, help="OSEM subsets, 3D cases")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "IMPLEMENTATION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.threads):
        parser.error("--threads must be >= 1")

    if args.worker:
        torch.set_num_threads(args.threads[0])
        case, impl = args.worker
        row = run_one(case, impl, num_subsets=_subsets_for(case, args), device=args.device,
                      dtype=args.dtype, repeats=args.repeats, rings=args.rings)
        print("RESULT " + json.dumps(row), flush=True)
        return

    load0 = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    rows = []
    for case in args.cases:
        sino, image = geometries(case, args.rings)
        for threads in args.threads:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
            for impl in args.implementations:
                head = {"case": case, "implementation": impl, "threads": threads,
                        "sinograms x views x bins": "x".join(map(str, sino.shape)),
                        "image (z,y,x)": "x".join(map(str, image.shape))}
                if (case, impl) in DEFAULT_SKIP and not args.all:
                    rows.append({**head, "note": "skipped (--all runs it)"})
                    continue
                if impl == "stir" and args.device != "cpu":
                    continue
                rows.append({**head, **_measure(case, impl, threads, env, args)})
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"device: {args.device}, dtype: {args.dtype}, threads: "
          f"{' '.join(map(str, args.threads))}, torch {torch.__version__}, load average at the "
          f"start: {load0[0]:.1f}, at the end: {load[0]:.1f} (1 min), {load[2]:.1f} (15 min)\n")
    print(markdown(rows))
    ratios = ratio_rows(rows)
    if ratios:
        print("\nTimes over the matrix's (same case and threads; best of the repeats):\n")
        print(markdown(ratios))


if __name__ == "__main__":
    main()
