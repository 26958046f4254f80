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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from drnet.constants import IGNORE_INDEX
from drnet.data.images import list_names, output_path, relative_names, unique_names
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
from drnet.engine.rundir import atomic_save_image
from drnet.engine.trainer import Task, TrainConfig, autocast_context
from drnet.errors import CheckpointError, DataError, DrnetError, SettingsError
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
from drnet.speed.inference import fast_inference
from drnet.tasks.common import (
    METRICS_FILE,
    InferenceOptions,
    TrainingResult,
    check_range,
    legacy_options,
    write_metrics,
)
from drnet.tasks.run_card import train_with_card
from drnet.tasks.segment_infer import (
    DEFAULT_SCALES,
    SAVE_KINDS,
    check_save_kinds,
    check_window,
    predict_files,
    predict_probs,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SCALES",
    "SAVE_KINDS",
    "SegmentOptions",
    "SegmentationData",
    "SegmentationEvaluation",
    "SegmentationPredictions",
    "SegmentationSettings",
    "SegmentationTask",
    "SegmentationTrainSettings",
    "check_save_kinds",
    "collect_inputs",
    "evaluate",
    "evaluate_segmentation",
    "predict",
    "predict_segmentation",
    "prediction_items",
    "run_evaluation",
    "score_segmentation",
    "segmentation_loss",
    "split_inputs",
    "train",
    "train_segmentation",
]

MAX_SCALE = 8.0  # of an inference scale: larger ones would not fit any accelerator


@dataclass(frozen=True)
class SegmentationSettings:
    """How :func:`evaluate` and :func:`predict` segment an image; checked when made
    (:class:`drnet.errors.SettingsError`, a ``ValueError``, naming the field).

    ``scales``: average the probabilities over these scales (default 1.0, or
    :data:`DEFAULT_SCALES` with ``multi_scale``); ``flip``: also over the horizontal flip;
    ``window``/``stride``: sliding-window inference for images larger than ``window`` (memory
    bounded; ``stride`` default two thirds of it, never larger). ``batch_size``: consecutive
    images of one size scored together by :func:`evaluate`. Files (written into
    ``output_dir`` as they are made): ``save_predictions`` (label and colour PNGs of every
    evaluated image, in ``output_dir/predictions``), ``save`` (what :func:`predict` writes:
    ``labels``, ``color``, ``overlay``) and ``alpha`` (overlay opacity)."""

    scales: tuple[float, ...] | None = None
    multi_scale: bool = False
    flip: bool = False
    window: int | None = None
    stride: int | None = None
    batch_size: int = 1
    save_predictions: bool = False
    save: tuple[str, ...] = SAVE_KINDS
    alpha: float = 0.5
    output_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        owner = "SegmentationSettings"
        scales = self.scales or (DEFAULT_SCALES if self.multi_scale else (1.0,))
        for scale in scales:
            check_range(owner, "scales", scale, 0, MAX_SCALE, low_open=True)
        object.__setattr__(self, "scales", tuple(float(v) for v in scales))
        if self.window is not None:
            check_range(owner, "window", self.window, 1, integer=True)
        if self.stride is not None:
            check_range(owner, "stride", self.stride, 1, integer=True)
        try:
            check_window(self.window, self.stride)
        except DrnetError as exc:
            raise SettingsError(f"{owner}.stride: {exc}") from None
        check_range(owner, "batch_size", self.batch_size, 1, integer=True)
        check_range(owner, "alpha", self.alpha, 0, 1)
        try:
            object.__setattr__(self, "save", check_save_kinds(tuple(self.save)))
        except DrnetError as exc:
            raise SettingsError(f"{owner}.save: {exc}") from None
        if self.save_predictions and self.output_dir is None:
            raise SettingsError(f"{owner}.output_dir: needed for save_predictions")


@dataclass(frozen=True)
class SegmentationData:
    """A dataset folder (``data_dir``: list files, Cityscapes or image/mask folders, see
    :func:`drnet.data.segmentation.open_segmentation_dataset`; ``layout`` and ``list_dir`` as
    there) and its ``split``; for :func:`predict` also ``inputs``: image files, folders
    (recursive) or list files (``.txt``), with or instead of the split."""

    data_dir: str | os.PathLike | None = None
    split: str | None = "val"
    layout: str = "auto"
    list_dir: str | os.PathLike | None = None
    inputs: tuple[str | os.PathLike, ...] = ()

    def prediction_items(self, num_classes: int) -> list[tuple[Path, str]]:
        """``(path, output name)`` of every input :func:`predict` segments (see
        :func:`prediction_items`)."""
        return prediction_items(self, num_classes)


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

    name = "segmentation"  # "segment" in the runs of earlier releases (still read)
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

        if self.initial_model is not None:
            return self.initial_model
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

    initial_model: nn.Module | None = None  # train(model, ...): start from this network

    def train_dataset(self) -> Dataset:
        return self.train_set

    def val_dataset(self) -> Dataset | None:
        return self.val_set

    def loss(self, output, target, label_smoothing: float = 0.0) -> torch.Tensor:
        return segmentation_loss(output, target, label_smoothing)

    def evaluate(self, model, dataset, config: TrainConfig, device) -> dict[str, float]:
        # the model is still training: no inference copy (fast=False); every rank scores a shard
        options = InferenceOptions(device=str(device), fast=False, amp=config.amp, progress=False)
        settings = SegmentationSettings(
            scales=self.val_scales, flip=self.val_flip, window=self.val_window
        )
        metrics = score_segmentation(
            model, dataset, options, settings, distributed=True, num_classes=self.card.num_classes
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
def score_segmentation(
    model: nn.Module,
    dataset: SegmentationDataset,
    options: InferenceOptions,
    settings: SegmentationSettings,
    *,
    distributed: bool = False,
    num_classes: int | None = None,
    save_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score ``model`` on every image of ``dataset`` (``(image, label)`` pairs of full images;
    ``options.workers`` processes read them ahead): the confusion-matrix metrics behind
    :func:`evaluate` (see :func:`evaluate_segmentation`). With ``distributed`` each rank scores
    its shard and the matrices are summed. ``save_dir`` also receives each prediction (labels,
    colour PNGs)."""
    device = D.resolve_device(options.device)
    model = fast_inference(model.eval().to(device), enabled=options.fast, dtype=options.dtype)
    num_classes = num_classes or dataset.num_classes
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    indices = list(D.shard_indices(len(dataset)) if distributed else range(len(dataset)))
    loader = DataLoader(Subset(dataset, indices), batch_size=None, num_workers=options.workers)
    iterator: Any = zip(indices, loader, strict=True)
    if options.progress and D.is_main_process():
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(indices), desc="eval", unit="img", dynamic_ncols=True)
    palette = get_palette(num_classes)
    per_image = []
    batch: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (index, image, label)
    s = settings

    def score_batch() -> None:
        images = torch.stack([image for _, image, _ in batch]).to(device)
        with autocast_context(device, options.amp):
            probs = predict_probs(model, images, s.scales, s.flip, s.window, s.stride)
        for (i, _, label), pred in zip(batch, probs.argmax(1).cpu(), strict=True):
            per_image.append(confusion_matrix(pred, label, num_classes, IGNORE_INDEX))
            cm.hist += per_image[-1]
            if save_dir is not None:
                _save_prediction(pred.numpy(), Path(save_dir), dataset.name(i), palette)
        batch.clear()

    for i, (image, label) in iterator:
        if batch and (len(batch) == s.batch_size or image.shape != batch[0][1].shape):
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


def evaluate_segmentation(
    model: nn.Module,
    dataset: SegmentationDataset,
    device: torch.device | str = "cpu",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    stride: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score ``model`` on every image of ``dataset`` (``(image, label)`` pairs of full images).
    Kept for one release: :func:`score_segmentation` with the keywords of earlier releases
    (``distributed``, ``save_dir``, ``num_classes``, ``batch_size`` and the runtime keywords
    ``amp``, ``progress`` (False), ``fast``, ``dtype``, ``workers`` that
    :class:`~drnet.tasks.common.InferenceOptions` holds).

    Returns :func:`drnet.metrics.segmentation_metrics` (``miou``, ``pixel_accuracy``,
    ``mean_accuracy``, per-class ``iou``/``accuracy``/``pixels``) plus ``confusion_matrix``,
    ``num_images`` and ``miou_ci95`` (a 95% bootstrap interval over images; None under
    torchrun). Up to ``batch_size`` consecutive images of one size go through the network
    together. ``save_dir`` also writes each prediction (labels, colour) there."""
    kwargs["device"] = device
    options = legacy_options(kwargs, {"progress": False})
    settings = SegmentationSettings(
        scales=tuple(scales), flip=flip, window=window, stride=stride,
        batch_size=kwargs.pop("batch_size", 1),
    )  # fmt: skip
    keywords = {k: kwargs.pop(k) for k in ("distributed", "num_classes", "save_dir") if k in kwargs}
    if kwargs:
        raise TypeError(f"evaluate_segmentation: unexpected keyword(s) {', '.join(kwargs)}")
    return score_segmentation(model, dataset, options, settings, **keywords)


@dataclass
class SegmentationEvaluation:
    """What :func:`evaluate` returns: ``metrics`` (``metrics.json``: ``miou``, ``miou_ci95``,
    ``pixel_accuracy``, ``mean_accuracy``, ``per_class``, ``iou``, ``confusion_matrix``,
    ``num_images`` and what was evaluated) and the class names of the table. Under torchrun only
    rank 0 writes (``is_main``)."""

    metrics: dict[str, Any]
    class_names: list[str] | None = None
    is_main: bool = True
    table: str = field(default="", repr=False)

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """``metrics.json`` (rank 0 only; strict JSON, the IoU of an absent class is null)."""
        if not self.is_main:
            return {}
        return {"metrics": write_metrics(output_dir, self.metrics)}

    def summary_lines(self) -> list[str]:
        """The mIoU."""
        return [f"mIoU {100 * self.metrics['miou']:.2f}"]


def evaluate(
    model: nn.Module,
    card: ModelCard,
    data: SegmentationData | Dataset,
    options: InferenceOptions,
    settings: SegmentationSettings,
) -> SegmentationEvaluation:
    """mIoU, per-class IoU and pixel accuracy of ``model`` on ``data`` (a split of a dataset
    folder, or a dataset of ``(image, label)`` full images such as a
    :class:`~drnet.data.segmentation.SegmentationDataset` or a ``Subset`` of one; its classes
    are the card's when it does not say), with whole-image,
    multi-scale/flip or sliding-window inference (``settings``).

    Runs under ``torchrun`` too: each process scores its shard, the confusion matrices are
    summed and only rank 0 writes (:meth:`SegmentationEvaluation.write`). The per-class table is
    logged."""
    ctx = D.init_distributed(options.device)
    options = options.replace(device=str(ctx.device))
    if isinstance(data, SegmentationData):
        dataset = open_segmentation_dataset(
            data.data_dir, data.split or "val", card.num_classes, layout=data.layout,
            list_dir=data.list_dir,
        )  # fmt: skip
        where = {"data_dir": str(data.data_dir), "split": data.split or "val"}
    else:
        dataset, where = data, {"data_dir": None, "split": None}
    save_dir = Path(settings.output_dir) / "predictions" if settings.save_predictions else None
    num_classes = getattr(dataset, "num_classes", None) or card.num_classes
    metrics = score_segmentation(
        model, dataset, options, settings, distributed=ctx.is_distributed,
        num_classes=num_classes, save_dir=save_dir,
    )  # fmt: skip
    names = getattr(dataset, "class_names", None) or card.class_names or None
    result = {
        "task": "segmentation",
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
            for c in range(num_classes)
        ],
        "iou": metrics["iou"],
        "confusion_matrix": metrics["confusion_matrix"],
        "num_images": metrics["num_images"],
        "model": card.model,
        **where,
        "scales": list(settings.scales),
        "flip": settings.flip,
        "window": settings.window,
        "files": {"metrics": METRICS_FILE},
    }
    if ctx.is_main:
        logger.info("%s", format_iou_table(metrics, names))
    return SegmentationEvaluation(result, names, ctx.is_main)


def run_evaluation(
    weights: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "val",
    output_dir: str | os.PathLike = "runs/segment-eval",
    **kwargs: Any,
) -> dict[str, Any]:
    """Kept for the demo / one release: load ``weights`` (anything
    :func:`drnet.models.loading.load_model` takes), :func:`evaluate` on a split of a dataset
    folder and write ``output_dir/metrics.json``. Keywords of earlier releases: ``model``,
    ``pretrained``, ``num_classes``, ``channels`` (for checkpoints that do not record them),
    ``layout``, ``list_dir``, ``scales``, ``flip``, ``window``, ``stride``, ``batch_size``,
    ``save_predictions``, ``print_table`` (ignored: the table is always logged) and the runtime
    keywords that :class:`~drnet.tasks.common.InferenceOptions` holds. Returns the metrics
    with ``weights`` and ``metrics_json`` (the file)."""
    options = legacy_options(kwargs)
    settings = SegmentationSettings(
        scales=tuple(kwargs.pop("scales", (1.0,))), flip=kwargs.pop("flip", False),
        window=kwargs.pop("window", None), stride=kwargs.pop("stride", None),
        batch_size=kwargs.pop("batch_size", 1),
        save_predictions=kwargs.pop("save_predictions", False), output_dir=output_dir,
    )  # fmt: skip
    data = SegmentationData(
        data_dir, split, kwargs.pop("layout", "auto"), kwargs.pop("list_dir", None)
    )
    kwargs.pop("print_table", None)
    wanted = ("model", "pretrained", "num_classes", "channels")
    load = {k: kwargs.pop(k) for k in wanted if k in kwargs}
    if kwargs:
        raise TypeError(f"run_evaluation: unexpected keyword(s) {', '.join(kwargs)}")
    network, card = load_model(weights, task="segmentation", **load)
    result = evaluate(network, card, data, options, settings)
    result.metrics["weights"] = str(weights)
    result.write(output_dir)
    return {**result.metrics, "metrics_json": str(Path(output_dir) / METRICS_FILE)}


# -- prediction ----------------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path) -> None:
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


def prediction_items(data: SegmentationData, num_classes: int) -> list[tuple[Path, str]]:
    """``(path, output name)`` of every input of ``data``: the split of ``data.data_dir`` (when
    ``data.split``) and ``data.inputs``; files and folders named by
    :data:`drnet.cli.vocab.NAMES_HELP`, list files and the split by their own names, repeats
    suffixed (never one output for two inputs)."""
    items = []
    if data.data_dir and data.split:
        items += split_inputs(data.data_dir, data.split, num_classes, data.layout, data.list_dir)
    files = []  # (position in items, path) of images given as files or in folders
    for source in data.inputs:
        found = collect_inputs(source)
        if Path(source).suffix.lower() != ".txt" or Path(source).is_dir():
            files += [(len(items) + i, path) for i, (path, _) in enumerate(found)]
        items += found
    names = relative_names([path for _, path in files])
    for (position, path), name in zip(files, names, strict=True):
        items[position] = (path, name)
    if not items:
        raise DataError("nothing to predict: give image files/folders/lists, or a split")
    unique = unique_names([name for _, name in items])
    return [(path, name) for (path, _), name in zip(items, unique, strict=True)]


@dataclass
class SegmentationPredictions:
    """What :func:`predict` returns: the files written per image (``outputs``: ``{"labels",
    "color", "overlay"}`` paths) and the images that could not be read (``failed``)."""

    outputs: list[dict[str, str]]
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        """``{"num_images", "num_failed"}``."""
        return {"num_images": len(self.outputs), "num_failed": len(self.failed)}

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Nothing more: the PNGs were written as they were made (``settings.output_dir``)."""
        return {}

    def summary_lines(self) -> list[str]:
        """How many images were predicted."""
        return [f"{len(self.outputs)} image(s) segmented"]


def predict(
    model: nn.Module,
    card: ModelCard,
    data: SegmentationData | Sequence[tuple[Path, str]],
    options: InferenceOptions,
    settings: SegmentationSettings,
) -> SegmentationPredictions:
    """Segment images and write ``labels/`` (class-index PNG), ``color/`` (palette PNG:
    Cityscapes colours for 19 classes, generated otherwise) and ``overlay/`` (colours blended
    over the image) into ``settings.output_dir``, as ``settings.save`` asks, one image at a time
    (:func:`drnet.tasks.segment_infer.predict_files`; memory bounded with ``window``).

    ``data``: the inputs and/or split of a :class:`SegmentationData` (named by
    :func:`prediction_items`; with a ``data_dir``, the images are normalised with that
    dataset's statistics, as evaluation does), or ready ``(path, name)`` pairs. Unreadable
    images are left out and listed in ``failed``."""
    if settings.output_dir is None:
        raise SettingsError("SegmentationSettings.output_dir: predict writes its PNGs there")
    if isinstance(data, SegmentationData):
        items = prediction_items(data, card.num_classes)
        if data.data_dir:  # the dataset's own statistics, as evaluation uses them
            info = dataset_info(data.data_dir, data.layout, data.split or "train")
            card = replace(card, mean=list(info["mean"]), std=list(info["std"]))
    else:
        items = list(data)
    failed: list[tuple[str, str]] = []
    outputs = predict_files(model, card, items, options, settings, failed)
    return SegmentationPredictions(outputs, failed)


def predict_segmentation(
    model: nn.Module,
    inputs: str | os.PathLike | Sequence[tuple[Path, str]],
    output_dir: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    **kwargs: Any,
) -> list[dict[str, str]]:
    """Kept for one release: :func:`predict` of a file, folder or list file (see
    :func:`collect_inputs`), or ready ``(path, name)`` pairs, into ``output_dir``; returns the
    written paths per image. Keywords of earlier releases: ``scales``, ``flip``, ``window``,
    ``stride``, ``save``, ``alpha`` and the runtime keywords that
    :class:`~drnet.tasks.common.InferenceOptions` holds (``device`` default ``"cpu"``)."""
    options = legacy_options(kwargs, {"device": "cpu"})
    settings = SegmentationSettings(
        scales=tuple(kwargs.pop("scales", (1.0,))), flip=kwargs.pop("flip", False),
        window=kwargs.pop("window", None), stride=kwargs.pop("stride", None),
        save=tuple(kwargs.pop("save", SAVE_KINDS)), alpha=kwargs.pop("alpha", 0.5),
        output_dir=output_dir,
    )  # fmt: skip
    if kwargs:
        raise TypeError(f"predict_segmentation: unexpected keyword(s) {', '.join(kwargs)}")
    card = ModelCard(
        model="unknown", num_classes=num_classes, task="segmentation", mean=list(mean),
        std=list(std), crop_size=None, resize_size=None,
    )  # fmt: skip
    if isinstance(inputs, (str, os.PathLike)):
        items = collect_inputs(inputs)
        names = unique_names([name for _, name in items])  # never one output for two inputs
        inputs = [(path, name) for (path, _), name in zip(items, names, strict=True)]
    result = predict(model, card, list(inputs), options, settings)
    if result.failed:
        raise DataError(result.failed[0][1])
    return result.outputs


# -- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentationTrainSettings:
    """What :func:`train` needs besides the model, the card, the data and the options:
    ``config`` (the engine's :class:`~drnet.engine.trainer.TrainConfig`; its device, AMP,
    workers and progress come from the options) and the fields of :class:`SegmentOptions`
    other than the data folder (the model, augmentation, starting weights and validation
    inference). ``should_stop``: see :func:`drnet.engine.train`."""

    config: TrainConfig
    model: str = "drn_d_22"
    num_classes: int | None = None
    crop_size: int = 896
    random_scale: float | tuple[float, float] = 0.0
    random_rotate: float = 0.0
    hflip: bool = True
    train_split: str = "train"
    val_split: str | None = "val"
    weights: str | None = None
    pretrained: bool = False
    pretrained_backbone: bool = False
    backbone_weights: str | None = None
    channels: tuple[int, ...] | None = None
    val_scales: tuple[float, ...] = (1.0,)
    val_flip: bool = False
    val_window: int | None = None
    should_stop: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        owner = "SegmentationTrainSettings"
        check_range(owner, "crop_size", self.crop_size, 0, integer=True)
        check_range(owner, "random_rotate", self.random_rotate, 0, 180)
        if self.num_classes is not None:
            check_range(owner, "num_classes", self.num_classes, 1, integer=True)

    def options_for(self, data: SegmentationData) -> SegmentOptions:
        """The :class:`SegmentOptions` of these settings on the dataset folder of ``data``."""
        names = [k for k in SegmentOptions.__dataclass_fields__ if hasattr(self, k)]
        values = {k: getattr(self, k) for k in names}
        return SegmentOptions(
            data_dir=str(data.data_dir), layout=data.layout, list_dir=data.list_dir, **values
        )


def train(
    model: nn.Module | None,
    card: ModelCard | None,
    data: SegmentationData | str | os.PathLike | tuple,
    options: InferenceOptions,
    settings: SegmentationTrainSettings,
) -> TrainingResult:
    """Train DRNSeg with the shared engine into ``settings.config.output_dir`` (checkpoints,
    ``log.csv``, ``config.json``, ``model.json``; see :func:`train_segmentation`).

    ``data``: a dataset folder (or :class:`SegmentationData` with its layout), or a pair of
    datasets ``(train, val)`` of ``(image, label)`` (then ``card`` names the model and classes).
    ``model``: start from this network instead of building one. ``options``: device, AMP,
    workers and progress of the training (``fast`` and ``dtype`` do not apply)."""
    config = replace(
        settings.config, device=options.device, amp=options.amp, workers=options.workers,
        progress=options.progress,
    )  # fmt: skip
    if isinstance(data, tuple):
        if card is None:
            raise DrnetError("train: datasets need a card naming the model and its classes")
        task = SegmentationTask(
            card, data[0], data[1], weights=settings.weights, pretrained=settings.pretrained,
            pretrained_backbone=settings.pretrained_backbone,
            backbone_weights=settings.backbone_weights, val_scales=settings.val_scales,
            val_flip=settings.val_flip, val_window=settings.val_window,
        )  # fmt: skip
    else:
        if not isinstance(data, SegmentationData):
            data = SegmentationData(data)
        task = SegmentationTask.from_options(settings.options_for(data))
    task.initial_model = model
    summary = train_with_card(task, task.card, config, settings.should_stop)
    return TrainingResult(summary, "mIoU")
