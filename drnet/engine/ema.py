"""An exponential moving average of the weights (``--model-ema``), as timm and torchvision's
references keep one.

:func:`create_ema` wraps :class:`torch.optim.swa_utils.AveragedModel` (which holds the copy,
counts the updates in its ``n_averaged`` buffer and averages the BatchNorm buffers too with
``use_buffers=True``); :class:`EmaAverage` is its averaging rule::

    decay_n = min(decay, (1 + n) / (10 + n))        # n: updates so far (timm's warm-up)
    ema     = decay_n * ema + (1 - decay_n) * weights

The warm-up lets a short run's average follow the weights early on instead of staying near the
random initialisation; with ``warmup=False`` the decay is constant. Everything the average needs
is in its ``state_dict`` (the copy and ``n_averaged``), so a resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from drnet.errors import DrnetError


class EmaAverage:
    """The ``multi_avg_fn`` of :class:`AveragedModel`: one EMA update of every tensor."""

    def __init__(self, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise DrnetError(f"--model-ema-decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows ``updates`` earlier ones."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def __call__(
        self,
        ema: Sequence[torch.Tensor],
        current: Sequence[torch.Tensor],
        num_averaged: torch.Tensor,
    ) -> None:
        decay = self.decay_at(int(num_averaged))
        floats = [(e, c) for e, c in zip(ema, current, strict=True) if e.is_floating_point()]
        if floats:
            e_list, c_list = zip(*floats, strict=True)
            torch._foreach_lerp_(list(e_list), list(c_list), 1.0 - decay)
        for e, c in zip(ema, current, strict=True):  # integer buffers (num_batches_tracked)
            if not e.is_floating_point():
                e.copy_(c)


def create_ema(model: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers), on the same device, in eval mode.

    AveragedModel copies the module as it is at the first update; until then it holds the
    initial weights."""
    ema = AveragedModel(model, multi_avg_fn=EmaAverage(decay, warmup), use_buffers=True)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema
