"""Reading checkpoints and runs: the one way any command or notebook gets a trained model.

- :func:`read_checkpoint` is the only place drnet calls ``torch.load`` (always
  ``weights_only=True``); :func:`extract_state_dict` unwraps every accepted layout.
- :class:`ModelCard` describes a trained model: task, architecture, widths, classes, class names
  and preprocessing. Training writes it as ``model.json`` in the run folder and inside every
  checkpoint (the engine's ``"task"`` entry), so either one alone rebuilds the model.
- :func:`load_model` takes what a user has — a run directory, a drnet checkpoint, an official
  ``.pth`` (file or URL), or a registered name with published weights — and returns the model
  (eval mode) with its card.
- :func:`logits_of` turns any model output (``{"out": ...}``, the official
  ``(log_softmax, low_res)`` pair, plain logits) into one tensor whose arg-max/softmax are the
  predictions.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from drnet.constants import CITYSCAPES_MEAN, CITYSCAPES_STD, IMAGENET_MEAN, IMAGENET_STD
from drnet.errors import CheckpointError, DrnetError
from drnet.models.weights import DRNET_TOP_LEVEL

logger = logging.getLogger(__name__)

MODEL_CARD = "model.json"
CHECKPOINT_NAMES = ("checkpoint_best.pth", "checkpoint_last.pth")
TASKS = ("classification", "segmentation")
_TASK_ALIASES = {"segment": "segmentation", "classify": "classification"}


# ----------------------------------------------------------------------------- files


def read_checkpoint(location: str | os.PathLike, hash_prefix: str | None = None) -> Any:
    """The object stored in a checkpoint file or URL, read with ``weights_only=True``.

    URLs (``http(s)://``, ``file://``) are fetched into torch.hub's cache; ``hash_prefix`` (for
    URLs by default the prefix in the file name, as torch.hub names them) is verified before
    anything is unpickled. A file whose unpickling would run code is refused.
    """
    from drnet.models.weights import check_hash, download, hash_prefix_from_name, is_url

    location = str(location)
    if location.lower().endswith(".safetensors") and not is_url(location):
        from drnet.integrations.hub import load_safetensors

        path = Path(location).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        check_hash(path, hash_prefix)
        return load_safetensors(path)
    if is_url(location):
        if hash_prefix is None:
            hash_prefix = hash_prefix_from_name(urllib.parse.urlparse(location).path)
        path = download(location, hash_prefix)
    else:
        path = Path(location).expanduser()
        if path.is_dir():
            raise CheckpointError(f"checkpoint path is a directory: {path}")
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        check_hash(path, hash_prefix)
    return _torch_load(path)


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``); the legacy format starts with a pickle opcode."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head[:2] == b"PK" or head[:1] == b"\x80"


def _torch_load(path: Path) -> Any:
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a PyTorch file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, unsafe globals, truncated zip files ...
        text = str(exc)
        if "Unsupported global" in text or "Unsupported operand" in text:
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects that would run code when "
                "unpickled (only tensors and plain containers are accepted). If you trust the "
                "file, re-save its state_dict with torch.save(model.state_dict(), ...)"
            ) from None
        message = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {message} (truncated, or not a PyTorch file)"
        ) from None


EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


class StateDict(dict):
    """A state dict that remembers the wrapper prefix stripped from its keys (for errors)."""

    prefix: str = ""


def _tensor_dict(inner: Any) -> bool:
    return (
        isinstance(inner, Mapping)
        and bool(inner)
        and all(isinstance(v, Tensor) for v in inner.values())
    )


def extract_state_dict(
    obj: Any, source: str = "checkpoint", ema: bool = False
) -> dict[str, Tensor]:
    """The model state dict inside any accepted checkpoint object.

    Accepts a bare state dict, the original code's ``{epoch, arch, state_dict, best_prec1}``,
    drnet's training checkpoints ``{"model": ...}``, Lightning's ``.ckpt`` and timm's training
    checkpoints (``{"state_dict": ..., "state_dict_ema": ...}``; ``ema=True`` takes the EMA
    weights and fails when there are none). A prefix in front of the keys that is not one of
    drnet's module names is a wrapper's and is stripped, repeatedly: ``module.`` (DDP),
    ``_orig_mod.`` (torch.compile), ``model.`` (a LightningModule's attribute) and the like.
    Among several prefixes, the one whose keys are a drnet state dict is taken when there is
    exactly one (a LightningModule's loss buffers are left out). The stripped prefix is kept in
    ``StateDict.prefix`` for error messages.
    """
    if isinstance(obj, Mapping):
        names = EMA_KEYS if ema else ("model", "state_dict", "model_state_dict")
        for key in names:
            if _tensor_dict(obj.get(key)):
                obj = obj[key]
                break
        else:
            if ema:
                raise CheckpointError(
                    f"{source} holds no EMA weights (none of {', '.join(EMA_KEYS)}; keys: "
                    f"{', '.join(map(str, list(obj)[:8]))})"
                )
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{source} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})"
        )
    stripped = ""
    while any("." in str(k) for k in tensors):
        groups: dict[str, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            head, _, rest = str(key).partition(".")
            groups.setdefault(head, {})[rest] = value
        if set(groups) & DRNET_TOP_LEVEL:
            break
        # one wrapper attribute holding a drnet model (a LightningModule may also hold a loss)
        wrapped = [
            head
            for head, inner in groups.items()
            if len(groups) == 1 or {k.partition(".")[0] for k in inner} <= DRNET_TOP_LEVEL
        ]
        if len(wrapped) != 1:
            break
        head = wrapped[0]
        if len(groups) > 1:
            left = sorted(k for k in tensors if not str(k).startswith(head + "."))
            logger.info("%s: loading the keys under '%s.', leaving out %s", source, head, left)
        tensors = groups[head]
        stripped += head + "."
    result = StateDict(tensors)
    result.prefix = stripped
    return result


def load_state_dict_file(
    location: str | os.PathLike, hash_prefix: str | None = None, ema: bool = False
) -> dict[str, Tensor]:
    """The state dict in a checkpoint file or URL (see :func:`read_checkpoint`); ``ema``: its
    EMA weights (timm's ``state_dict_ema``)."""
    return extract_state_dict(read_checkpoint(location, hash_prefix), str(location), ema=ema)


# ----------------------------------------------------------------------------- the model card


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
        self.task = _TASK_ALIASES.get(self.task, self.task)
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
        from dataclasses import replace

        from drnet.data.classification import default_resize_size

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
        from drnet.engine.rundir import atomic_write_text

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
    from drnet.data.text import read_json, read_lines

    path = Path(path)
    if path.suffix.lower() == ".json":
        names = read_json(path, "class names file")
        if not isinstance(names, list):
            raise DrnetError(f"{path}: expected a JSON list of class names")
        return [str(n) for n in names]
    return read_lines(path, "class names file")


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
    from drnet.integrations import hub
    from drnet.models.weights import is_url

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
    from drnet.integrations.hub import CONFIG_NAME, card_in_config

    if (directory / CONFIG_NAME).is_file():
        return card_in_config(directory / CONFIG_NAME)
    return None


def _registered(weights: str) -> tuple[str, str] | None:
    """``NAME`` or ``NAME.TAG`` of registered weights (``drn_d_22``, ``drn_d_22.cityscapes``)."""
    from drnet.models.registry import WEIGHTS

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
    from drnet.models.registry import get_weights

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
    import drnet
    from drnet.models.pretrained_cfg import cfg_from_card

    channels = tuple(card.channels) if card.channels else None
    if card.task == "segmentation":
        network: nn.Module = drnet.create_segmentation_model(
            card.model, num_classes=card.num_classes, channels=channels
        )
    else:
        network = drnet.create_model(card.model, num_classes=card.num_classes, channels=channels)
    cfg = network.pretrained_cfg
    network.pretrained_cfg = cfg_from_card(
        card, cfg["first_conv"], classifier=cfg["classifier"], url=cfg["url"], tag=cfg["tag"]
    )
    return network


def _check_task(card: ModelCard, task: str | None, source: str) -> None:
    task = _TASK_ALIASES.get(task, task) if task else None
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
    from drnet.models.registry import load_segmentation_state
    from drnet.models.weights import load_into

    if weights is not None and pretrained:
        raise DrnetError("give --weights PATH or --pretrained, not both")
    if weights is None:
        model = model or (default_model if pretrained else None)
        if not (model and pretrained):
            raise DrnetError("pass --weights RUN_DIR_OR_CHECKPOINT (or --model NAME --pretrained)")
        tag = "cityscapes" if _TASK_ALIASES.get(task, task) == "segmentation" else "imagenet"
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
    import drnet

    card = _card_for_pretrained(model, tag)
    _check_task(card, task, f"{model} ({tag} weights)")
    if card.task == "segmentation":
        network = drnet.create_segmentation_model(model, card.num_classes, pretrained=tag)
    else:
        network = drnet.create_model(model, pretrained=tag, num_classes=card.num_classes)
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
