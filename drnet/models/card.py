"""The model card: what rebuilds and feeds a trained model.

:class:`ModelCard` holds the task, architecture, widths, classes, class names and preprocessing.
Training writes it as ``model.json`` in the run folder and inside every checkpoint (the engine's
``"task"`` entry), so either one alone rebuilds the model (:func:`drnet.models.loading.load_model`).

The card is plain data: it imports no model code and no engine, so the engine, the tasks and the
Hub layout can all read and write it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from drnet.atomic import atomic_write_text
from drnet.constants import IMAGENET_MEAN, IMAGENET_STD, default_resize_size
from drnet.data.text import read_json, read_lines
from drnet.errors import DrnetError

MODEL_CARD = "model.json"
TASKS = ("classification", "segmentation")
#: The tasks' other spellings (the command names).
TASK_ALIASES = {"segment": "segmentation", "classify": "classification"}


def task_name(task: str | None) -> str | None:
    """``task`` in the card's spelling (``"segment"`` -> ``"segmentation"``); None stays None."""
    return TASK_ALIASES.get(task, task) if task else None


@dataclass
class ModelCard:
    """What rebuilds and feeds a trained model; ``model.json`` in a run folder, and the ``"task"``
    entry of its checkpoints.

    ``crop_size``/``resize_size`` are the classification eval preprocessing (resize the shorter
    side, centre crop); segmentation feeds whole images and ignores them.
    """

    model: str
    num_classes: int
    task: str = "classification"
    class_names: list[str] = field(default_factory=list)
    channels: list[int] | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_size: int | None = 224
    resize_size: int | None = 256
    training: dict[str, Any] | None = None  # the recipe it was trained with (engine.recipe_of)

    def __post_init__(self) -> None:
        self.task = task_name(self.task) or self.task
        if self.task not in TASKS:
            raise DrnetError(f"model card: unknown task {self.task!r} (one of {', '.join(TASKS)})")

    def names(self) -> list[str]:
        """Class names, or ``"0", "1", ...`` when the card has none."""
        if len(self.class_names) == self.num_classes:
            return list(self.class_names)
        return [str(i) for i in range(self.num_classes)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_eval_size(
        self, crop_size: int | None = None, resize_size: int | None = None
    ) -> ModelCard:
        """A copy with another classification eval preprocessing: ``crop_size`` alone also sets
        the resize to the usual 256/224 ratio."""
        card = replace(self, class_names=list(self.class_names))
        if crop_size:
            card.crop_size, card.resize_size = crop_size, default_resize_size(crop_size)
        if resize_size:
            card.resize_size = resize_size
        return card

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """A card from ``model.json`` or a checkpoint's ``"task"`` entry, including the layouts
        written before the card was shared (classification ``classes``, segmentation ``arch`` and
        ``name: "segment"``)."""
        data = dict(data)
        if "model" not in data and "arch" in data:
            data["model"] = data["arch"]
        if "class_names" not in data and isinstance(data.get("classes"), list):
            data["class_names"] = data["classes"]
        if "task" not in data:
            data["task"] = data.get("name", "classification")
        data["class_names"] = list(data.get("class_names") or [])
        known = {f.name for f in fields(cls)}
        card = cls(**{k: v for k, v in data.items() if k in known and v is not None})
        if card.task == "segmentation":  # whole images: the classification sizes do not apply
            card.crop_size = card.resize_size = None
        return card

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``model.json`` into ``directory`` (atomically)."""
        path = Path(directory) / MODEL_CARD
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelCard:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
            raise DrnetError(f"{path}: cannot read the model card ({exc})") from exc


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line) or a JSON list."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        names = read_json(path, "class names file")
        if not isinstance(names, list):
            raise DrnetError(f"{path}: expected a JSON list of class names")
        return [str(n) for n in names]
    return read_lines(path, "class names file")
