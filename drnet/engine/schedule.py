"""Learning-rate schedules, stepped once per iteration.

* ``poly``: ``lr * (1 - it / total) ** power`` (power 0.9), the DRN segmentation schedule.
* ``step``: ``lr * gamma ** (epoch // step)``, the DRN classification schedule (x0.1 every 30).
* ``cosine``: ``lr * 0.5 * (1 + cos(pi * it / total))``.

A warm-up (``warmup_iters`` > 0, as torchvision's references' ``--lr-warmup-epochs``) runs first:
``linear`` ramps the factor from ``warmup_decay`` to 1, ``constant`` holds it at ``warmup_decay``;
the chosen schedule then runs over the remaining iterations (as torchvision's ``SequentialLR`` of
a ``LinearLR``/``ConstantLR`` and the main schedule does).

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
WARMUP_METHODS = ("linear", "constant")


@dataclass
class LRFactor:
    """Multiplier of the base learning rate at a given iteration (picklable, unlike a lambda)."""

    mode: str
    iters_per_epoch: int
    epochs: int
    step: int = 30
    gamma: float = 0.1
    power: float = 0.9
    warmup_iters: int = 0
    warmup_method: str = "linear"
    warmup_decay: float = 0.01  # the factor at the first warm-up iteration

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup_iters:
            if self.warmup_method == "constant":
                return self.warmup_decay
            if self.warmup_method != "linear":
                raise DrnetError(
                    f"--lr-warmup-method {self.warmup_method!r} is not one of "
                    f"{', '.join(WARMUP_METHODS)}"
                )
            return self.warmup_decay + (1.0 - self.warmup_decay) * iteration / self.warmup_iters
        iteration -= self.warmup_iters  # the main schedule starts after the warm-up
        total = max(1, self.iters_per_epoch * self.epochs - self.warmup_iters)
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
    warmup_iters: int = 0,
    warmup_method: str = "linear",
    warmup_decay: float = 0.01,
) -> IterationLR:
    """A per-iteration scheduler for ``optimizer``; call ``.step()`` after every optimizer step.

    ``warmup_iters`` iterations of warm-up (``warmup_method``, from ``warmup_decay``) come first,
    then ``mode`` over the rest of ``iters_per_epoch * epochs``."""
    if mode not in LR_MODES:
        raise DrnetError(f"--lr-mode {mode!r} is not one of {', '.join(LR_MODES)}")
    if warmup_method not in WARMUP_METHODS:
        raise DrnetError(
            f"--lr-warmup-method {warmup_method!r} is not one of {', '.join(WARMUP_METHODS)}"
        )
    if warmup_iters < 0 or not 0.0 < warmup_decay <= 1.0:
        raise DrnetError(
            f"warm-up needs iterations >= 0 and --lr-warmup-decay in (0, 1]; got {warmup_iters} "
            f"and {warmup_decay}"
        )
    factor = LRFactor(
        mode, iters_per_epoch, epochs, step, gamma, power, warmup_iters, warmup_method,
        warmup_decay,
    )  # fmt: skip
    return IterationLR(optimizer, factor)
