"""Exponential moving average (EMA) of a network's parameters.

Score networks are evaluated with EMA weights (Song & Ermon 2020; Karras et al. 2022): after each
optimiser step ``n`` (counted from 0)

.. math::

    \\bar\\theta \\leftarrow d_n \\bar\\theta + (1 - d_n)\\, \\theta, \\qquad
    d_n = \\min\\!\\left(d, \\frac{1 + n}{10 + n}\\right)

where the warm-up factor ``(1 + n) / (10 + n)`` (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``) keeps the average from being dominated by the random initialisation early on.
Buffers (e.g. normalisation statistics) are copied, not averaged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA of the parameters of ``model`` (see module docstring).

    Parameters
    ----------
    model
        The network whose parameters are averaged (the unwrapped module, not a DDP wrapper).
    decay
        Asymptotic decay ``d`` in ``[0, 1)``.
    warmup
        Use the ``(1 + n) / (10 + n)`` warm-up; ``False`` uses ``d`` from the first update.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: t.detach().clone() for name, t in _named_state(model).items()}
        self._param_names = {name for name, _ in model.named_parameters()}

    def current_decay(self) -> float:
        """Decay ``d_n`` the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current parameters of ``model`` into the average."""
        d = self.current_decay()
        state = _named_state(model)
        self._check_names(state)
        for name, t in state.items():
            avg = self.shadow[name]
            if name in self._param_names and avg.is_floating_point():
                avg.mul_(d).add_(t.detach().to(avg.device), alpha=1.0 - d)
            else:
                avg.copy_(t.detach())
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the parameters and buffers of ``model`` with the averages."""
        state = _named_state(model)
        self._check_names(state)
        for name, t in state.items():
            t.copy_(self.shadow[name].to(t.device))

    def to(self, device: torch.device | str) -> "EMA":
        """Move the averages to ``device`` (in place); returns ``self``."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only (loadable with ``torch.load(weights_only=True)``)."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.detach().clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the parameter names must match."""
        missing = {"decay", "warmup", "num_updates", "shadow"} - set(state)
        if missing:
            raise KeyError(f"EMA state is missing {sorted(missing)}")
        self._check_names(state["shadow"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for k, v in state["shadow"].items():
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"EMA state: {k!r} has shape {tuple(v.shape)}, "
                                 f"expected {tuple(self.shadow[k].shape)}")
            self.shadow[k] = v.detach().clone().to(self.shadow[k].device, self.shadow[k].dtype)

    def _check_names(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            extra, missing = set(state) - set(self.shadow), set(self.shadow) - set(state)
            raise KeyError(f"EMA and model disagree: unexpected {sorted(extra)[:5]}, "
                           f"missing {sorted(missing)[:5]}")


def _named_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    return state
