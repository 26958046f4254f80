"""Semantic segmentation: the task for the shared engine, evaluation and prediction.

Library entry points (the CLI ``drnet segment train|eval|predict`` only calls these):

* :class:`SegmentationTask` (any datasets; :meth:`SegmentationTask.from_options` for a dataset
  folder) + :func:`train_segmentation` -> the engine's summary.
* Trained models come from :func:`drnet.models.loading.load_model` (run folders, drnet
  checkpoints, the official DRNSeg ``.pth``, published weights).
* :func:`evaluate_segmentation` -> confusion-matrix metrics (mIoU, per-class IoU, pixel accuracy)
  with whole-image, multi-scale/flip or sliding-window inference; :func:`run_evaluation` also
  writes ``metrics.json`` and prints the per-class table.
* :func:`predict_segmentation` writes label PNGs, colour PNGs and overlays for a file, a folder or
  a list of images.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from drnet.constants import IGNORE_INDEX
from drnet.data.images import list_names, output_path
from drnet.data.palettes import colorize, get_palette, overlay
from drnet.data.segmentation import (
    IMAGE_EXTENSIONS,
    SegmentationDataset,
    dataset_info,
    open_segmentation_dataset,
    require_labelled_pixels,
)
from drnet.data.text import read_lines
from drnet.data.transforms import segmentation_train_transform
from drnet.data.walk import FolderWalk
from drnet.engine import distributed as D
from drnet.engine.rundir import atomic_write_json
from drnet.engine.trainer import Task, TrainConfig, autocast_context
from drnet.errors import CheckpointError, DataError, DrnetError
from drnet.metrics import (
    ConfusionMatrix,
    bootstrap_miou_interval,
    confusion_matrix,
    format_iou_table,
)
from drnet.models.loading import (
    ModelCard,
    load_model,
    load_state_dict_file,
    logits_of,
    resolve_weights,
)
from drnet.tasks.run_card import train_with_card
from drnet.tasks.segment_infer import DEFAULT_SCALES, check_window, predict_probs

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SCALES",
    "SegmentOptions",
    "SegmentationTask",
    "evaluate_segmentation",
    "predict_segmentation",
    "run_evaluation",
    "segmentation_loss",
    "train_segmentation",
]


@dataclass
class SegmentOptions:
    """What the segmentation task needs besides the engine's :class:`TrainConfig`."""

    data_dir: str = "data"
    model: str = "drn_d_22"
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
    pretrained: bool = False  # start from the published Cityscapes DRNSeg weights of `model`
    pretrained_backbone: bool = False  # ImageNet weights for the backbone (downloads if needed)
    backbone_weights: str | None = None  # a local classification checkpoint for the backbone
    channels: tuple[int, ...] | None = None  # per-level widths (tiny nets for tests)
    val_scales: tuple[float, ...] = (1.0,)
    val_flip: bool = False
    val_window: int | None = None


def segmentation_loss(
    output: Any, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Pixel-wise cross entropy ignoring label 255, for ``{"out": logits}``, the official
    ``(log_softmax, low_res)`` pair or plain logits; ``label_smoothing`` as torch's
    ``cross_entropy`` has it. A batch whose pixels are all ignored gives a zero loss (not NaN)."""
    logits, is_log_prob = logits_of(output), isinstance(output, (tuple, list))
    if not (target != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    if is_log_prob and not label_smoothing:
        return F.nll_loss(logits.float(), target, ignore_index=IGNORE_INDEX)
    # (log-probabilities are logits whose log-sum-exp is 0: cross_entropy takes them as they are)
    return F.cross_entropy(
        logits.float(), target, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
    )


def init_from_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    """Start ``model`` (a DRNSeg) from a checkpoint or run directory: a segmentation checkpoint
    with the same number of classes, or a classifier (its backbone, with a warning)."""
    from drnet.models.registry import load_segmentation_state

    source = resolve_weights(weights).checkpoint
    state_dict = load_state_dict_file(source)
    file_classes = state_dict["seg.weight"].shape[0] if "seg.weight" in state_dict else None
    if file_classes is not None and file_classes != model.seg.out_channels:
        raise CheckpointError(
            f"--weights {source} has {file_classes} classes but the model has "
            f"{model.seg.out_channels} (--num-classes, else the dataset's info.json); the "
            f"segmentation head must match: pass --num-classes {file_classes}, or start from "
            "ImageNet weights (--pretrained-backbone / --backbone-weights)"
        )
    load_segmentation_state(model, state_dict, str(source))


class SegmentationTask(Task):
    """DRN semantic segmentation for :func:`drnet.engine.train`, on any datasets of
    ``(image [3, H, W], label int64 [H, W])``; :meth:`from_options` opens them from a dataset
    folder (list files, Cityscapes, image/mask folders).

    The model is a DRNSeg of ``card.model`` with ``card.num_classes`` classes, started from
    ``weights`` (a segmentation checkpoint or run), the published Cityscapes weights
    (``pretrained``), ``backbone_weights`` (a classifier) or the published ImageNet backbone
    (``pretrained_backbone``). Validation scores whole images (or
    ``val_scales``/``val_flip``/``val_window``) on every rank over its shard of the validation set
    and sums the confusion matrices; the main metric is mIoU.
    """

    name = "segment"
    main_metric = "miou"
    distributed_eval = True

    def __init__(
        self,
        card: ModelCard,
        train_set: Dataset,
        val_set: Dataset | None = None,
        *,
        weights: str | os.PathLike | None = None,
        pretrained: bool = False,
        pretrained_backbone: bool = False,
        backbone_weights: str | os.PathLike | None = None,
        val_scales: Sequence[float] = (1.0,),
        val_flip: bool = False,
        val_window: int | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        from drnet.models import get_spec

        get_spec(card.model)  # an unknown --model fails now, with suggestions
        self.card = card
        self.train_set, self.val_set = train_set, val_set
        self.weights = weights
        self.pretrained = pretrained
        self.pretrained_backbone = pretrained_backbone
        self.backbone_weights = backbone_weights
        self.val_scales, self.val_flip, self.val_window = tuple(val_scales), val_flip, val_window
        self.settings = dict(settings or {})  # recorded in config.json and checkpoints

    @classmethod
    def from_options(cls, options: SegmentOptions) -> SegmentationTask:
        """The task on ``options.data_dir`` with the training augmentation of ``options``."""
        o = options
        info = dataset_info(o.data_dir, o.layout, o.train_split)
        if o.layout == "auto" and o.list_dir:
            info["layout"] = "list"
        num_classes = o.num_classes or info["num_classes"]
        if not num_classes:
            raise DrnetError(f"the number of classes of {o.data_dir} is unknown: --num-classes")
        card = ModelCard(
            model=o.model,
            num_classes=num_classes,
            task="segmentation",
            class_names=list(info["class_names"] or []),
            channels=list(o.channels) if o.channels else None,
            mean=list(info["mean"]),
            std=list(info["std"]),
            crop_size=None,
            resize_size=None,
        )

        def open_split(split: str, transforms=None) -> SegmentationDataset:
            dataset = open_segmentation_dataset(
                o.data_dir, split, num_classes, transforms, layout=info["layout"],
                list_dir=o.list_dir,
            )  # fmt: skip
            require_labelled_pixels(dataset, split)  # all 255: loss 0, mIoU nan
            return dataset

        transform = segmentation_train_transform(
            o.crop_size, info["mean"], info["std"], o.random_scale, o.random_rotate, o.hflip
        )
        settings = {
            "data_dir": str(o.data_dir),
            "layout": info["layout"],
            "crop_size": o.crop_size,
            "random_scale": o.random_scale,
            "random_rotate": o.random_rotate,
            "weights": o.weights,
        }
        return cls(
            card,
            open_split(o.train_split, transform),
            open_split(o.val_split) if o.val_split else None,
            weights=o.weights,
            pretrained=o.pretrained,
            pretrained_backbone=o.pretrained_backbone,
            backbone_weights=o.backbone_weights,
            val_scales=o.val_scales,
            val_flip=o.val_flip,
            val_window=o.val_window,
            settings=settings,
        )

    def build_model(self) -> nn.Module:
        import drnet

        model = drnet.create_segmentation_model(
            self.card.model,
            num_classes=self.card.num_classes,
            pretrained="cityscapes" if self.pretrained else False,
            pretrained_backbone=self.pretrained_backbone,
            backbone_checkpoint=self.backbone_weights,
            channels=tuple(self.card.channels) if self.card.channels else None,
        )
        if self.weights:
            init_from_weights(model, self.weights)
        return model

    def train_dataset(self) -> Dataset:
        return self.train_set

    def val_dataset(self) -> Dataset | None:
        return self.val_set

    def loss(self, output, target, label_smoothing: float = 0.0) -> torch.Tensor:
        return segmentation_loss(output, target, label_smoothing)

    def evaluate(self, model, dataset, config: TrainConfig, device) -> dict[str, float]:
        metrics = evaluate_segmentation(
            model,
            dataset,
            device,
            scales=self.val_scales,
            flip=self.val_flip,
            window=self.val_window,
            amp=config.amp,
            distributed=True,
            fast=False,  # the model is still training
            num_classes=self.card.num_classes,
        )
        return {k: metrics[k] for k in ("miou", "pixel_accuracy", "mean_accuracy")}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.card.to_dict(), "training": self.settings}


def train_segmentation(
    task: SegmentationTask | SegmentOptions, config: TrainConfig, *, should_stop=None
) -> dict[str, Any]:
    """Train DRNSeg with the shared engine (a task, or options naming a dataset folder); writes
    ``model.json`` into the run folder (once the engine has checked everything, so a failed start
    or resume leaves an earlier run intact; see :mod:`drnet.tasks.run_card`) and returns the
    engine's summary."""
    if isinstance(task, SegmentOptions):
        task = SegmentationTask.from_options(task)
    return train_with_card(task, task.card, config, should_stop)


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
    fast: bool = True,
    dtype: str | torch.dtype | None = None,
    num_classes: int | None = None,
    workers: int = 0,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Score ``model`` on every image of ``dataset`` (``(image, label)`` pairs of full images;
    ``workers`` processes read them ahead). Up to ``batch_size`` consecutive images of one size
    go through the network together (the images of a split may differ in size).

    Returns :func:`drnet.metrics.segmentation_metrics` (``miou``, ``pixel_accuracy``,
    ``mean_accuracy``, per-class ``iou``/``accuracy``/``pixels``) plus ``confusion_matrix``,
    ``num_images`` and ``miou_ci95`` (a 95% bootstrap interval over images; None under
    torchrun). With ``distributed`` each rank scores its shard and the matrices are summed.
    ``save_dir`` also writes each prediction (labels, colour) there. ``fast``: run an inference
    copy of the model (:func:`drnet.speed.inference.fast_inference`; ``False`` for a model that is
    still training). ``num_classes`` defaults to ``dataset.num_classes``.
    """
    from drnet.speed.inference import fast_inference

    device = torch.device(device)
    model = fast_inference(model.eval().to(device), enabled=fast, dtype=dtype)
    num_classes = num_classes or dataset.num_classes
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    indices = list(D.shard_indices(len(dataset)) if distributed else range(len(dataset)))
    loader = DataLoader(Subset(dataset, indices), batch_size=None, num_workers=workers)
    iterator: Any = zip(indices, loader, strict=True)
    if progress and D.is_main_process():
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(indices), desc="eval", unit="img", dynamic_ncols=True)
    palette = get_palette(num_classes)
    per_image = []
    batch: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (index, image, label)

    def score_batch() -> None:
        images = torch.stack([image for _, image, _ in batch]).to(device)
        with autocast_context(device, amp):
            probs = predict_probs(model, images, scales, flip, window, stride)
        for (i, _, label), pred in zip(batch, probs.argmax(1).cpu(), strict=True):
            per_image.append(confusion_matrix(pred, label, num_classes, IGNORE_INDEX))
            cm.hist += per_image[-1]
            if save_dir is not None:
                _save_prediction(pred.numpy(), Path(save_dir), dataset.name(i), palette)
        batch.clear()

    for i, (image, label) in iterator:
        if batch and (len(batch) == batch_size or image.shape != batch[0][1].shape):
            score_batch()
        batch.append((i, image, label))
    if batch:
        score_batch()
    if distributed:
        cm.all_reduce()
    metrics = cm.compute()
    metrics["confusion_matrix"] = cm.hist.tolist()
    # resampling images needs them all: one process only (a torchrun shard sees a part)
    metrics["miou_ci95"] = None if distributed else bootstrap_miou_interval(per_image)
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
    model: str | None = None,
    pretrained: bool = False,
    workers: int = 0,
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
    dtype: str | torch.dtype | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Evaluate ``weights`` (anything :func:`drnet.models.loading.load_model` takes) on a split
    of a dataset folder; writes ``output_dir/metrics.json`` and logs the per-class table.
    ``model``, ``num_classes``, ``channels``: for checkpoints that do not record them;
    ``pretrained`` with ``model`` and no ``weights``: the published Cityscapes weights.
    ``workers``: processes reading the images ahead of the model; ``batch_size``: consecutive
    images of one size scored together (see :func:`evaluate_segmentation`).
    ``fast``: run the inference fast path (BN folded, fused convs, measured layout; same numbers
    within 1e-4 relative). ``dtype``: ``--dtype`` (``"bfloat16"`` where the device has it natively,
    see :func:`drnet.engine.precision.inference_dtype`).

    Runs under ``torchrun`` too: each process scores its shard and rank 0 writes the results.
    """
    check_window(window, stride)  # before the model and the data are read
    ctx = D.init_distributed(device)
    network, card = load_model(
        weights,
        model=model,
        pretrained=pretrained,
        task="segmentation",
        num_classes=num_classes,
        channels=channels,
    )
    dataset = open_segmentation_dataset(
        data_dir, split, card.num_classes, layout=layout, list_dir=list_dir
    )
    out = Path(output_dir)
    metrics = evaluate_segmentation(
        network,
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
        fast=fast,
        dtype=dtype,
        workers=workers,
        batch_size=batch_size,
    )
    names = dataset.class_names or card.class_names or None
    result = {
        "miou": metrics["miou"],
        "miou_ci95": metrics["miou_ci95"],
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
        "model": card.model,
        "data_dir": str(data_dir),
        "split": split,
        "scales": list(scales),
        "flip": flip,
        "window": window,
    }
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "metrics.json", _json_safe(result))
        if print_table:
            logger.info("%s", format_iou_table(metrics, names))
        logger.info("wrote %s", out / "metrics.json")
    result["metrics_json"] = str(out / "metrics.json")
    return result


# -- prediction ----------------------------------------------------------------------------------

SAVE_KINDS = ("labels", "color", "overlay")


def check_save_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """``kinds`` (what ``segment predict --save`` writes) when each is one of
    :data:`SAVE_KINDS` and there is at least one; else :class:`DrnetError` (an empty ``--save``
    would predict every image and write nothing)."""
    unknown = set(kinds) - set(SAVE_KINDS)
    if unknown:
        raise DrnetError(
            f"--save {', '.join(sorted(unknown))}: choose from {', '.join(SAVE_KINDS)}"
        )
    if not kinds:
        raise DrnetError(
            f"--save is empty: nothing would be written; give one or more of "
            f"{', '.join(SAVE_KINDS)} (comma-separated)"
        )
    return tuple(kinds)


def _save_png(array: np.ndarray, path: Path) -> None:
    from drnet.engine.rundir import atomic_save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(array, path)


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
        written["labels"] = output_path(out_dir, "labels", f"{name}.png")
        _save_png(pred.astype(dtype), written["labels"])
    colours = colorize(pred, palette) if ("color" in save or "overlay" in save) else None
    if "color" in save:
        written["color"] = output_path(out_dir, "color", f"{name}.png")
        _save_png(colours, written["color"])
    if "overlay" in save and image is not None:
        written["overlay"] = output_path(out_dir, "overlay", f"{name}.png")
        _save_png(overlay(image, colours, alpha), written["overlay"])
    return {k: str(v) for k, v in written.items()}


def collect_inputs(source: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(path, output name)`` of the images of a file, a folder (recursive) or a list file
    (``.txt``, one path per line, relative to the list file's folder)."""
    source = Path(source)
    if source.is_dir():
        found = FolderWalk(source, IMAGE_EXTENSIONS).files  # no hidden folders, no link loops
        if not found:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source}")
        return [(p, str(p.relative_to(source).with_suffix(""))) for p in found]
    if not source.is_file():
        raise DataError(f"input {source} does not exist")
    if source.suffix.lower() == ".txt":
        lines = read_lines(source, "list file")
        if not lines:
            raise DataError(f"list file {source} is empty")
        names = list_names(lines, source.parent)  # absolute and ".." entries stay in -o
        return [(source.parent / ln, name) for ln, name in zip(lines, names, strict=True)]
    return [(source, source.stem)]


def split_inputs(
    data_dir: str | os.PathLike,
    split: str,
    num_classes: int,
    layout: str = "auto",
    list_dir: str | None = None,
) -> list[tuple[Path, str]]:
    """``(path, output name)`` of every image of a dataset split (labels not needed)."""
    dataset = open_segmentation_dataset(
        data_dir, split, num_classes, layout=layout, list_dir=list_dir, require_labels=False
    )
    return [(sample.image, sample.name) for sample in dataset.samples]


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
    fast: bool = True,
    dtype: str | torch.dtype | None = None,
) -> list[dict[str, str]]:
    """Segment images and write ``labels/`` (class-index PNG), ``color/`` (palette PNG: Cityscapes
    colours for 19 classes, generated otherwise) and ``overlay/`` (colours blended over the
    image) under ``output_dir``. ``inputs`` is a file, folder or list file (see
    :func:`collect_inputs`) or ready ``(path, name)`` pairs. Returns the written paths per image.
    ``fast``: the inference fast path (see :func:`evaluate_segmentation`). One image at a time
    through :func:`drnet.tasks.segment_infer.predict_files` (memory bounded with ``window``).
    """
    check_save_kinds(save)
    from drnet.data.images import unique_names
    from drnet.tasks.segment_infer import predict_files

    items = collect_inputs(inputs) if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    names = unique_names([name for _, name in items])  # never one output for two inputs
    items = [(path, name) for (path, _), name in zip(items, names, strict=True)]
    return predict_files(
        model, items, output_dir, mean, std, num_classes, device, scales, flip, window, stride,
        save, alpha, amp, progress, fast, dtype=dtype,
    )  # fmt: skip
