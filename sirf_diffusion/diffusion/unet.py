"""A compact 2D UNet for slice score models (DDPM/ADM family, written for CPU-sized priors).

Architecture (Ho et al. 2020, App. B; Dhariwal & Nichol 2021 "ADM"; Song et al. 2021 DDPM++):

1. time embedding: sinusoidal features of ``time_scale * t`` (Vaswani et al. 2017, Sec. 3.5)
   followed by a 2-layer SiLU MLP of width ``4 * base_channels``;
2. encoder: per resolution level ``i`` ``num_res_blocks`` residual blocks with
   ``base_channels * channel_mults[i]`` channels, each conditioned on the time embedding through a
   per-channel scale and shift after its first GroupNorm (ADM's "AdaGN"), followed by a stride-2
   convolution (no downsampling after the last level);
3. a middle block: residual - self-attention - residual;
4. decoder: mirror image with ``num_res_blocks + 1`` residual blocks per level, each fed the
   concatenated skip connection, and nearest-neighbour upsampling + 3x3 convolution;
5. GroupNorm - SiLU - zero-initialised 3x3 convolution to ``out_channels``.

Self-attention (single head per 64 channels, ``torch.nn.functional.scaled_dot_product_attention``)
is applied only at the downsampling factors listed in ``attention_resolutions``, which should be
the coarse ones: the cost grows with the square of the number of pixels.  Any ``H, W`` divisible by
``2 ** (len(channel_mults) - 1)`` works, including rectangular slices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io.config import dataclass_from_dict

__all__ = ["UNetConfig", "UNet", "timestep_embedding"]


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet`.

    Attributes
    ----------
    in_channels, out_channels
        Image channels (1 for PET slices).
    base_channels
        Channels of the first level; level ``i`` has ``base_channels * channel_mults[i]``.
    channel_mults
        One multiplier per resolution level; ``len - 1`` downsamplings by 2.
    num_res_blocks
        Residual blocks per level in the encoder (the decoder has one more).
    attention_resolutions
        Downsampling factors (1 = full resolution, 2, 4, ...) at which self-attention is used;
        keep them coarse.  The middle block always has attention.
    dropout
        Dropout probability inside residual blocks.
    groupnorm_groups
        Groups of every GroupNorm; must divide every level's channel count.
    time_scale
        The network sees ``time_scale * t``: 1000 for ``t`` in ``[0, 1]`` (continuous VP-SDE),
        1 for DDPM step indices.
    """

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8,)
    dropout: float = 0.0
    groupnorm_groups: int = 8
    time_scale: float = 1000.0
    head_channels: int = field(default=64)

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.in_channels < 1 or self.out_channels < 1 or self.base_channels < 1:
            raise ValueError("in_channels, out_channels and base_channels must be >= 1")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"channel_mults must be non-empty positive integers, "
                             f"got {self.channel_mults}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        factors = {2**i for i in range(len(self.channel_mults))}
        bad = [r for r in self.attention_resolutions if r not in factors]
        if bad:
            raise ValueError(f"attention_resolutions {bad} are not downsampling factors of this "
                             f"UNet (possible: {sorted(factors)})")
        for m in self.channel_mults:
            if (self.base_channels * m) % self.groupnorm_groups:
                raise ValueError(f"groupnorm_groups={self.groupnorm_groups} does not divide "
                                 f"{self.base_channels * m} channels")

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (``2 ** (levels - 1)``)."""
        return 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        return dataclass_from_dict(cls, d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(t w_k), sin(t w_k)]``, ``w_k = max_period^(-k / (dim/2))``."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, time scale/shift, GN-SiLU-dropout-conv, plus (1x1-projected) skip."""

    def __init__(self, c_in: int, c_out: int, temb: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over pixels with a residual connection."""

    def __init__(self, channels: int, groups: int, head_channels: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w) \
            .transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, c/heads]
        return x + self.proj(a.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.ModuleList):
    """Residual block optionally followed by attention (both take the time embedding)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for m in self:
            x = m(x, emb)
        return x


class UNet(nn.Module):
    """Time-conditioned 2D UNet ``net(x [B, C, H, W], t [B]) -> [B, out_channels, H, W]``.

    See the module docstring for the architecture and :class:`UNetConfig` for its options.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or UNetConfig()
        ch, g, temb = cfg.base_channels, cfg.groupnorm_groups, 4 * cfg.base_channels
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def stage(c_in: int, c_out: int, ds: int) -> _Stage:
            mods: list[nn.Module] = [ResBlock(c_in, c_out, temb, g, cfg.dropout)]
            if ds in cfg.attention_resolutions:
                mods.append(Attention(c_out, g, cfg.head_channels))
            return _Stage(mods)

        # encoder: remember the channel count of every skip connection
        self.down = nn.ModuleList()
        skips, c, ds = [ch], ch, 1
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(stage(c, ch * mult, ds))
                c = ch * mult
                skips.append(c)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(_Stage([Downsample(c)]))
                skips.append(c)
                ds *= 2
        self.mid = _Stage([ResBlock(c, c, temb, g, cfg.dropout), Attention(c, g, cfg.head_channels),
                           ResBlock(c, c, temb, g, cfg.dropout)])
        # decoder
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.num_res_blocks + 1):
                st = stage(c + skips.pop(), ch * mult, ds)
                c = ch * mult
                if level > 0 and i == cfg.num_res_blocks:
                    st.append(Upsample(c))
                self.up.append(st)
            ds //= 2
        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = _zero(nn.Conv2d(c, cfg.out_channels, 3, padding=1))

    def check_input(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Raise ``ValueError`` for a wrong layout, channel count or spatial size."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet expects x of shape [B, {cfg.in_channels}, H, W], "
                             f"got {tuple(x.shape)}")
        m = cfg.size_multiple
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"UNet input size {tuple(x.shape[2:])} is not divisible by {m} "
                             f"(= 2**(len(channel_mults) - 1)); pad or crop the slices")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        self.check_input(x, t)
        cfg = self.config
        emb = self.time_mlp(timestep_embedding(t * cfg.time_scale, cfg.base_channels).to(x.dtype))
        h = self.conv_in(x)
        hs = [h]
        for st in self.down:
            h = st(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        for st in self.up:
            h = st(torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
