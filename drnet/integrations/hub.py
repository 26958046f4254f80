"""The Hugging Face Hub layout: ``model.safetensors`` + ``config.json`` + ``README.md``.

- :func:`save_pretrained` writes a folder that ``drnet.from_pretrained`` (and, for classifiers,
  timm's ``timm.create_model("hf-hub:owner/name", pretrained=True)``) reads back. ``config.json``
  is timm's layout (``architecture``, ``num_classes``, ``num_features``, ``pretrained_cfg``,
  ``model_args``, ``label_names``) plus a ``drnet`` section holding the run's
  :class:`~drnet.models.loading.ModelCard`.
- :func:`from_pretrained` takes such a folder, a ``.safetensors`` file or a Hub repository
  (``owner/name`` or ``hf-hub:owner/name[@revision]``, fetched by ``huggingface_hub``, which
  honours ``HF_HUB_OFFLINE`` and its cache).

safetensors and huggingface_hub are optional (``pip install 'drnet[hub]'``); they are imported
only here, when a Hub layout is read or written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from drnet.atomic import atomic_write, atomic_write_text
from drnet.errors import CheckpointError, DrnetError

HUB_PREFIX = "hf-hub:"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
README_NAME = "README.md"
_INSTALL = "pip install 'drnet[hub]'"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DrnetError(f"the Hugging Face Hub layout needs {module}: {_INSTALL}") from None


def is_hub_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file()


# ----------------------------------------------------------------------------- reading


def load_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (on the CPU)."""
    _require("safetensors")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc} (not a safetensors file?)") from None


def card_in_config(path: str | os.PathLike) -> Any:
    """The :class:`ModelCard` in a Hub ``config.json`` (its ``drnet`` section, else what timm's
    fields say), or None for a ``config.json`` of another kind (a training run's)."""
    from drnet.models.loading import ModelCard

    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DrnetError(f"{path}: cannot read the Hub config ({exc})") from exc
    if not isinstance(config, Mapping):
        return None
    if isinstance(config.get("drnet"), Mapping) and "card" in config["drnet"]:
        return ModelCard.from_dict(config["drnet"]["card"])
    if "architecture" not in config:
        return None
    cfg = config.get("pretrained_cfg") or {}
    input_size = cfg.get("input_size") or (3, 224, 224)
    crop = int(input_size[-1])
    return ModelCard(
        model=config["architecture"],
        num_classes=int(config.get("num_classes") or cfg.get("num_classes") or 0),
        class_names=list(config.get("label_names") or []),
        channels=(config.get("model_args") or {}).get("channels"),
        mean=list(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=list(cfg.get("std", (0.229, 0.224, 0.225))),
        crop_size=crop,
        resize_size=round(crop / cfg.get("crop_pct", 0.875)),
    )


def hub_folder(location: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of a Hub repository ``hf-hub:owner/name[@revision]`` (``config.json``
    and ``model.safetensors`` fetched into, or found in, huggingface_hub's cache)."""
    _require("huggingface_hub")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = location[len(HUB_PREFIX) :] if location.startswith(HUB_PREFIX) else location
    repo_id, _, revision = repo.partition("@")
    try:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            path = hf_hub_download(repo_id, name, revision=revision or None, cache_dir=cache_dir)
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"{HUB_PREFIX}{repo}: not in the Hugging Face cache and not downloadable "
            f"(offline? {str(exc).splitlines()[0]})"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(f"{HUB_PREFIX}{repo}: {str(exc).splitlines()[0]}") from None
    return Path(path).parent


def hub_state_dict(location: str, cache_dir: str | os.PathLike | None = None) -> dict:
    """The weights of a Hub folder or repository (timm's ``hf-hub:`` route uses this)."""
    folder = hub_folder(location, cache_dir) if location.startswith(HUB_PREFIX) else location
    return load_safetensors(Path(folder) / WEIGHTS_NAME)


def from_pretrained(location: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """A model (eval mode) from a Hub folder, a ``.safetensors`` file, a run, a checkpoint, or a
    Hub repository (``owner/name`` or ``hf-hub:owner/name``); ``kwargs`` go to
    :func:`drnet.load_model`. Its ``pretrained_cfg`` holds the card's preprocessing."""
    from drnet.models.loading import load_model

    text = str(location)
    local = Path(text).expanduser().exists()
    if not local and not text.startswith(HUB_PREFIX) and text.count("/") == 1:
        text = HUB_PREFIX + text
    return load_model(text, **kwargs)[0]


# ----------------------------------------------------------------------------- writing


def card_of(model: nn.Module) -> Any:
    """The :class:`ModelCard` that describes ``model`` (its name, widths, classes and the
    preprocessing in its ``pretrained_cfg``)."""
    from drnet.models.loading import ModelCard
    from drnet.models.registry import SPECS
    from drnet.models.segmentation import DRNSeg

    segmentation = isinstance(model, DRNSeg)
    name = getattr(model, "name", None)
    spec = model.backbone_spec if segmentation else getattr(model, "spec", None)
    if not name or spec is None or name not in SPECS:
        raise DrnetError("save_pretrained needs a drnet model (built by drnet.create_model)")
    widths = [level.channels for level in spec.levels]
    default = [level.channels for level in SPECS[name].levels]
    cfg = model.pretrained_cfg
    crop = int(cfg["input_size"][-1])
    return ModelCard(
        model=name,
        num_classes=model.num_classes,
        task="segmentation" if segmentation else "classification",
        class_names=list(cfg.get("label_names") or []),
        channels=None if widths == default else widths,
        mean=list(cfg["mean"]),
        std=list(cfg["std"]),
        crop_size=None if segmentation else crop,
        resize_size=None if segmentation else round(crop / cfg["crop_pct"]),
    )


def hub_config(model: nn.Module, card: Any) -> dict[str, Any]:
    """``config.json``: timm's fields and drnet's card."""
    import drnet

    dropped = ("architecture", "tag", "hf_hub_id", "source", "file", "url", "label_names")
    pretrained_cfg = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in model.pretrained_cfg.items()
        if k not in dropped
    }
    pretrained_cfg.update(num_classes=card.num_classes, mean=card.mean, std=card.std)
    model_args: dict[str, Any] = {}
    if card.channels:
        model_args["channels"] = list(card.channels)
    if card.task == "segmentation":
        model_args["drnet_task"] = "segmentation"  # timm's route refuses it with one line
    config: dict[str, Any] = {
        "architecture": card.model,
        "num_classes": card.num_classes,
        "num_features": getattr(model, "num_features", None),
        "pretrained_cfg": pretrained_cfg,
        "drnet": {"version": drnet.__version__, "card": card.to_dict()},
    }
    if model_args:
        config["model_args"] = model_args
    if card.class_names:
        config["label_names"] = list(card.class_names)
    return config


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def model_card_text(card: Any, metrics: Mapping[str, Any] | None = None) -> str:
    """``README.md``: what the model is, its preprocessing, its metrics, how to load it."""
    task = "image-classification" if card.task == "classification" else "image-segmentation"
    lines = [
        "---",
        "library_name: drnet",
        f"pipeline_tag: {task}",
        "tags:",
        "- drnet",
        "- dilated-residual-networks",
        *(["- timm"] if card.task == "classification" else []),
        "---",
        "",
        f"# {card.model} ({card.task})",
        "",
        "A Dilated Residual Network (Yu, Koltun, Funkhouser, CVPR 2017) trained with drnet.",
        "",
        "## Preprocessing",
        "",
    ]
    if card.task == "classification" and card.crop_size:
        lines.append(
            f"- resize the shorter side to {card.resize_size or card.crop_size} px (bilinear), "
            f"centre crop {card.crop_size} px"
        )
    else:
        lines.append("- whole images, any size (the output has the input's size)")
    lines += [
        "- RGB scaled to [0, 1], then normalised with",
        f"  mean {', '.join(f'{v:.6g}' for v in card.mean)} and"
        f" std {', '.join(f'{v:.6g}' for v in card.std)}",
        f"- {card.num_classes} classes"
        + (f": {', '.join(card.names())}" if card.class_names else ""),
    ]
    if card.channels:
        lines.append(f"- level widths {', '.join(map(str, card.channels))}")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import drnet",
        'model = drnet.from_pretrained("OWNER/NAME")  # or this folder',
        "```",
    ]
    if card.task == "classification":
        lines += [
            "",
            "or with timm (after `import drnet`):",
            "",
            "```python",
            "import drnet, timm",
            'model = timm.create_model("hf-hub:OWNER/NAME", pretrained=True)',
            "config = timm.data.resolve_data_config(model=model)",
            "```",
        ]
    return "\n".join(lines) + "\n"


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    card: Any = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``directory``
    (each atomically); ``card`` defaults to :func:`card_of` the model. Returns the folder."""
    _require("safetensors")
    from safetensors.torch import save

    card = card if card is not None else card_of(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(directory / WEIGHTS_NAME, "wb") as handle:
        handle.write(save(state, metadata={"format": "pt", "drnet_model": card.model}))
    config = json.dumps(hub_config(model, card), indent=2) + "\n"
    atomic_write_text(directory / CONFIG_NAME, config)
    atomic_write_text(directory / README_NAME, model_card_text(card, metrics))
    return directory


# the metric each task's training selects its best checkpoint by (drnet.tasks)
_MAIN_METRICS = {"classification": "top1", "segmentation": "miou"}


def run_metrics(run: str | os.PathLike) -> dict[str, Any]:
    """What a run folder says about its model: the best epoch and its metric (from the best
    checkpoint) and that epoch's validation row of ``log.csv``; empty for anything else."""
    import csv

    from drnet.models.loading import CHECKPOINT_NAMES, read_checkpoint

    folder = Path(run)
    found = [folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()]
    if not folder.is_dir() or not found:
        return {}
    state = read_checkpoint(found[0])
    metrics: dict[str, Any] = {}
    best_epoch = state.get("best_epoch") if isinstance(state, Mapping) else None
    if best_epoch is not None:
        metrics["best_epoch"] = best_epoch
        task = state.get("task") if isinstance(state.get("task"), Mapping) else {}
        main = _MAIN_METRICS.get(str(task.get("task")), "metric")
        metrics[f"best_{main}"] = state.get("best_metric")
    if (folder / "log.csv").is_file():
        with open(folder / "log.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        chosen = [r for r in rows if str(r.get("epoch")) == str(best_epoch)] or rows[-1:]
        for key, value in (chosen[0] if chosen else {}).items():
            if key.startswith("val_") and value not in ("", None):
                try:
                    metrics[key] = float(value)
                except ValueError:
                    metrics[key] = value
    return metrics
