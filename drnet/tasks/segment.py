"""Semantic segmentation: the task for the shared engine, evaluation and prediction.

Library entry points (the CLI ``drnet segment train|eval|predict`` only calls these):

* :class:`SegmentOptions` + :func:`train_segmentation` -> the engine's summary.
* :func:`load_segmentation_model` builds a DRNSeg from any accepted checkpoint (ours, or the
  official DRNSeg ``.pth``).
* :func:`evaluate_segmentation` -> confusion-matrix metrics (mIoU, per-class IoU, pixel accuracy)
  with whole-image, multi-scale/flip or sliding-window inference; :func:`run_evaluation` also
  writes ``metrics.json`` and prints the per-class table.
* :func:`predict_segmentation` writes label PNGs, colour PNGs and overlays for a file, a folder or
  a list of images.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from drnet.data.palettes import colorize, get_palette, overlay
from drnet.data.segmentation import (
    IMAGE_EXTENSIONS,
    SegmentationDataset,
    dataset_info,
    open_segmentation_dataset,
    read_image,
)
from drnet.data.transforms import segmentation_train_transform
from drnet.engine import distributed as D
from drnet.engine.trainer import Task, TrainConfig, autocast_context, train
from drnet.errors import CheckpointError, DataError, DrnetError
from drnet.metrics import ConfusionMatrix, format_iou_table
from drnet.tasks.segment_infer import DEFAULT_SCALES, predict_probs

IGNORE_INDEX = 255

__all__ = [
    "DEFAULT_SCALES",
    "SegmentOptions",
    "SegmentationTask",
    "evaluate_segmentation",
    "load_segmentation_model",
    "predict_segmentation",
    "run_evaluation",
    "segmentation_loss",
    "train_segmentation",
]


@dataclass
class SegmentOptions:
    """What the segmentation task needs besides the engine's :class:`TrainConfig`."""

    data_dir: str = "data"
    arch: str = "drn_d_22"
    num_classes: int | None = None  # default: info.json's "classes", 19 for Cityscapes
    crop_size: int = 896
    random_scale: float | tuple[float, float] = 0.0  # s -> factor in [1/s, s]
    random_rotate: float = 0.0  # degrees
    hflip: bool = True
    layout: str = "auto"  # auto | list | cityscapes | folder
    list_dir: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation (no best model)
    weights: str | None = None  # start from a checkpoint (ours / official DRNSeg / classifier)
    pretrained_backbone: bool = False  # ImageNet weights for the backbone (downloads if needed)
    backbone_weights: str | None = None  # a local classification checkpoint for the backbone
    channels: tuple[int, ...] | None = None  # per-level widths (tiny nets for tests)
    val_scales: tuple[float, ...] = (1.0,)
    val_flip: bool = False
    val_window: int | None = None
    class_names: tuple[str, ...] | None = field(default=None, repr=False)


def segmentation_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross entropy ignoring label 255, for ``{"out": logits}``, the official
    ``(log_softmax, low_res)`` pair or plain logits. A batch whose pixels are all ignored gives
    a zero loss (not NaN)."""
    if isinstance(output, dict):
        logits, is_log_prob = output["out"], False
    elif isinstance(output, (tuple, list)):
        logits, is_log_prob = output[0], True
    else:
        logits, is_log_prob = output, False
    if not (target != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    if is_log_prob:
        return F.nll_loss(logits.float(), target, ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)


def build_segmentation_model(options: SegmentOptions, num_classes: int) -> nn.Module:
    """DRNSeg for ``options`` (``{"out": logits}`` output), initialised as the options say."""
    import drnet

    model = drnet.create_segmentation_model(
        options.arch,
        num_classes=num_classes,
        pretrained_backbone=options.pretrained_backbone,
        backbone_checkpoint=options.backbone_weights,
        channels=options.channels,
    )
    if options.weights:
        _load_weights(model, options.weights)
    return model


class SegmentationTask(Task):
    """DRN semantic segmentation for :func:`drnet.engine.train`.

    Validation scores whole images (or ``val_scales``/``val_flip``/``val_window``) on every rank
    over its shard of the validation set and sums the confusion matrices; the main metric is mIoU.
    """

    name = "segment"
    main_metric = "miou"
    distributed_eval = True

    def __init__(self, options: SegmentOptions) -> None:
        from drnet.models import get_spec

        get_spec(options.arch)  # an unknown --arch fails now, with suggestions
        self.options = options
        self.info = dataset_info(options.data_dir, options.layout, options.train_split)
        if options.layout == "auto" and options.list_dir:
            self.info["layout"] = "list"
        self.num_classes = options.num_classes or self.info["num_classes"]
        if not self.num_classes:
            raise DrnetError(f"the number of classes of {options.data_dir} is unknown: --classes")

    def _open(self, split: str, transforms=None) -> SegmentationDataset:
        return open_segmentation_dataset(
            self.options.data_dir,
            split,
            self.num_classes,
            transforms,
            layout=self.info["layout"],
            list_dir=self.options.list_dir,
        )

    def build_model(self) -> nn.Module:
        return build_segmentation_model(self.options, self.num_classes)

    def train_dataset(self) -> Dataset:
        o = self.options
        transform = segmentation_train_transform(
            o.crop_size,
            self.info["mean"],
            self.info["std"],
            o.random_scale,
            o.random_rotate,
            o.hflip,
        )
        return self._open(o.train_split, transform)

    def val_dataset(self) -> Dataset | None:
        return self._open(self.options.val_split) if self.options.val_split else None

    def loss(self, output, target) -> torch.Tensor:
        return segmentation_loss(output, target)

    def evaluate(self, model, dataset, config: TrainConfig, device) -> dict[str, float]:
        o = self.options
        metrics = evaluate_segmentation(
            model,
            dataset,
            device,
            scales=o.val_scales,
            flip=o.val_flip,
            window=o.val_window,
            amp=config.amp,
            distributed=True,
        )
        return {k: metrics[k] for k in ("miou", "pixel_accuracy", "mean_accuracy")}

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {
            "name": self.name,
            "arch": o.arch,
            "num_classes": self.num_classes,
            "channels": list(o.channels) if o.channels else None,
            "data_dir": str(o.data_dir),
            "layout": self.info["layout"],
            "mean": list(self.info["mean"]),
            "std": list(self.info["std"]),
            "class_names": list(self.info["class_names"] or []) or None,
            "crop_size": o.crop_size,
            "random_scale": o.random_scale,
            "random_rotate": o.random_rotate,
            "weights": o.weights,
        }


def train_segmentation(options: SegmentOptions, config: TrainConfig) -> dict[str, Any]:
    """Train DRNSeg on ``options.data_dir`` with the shared engine; returns its summary."""
    return train(SegmentationTask(options), config)


# -- loading models ------------------------------------------------------------------------------


def _read_checkpoint(path: str | os.PathLike) -> Any:
    from drnet.models.weights import is_url, load_state_dict_file

    if is_url(str(path)):
        return load_state_dict_file(path)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # let the models' loader produce its detailed message
        return load_state_dict_file(path)


def _load_weights(model: nn.Module, path: str | os.PathLike, obj: Any = None) -> None:
    from drnet.models.registry import load_segmentation_state
    from drnet.models.weights import extract_state_dict

    obj = _read_checkpoint(path) if obj is None else obj
    state_dict = extract_state_dict(obj, str(path))
    if "seg.weight" in state_dict and state_dict["seg.weight"].shape[0] != model.seg.out_channels:
        raise CheckpointError(
            f"--weights {path} has {state_dict['seg.weight'].shape[0]} classes but the model has "
            f"{model.seg.out_channels} (--classes, else the dataset's info.json); the "
            f"segmentation head must match: pass --classes {state_dict['seg.weight'].shape[0]}, "
            "or start from ImageNet weights (--pretrained-backbone / --backbone-weights)"
        )
    load_segmentation_state(model, state_dict, str(path))


def load_segmentation_model(
    weights: str | os.PathLike,
    arch: str | None = None,
    num_classes: int | None = None,
    channels: Sequence[int] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A DRNSeg (eval mode, ``{"out": logits}`` output) with ``weights`` loaded, and what the
    checkpoint says about itself.

    ``weights`` is a drnet training checkpoint (architecture, classes and normalisation are read
    from it), the official DRNSeg ``.pth`` (e.g. ``drn_d_22_cityscapes.pth``: pass ``arch``; the
    number of classes is read from ``seg.weight``), or an old training checkpoint
    ``{"state_dict": ...}``. Returns ``(model, meta)`` where ``meta`` may hold ``arch``,
    ``num_classes``, ``mean``, ``std``, ``class_names``.
    """
    import drnet
    from drnet.models.weights import extract_state_dict

    obj = _read_checkpoint(weights)
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("task"), dict):
        meta = dict(obj["task"])
    state_dict = extract_state_dict(obj, str(weights))
    arch = arch or meta.get("arch")
    if not arch:
        raise DrnetError(f"{weights} does not say its architecture: pass --arch (e.g. drn_d_22)")
    file_classes = int(state_dict["seg.weight"].shape[0]) if "seg.weight" in state_dict else None
    if num_classes and file_classes and num_classes != file_classes:
        raise CheckpointError(
            f"{weights} has {file_classes} classes but --classes is {num_classes}"
        )
    num_classes = num_classes or file_classes or meta.get("num_classes")
    if not num_classes:
        raise DrnetError(f"{weights} has no segmentation head: pass --classes")
    channels = channels or meta.get("channels")
    model = drnet.create_segmentation_model(
        arch, num_classes=int(num_classes), channels=tuple(channels) if channels else None
    )
    _load_weights(model, weights, obj)
    meta.update(arch=arch, num_classes=int(num_classes))
    return model.eval(), meta


# -- evaluation ----------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate_segmentation(
    model: nn.Module,
    dataset: SegmentationDataset,
    device: torch.device | str = "cpu",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    stride: int | None = None,
    amp: bool = False,
    distributed: bool = False,
    progress: bool = False,
    save_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score ``model`` on every image of ``dataset`` (one full image at a time).

    Returns :func:`drnet.metrics.segmentation_metrics` (``miou``, ``pixel_accuracy``,
    ``mean_accuracy``, per-class ``iou``/``accuracy``/``pixels``) plus ``confusion_matrix`` and
    ``num_images``. With ``distributed`` each rank scores its shard and the matrices are summed.
    ``save_dir`` also writes each prediction (labels, colour) there.
    """
    device = torch.device(device)
    model.eval()
    num_classes = dataset.num_classes
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    indices = D.shard_indices(len(dataset)) if distributed else range(len(dataset))
    iterator: Any = indices
    if progress and D.is_main_process():
        from tqdm.auto import tqdm

        iterator = tqdm(indices, desc="eval", unit="img", dynamic_ncols=True)
    palette = get_palette(num_classes)
    for i in iterator:
        image, label = dataset[i]
        images = image[None].to(device)
        with autocast_context(device, amp):
            probs = predict_probs(model, images, scales, flip, window, stride)
        pred = probs.argmax(1)[0].cpu()
        cm.update(pred, label)
        if save_dir is not None:
            _save_prediction(pred.numpy(), Path(save_dir), dataset.name(i), palette)
    if distributed:
        cm.all_reduce()
    metrics = cm.compute()
    metrics["confusion_matrix"] = cm.hist.tolist()
    metrics["num_images"] = len(dataset)
    return metrics


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def run_evaluation(
    weights: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "val",
    output_dir: str | os.PathLike = "runs/segment-eval",
    arch: str | None = None,
    num_classes: int | None = None,
    layout: str = "auto",
    list_dir: str | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    stride: int | None = None,
    device: str = "auto",
    amp: bool = False,
    save_predictions: bool = False,
    progress: bool = True,
    print_table: bool = True,
    channels: Sequence[int] | None = None,
    fast: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes ``output_dir/metrics.json`` and prints the table.
    ``channels``: backbone widths of a checkpoint that does not record them (``--channels``).
    ``fast``: run the inference fast path (:func:`drnet.speed.inference.fast_inference`: BN
    folded, fused convs, measured layout; same numbers within 1e-4 relative).

    Runs under ``torchrun`` too: each process scores its shard and rank 0 writes the results.
    """
    ctx = D.init_distributed(device)
    model, meta = load_segmentation_model(weights, arch, num_classes, channels)
    dataset = open_segmentation_dataset(
        data_dir, split, meta["num_classes"], layout=layout, list_dir=list_dir
    )
    from drnet.speed.inference import fast_inference

    model = fast_inference(model.to(ctx.device), enabled=fast)
    out = Path(output_dir)
    metrics = evaluate_segmentation(
        model,
        dataset,
        ctx.device,
        scales,
        flip,
        window,
        stride,
        amp=amp,
        distributed=ctx.is_distributed,
        progress=progress,
        save_dir=out / "predictions" if save_predictions else None,
    )
    names = dataset.class_names or meta.get("class_names")
    result = {
        "miou": metrics["miou"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "mean_accuracy": metrics["mean_accuracy"],
        "per_class": [
            {
                "class": names[c] if names else str(c),
                "iou": metrics["iou"][c],
                "accuracy": metrics["accuracy"][c],
                "pixels": metrics["pixels"][c],
            }
            for c in range(dataset.num_classes)
        ],
        "iou": metrics["iou"],
        "confusion_matrix": metrics["confusion_matrix"],
        "num_images": metrics["num_images"],
        "weights": str(weights),
        "arch": meta["arch"],
        "data_dir": str(data_dir),
        "split": split,
        "scales": list(scales),
        "flip": flip,
        "window": window,
    }
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.json", "w") as f:
            json.dump(_json_safe(result), f, indent=2)
        if print_table:
            print(format_iou_table(metrics, names))
            print(f"wrote {out / 'metrics.json'}", file=sys.stderr)
    result["metrics_json"] = str(out / "metrics.json")
    return result


# -- prediction ----------------------------------------------------------------------------------

SAVE_KINDS = ("labels", "color", "overlay")


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _save_prediction(
    pred: np.ndarray,
    out_dir: Path,
    name: str,
    palette: np.ndarray,
    image: np.ndarray | None = None,
    save: Sequence[str] = ("labels", "color"),
    alpha: float = 0.5,
) -> dict[str, str]:
    written = {}
    dtype = np.uint8 if pred.max(initial=0) < 256 else np.uint16
    if "labels" in save:
        written["labels"] = out_dir / "labels" / f"{name}.png"
        _save_png(pred.astype(dtype), written["labels"])
    colours = colorize(pred, palette) if ("color" in save or "overlay" in save) else None
    if "color" in save:
        written["color"] = out_dir / "color" / f"{name}.png"
        _save_png(colours, written["color"])
    if "overlay" in save and image is not None:
        written["overlay"] = out_dir / "overlay" / f"{name}.png"
        _save_png(overlay(image, colours, alpha), written["overlay"])
    return {k: str(v) for k, v in written.items()}


def collect_inputs(source: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(path, output name)`` of the images of a file, a folder (recursive) or a list file
    (``.txt``, one path per line, relative to the list file's folder)."""
    source = Path(source)
    if source.is_dir():
        found = sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not found:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source}")
        return [(p, str(p.relative_to(source).with_suffix(""))) for p in found]
    if not source.is_file():
        raise DataError(f"input {source} does not exist")
    if source.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in source.read_text().splitlines() if ln.strip()]
        if not lines:
            raise DataError(f"list file {source} is empty")
        return [(source.parent / ln, str(Path(ln).with_suffix(""))) for ln in lines]
    return [(source, source.stem)]


@torch.inference_mode()
def predict_segmentation(
    model: nn.Module,
    inputs: str | os.PathLike | Sequence[tuple[Path, str]],
    output_dir: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    device: torch.device | str = "cpu",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    stride: int | None = None,
    save: Sequence[str] = SAVE_KINDS,
    alpha: float = 0.5,
    amp: bool = False,
    progress: bool = True,
) -> list[dict[str, str]]:
    """Segment images and write ``labels/`` (class-index PNG), ``color/`` (palette PNG: Cityscapes
    colours for 19 classes, generated otherwise) and ``overlay/`` (colours blended over the
    image) under ``output_dir``. ``inputs`` is a file, folder or list file (see
    :func:`collect_inputs`) or ready ``(path, name)`` pairs. Returns the written paths per image.
    """
    unknown = set(save) - set(SAVE_KINDS)
    if unknown:
        raise DrnetError(
            f"--save {', '.join(sorted(unknown))}: choose from {', '.join(SAVE_KINDS)}"
        )
    items = collect_inputs(inputs) if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    device = torch.device(device)
    model.eval()
    palette = get_palette(num_classes)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    out_dir = Path(output_dir)
    iterator: Any = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc="predict", unit="img", dynamic_ncols=True)
    results = []
    for path, name in iterator:
        raw = read_image(path)
        x = ((raw.float() / 255.0 - mean_t) / std_t)[None].to(device)
        with autocast_context(device, amp):
            probs = predict_probs(model, x, scales, flip, window, stride)
        pred = probs.argmax(1)[0].cpu().numpy()
        image = raw.permute(1, 2, 0).numpy()
        results.append(_save_prediction(pred, out_dir, name, palette, image, save, alpha))
    return results
