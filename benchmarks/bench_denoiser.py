"""Benchmark the slice score model by precision: training step, denoiser cost per sampling step.

One run times every network precision side by side (:mod:`sirf_diffusion.diffusion.precision`):
float32 and bfloat16 autocast, each with contiguous and channels-last activations/weights, for a
training step (forward + backward + AdamW, training mode) and for denoiser calls of one slice
and of ``--infer-batch`` slices (evaluation mode, as in sampling); speed-ups are against float32
of the same size.  Then ``torch.compile`` of the UNet for inference (float32, and bfloat16 with
channels-last, the configuration ``precision='auto'`` picks in evaluation on a CPU with
AVX512-BF16/AMX): the first calls (which compile) are reported separately from the steady-state
times, with a verdict whether compiling pays.  Prints Markdown tables.  Examples (CPU)::

    python benchmarks/bench_denoiser.py --threads 1
    python benchmarks/bench_denoiser.py --sizes small default --no-compile
    python benchmarks/bench_denoiser.py --volume 32 112 112 --chunk-size 16
    PYTHONPATH=/path/to/diffusers python benchmarks/bench_denoiser.py --diffusers

Timings are medians over ``--repeats`` after one warm-up, of the wall clock or, with
``--clock cpu``, of the process's CPU time: with ``--threads 1`` on a shared machine the CPU
time is the cost of the computation itself, which the wall clock inflates by whatever else runs
(compile times are always wall clock: the compiler runs in other processes).  "peak mem" is the
process's maximum resident set size so far (CPU; it only grows) and
``torch.cuda.max_memory_allocated`` on CUDA.
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
from sirf_diffusion.diffusion.precision import bf16_native, resolve_precision
from sirf_diffusion.diffusion.prior3d import PerpendicularPrior3D
from sirf_diffusion.diffusion.unet import UNetConfig

SIZES: dict[str, UNetConfig] = {
    "tiny": UNetConfig(base_channels=16, channel_mults=(1, 2, 2, 2), num_res_blocks=1),
    "small": UNetConfig(base_channels=24, channel_mults=(1, 2, 2, 2), num_res_blocks=1),
    "default": UNetConfig(),
    "large": UNetConfig(base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=2),
    "xl": UNetConfig(base_channels=48, channel_mults=(1, 2, 2, 2), num_res_blocks=2),
}
#: Label -> (ScoreModel precision, channels_last), timed for training and inference.
VARIANTS: dict[str, tuple[str, bool]] = {
    "fp32": ("fp32", False),
    "fp32 + channels-last": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16 + channels-last": ("bf16", True),
}
#: Variants also timed through ``torch.compile`` (inference only).
COMPILED = ("fp32", "bf16 + channels-last")
#: A compiled variant "pays" when its steady-state call is at least this much faster.
PAYS = 0.9
#: The clocks of the timings (``--clock``): wall or process CPU time.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
Clock = Callable[[], float]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, clock: Clock) -> float:
    """Seconds of one call on ``clock``."""
    t0 = clock()
    fn()
    _sync(device)
    return clock() - t0


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device,
                 clock: Clock) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    _timed(fn, device, clock)
    return statistics.median(_timed(fn, device, clock) for _ in range(repeats))


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def bench_training(net_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                   params: list[torch.nn.Parameter], batch: int, hw: tuple[int, int],
                   repeats: int, device: torch.device, clock: Clock) -> float:
    """Seconds per forward + backward + AdamW step."""
    opt = torch.optim.AdamW(params, lr=1e-4)
    x0 = torch.randn(batch, 1, *hw, device=device)
    g = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        net_loss(x0, g).backward()
        opt.step()

    return _median_time(step, repeats, device, clock)


def _input(batch: int, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    return torch.randn(batch, 1, *hw, generator=torch.Generator().manual_seed(batch)).to(device)


def bench_inference(fn: Callable[[torch.Tensor], torch.Tensor], batch: int, hw: tuple[int, int],
                    repeats: int, device: torch.device, clock: Clock) -> float:
    """Median seconds of ``fn(x)`` for a batch of ``batch`` slices (no autograd)."""
    x = _input(batch, hw, device)
    with torch.inference_mode():
        return _median_time(lambda: fn(x), repeats, device, clock)


def _first_call(fn: Callable[[torch.Tensor], torch.Tensor], batch: int, hw: tuple[int, int],
                device: torch.device) -> float:
    """Wall seconds of the first call at this batch size (a compiled network compiles here)."""
    x = _input(batch, hw, device)
    with torch.inference_mode():
        return _timed(lambda: fn(x), device, CLOCKS["wall"])


def _denoise(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: model(x, torch.ones(x.shape[0], device=x.device))


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


def _model(cfg: UNetConfig, hw: tuple[int, int], variant: str, device: torch.device,
           compile: bool = False) -> ScoreModel:
    precision, channels_last = VARIANTS[variant]
    torch.manual_seed(0)
    return ScoreModel(ScoreModelConfig(unet=cfg, image_size=hw), channels_last=channels_last,
                      compile=compile, precision=precision).to(device)


def _x(ref: float, t: float) -> str:
    return f"{ref / t:.2f}x"


def bench_size(name: str, cfg: UNetConfig, args: argparse.Namespace, hw: tuple[int, int],
               dev: torch.device) -> dict[str, dict[str, float]]:
    """Table of every variant of one UNet size; returns the times per variant."""
    nb, clock = args.infer_batch, CLOCKS[args.clock]
    n_params = ScoreModel(ScoreModelConfig(unet=cfg, image_size=hw)).num_parameters
    print(f"\n### {name} ({n_params / 1e6:.2f} M parameters)\n")
    print(f"| precision | train step, batch {args.batch} (s) | x fp32 | train img/s "
          f"| 1 slice (ms) | x fp32 | {nb} slices (ms) | x fp32 | peak mem (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    times: dict[str, dict[str, float]] = {}
    for label in VARIANTS:
        model = _model(cfg, hw, label, dev)
        model.train()
        ts = bench_training(model.training_loss, list(model.parameters()), args.batch, hw,
                            args.repeats, dev, clock)
        model.eval()
        t1 = bench_inference(_denoise(model), 1, hw, args.repeats, dev, clock)
        tb = bench_inference(_denoise(model), nb, hw, args.repeats, dev, clock)
        times[label] = {"train": ts, "one": t1, "batch": tb}
        ref = times["fp32"]
        print(f"| {label} | {ts:.3f} | {_x(ref['train'], ts)} | {args.batch / ts:.1f} "
              f"| {1e3 * t1:.1f} | {_x(ref['one'], t1)} | {1e3 * tb:.1f} | {_x(ref['batch'], tb)} "
              f"| {_peak_mib(dev):.0f} |")
        del model
    if args.diffusers:
        bench_diffusers(name, cfg, args, hw, dev)
    return times


def bench_diffusers(name: str, cfg: UNetConfig, args: argparse.Namespace, hw: tuple[int, int],
                    dev: torch.device) -> None:
    """One float32 row for diffusers' UNet2DModel of the same widths (if importable)."""
    try:
        net = _diffusers_unet(cfg, hw).to(dev)
    except ImportError:
        print(f"| diffusers-{name} (fp32) | not installed | | | | | | | |")
        return

    def loss(x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g, device=g.device)
        eps = torch.randn(x0.shape, generator=g, device=g.device)
        return ((net(x0 + eps, t).sample - eps) ** 2).mean()

    def infer(x: torch.Tensor) -> torch.Tensor:
        return net(x, torch.full((x.shape[0],), 500, device=x.device)).sample

    clock = CLOCKS[args.clock]
    ts = bench_training(loss, list(net.parameters()), args.batch, hw, args.repeats, dev, clock)
    net.eval()
    t1 = bench_inference(infer, 1, hw, args.repeats, dev, clock)
    tb = bench_inference(infer, args.infer_batch, hw, args.repeats, dev, clock)
    print(f"| diffusers-{name} (fp32) | {ts:.3f} | | {args.batch / ts:.1f} | {1e3 * t1:.1f} | "
          f"| {1e3 * tb:.1f} | | {_peak_mib(dev):.0f} |")


def bench_compile(name: str, cfg: UNetConfig, args: argparse.Namespace, hw: tuple[int, int],
                  dev: torch.device, eager: dict[str, dict[str, float]]) -> list[str]:
    """``torch.compile`` of the UNet for inference; prints a table, returns the verdicts."""
    nb, clock = args.infer_batch, CLOCKS[args.clock]
    print(f"\n### torch.compile, {name}, inference (evaluation mode)\n")
    print(f"| precision | first call, 1 slice (s) | first call, {nb} slices (s) | 1 slice (ms) "
          f"| x eager | {nb} slices (ms) | x eager | calls to repay compiling |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for label in COMPILED:
        try:
            model = _model(cfg, hw, label, dev, compile=True).eval()
            c1 = _first_call(_denoise(model), 1, hw, dev)
            cb = _first_call(_denoise(model), nb, hw, dev)
            t1 = bench_inference(_denoise(model), 1, hw, args.repeats, dev, clock)
            tb = bench_inference(_denoise(model), nb, hw, args.repeats, dev, clock)
        except Exception as e:  # noqa: BLE001  (report any compiler failure, keep going)
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            print(f"| {label} + compile | failed | | | | | | |")
            verdicts.append(f"torch.compile FAILED for {name} {label}: {msg}")
            continue
        e1, eb = eager[label]["one"], eager[label]["batch"]
        saved = eb - tb
        repay = f"{(c1 + cb) / saved:.0f} calls of {nb}" if saved > 0 else "never"
        print(f"| {label} + compile | {c1:.1f} | {cb:.1f} | {1e3 * t1:.1f} | {_x(e1, t1)} "
              f"| {1e3 * tb:.1f} | {_x(eb, tb)} | {repay} |")
        pays = tb <= PAYS * eb and t1 <= PAYS * e1
        verdicts.append(
            f"torch.compile {'PAYS' if pays else 'does NOT pay'} for {name} {label}: "
            f"{1e3 * tb:.0f} vs {1e3 * eb:.0f} ms per {nb} slices, {1e3 * t1:.0f} vs "
            f"{1e3 * e1:.0f} ms per slice (eager), after {c1 + cb:.0f} s of compiling "
            f"(pays = at least {100 * (1 - PAYS):.0f} % faster at both batch sizes)")
        del model
    return verdicts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["default"], choices=sorted(SIZES),
                   help="UNet sizes to benchmark (default: the shipped architecture)")
    p.add_argument("--batch", type=int, default=16, help="training batch size")
    p.add_argument("--hw", type=int, nargs=2, default=[112, 112], help="slice height and width")
    p.add_argument("--infer-batch", type=int, default=16, help="slices per denoiser call")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall clock, or the process's CPU time (CPU device; use --threads 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile measurements (they compile for minutes on a CPU)")
    p.add_argument("--volume", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="also time one PerpendicularPrior3D call on a [1, 1, Z, Y, X] volume")
    p.add_argument("--chunk-size", type=int, default=16, help="slices per chunk in the 3D prior")
    p.add_argument("--diffusers", action="store_true",
                   help="also time diffusers' UNet2DModel with matching widths (if importable)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.clock == "cpu" and dev.type != "cpu":
        p.error("--clock cpu times CPU work: use it with --device cpu")
    hw = tuple(args.hw)
    auto = resolve_precision("auto", dev)
    print(f"device {dev}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"train batch {args.batch}, slices {hw[0]}x{hw[1]}, {args.clock} clock (compile "
          f"times: wall); native bfloat16: "
          f"{bf16_native(dev.type)}; precision='auto' here: "
          f"{'bf16 (+ channels-last in evaluation)' if auto == torch.bfloat16 else 'fp32'}")
    verdicts: list[str] = []
    for name in args.sizes:
        eager = bench_size(name, SIZES[name], args, hw, dev)
        if not args.no_compile:
            verdicts += bench_compile(name, SIZES[name], args, hw, dev, eager)
    if verdicts:
        print()
        for v in verdicts:
            print(f"* {v}")
    if args.volume:
        z, y, x = args.volume
        model = _model(SIZES[args.sizes[0]], hw, "fp32", dev).eval()
        model.precision, model.channels_last = "auto", None
        prior = PerpendicularPrior3D({"xy": model, "yz": model, "xz": model},
                                     chunk_size=args.chunk_size)
        vol = torch.randn(1, 1, z, y, x, device=dev)
        with torch.inference_mode():
            tv = _median_time(lambda: prior(vol, torch.ones(1, device=dev)), max(1, args.repeats),
                              dev, CLOCKS[args.clock])
        print(f"\n3D prior ({args.sizes[0]}, precision auto, 3 orientations, chunk "
              f"{args.chunk_size}) on {z}x{y}x{x}: {tv:.2f} s per denoiser call "
              f"({z + y + x} slices, {1e3 * tv / (z + y + x):.1f} ms/slice), peak mem "
              f"{_peak_mib(dev):.0f} MiB")


if __name__ == "__main__":
    main()
