"""Throughput of the embedded ray-tracing projector (not a test).

Prints a Markdown table: matrix build time, forward / adjoint time over all views, the
"epoch" (one forward + one adjoint over all views), the same done subset by subset as in OSEM
(first pass including the subset-matrix builds, then cached), and the peak memory.

Examples
--------
    python benchmarks/bench_projector.py                      # 2D mMR slice + 8-ring 3D brain
    python benchmarks/bench_projector.py --rings 16 --nz 80 --nxy 112 --skip-2d
    python benchmarks/bench_projector.py --device cuda --dtype float32
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sirf_diffusion.physics.geometry import ImageGeometry, SinogramGeometry, get_scanner  # noqa: E402
from sirf_diffusion.physics.projector import RayTracingProjector  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (s)."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _peak_gib(device: torch.device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB -> GiB (Linux)
    text = f"{rss:.2f} (RSS)"
    if device.type == "cuda":
        text += f", {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} (GPU)"
    return text


def bench(name: str, sino: SinogramGeometry, image: ImageGeometry, *, num_rays: int,
          num_subsets: int, device: torch.device, dtype: torch.dtype, repeats: int,
          progress: bool) -> dict[str, str]:
    """Time one projector configuration; returns one table row."""
    projector = RayTracingProjector(sino, image, num_rays=num_rays, progress=progress)
    x = torch.rand(image.shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    t0 = time.perf_counter()
    y = projector.forward(x)                 # builds and caches every full-view matrix
    projector.adjoint(y)
    _sync(device)
    build = time.perf_counter() - t0
    fwd = _timed(lambda: projector.forward(x), device, repeats)
    adj = _timed(lambda: projector.adjoint(y), device, repeats)
    views = [torch.arange(k, sino.num_views, num_subsets) for k in range(num_subsets)]

    def osem_epoch() -> None:
        for v in views:
            projector.adjoint(projector.forward(x, v), v)
    t0 = time.perf_counter()
    osem_epoch()
    _sync(device)
    first = time.perf_counter() - t0
    osem = _timed(osem_epoch, device, repeats)
    nnz = projector.matrix_2d(device=device, dtype=dtype)[0]._nnz()
    return {
        "case": name,
        "image (z,y,x)": "x".join(map(str, image.shape)),
        "sinograms x views x bins": "x".join(map(str, sino.shape)),
        "2D nnz": f"{nnz / 1e6:.2f} M",
        "build + 1st fwd/adj [s]": f"{build:.2f}",
        "forward [s]": f"{fwd:.3f}",
        "adjoint [s]": f"{adj:.3f}",
        "epoch fwd+adj [s]": f"{fwd + adj:.3f}",
        "OSEM epoch, subsets (1st / cached) [s]": f"{num_subsets}: {first:.2f} / {osem:.3f}",
        "peak memory [GiB]": _peak_gib(device),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--num-rays", type=int, default=1,
                        help="rays per bin (STIR num_tangential_LORs)")
    parser.add_argument("--subsets-2d", type=int, default=21, help="OSEM subsets for the 2D case")
    parser.add_argument("--subsets-3d", type=int, default=21, help="OSEM subsets for the 3D case")
    parser.add_argument("--rings", type=int, default=8, help="rings of the mMR-like 3D scanner")
    parser.add_argument("--max-ring-difference", type=int, default=None,
                        help="3D maximum ring difference (default rings - 1)")
    parser.add_argument("--span", type=int, default=1, help="3D axial compression")
    parser.add_argument("--nz", type=int, default=None, help="3D planes (default 2*rings - 1)")
    parser.add_argument("--nxy", type=int, default=112, help="3D transaxial image size")
    parser.add_argument("--skip-2d", action="store_true", help="skip the 2D case")
    parser.add_argument("--skip-3d", action="store_true", help="skip the 3D case")
    parser.add_argument("--progress", action="store_true", help="show build progress bars")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    mmr = get_scanner("mMR")
    vx = mmr.default_bin_size_mm
    common = dict(num_rays=args.num_rays, device=device, dtype=dtype, repeats=args.repeats,
                  progress=args.progress)
    rows = []
    if not args.skip_2d:
        rows.append(bench("2D mMR slice", SinogramGeometry.two_d("mMR"),
                          ImageGeometry((1, 128, 128), (mmr.ring_spacing_mm, vx, vx)),
                          num_subsets=args.subsets_2d, **common))
    if not args.skip_3d:
        scanner = mmr.with_rings(args.rings)
        mrd = args.rings - 1 if args.max_ring_difference is None else args.max_ring_difference
        nz = 2 * args.rings - 1 if args.nz is None else args.nz
        sino = SinogramGeometry(scanner, scanner.num_detectors_per_ring // 2, span=args.span,
                                max_ring_difference=mrd)
        image = ImageGeometry((nz, args.nxy, args.nxy), (mmr.ring_spacing_mm / 2, vx, vx))
        rows.append(bench(f"3D {args.rings} rings, span {args.span}, MRD {mrd}", sino, image,
                          num_subsets=args.subsets_3d, **common))
    if not rows:
        return
    keys = list(rows[0])
    print(f"device: {device}, dtype: {args.dtype}, threads: {torch.get_num_threads()}, "
          f"torch {torch.__version__}\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(row[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
