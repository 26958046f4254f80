"""Learning-rate schedules, stepped once per iteration.

* ``poly``: ``lr * (1 - it / total) ** power`` (power 0.9), the DRN segmentation schedule.
* ``step``: ``lr * gamma ** (epoch // step)``, the DRN classification schedule (x0.1 every 30).
* ``cosine``: ``lr * 0.5 * (1 + cos(pi * it / total))``.

The schedule is an :class:`IterationLR`: the lr is a pure function of the step count and of the
config it was built from, and its ``state_dict`` holds only the step count. A resumed run thus
continues at the exact position of the interrupted one while following its *current* config
(more ``--epochs`` stretch the poly or cosine curve, another ``--lr`` rescales it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

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


class IterationLR(LRScheduler):
    """``lr = base_lr * factor(step)`` for every parameter group, ``step`` = ``last_epoch``.

    ``base_lrs`` are the optimizer's learning rates when the scheduler is built (the config's
    ``--lr``). :meth:`state_dict` stores only the step count, under torch's name ``last_epoch``,
    so the state dicts of the :class:`~torch.optim.lr_scheduler.LambdaLR` that earlier drnet
    versions saved load too (their ``base_lrs`` and lambdas are ignored, as the current config
    decides them).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: LRFactor) -> None:
        self.factor = factor
        super().__init__(optimizer)

    def lr_at(self, step: int) -> list[float]:
        """The learning rate of each parameter group at iteration ``step``."""
        return [base * self.factor(step) for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def get_last_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Go to the saved step and set the optimizer's lr for it, from the current config.

        Call it after ``optimizer.load_state_dict``, whose param groups carry the saved run's lr.
        """
        self.last_epoch = int(state_dict["last_epoch"])
        groups = self.optimizer.param_groups
        for group, base, lr in zip(groups, self.base_lrs, self.lr_at(self.last_epoch), strict=True):
            group["initial_lr"] = base
            group["lr"] = lr


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    mode: str,
    iters_per_epoch: int,
    epochs: int,
    step: int = 30,
    gamma: float = 0.1,
    power: float = 0.9,
) -> IterationLR:
    """A per-iteration scheduler for ``optimizer``; call ``.step()`` after every optimizer step."""
    if mode not in LR_MODES:
        raise DrnetError(f"--lr-mode {mode!r} is not one of {', '.join(LR_MODES)}")
    return IterationLR(optimizer, LRFactor(mode, iters_per_epoch, epochs, step, gamma, power))
