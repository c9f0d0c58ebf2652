"""Benchmark the slice score model: training step, denoiser cost per sampling step, 3D prior.

Prints a Markdown table.  Example (CPU)::

    python benchmarks/bench_denoiser.py --sizes small default --threads 2
    python benchmarks/bench_denoiser.py --volume 32 112 112 --chunk-size 16
    PYTHONPATH=/path/to/diffusers python benchmarks/bench_denoiser.py --diffusers

Timings are medians over ``--repeats`` after one warm-up.  "peak RSS" is the process's maximum
resident set size so far (CPU; sizes are benchmarked from small to large, so it is the peak of
the current size) and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from sirf_diffusion.diffusion.model import ScoreModel, ScoreModelConfig
from sirf_diffusion.diffusion.prior3d import PerpendicularPrior3D
from sirf_diffusion.diffusion.unet import UNetConfig

SIZES: dict[str, UNetConfig] = {
    "tiny": UNetConfig(base_channels=16, channel_mults=(1, 2, 2, 2), num_res_blocks=1),
    "small": UNetConfig(base_channels=24, channel_mults=(1, 2, 2, 2), num_res_blocks=1),
    "default": UNetConfig(),
    "large": UNetConfig(base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=2),
    "xl": UNetConfig(base_channels=48, channel_mults=(1, 2, 2, 2), num_res_blocks=2),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def bench_training(net_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                   params: list[torch.nn.Parameter], batch: int, hw: tuple[int, int],
                   repeats: int, device: torch.device) -> float:
    """Seconds per forward + backward + AdamW step."""
    opt = torch.optim.AdamW(params, lr=1e-4)
    x0 = torch.randn(batch, 1, *hw, device=device)
    g = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        net_loss(x0, g).backward()
        opt.step()

    return _median_time(step, repeats, device)


def bench_inference(fn: Callable[[torch.Tensor], torch.Tensor], batch: int, hw: tuple[int, int],
                    repeats: int, device: torch.device) -> float:
    x = torch.randn(batch, 1, *hw, device=device)
    with torch.inference_mode():
        return _median_time(lambda: fn(x), repeats, device)


def _diffusers_unet(cfg: UNetConfig, hw: tuple[int, int]) -> torch.nn.Module:
    """diffusers' UNet2DModel with the same widths/levels (attention only at the coarsest)."""
    from diffusers import UNet2DModel  # optional, benchmark only

    n = len(cfg.channel_mults)
    down = ["DownBlock2D"] * (n - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (n - 1)
    return UNet2DModel(sample_size=hw, in_channels=1, out_channels=1,
                       block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mults),
                       down_block_types=tuple(down), up_block_types=tuple(up),
                       layers_per_block=cfg.num_res_blocks, norm_num_groups=cfg.groupnorm_groups,
                       attention_head_dim=min(64, cfg.base_channels * cfg.channel_mults[-1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["small", "default", "large"],
                   choices=sorted(SIZES), help="UNet sizes to benchmark")
    p.add_argument("--batch", type=int, default=16, help="training batch size")
    p.add_argument("--hw", type=int, nargs=2, default=[112, 112], help="slice height and width")
    p.add_argument("--infer-batch", type=int, default=16, help="slices per denoiser call")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--volume", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="also time one PerpendicularPrior3D call on a [1, 1, Z, Y, X] volume")
    p.add_argument("--chunk-size", type=int, default=16, help="slices per chunk in the 3D prior")
    p.add_argument("--diffusers", action="store_true",
                   help="also time diffusers' UNet2DModel with matching widths (if importable)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    hw = tuple(args.hw)
    print(f"device {dev}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"train batch {args.batch}, slices {hw[0]}x{hw[1]}\n")
    print("| model | params (M) | train step (s) | train img/s | 1 slice (ms) "
          f"| {args.infer_batch} slices (ms) | peak mem (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.sizes:
        cfg = SIZES[name]
        model = ScoreModel(ScoreModelConfig(unet=cfg, image_size=hw)).to(dev)
        rows = [(name, model.num_parameters, model.training_loss, list(model.parameters()),
                 lambda x, m=model: m(x, torch.ones(x.shape[0], device=x.device)))]
        if args.diffusers:
            try:
                dnet = _diffusers_unet(cfg, hw).to(dev)
            except ImportError:
                print(f"| diffusers-{name} | not installed | | | | | |")
            else:
                def dloss(x0: torch.Tensor, g: torch.Generator, net=dnet) -> torch.Tensor:
                    t = torch.randint(0, 1000, (x0.shape[0],), generator=g, device=g.device)
                    eps = torch.randn(x0.shape, generator=g, device=g.device)
                    return ((net(x0 + eps, t).sample - eps) ** 2).mean()
                rows.append((f"diffusers-{name}", sum(q.numel() for q in dnet.parameters()), dloss,
                             list(dnet.parameters()),
                             lambda x, n=dnet: n(x, torch.full((x.shape[0],), 500,
                                                               device=x.device)).sample))
        for label, nparam, loss, params, infer in rows:
            ts = bench_training(loss, params, args.batch, hw, args.repeats, dev)
            t1 = bench_inference(infer, 1, hw, args.repeats, dev)
            tb = bench_inference(infer, args.infer_batch, hw, args.repeats, dev)
            print(f"| {label} | {nparam / 1e6:.2f} | {ts:.3f} | {args.batch / ts:.1f} "
                  f"| {1e3 * t1:.1f} | {1e3 * tb:.1f} | {_peak_mib(dev):.0f} |")
    if args.volume:
        z, y, x = args.volume
        model = ScoreModel(ScoreModelConfig(unet=SIZES[args.sizes[0]], image_size=hw)).to(dev)
        model.eval()
        prior = PerpendicularPrior3D({"xy": model, "yz": model, "xz": model},
                                     chunk_size=args.chunk_size)
        vol = torch.randn(1, 1, z, y, x, device=dev)
        with torch.inference_mode():
            tv = _median_time(lambda: prior(vol, torch.ones(1, device=dev)), max(1, args.repeats),
                              dev)
        print(f"\n3D prior ({args.sizes[0]}, 3 orientations, chunk {args.chunk_size}) on "
              f"{z}x{y}x{x}: {tv:.2f} s per denoiser call ({z + y + x} slices, "
              f"{1e3 * tv / (z + y + x):.1f} ms/slice), peak mem {_peak_mib(dev):.0f} MiB")


if __name__ == "__main__":
    main()
