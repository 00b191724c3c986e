"""Exponential moving average of model weights (what checkpoints ship).

The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so that early checkpoints are
not dominated by the random initialisation. Shadow weights are fp32 and live on the model's
device; :meth:`EMA.swapped` temporarily puts them into the model (for saving or evaluation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """EMA of the trainable parameters of ``module``.

    Args:
        module: the model whose ``requires_grad`` parameters are averaged.
        decay: the asymptotic decay.
    """

    def __init__(self, module: nn.Module, *, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.params: dict[str, nn.Parameter] = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow: dict[str, torch.Tensor] = {n: p.detach().float().clone() for n, p in self.params.items()}

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Blend the current weights in (``step`` = optimizer steps taken before this one).

        One multi-tensor kernel for all fp32 parameters on one device (a per-tensor loop is
        hundreds of kernel launches per step for a small U-Net); others one by one.
        """
        w = 1.0 - self.current_decay(step)
        fast = [n for n, p in self.params.items()
                if p.dtype == torch.float32 and p.device == self.shadow[n].device]
        if fast:
            torch._foreach_lerp_([self.shadow[n] for n in fast], [self.params[n].detach() for n in fast], w)
        rest = set(self.params) - set(fast)
        for n in rest:
            self.shadow[n].lerp_(self.params[n].detach().float(), w)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped(self) -> Iterator[None]:
        """Put the EMA weights into the module for the duration of the ``with`` block."""
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        for n, p in self.params.items():
            p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            for n, p in self.params.items():
                p.copy_(saved[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().contiguous().clone() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for n in self.shadow:
            self.shadow[n] = state[n].to(self.shadow[n].device, torch.float32).clone()
