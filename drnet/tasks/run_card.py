"""The ``model.json`` of a training run: one rule for every task that trains.

The card (:class:`drnet.models.loading.ModelCard`, its ``training`` the recipe of the run) is
written once the engine has claimed the run folder, so a start that fails leaves an earlier run
intact. A resume changes the recipe (``--epochs 2`` continues a 1-epoch run) only once it has
trained: until :func:`drnet.engine.train` returns, the folder keeps the card of the checkpoints
it holds, so a resume that fails (a bad image in its first epoch) leaves ``model.json`` as the
run wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from drnet.engine.trainer import Task, TrainConfig, recipe_of, train
from drnet.models.loading import MODEL_CARD, ModelCard
from drnet.tasks.common import InferenceOptions


def train_with_card(
    task: Task,
    card: ModelCard,
    config: TrainConfig,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """:func:`drnet.engine.train` ``task`` with ``config``, writing ``card`` (with the recipe
    of ``config``) into the run folder as the module docstring says. Returns the summary."""
    card.training = recipe_of(config)
    deferred: list[Path] = []  # rank 0 only: the engine calls write_files there

    def write_files(folder: Path) -> None:
        if config.resume and (Path(folder) / MODEL_CARD).is_file():
            deferred.append(Path(folder))  # the run's card stays until the resume has trained
        else:
            card.save(folder)

    summary = train(task, config, should_stop=should_stop, write_files=write_files)
    for folder in deferred:
        card.save(folder)
    return summary


def train_with_options(
    task: Task,
    config: TrainConfig,
    options: InferenceOptions,
    model: nn.Module | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """:func:`train_with_card` of the task entry points (``train(model, card, data, options,
    settings)``): the device, AMP, loader workers and progress of ``config`` come from
    ``options``, and the training starts from ``model`` when one is given (the task's
    ``initial_model``) instead of the one its card names."""
    config = replace(
        config,
        device=options.device,
        amp=options.amp,
        workers=options.workers,
        progress=options.progress,
    )
    if model is not None:
        task.initial_model = model
    return train_with_card(task, task.card, config, should_stop)
