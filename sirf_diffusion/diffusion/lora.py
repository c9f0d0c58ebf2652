"""Low-rank adapters (LoRA) for the score network: fitted without touching its weights.

A wrapped layer ``W`` (a ``Conv2d`` or ``Linear``) computes (Hu et al., ICLR 2022, Eq. 3)

.. math::

    h = W x + \\frac{\\alpha}{r}\\, B A x, \\qquad A \\in \\mathbb R^{r \\times d_{in}},\\;
    B \\in \\mathbb R^{d_{out} \\times r},

with ``A`` (the down-projection; for a convolution a ``Conv2d`` of ``W``'s kernel, stride and
padding to ``r`` channels) drawn like PyTorch's default (Kaiming-uniform) initialisation and
``B`` (the up-projection; a 1x1 convolution) zero: a fresh adapter leaves the network's output
bit-identical.  Only ``A`` and ``B`` are trainable (float32, also under the network's bfloat16
autocast); the base weights are frozen.  :meth:`LoRA.merge` folds ``(alpha/r) B A`` into ``W``
(no extra cost per evaluation) and :meth:`LoRA.unmerge` restores the exact original weights.

By default every convolution and linear layer of the UNet's residual and attention blocks is
wrapped, as in steerable conditional diffusion's CT code (Barbano et al., arXiv 2308.14409);
:func:`lowest_resolution_layers` names only those of the blocks at the UNet's coarsest
resolution (an adapter there can change large-scale contrast but hardly single voxels).
:meth:`LoRA.save` writes the adapter as safetensors with the sha256 of the base weights (the
same digest :func:`~.modelio.save_model` records for a float32 model) in its metadata;
:func:`load_lora` refuses an adapter saved for other weights.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io.atomic import atomic_write_bytes
from ..io.weights import encode_weights
from .modelio import FORMAT as MODEL_FORMAT
from .unet import Attention, ResBlock, UNet

__all__ = ["LoRALayer", "LoRA", "DEFAULT_BLOCKS", "inject_lora", "load_lora",
           "base_weights_sha256", "block_downsampling", "lowest_resolution_layers",
           "LORA_FORMAT"]

#: Format tag in the metadata of an adapter file.
LORA_FORMAT = "sirf-diffusion-lora/1"
#: Blocks whose convolutions and linear layers get adapters by default.
DEFAULT_BLOCKS: tuple[type[nn.Module], ...] = (ResBlock, Attention)


class LoRALayer(nn.Module):
    """``base(x) + (alpha / rank) * up(down(x))`` around a frozen ``Conv2d`` or ``Linear``."""

    def __init__(self, base: nn.Module, rank: int, alpha: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        w = base.weight
        kw = {"dtype": torch.float32}  # built on the CPU (the generator's), then moved
        if isinstance(base, nn.Conv2d):
            if base.groups != 1 or base.padding_mode != "zeros":
                raise ValueError("LoRA wraps convolutions with groups=1 and zero padding only")
            self.down: nn.Module = nn.Conv2d(base.in_channels, rank, base.kernel_size,  # type: ignore[arg-type]
                                             base.stride, base.padding,  # type: ignore[arg-type]
                                             base.dilation, bias=False, **kw)
            self.up: nn.Module = nn.Conv2d(rank, base.out_channels, 1, bias=False, **kw)
        elif isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False, **kw)
            self.up = nn.Linear(rank, base.out_features, bias=False, **kw)
        else:
            raise TypeError(f"LoRA wraps Conv2d and Linear layers, not {type(base).__name__}")
        # PyTorch's default (Kaiming-uniform) initialisation, from the given generator
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.up.weight)
        self.to(w.device)
        if w.ndim == 4 and w.is_contiguous(memory_format=torch.channels_last) \
                and not w.is_contiguous():
            self.to(memory_format=torch.channels_last)
        self.base, self.rank, self.scale = base, int(rank), float(alpha) / rank
        self._original: torch.Tensor | None = None  # base weight while merged

    @property
    def merged(self) -> bool:
        return self._original is not None

    def delta(self) -> torch.Tensor:
        """``(alpha / rank) B A`` in the shape of the base weight."""
        up = self.up.weight.reshape(self.up.weight.shape[0], self.rank)
        return (self.scale * (up @ self.down.weight.reshape(self.rank, -1))).reshape(
            self.base.weight.shape)

    def merge(self) -> None:
        if not self.merged:
            self._original = self.base.weight.detach().clone()
            with torch.no_grad():
                self.base.weight.add_(self.delta().to(self.base.weight.dtype))

    def unmerge(self) -> None:
        if self._original is not None:
            with torch.no_grad():
                self.base.weight.copy_(self._original)
            self._original = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scale * self.up(self.down(x))


def base_weights_sha256(model: nn.Module) -> str:
    """sha256 of ``model``'s weights (float32, as :func:`~.modelio.save_model` serialises them).

    Refused while the model holds adapters (their weights are not the base model's).
    """
    if any(isinstance(m, LoRALayer) for m in model.modules()):
        raise ValueError("the model already holds LoRA adapters; hash it before injecting them")
    return encode_weights(model.state_dict(), MODEL_FORMAT).sha256


@dataclass
class LoRA:
    """The adapters injected into one model (:func:`inject_lora`), by qualified layer name."""

    layers: dict[str, LoRALayer]
    rank: int
    alpha: float
    base_sha256: str

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (down- and up-projections), float32."""
        for layer in self.layers.values():
            yield from (layer.down.weight, layer.up.weight)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def merge(self) -> None:
        """Fold every adapter into its base weight (exactly undone by :meth:`unmerge`)."""
        for layer in self.layers.values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.layers.values():
            layer.unmerge()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{part}": getattr(layer, part).weight.detach().float().cpu().contiguous()
                for name, layer in self.layers.items() for part in ("down", "up")}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the adapter to ``path`` (safetensors; rank, alpha, layers and the base
        weights' sha256 in the metadata), atomically."""
        from safetensors.torch import save

        meta = {"format": LORA_FORMAT, "base_sha256": self.base_sha256, "rank": str(self.rank),
                "alpha": repr(self.alpha), "layers": json.dumps(sorted(self.layers))}
        return atomic_write_bytes(Path(path), save(self.state_dict(), metadata=meta))


def block_downsampling(model: nn.Module, blocks: tuple[type[nn.Module], ...] = DEFAULT_BLOCKS
                       ) -> dict[str, int]:
    """Downsampling factor of the input of every block of ``blocks`` types inside the
    :class:`~.unet.UNet` s of ``model`` (1: full resolution), by qualified name.

    Measured by one forward pass of each UNet on a zero image of ``4 * size_multiple`` pixels
    (hooks record each block's input size), so it follows any :class:`~.unet.UNetConfig`.
    """
    factors: dict[str, int] = {}
    for prefix, unet in model.named_modules():
        if not isinstance(unet, UNet):
            continue
        cfg = unet.config
        size = 4 * cfg.size_multiple
        hooks = []
        for name, blk in unet.named_modules():
            if isinstance(blk, blocks):
                full = f"{prefix}.{name}" if prefix else name

                def record(_m: nn.Module, args: tuple, full: str = full) -> None:
                    factors[full] = size // int(args[0].shape[-1])
                hooks.append(blk.register_forward_pre_hook(record))
        try:
            p = next(unet.parameters())
            with torch.no_grad():
                unet(torch.zeros(1, cfg.in_channels, size, size, dtype=p.dtype, device=p.device),
                     torch.zeros(1, dtype=p.dtype, device=p.device))
        finally:
            for h in hooks:
                h.remove()
    return factors


def lowest_resolution_layers(model: nn.Module,
                             blocks: tuple[type[nn.Module], ...] = DEFAULT_BLOCKS) -> list[str]:
    """The ``Conv2d``/``Linear`` layers inside the blocks that run at the coarsest resolution
    of each UNet (:func:`block_downsampling`), for :func:`inject_lora`'s ``layers``.

    For the shipped prior (128 x 128 slices, downsampling 8): the blocks at 16 x 16 pixels
    (the last encoder stage, the middle and the first decoder stages), where one pixel is 8 x 8
    voxels: an adapter there can change regional contrast (white against grey matter) but has
    no direct handle on single voxels, hence on the data's Poisson noise.
    """
    factors = block_downsampling(model, blocks)
    if not factors:
        raise ValueError(f"no UNet blocks in {type(model).__name__} to choose layers from")
    deepest = {b for b, f in factors.items() if f == max(factors.values())}
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
            and any(n.startswith(b + ".") for b in deepest)]


def inject_lora(model: nn.Module, rank: int = 8, alpha: float | None = None,
                blocks: tuple[type[nn.Module], ...] = DEFAULT_BLOCKS,
                layers: list[str] | None = None, generator: torch.Generator | None = None
                ) -> LoRA:
    """Wrap layers of ``model`` in place with fresh adapters and freeze everything else.

    Parameters
    ----------
    model
        E.g. a :class:`~.model.ScoreModel`; pass a copy to keep the original unadapted
        (steering does).
    rank, alpha
        ``r`` and ``alpha`` of the module docstring (``alpha`` default: ``rank``, scale 1).
    blocks
        Every ``Conv2d``/``Linear`` inside modules of these types is wrapped.
    layers
        Alternatively the qualified names of the layers to wrap (as :meth:`LoRA.save` records).
    generator
        Source of the down-projections' random initialisation (default: torch's global one).
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"LoRA alpha must be finite and > 0, got {alpha!r}")
    sha = base_weights_sha256(model)
    if layers is None:
        inside = {f"{b}.{n}" if b else n for b, blk in model.named_modules()
                  if isinstance(blk, blocks) for n, _ in blk.named_modules()}
        layers = [n for n, m in model.named_modules()
                  if n in inside and isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError(f"no Conv2d or Linear layer to adapt in {type(model).__name__}")
    named = dict(model.named_modules())
    missing = [n for n in layers if n not in named]
    if missing:
        raise ValueError(f"LoRA layer(s) {missing} are not in {type(model).__name__}")
    model.requires_grad_(False)
    wrapped: dict[str, LoRALayer] = {}
    for name in layers:
        parent, _, attr = name.rpartition(".")
        wrapped[name] = LoRALayer(named[name], rank, alpha, generator)
        setattr(named[parent] if parent else model, attr, wrapped[name])
    return LoRA(wrapped, rank, alpha, sha)


def load_lora(path: str | os.PathLike[str], model: nn.Module) -> LoRA:
    """Inject the adapter saved at ``path`` into ``model`` (in place) and load its weights.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not an adapter file, or saved for other base weights (sha256 mismatch).
    """
    from safetensors import safe_open
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LoRA adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load(path.read_bytes())
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != LORA_FORMAT:
        raise ValueError(f"{path}: not a sirf-diffusion LoRA adapter (format {LORA_FORMAT!r})")
    sha = base_weights_sha256(model)
    if sha != meta.get("base_sha256"):
        raise ValueError(f"{path}: the adapter was fitted to other base weights (sha256 "
                         f"{str(meta.get('base_sha256'))[:12]}..., this model {sha[:12]}...)")
    lora = inject_lora(model, int(meta["rank"]), float(meta["alpha"]),
                       layers=json.loads(meta["layers"]))
    own = lora.state_dict()
    if set(own) != set(tensors):
        raise ValueError(f"{path}: adapter tensors do not match its layer list")
    with torch.no_grad():
        for name, layer in lora.layers.items():
            for part in ("down", "up"):
                w = getattr(layer, part).weight
                t = tensors[f"{name}.{part}"]
                if t.shape != w.shape:
                    raise ValueError(f"{path}: {name}.{part} has shape {tuple(t.shape)}, the "
                                     f"model needs {tuple(w.shape)}")
                w.copy_(t)
    return lora
