"""Learning-rate schedules, stepped once per iteration.

* ``poly``: ``lr * (1 - it / total) ** power`` (power 0.9), the DRN segmentation schedule.
* ``step``: ``lr * gamma ** (epoch // step)``, the DRN classification schedule (x0.1 every 30).
* ``cosine``: ``lr * 0.5 * (1 + cos(pi * it / total))``.

The schedule is a :class:`torch.optim.lr_scheduler.LambdaLR` whose ``last_epoch`` counts
iterations, so its ``state_dict`` restores the exact position on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from drnet.errors import DrnetError

LR_MODES = ("poly", "step", "cosine")


@dataclass
class LRFactor:
    """Multiplier of the base learning rate at a given iteration (picklable, unlike a lambda)."""

    mode: str
    iters_per_epoch: int
    epochs: int
    step: int = 30
    gamma: float = 0.1
    power: float = 0.9

    def __call__(self, iteration: int) -> float:
        total = max(1, self.iters_per_epoch * self.epochs)
        progress = min(iteration, total) / total
        if self.mode == "poly":
            return (1.0 - progress) ** self.power
        if self.mode == "step":
            epoch = iteration // max(1, self.iters_per_epoch)
            return self.gamma ** (epoch // max(1, self.step))
        if self.mode == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        raise DrnetError(f"--lr-mode {self.mode!r} is not one of {', '.join(LR_MODES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    mode: str,
    iters_per_epoch: int,
    epochs: int,
    step: int = 30,
    gamma: float = 0.1,
    power: float = 0.9,
) -> LambdaLR:
    """A per-iteration scheduler for ``optimizer``; call ``.step()`` after every optimizer step."""
    if mode not in LR_MODES:
        raise DrnetError(f"--lr-mode {mode!r} is not one of {', '.join(LR_MODES)}")
    return LambdaLR(optimizer, LRFactor(mode, iters_per_epoch, epochs, step, gamma, power))
