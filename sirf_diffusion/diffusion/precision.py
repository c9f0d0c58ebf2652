"""Numerical precision of the score network: bfloat16 autocast where the hardware has it.

Only the network runs in reduced precision.  The denoiser's adapter maps (``x0_hat`` from the
network output), the noise schedule and all data-consistency maths stay in the iterate's own
dtype (float32/float64): :meth:`~.model.ScoreModel._net` casts the network output back before
it leaves the model.

``'auto'`` (the default of :class:`~.model.ScoreModel`) picks bfloat16 when the device runs it
natively and float32 otherwise:

* CPU: the processor must report AVX512-BF16 or AMX-BF16 (Linux ``/proc/cpuinfo`` flags) and
  PyTorch's oneDNN must accept bfloat16.  On CPUs without these instructions oneDNN emulates
  bfloat16, which is slower than float32, so ``'auto'`` stays float32 there.
* CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer).

``'fp32'`` forces float32 everywhere (reference results, CPUs where bfloat16 misbehaves);
``'bf16'`` forces bfloat16 autocast (slow where emulated).  The environment variable
``SIRF_DIFFUSION_PRECISION`` overrides ``'auto'`` (not an explicit choice) for a whole process.

On this project's development CPU (2 cores with AVX512-BF16) bfloat16 autocast with
channels-last activations runs the shipped UNet about 2x faster than float32
(``benchmarks/bench_denoiser.py``); the effect on the Tweedie estimate and on reconstructions
is measured in docs/precision (``benchmarks/bench_precision.py``).

Inside :mod:`torch.func` transforms (the ``jvp`` of
:meth:`~sirf_diffusion.integrations.prior.DiffusionPrior.multiply_with_Hessian`) the network
runs in float32 whatever the precision: PyTorch's forward-mode derivatives do not support CPU
bfloat16 autocast through GroupNorm (:meth:`~.model.ScoreModel._net`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Literal

import torch

__all__ = ["Precision", "PRECISIONS", "bf16_native", "check_precision", "resolve_precision",
           "network_autocast"]

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
_ENV = "SIRF_DIFFUSION_PRECISION"


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=4)
def bf16_native(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` runs bfloat16 convolutions natively (module docstring)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return False
    if not ({"avx512_bf16", "amx_bf16"} & _cpu_flags()):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def check_precision(precision: str, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming ``name``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype the network runs in: ``torch.bfloat16`` or ``torch.float32``.

    ``'auto'`` reads ``SIRF_DIFFUSION_PRECISION`` first (``fp32`` or ``bf16``), then the
    hardware (:func:`bf16_native`).
    """
    check_precision(precision)
    if precision == "auto":
        env = os.environ.get(_ENV, "").strip()
        if env:
            precision = check_precision(env, f"${_ENV}")
    if precision == "auto":
        precision = "bf16" if bf16_native(torch.device(device).type) else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def network_autocast(dtype: torch.dtype, device: torch.device | str
                     ) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` to ``dtype`` on ``device`` (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
