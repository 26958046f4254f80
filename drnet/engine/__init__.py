"""The shared training engine: one loop for every task (see :mod:`drnet.engine.trainer`)."""

from __future__ import annotations

from drnet.engine.checkpoint import load_checkpoint, save_checkpoint
from drnet.engine.trainer import (
    Task,
    TrainConfig,
    TrainingInterrupted,
    autocast_context,
    recipe_of,
    train,
)

__all__ = [
    "Task",
    "TrainConfig",
    "TrainingInterrupted",
    "autocast_context",
    "recipe_of",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
