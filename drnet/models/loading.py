"""Loading: the one way any command or notebook gets a trained model.

:func:`load_model` takes what a user has — a run directory, a drnet checkpoint, an official
``.pth`` (file or URL), a Hub folder, or a registered name with published weights — and returns
the model (eval mode) with its :class:`~drnet.models.card.ModelCard`; :func:`read_run` stops
before building it; :func:`resolve_weights` says where a ``--weights`` value points.
:func:`logits_of` turns any model output (``{"out": ...}``, the official ``(log_softmax,
low_res)`` pair, plain logits) into one tensor whose arg-max/softmax are the predictions.

Its parts live below it and are re-exported here under their old names: reading checkpoint
files in :mod:`drnet.models.checkpoints`, the model card in :mod:`drnet.models.card`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from drnet.constants import CITYSCAPES_MEAN, CITYSCAPES_STD, IMAGENET_MEAN, IMAGENET_STD
from drnet.errors import CheckpointError, DrnetError
from drnet.integrations import hub
from drnet.models.card import (
    MODEL_CARD,
    TASK_ALIASES,
    TASKS,
    ModelCard,
    read_class_names,
    task_name,
)
from drnet.models.checkpoints import (
    CHECKPOINT_NAMES,
    EMA_KEYS,
    StateDict,
    extract_state_dict,
    load_state_dict_file,
    read_checkpoint,
)
from drnet.models.pretrained_cfg import cfg_from_card
from drnet.models.registry import (
    WEIGHTS,
    create_model,
    create_segmentation_model,
    get_weights,
    load_segmentation_state,
)
from drnet.models.weights import is_url, load_into

__all__ = [
    "CHECKPOINT_NAMES",
    "EMA_KEYS",
    "MODEL_CARD",
    "TASKS",
    "LoadedRun",
    "ModelCard",
    "ResolvedWeights",
    "StateDict",
    "build_model",
    "extract_state_dict",
    "load_model",
    "load_state_dict_file",
    "logits_of",
    "read_checkpoint",
    "read_class_names",
    "read_run",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

_TASK_ALIASES = TASK_ALIASES  # the name it had here


# ----------------------------------------------------------------------------- runs


@dataclass
class ResolvedWeights:
    """Where a ``--weights`` value points: a checkpoint (path or URL) and the card found with it."""

    checkpoint: str
    card: ModelCard | None


def resolve_weights(weights: str | os.PathLike) -> ResolvedWeights:
    """A run directory stands for its ``checkpoint_best.pth`` (else ``checkpoint_last.pth``) and
    its ``model.json``; a Hub folder for its ``model.safetensors`` and ``config.json``;
    ``hf-hub:owner/name`` for that repository's folder in huggingface_hub's cache (fetched when
    online); a file for itself (with a ``model.json`` or Hub ``config.json`` beside it, if any);
    a URL for itself."""
    text = str(weights)
    if is_url(text):
        return ResolvedWeights(text, None)
    if text.startswith(hub.HUB_PREFIX):
        folder = hub.hub_folder(text)
        return ResolvedWeights(str(folder / hub.WEIGHTS_NAME), _card_in(folder))
    path = Path(text).expanduser()
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return ResolvedWeights(str(path / name), _card_in(path))
        if hub.is_hub_folder(path):
            return ResolvedWeights(str(path / hub.WEIGHTS_NAME), _card_in(path))
        raise CheckpointError(
            f"--weights {path} is a folder without {' or '.join(CHECKPOINT_NAMES)} "
            f"(or {hub.WEIGHTS_NAME} and {hub.CONFIG_NAME})"
        )
    if not path.is_file():
        raise CheckpointError(f"--weights {path}: does not exist (no such file or run directory)")
    return ResolvedWeights(str(path), _card_in(path.parent))


def _card_in(directory: Path) -> ModelCard | None:
    """``model.json`` in ``directory``, else the card in a Hub ``config.json``."""
    if (directory / MODEL_CARD).is_file():
        return ModelCard.read(directory / MODEL_CARD)
    if (directory / hub.CONFIG_NAME).is_file():
        return hub.card_in_config(directory / hub.CONFIG_NAME)
    return None


def _registered(weights: str) -> tuple[str, str] | None:
    """``NAME`` or ``NAME.TAG`` of registered weights (``drn_d_22``, ``drn_d_22.cityscapes``)."""
    name, _, tag = weights.lower().replace("-", "_").partition(".")
    if tag and (name, tag) in WEIGHTS:
        return name, tag
    if not tag and (name, "imagenet") in WEIGHTS:
        return name, "imagenet"
    return None


def _task_of_state(state_dict: Mapping[str, Tensor]) -> str:
    return "segmentation" if "seg.weight" in state_dict else "classification"


def _classes_of_state(state_dict: Mapping[str, Tensor]) -> int | None:
    for key in ("seg.weight", "fc.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def _default_normalisation(card: ModelCard) -> None:
    """Segmentation checkpoints that do not record their statistics (the official Cityscapes
    files): Cityscapes' for 19 classes, else ImageNet's; said once, since it changes results."""
    if card.task != "segmentation":
        return
    city = card.num_classes == 19
    card.mean, card.std = (
        list(CITYSCAPES_MEAN if city else IMAGENET_MEAN),
        list(CITYSCAPES_STD if city else IMAGENET_STD),
    )
    logger.warning(
        "note: the checkpoint does not record its normalisation; using %s mean/std",
        "Cityscapes" if city else "ImageNet",
    )


def _card_for_checkpoint(
    obj: Any,
    state_dict: Mapping[str, Tensor],
    found: ModelCard | None,
    model: str | None,
    default_model: str | None = None,
) -> ModelCard:
    embedded = obj.get("task") if isinstance(obj, Mapping) else None
    if isinstance(embedded, Mapping) and ("model" in embedded or "arch" in embedded):
        return ModelCard.from_dict(embedded)
    if found is not None:
        return found
    model = model or default_model
    if not model:
        raise DrnetError(
            "the checkpoint does not say its architecture: pass --model (e.g. drn_d_22)"
        )
    num_classes = _classes_of_state(state_dict)
    card = ModelCard(model=model, num_classes=num_classes or 0, task=_task_of_state(state_dict))
    if card.task == "segmentation":
        card.crop_size = card.resize_size = None
        _default_normalisation(card)
    return card


def _card_for_pretrained(model: str, tag: str) -> ModelCard:
    published = get_weights(model, tag)
    return ModelCard(
        model=published.model,
        num_classes=published.num_classes,
        task=published.task,
        class_names=list(published.meta.get("categories") or []),
        mean=list(published.mean),
        std=list(published.std),
        crop_size=published.crop_size if published.task == "classification" else None,
        resize_size=published.resize_size if published.task == "classification" else None,
    )


def _apply_overrides(
    card: ModelCard,
    *,
    model: str | None,
    num_classes: int | None,
    channels: Sequence[int] | None,
    class_names: Sequence[str] | None,
    source: str,
) -> None:
    if model and model.lower().replace("-", "_") != card.model:
        raise CheckpointError(
            f"{source} holds a {card.model}, not a {model}: drop --model or pass other --weights"
        )
    if num_classes and card.num_classes and num_classes != card.num_classes:
        raise CheckpointError(
            f"{source} has {card.num_classes} classes but --num-classes is {num_classes}"
        )
    card.num_classes = card.num_classes or (num_classes or 0) or len(class_names or ())
    if channels and not card.channels:
        card.channels = list(channels)
    if class_names:
        if len(class_names) != card.num_classes:
            raise DrnetError(
                f"--class-names lists {len(class_names)} names but the model has "
                f"{card.num_classes} classes"
            )
        card.class_names = list(class_names)
    if not card.num_classes:
        raise DrnetError(f"{source} has no classifier or segmentation head: pass --num-classes")


def build_model(card: ModelCard) -> nn.Module:
    """A fresh (untrained) model as ``card`` describes it; its ``pretrained_cfg`` carries the
    card's preprocessing (crop size, mean/std, classes), so timm's ``resolve_data_config`` and
    the Hub export read the run's values."""
    channels = tuple(card.channels) if card.channels else None
    if card.task == "segmentation":
        network: nn.Module = create_segmentation_model(
            card.model, num_classes=card.num_classes, channels=channels
        )
    else:
        network = create_model(card.model, num_classes=card.num_classes, channels=channels)
    cfg = network.pretrained_cfg
    network.pretrained_cfg = cfg_from_card(
        card, cfg["first_conv"], classifier=cfg["classifier"], url=cfg["url"], tag=cfg["tag"]
    )
    return network


def _check_task(card: ModelCard, task: str | None, source: str) -> None:
    task = task_name(task)
    if task and task != card.task:
        hint = (
            " (train a segmenter with 'drnet segment train', starting from it with "
            "--backbone-weights)"
            if task == "segmentation"
            else ""
        )
        raise CheckpointError(f"{source} is a {card.task} model, not a {task} one{hint}")


def load_model(
    weights: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    pretrained: bool = False,
    task: str | None = None,
    num_classes: int | None = None,
    channels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    default_model: str | None = None,
    ema: bool = False,
) -> tuple[nn.Module, ModelCard]:
    """A trained model (eval mode, on the CPU) and its :class:`ModelCard`.

    Args:
        weights: a run directory (its best checkpoint, else its last, and its ``model.json``), a
            drnet checkpoint, an official ``.pth`` (path or URL), or the name of registered
            weights (``drn_d_22`` = ImageNet, ``drn_d_22.cityscapes``).
        model: the architecture, needed only for a checkpoint that does not record it (the
            official files); must agree with the checkpoint otherwise.
        pretrained: with ``model`` and no ``weights``: the published weights of ``model``
            (ImageNet, or Cityscapes for ``task="segmentation"``).
        task: ``"classification"`` or ``"segmentation"``: what the caller needs; a checkpoint of
            the other task is refused with one line.
        num_classes: for checkpoints that do not record it (checked against the checkpoint
            when it does); ``channels`` and ``class_names`` likewise.
        channels: see ``num_classes``.
        class_names: see ``num_classes``.
        default_model: the architecture of a checkpoint that records none when ``model`` is not
            given (the default of commands that always assumed one, e.g. ``drn_d_22``).
        ema: load the checkpoint's EMA weights (timm's ``state_dict_ema``) instead.
    """
    if weights is not None and pretrained:
        raise DrnetError("give --weights PATH or --pretrained, not both")
    if weights is None:
        model = model or (default_model if pretrained else None)
        if not (model and pretrained):
            raise DrnetError("pass --weights RUN_DIR_OR_CHECKPOINT (or --model NAME --pretrained)")
        tag = "cityscapes" if task_name(task) == "segmentation" else "imagenet"
        return _load_registered(model, tag, task)
    registered = None if Path(str(weights)).expanduser().exists() else _registered(str(weights))
    if registered is not None:
        return _load_registered(*registered, task)
    loaded = read_run(
        weights,
        model=model,
        task=task,
        num_classes=num_classes,
        channels=channels,
        class_names=class_names,
        default_model=default_model,
        ema=ema,
    )
    network = build_model(loaded.card)
    if loaded.card.task == "segmentation":
        load_segmentation_state(network, loaded.state_dict, str(weights))
    else:
        load_into(network, loaded.state_dict, strict=True, source=str(weights))
    return network.eval(), loaded.card


@dataclass
class LoadedRun:
    """A checkpoint's location, its state dict and the card that describes it."""

    checkpoint: str
    state_dict: dict[str, Tensor]
    card: ModelCard


def read_run(
    weights: str | os.PathLike,
    *,
    model: str | None = None,
    task: str | None = None,
    num_classes: int | None = None,
    channels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    default_model: str | None = None,
    ema: bool = False,
) -> LoadedRun:
    """The checkpoint behind ``weights`` (a run directory, a checkpoint file or URL), its state
    dict and its card, checked against what the caller passes (same meaning as
    :func:`load_model`), without building the model."""
    resolved = resolve_weights(weights)
    obj = read_checkpoint(resolved.checkpoint)
    state_dict = extract_state_dict(obj, resolved.checkpoint, ema=ema)
    card = _card_for_checkpoint(obj, state_dict, resolved.card, model, default_model)
    source = resolved.checkpoint
    # the task first: a classifier given where a segmenter is needed is said to be one, not
    # blamed on a class count
    card.task = _task_of_state(state_dict)  # the tensors decide, whatever a card says
    _check_task(card, task, source)
    _apply_overrides(
        card,
        model=model,
        num_classes=num_classes,
        channels=channels,
        class_names=class_names,
        source=source,
    )
    return LoadedRun(resolved.checkpoint, state_dict, card)


def _load_registered(model: str, tag: str, task: str | None) -> tuple[nn.Module, ModelCard]:
    card = _card_for_pretrained(model, tag)
    _check_task(card, task, f"{model} ({tag} weights)")
    if card.task == "segmentation":
        network = create_segmentation_model(model, card.num_classes, pretrained=tag)
    else:
        network = create_model(model, pretrained=tag, num_classes=card.num_classes)
    return network.eval(), card


# ----------------------------------------------------------------------------- outputs


def logits_of(output: Any) -> Tensor:
    """The class scores in any model output: ``{"out": logits}`` (torchvision convention), the
    official DRNSeg pair ``(log_softmax, low_res)`` (log-probabilities: same arg-max and softmax
    as the logits), or a plain tensor."""
    if isinstance(output, Mapping):
        return output["out"]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output
