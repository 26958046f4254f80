"""Image classification: training on any datasets, evaluation (top-1/top-5, per-class accuracy,
confusion matrix) and prediction with top-k probabilities.

Every function here is what ``drnet classify ...`` and the demo call; a notebook can call them the
same way. Models and their cards come from :func:`drnet.models.loading.load_model`.
Accuracies are fractions in ``[0, 1]``; "top-5" means top-``min(5, num_classes)``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from drnet.data.classification import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFiles,
    default_resize_size,
    eval_transform,
    image_folder,
    list_images,
    ten_crop_transform,
    train_transform,
)
from drnet.data.images import SkipBad
from drnet.engine.distributed import resolve_device
from drnet.engine.rundir import atomic_csv, atomic_save_image, atomic_write_json
from drnet.engine.trainer import Task, TrainConfig, autocast_context
from drnet.errors import DataError, DrnetError
from drnet.metrics import wilson_interval
from drnet.models.loading import ModelCard, logits_of
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

logger = logging.getLogger(__name__)

CONFUSION_IMAGE_MAX_CLASSES = 30

#: The file name of earlier releases, still read (``drnet.tasks.common.read_metrics``).
OLD_METRICS_FILE = "classification_metrics.json"

__all__ = [
    "CONFUSION_IMAGE_MAX_CLASSES",
    "ClassificationData",
    "ClassificationEvaluation",
    "ClassificationPredictions",
    "ClassificationResult",
    "ClassificationSettings",
    "ClassificationTask",
    "ClassificationTrainSettings",
    "evaluate",
    "evaluate_classifier",
    "folder_dataset",
    "match_split_classes",
    "predict",
    "predict_classes",
    "report_metrics",
    "resolve_splits",
    "save_confusion_matrix_png",
    "score_classifier",
    "top_classes",
    "topk_correct",
    "train",
    "train_classifier",
    "write_classification_report",
    "write_predictions",
]


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClassificationSettings:
    """How :func:`evaluate` and :func:`predict` score images (checked when made).

    ``batch_size``: images per forward pass (ten-crop counts images, the model sees ten times
    as many crops). ``ten_crop``: ten-crop testing (the DRN paper's Table 1; evaluation only).
    ``top_k``: classes listed per image by :func:`predict` (capped at the number of classes).
    """

    batch_size: int = 32
    ten_crop: bool = False
    top_k: int = 5

    def __post_init__(self) -> None:
        check_range("ClassificationSettings", "batch_size", self.batch_size, 1, integer=True)
        check_range("ClassificationSettings", "top_k", self.top_k, 1, integer=True)


@dataclass(frozen=True)
class ClassificationTrainSettings:
    """What :func:`train` needs besides the model, the card, the data and the options.

    ``config``: the engine's :class:`drnet.engine.trainer.TrainConfig` (epochs, batch size,
    learning rate, output folder...; its device, AMP, workers and progress come from the
    :class:`~drnet.tasks.common.InferenceOptions` given to :func:`train`). Without a card the
    model and the preprocessing are ``model``, ``channels``, ``crop_size``, ``resize_size``
    (the class names come from the training folder). ``crop_scale``: the smallest
    RandomResizedCrop area; ``auto_augment``: a policy of
    :func:`drnet.data.classification.auto_augment_transform`. ``pretrained``: start from the
    published ImageNet weights; ``weights``: from a checkpoint. ``eval_batch_size``: batch of
    the per-epoch validation (default: the training batch). ``should_stop``: see
    :func:`drnet.engine.train`."""

    config: TrainConfig
    model: str = "drn_d_22"
    channels: tuple[int, ...] | None = None
    crop_size: int = 224
    resize_size: int | None = None
    crop_scale: float = 0.08
    auto_augment: str | None = None
    pretrained: bool = False
    weights: str | os.PathLike | None = None
    eval_batch_size: int | None = None
    should_stop: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        owner = "ClassificationTrainSettings"
        check_range(owner, "crop_size", self.crop_size, 1, integer=True)
        check_range(owner, "crop_scale", self.crop_scale, 0, 1, low_open=True)
        if self.resize_size is not None:
            check_range(owner, "resize_size", self.resize_size, 1, integer=True)
        if self.eval_batch_size is not None:
            check_range(owner, "eval_batch_size", self.eval_batch_size, 1, integer=True)


# ----------------------------------------------------------------------------- classes


def match_split_classes(split_classes: Sequence[str], card: ModelCard, split: str) -> list[int]:
    """Model class index of each class folder of a split (``ImageFolder.classes``).

    With named classes on the card every folder must be one of them. Without names, a split with
    exactly ``num_classes`` folders is taken in sorted order (ImageNet's synset folders and the
    official checkpoints agree this way) and the card takes their names.
    """
    if card.class_names:
        unknown = [c for c in split_classes if c not in card.class_names]
        if unknown:
            shown = ", ".join(card.class_names[:10])
            shown += "..." if len(card.class_names) > 10 else ""
            raise DataError(
                f"{split}: class folder(s) {', '.join(unknown[:5])} are not classes of the model "
                f"(it knows {shown})"
            )
        return [card.class_names.index(c) for c in split_classes]
    if len(split_classes) != card.num_classes:
        raise DataError(
            f"{split}: {len(split_classes)} class folders but the model has {card.num_classes} "
            "classes and no class names; pass --class-names FILE (one name per line)"
        )
    card.class_names = list(split_classes)
    return list(range(len(split_classes)))


# ----------------------------------------------------------------------------- evaluation


def topk_correct(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows of ``logits`` ``[N, C]`` have ``target`` among their top-``k`` (``k`` capped
    at ``C``), for each ``k`` in ``ks``."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == target[:, None]
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


@dataclass
class ClassificationResult:
    """Accumulated counts of a classification evaluation."""

    class_names: list[str]
    confusion: Tensor  # [C, C] int64, rows = true class, columns = predicted class
    topk: dict[int, int] = field(default_factory=lambda: {1: 0, 5: 0})
    loss_sum: float = 0.0
    num_images: int = 0
    ten_crop: bool = False  # scores averaged over ten crops (recorded in the report)

    @classmethod
    def empty(cls, class_names: Sequence[str]) -> ClassificationResult:
        n = len(class_names)
        return cls(list(class_names), torch.zeros(n, n, dtype=torch.long))

    def update(self, logits: Tensor, target: Tensor) -> None:
        logits, target = logits.detach().float().cpu(), target.cpu()
        n = self.confusion.shape[0]
        pred = logits.argmax(dim=1)
        self.confusion += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)
        for k, hits in topk_correct(logits, target, tuple(self.topk)).items():
            self.topk[k] += hits
        self.loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        self.num_images += int(target.numel())

    def per_class_accuracy(self) -> dict[str, float | None]:
        """Recall of each class (``None`` for a class with no images)."""
        totals = self.confusion.sum(dim=1)
        return {
            name: (float(self.confusion[i, i]) / float(totals[i]) if totals[i] else None)
            for i, name in enumerate(self.class_names)
        }

    def metrics(self) -> dict:
        """``top1``, ``top5`` (with 95% Wilson intervals ``top1_ci95``/``top5_ci95``), ``loss``,
        ``num_images``, ``num_classes``, ``per_class_accuracy`` and ``mean_class_accuracy`` (over
        classes with images)."""
        n = max(self.num_images, 1)
        per_class = self.per_class_accuracy()
        present = [v for v in per_class.values() if v is not None]
        return {
            "top1": self.topk[1] / n,
            "top1_ci95": wilson_interval(self.topk[1], self.num_images),
            "top5": self.topk[5] / n,
            "top5_ci95": wilson_interval(self.topk[5], self.num_images),
            "loss": self.loss_sum / n,
            "num_images": self.num_images,
            "num_classes": len(self.class_names),
            "mean_class_accuracy": sum(present) / len(present) if present else None,
            "per_class_accuracy": per_class,
        }


def _batches(data: Dataset | DataLoader, batch_size: int, workers: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=False)


@torch.no_grad()
def score_classifier(
    model: nn.Module,
    data: Dataset | DataLoader,
    class_names: Sequence[str],
    options: InferenceOptions,
    settings: ClassificationSettings,
) -> ClassificationResult:
    """Run ``model`` over ``data`` (a dataset or loader of ``(image, target)``) and count top-1,
    top-5, per-class hits and the confusion matrix (the counting behind :func:`evaluate`).

    ``options.fast``: run an inference copy of the model (BN folded, fused convolutions; the
    same numbers within 1e-4 relative); ``False`` for a model that is still training (the copy
    costs a packing pass). ``settings.ten_crop``: images are ``[10, 3, h, w]`` each
    (:func:`folder_dataset` with ``ten_crop=True``); an image's class scores are the mean of its
    ten crops' softmax probabilities, and the metrics (loss included) are computed from those.
    """
    device = resolve_device(options.device)
    runner = fast_inference(model.eval().to(device), enabled=options.fast, dtype=options.dtype)
    result = ClassificationResult.empty(class_names)
    result.ten_crop = ten_crop = settings.ten_crop
    loader = _batches(data, settings.batch_size, options.workers)
    for images, target in tqdm(loader, desc="eval", disable=not options.progress, leave=False):
        _check_batch_shape(images, ten_crop)
        images = images.to(device, non_blocking=True)
        if ten_crop:
            logits = _ten_crop_log_probabilities(runner, images, device, options.amp)
        else:
            with autocast_context(device, options.amp):
                logits = logits_of(runner(images))
        result.update(logits, target)
    return result


def evaluate_classifier(
    model: nn.Module,
    data: Dataset | DataLoader,
    class_names: Sequence[str],
    device: str | torch.device = "auto",
    **kwargs: Any,
) -> ClassificationResult:
    """Kept for the demo / one release: :func:`score_classifier` with the keywords of earlier
    releases (``batch_size=64``, ``ten_crop``, and the runtime keywords ``workers``, ``amp``,
    ``fast``, ``dtype``, ``progress`` that :class:`~drnet.tasks.common.InferenceOptions`
    holds). New code calls :func:`evaluate`."""
    kwargs["device"] = device
    options = legacy_options(kwargs)
    settings = ClassificationSettings(
        batch_size=kwargs.pop("batch_size", 64), ten_crop=kwargs.pop("ten_crop", False)
    )
    if kwargs:
        raise TypeError(f"evaluate_classifier: unexpected keyword(s) {', '.join(kwargs)}")
    return score_classifier(model, data, class_names, options, settings)


def _check_batch_shape(images: Tensor, ten_crop: bool) -> None:
    """Ten-crop batches are ``[N, 10, 3, h, w]``, plain ones ``[N, 3, h, w]``; a mix-up
    would otherwise fail deep inside the model or score crops as images."""
    if ten_crop and (images.dim() != 5 or images.shape[1] != 10):
        raise DrnetError(
            f"ten-crop evaluation needs batches of [N, 10, 3, h, w], got {list(images.shape)}; "
            "build the data with folder_dataset(..., ten_crop=True) or ten_crop_transform"
        )
    if not ten_crop and images.dim() == 5:
        raise DrnetError(
            f"got batches of [N, crops, 3, h, w] ({list(images.shape)}); pass ten_crop=True"
        )


def _ten_crop_log_probabilities(
    runner: nn.Module, images: Tensor, device: torch.device, amp: bool
) -> Tensor:
    """Log of the mean softmax probabilities over each image's ten crops ``[N, C]``: as
    "logits" these give the averaged probabilities back under softmax, so
    :meth:`ClassificationResult.update` scores ten-crop results like plain ones."""
    n, crops = images.shape[:2]
    with autocast_context(device, amp):
        logits = logits_of(runner(images.flatten(0, 1)))
    probabilities = logits.float().softmax(dim=1).view(n, crops, -1).mean(dim=1)
    # a class whose probability underflows to 0 would make the loss infinite
    return probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()


def folder_dataset(split_dir: str | Path, card: ModelCard, ten_crop: bool = False) -> Dataset:
    """An ImageFolder split with ``card``'s eval preprocessing and its targets mapped to the
    model's class indices (:func:`match_split_classes`). ``ten_crop``: each item is the image's
    ten crops ``[10, 3, h, w]`` (:func:`drnet.data.classification.ten_crop_transform`), for
    ``evaluate_classifier(..., ten_crop=True)``."""
    preprocess = ten_crop_transform if ten_crop else eval_transform
    transform = preprocess(card.crop_size, card.resize_size, card.mean, card.std)
    dataset = image_folder(split_dir, transform)
    to_model = match_split_classes(dataset.classes, card, str(split_dir))
    dataset.target_transform = to_model.__getitem__
    return dataset


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def save_confusion_matrix_png(
    confusion: Tensor,
    class_names: Sequence[str],
    path: str | Path,
    max_classes: int = CONFUSION_IMAGE_MAX_CLASSES,
) -> Path | None:
    """Draw the row-normalised confusion matrix (rows = true class) as a PNG with class names and
    counts. Returns ``None`` (draws nothing) for more than ``max_classes`` classes."""
    n = confusion.shape[0]
    if n > max_classes or n == 0:
        return None
    cell = max(24, min(48, 720 // n))
    names = [str(name)[:18] for name in class_names]
    font = _font(max(10, min(14, cell // 2)))
    label_width = max(int(font.getlength(name)) for name in names) + 12
    margin = label_width + 8
    size = margin + n * cell + 8
    title = "rows: true class, columns: predicted (row-normalised)"
    image = Image.new("RGB", (max(size, int(font.getlength(title)) + 16), size + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 4), title, fill="black", font=font)
    top = 24 + margin
    totals = confusion.sum(dim=1).clamp(min=1).float()
    share = confusion.float() / totals[:, None]
    for i in range(n):
        y = top + i * cell
        draw.text((8, y + cell // 2), names[i], fill="black", font=font, anchor="lm")
        # Column labels, written vertically on a rotated strip.
        strip = Image.new("RGB", (label_width, cell), "white")
        ImageDraw.Draw(strip).text((4, cell // 2), names[i], fill="black", font=font, anchor="lm")
        image.paste(strip.rotate(90, expand=True), (margin + i * cell, 24 + margin - label_width))
        for j in range(n):
            x = margin + j * cell
            value = float(share[i, j])
            shade = (int(255 - 205 * value), int(255 - 150 * value), 255)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline=(200, 200, 200))
            if confusion[i, j] and cell >= 24:
                colour = "white" if value > 0.6 else "black"
                draw.text(
                    (x + cell // 2, y + cell // 2),
                    str(int(confusion[i, j])),
                    fill=colour,
                    font=font,
                    anchor="mm",
                )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(image, path)
    return path


def write_classification_report(result: ClassificationResult, output_dir: str | Path) -> dict:
    """Write ``metrics.json``, ``per_class_accuracy.csv``, ``confusion_matrix.csv`` and (up to
    30 classes) ``confusion_matrix.png``; return the metrics dict (with a ``files`` entry naming
    what was written and ``ten_crop``, whether the scores were averaged over ten crops).
    ``classification_metrics.json`` of earlier releases is no longer written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = report_metrics(result)
    totals = result.confusion.sum(dim=1)
    with atomic_csv(output_dir / "per_class_accuracy.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "index", "images", "correct", "accuracy"])
        for i, name in enumerate(result.class_names):
            accuracy = metrics["per_class_accuracy"][name]
            writer.writerow(
                [
                    name,
                    i,
                    int(totals[i]),
                    int(result.confusion[i, i]),
                    "" if accuracy is None else f"{accuracy:.6f}",
                ]
            )
    with atomic_csv(output_dir / "confusion_matrix.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *result.class_names])
        for name, row in zip(result.class_names, result.confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    png = save_confusion_matrix_png(
        result.confusion, result.class_names, output_dir / "confusion_matrix.png"
    )
    if png is None:
        del metrics["files"]["confusion_matrix_png"]
    write_metrics(output_dir, metrics)
    return metrics


def report_metrics(result: ClassificationResult) -> dict:
    """What ``metrics.json`` holds: :meth:`ClassificationResult.metrics` with ``ten_crop``, the
    ``confusion_matrix``, the ``class_names`` and the ``files`` an evaluation writes (the PNG
    only up to :data:`CONFUSION_IMAGE_MAX_CLASSES` classes)."""
    metrics = {"task": "classification", **result.metrics()}
    metrics["ten_crop"] = result.ten_crop
    metrics["confusion_matrix"] = result.confusion.tolist()
    metrics["class_names"] = list(result.class_names)
    files = {
        "metrics": METRICS_FILE,
        "per_class_accuracy": "per_class_accuracy.csv",
        "confusion_matrix_csv": "confusion_matrix.csv",
    }
    if 0 < len(result.class_names) <= CONFUSION_IMAGE_MAX_CLASSES:
        files["confusion_matrix_png"] = "confusion_matrix.png"
    metrics["files"] = files
    return metrics


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def top_classes(
    model: nn.Module,
    card: ModelCard,
    paths: Sequence[str | Path],
    options: InferenceOptions,
    settings: ClassificationSettings,
    failed: list[tuple[str, str]] | None = None,
) -> list[dict]:
    """Top-``settings.top_k`` classes and softmax probabilities for each image (``card``'s eval
    preprocessing: resize + centre crop). Returns ``[{"image", "top_k": [{"class", "index",
    "probability"}]}]``. An unreadable image raises :class:`DataError`; with a ``failed`` list it
    is appended there as ``(path, message)`` and left out, and the other images are predicted."""
    device = resolve_device(options.device)
    model = fast_inference(model.eval().to(device), enabled=options.fast, dtype=options.dtype)
    class_names = card.names()
    transform = eval_transform(card.crop_size, card.resize_size, card.mean, card.std)
    placeholder = torch.zeros(3, card.crop_size, card.crop_size)
    files = SkipBad(ImageFiles(paths, transform), placeholder)
    loader = DataLoader(
        files, batch_size=settings.batch_size, num_workers=options.workers, shuffle=False
    )
    k = min(settings.top_k, len(class_names))
    predictions: list[dict] = []
    batches = tqdm(loader, desc="predict", disable=not options.progress, leave=False)
    for images, indices, _, errors in batches:
        bad = [i for i, message in enumerate(errors) if message]
        for i in bad:
            if failed is None:
                raise DataError(errors[i])
            failed.append((str(paths[int(indices[i])]), errors[i]))
        with autocast_context(device, options.amp):
            logits = logits_of(model(images.to(device)))
        probabilities = logits.float().softmax(dim=1).cpu()
        values, classes = probabilities.topk(k, dim=1)
        rows = zip(indices.tolist(), values, classes, errors, strict=True)
        for index, row_values, row_classes, error in rows:
            if error:
                continue
            predictions.append(
                {
                    "image": str(paths[index]),
                    "top_k": [
                        {"class": class_names[c], "index": int(c), "probability": float(p)}
                        for p, c in zip(row_values.tolist(), row_classes.tolist(), strict=True)
                    ],
                }
            )
    return predictions


def predict_classes(
    model: nn.Module, paths: Sequence[str | Path], class_names: Sequence[str], **kwargs: Any
) -> list[dict]:
    """Kept for one release: :func:`top_classes` with the keywords of earlier releases
    (``crop_size=224``, ``resize_size``, ``mean``, ``std``, ``top_k=5``, ``batch_size=16``,
    ``failed``, and the runtime keywords that :class:`~drnet.tasks.common.InferenceOptions`
    holds). New code calls :func:`predict`."""
    options = legacy_options(kwargs)
    card = ModelCard(
        model="unknown",
        num_classes=len(class_names),
        class_names=list(class_names),
        crop_size=kwargs.pop("crop_size", 224),
        resize_size=kwargs.pop("resize_size", None),
        mean=list(kwargs.pop("mean", IMAGENET_MEAN)),
        std=list(kwargs.pop("std", IMAGENET_STD)),
    )
    settings = ClassificationSettings(
        batch_size=kwargs.pop("batch_size", 16), top_k=kwargs.pop("top_k", 5)
    )
    failed = kwargs.pop("failed", None)
    if kwargs:
        raise TypeError(f"predict_classes: unexpected keyword(s) {', '.join(kwargs)}")
    return top_classes(model, card, paths, options, settings, failed)


def write_predictions(predictions: Sequence[dict], output_dir: str | Path) -> dict[str, Path]:
    """Write ``predictions.json`` (all top-k) and ``predictions.csv`` (one row per image and
    rank: ``image,rank,class,index,probability``)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output_dir / "predictions.json", output_dir / "predictions.csv"
    atomic_write_json(json_path, list(predictions))  # a good file never becomes truncated
    with atomic_csv(csv_path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "rank", "class", "index", "probability"])
        for item in predictions:
            for rank, entry in enumerate(item["top_k"], start=1):
                writer.writerow(
                    [
                        item["image"],
                        rank,
                        entry["class"],
                        entry["index"],
                        f"{entry['probability']:.6f}",
                    ]
                )
    return {"json": json_path, "csv": csv_path}


# ----------------------------------------------------------------------------- training


def resolve_splits(
    data_dir: str | Path | None,
    train_dir: str | Path | None = None,
    val_dir: str | Path | None = None,
) -> tuple[Path, Path | None]:
    """The training and validation folders: given ones win, else ``DATA/train`` and (when it
    exists) ``DATA/val``."""
    if not data_dir and not train_dir:
        raise DrnetError("give the dataset root DATA (with train/ and val/) or --train-dir")
    train = Path(train_dir or Path(data_dir) / "train")
    if val_dir is None and data_dir and (Path(data_dir) / "val").is_dir():
        val_dir = Path(data_dir) / "val"
    return train, Path(val_dir) if val_dir else None


class ClassificationTask(Task):
    """Image classification for the shared engine (:func:`drnet.engine.train`): any datasets of
    ``(image, target)``; :meth:`from_dirs` builds them from ImageFolder splits.

    Cross-entropy loss; metrics ``top1`` (selects the best checkpoint), ``top5``, ``loss``,
    ``mean_class_accuracy``. The model is ``card.model`` with ``card.num_classes`` outputs at
    ``card.channels``; ``pretrained`` starts from the published weights and ``weights`` from a
    checkpoint (a classifier with another number of classes keeps its backbone and gets a fresh
    ``fc``).
    """

    name = "classification"
    main_metric = "top1"

    def __init__(
        self,
        card: ModelCard,
        train_set: Dataset,
        val_set: Dataset | None = None,
        *,
        pretrained: bool = False,
        weights: str | Path | None = None,
        eval_batch_size: int | None = None,
    ) -> None:
        import drnet.models

        drnet.models.get_spec(card.model)  # an unknown --model fails before anything is written
        self.card = card
        self.train_set = train_set
        self.val_set = val_set
        self.pretrained = pretrained
        self.weights = weights
        self.eval_batch_size = eval_batch_size
        self.initial_model: nn.Module | None = None  # train(model, ...): start from this one
        self.augmentation: dict | None = None  # what from_dirs trains with (config.json)

    @classmethod
    def from_dirs(
        cls,
        model: str,
        train_dir: str | Path,
        val_dir: str | Path | None = None,
        *,
        pretrained: bool = False,
        weights: str | Path | None = None,
        channels: Sequence[int] | None = None,
        crop_size: int = 224,
        resize_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        min_scale: float = 0.08,
        auto_augment: str | None = None,
    ) -> ClassificationTask:
        """ImageFolder splits: RandomResizedCrop(``crop_size``, area ``min_scale``..1) + flip
        (+ ``auto_augment``: :func:`drnet.data.classification.auto_augment_transform`) for
        training; resize ``resize_size`` + centre crop for validation."""
        import drnet.models

        drnet.models.get_spec(model)
        if pretrained and (mean is None or std is None):
            registered = drnet.models.get_weights(model, pretrained)
            mean, std = mean or registered.mean, std or registered.std
        mean, std = list(mean or IMAGENET_MEAN), list(std or IMAGENET_STD)
        train_set = image_folder(
            train_dir,
            train_transform(crop_size, mean, std, min_scale=min_scale, auto_augment=auto_augment),
        )
        classes = list(train_set.classes)
        val_set = None
        if val_dir is not None:
            val_set = image_folder(val_dir, eval_transform(crop_size, resize_size, mean, std))
            if list(val_set.classes) != classes:
                raise DataError(
                    f"{val_dir}: class folders {val_set.classes[:8]} differ from the "
                    f"training split's {classes[:8]} ({train_dir}); both need the same classes"
                )
        card = ModelCard(
            model=model,
            num_classes=len(classes),
            class_names=classes,
            channels=list(channels) if channels else None,
            mean=mean,
            std=std,
            crop_size=crop_size,
            resize_size=resize_size or default_resize_size(crop_size),
        )
        task = cls(card, train_set, val_set, pretrained=pretrained, weights=weights)
        task.augmentation = {"min_scale": min_scale, "auto_augment": auto_augment}
        return task

    def build_model(self) -> nn.Module:
        import drnet

        if self.initial_model is not None:
            return self.initial_model
        kwargs = {"channels": tuple(self.card.channels)} if self.card.channels else {}
        return drnet.create_model(
            self.card.model,
            pretrained=self.pretrained,
            num_classes=self.card.num_classes,
            checkpoint_path=self.weights,
            **kwargs,
        )

    def train_dataset(self) -> Dataset:
        return self.train_set

    def val_dataset(self) -> Dataset | None:
        return self.val_set

    def loss(self, output: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Cross-entropy; ``target`` holds class indices, or class probabilities (MixUp)."""
        return F.cross_entropy(output.float(), target, label_smoothing=label_smoothing)

    def mixing_classes(self) -> int:
        return self.card.num_classes

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device
    ) -> dict[str, float]:
        # the model is still training: no inference copy per epoch (fast=False)
        options = InferenceOptions(
            device=str(device), fast=False, amp=config.amp, workers=config.workers, progress=False
        )
        batch_size = self.eval_batch_size or config.batch_size
        settings = ClassificationSettings(batch_size=batch_size)
        metrics = score_classifier(model, dataset, self.card.names(), options, settings).metrics()
        return {
            k: metrics[k]
            for k in ("top1", "top5", "loss", "mean_class_accuracy")
            if metrics[k] is not None
        }

    def describe(self) -> dict:
        described = {"name": self.name, **self.card.to_dict(), "pretrained": self.pretrained}
        if self.augmentation is not None:
            described["augmentation"] = self.augmentation
        return described


def train_classifier(task: ClassificationTask, config: TrainConfig, *, should_stop=None) -> dict:
    """Train with the shared engine; also writes ``model.json`` (the :class:`ModelCard`) into
    ``config.output_dir`` so eval/predict/localize rebuild the model from the run directory
    alone (only once the engine has checked everything: a failed start or resume leaves an
    earlier run intact; see :mod:`drnet.tasks.run_card`). ``should_stop``: see
    :func:`drnet.engine.train`. Returns the engine's summary. :func:`train` is the same with the
    task contract's arguments."""
    return train_with_card(task, task.card, config, should_stop)


# ----------------------------------------------------------------------------- entry points


@dataclass
class ClassificationEvaluation:
    """What :func:`evaluate` returns: the counts (``result``) and their ``metrics``."""

    result: ClassificationResult

    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: see :func:`report_metrics`."""
        return report_metrics(self.result)

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """``metrics.json``, ``per_class_accuracy.csv``, ``confusion_matrix.csv`` and (up to 30
        classes) ``confusion_matrix.png``."""
        files = write_classification_report(self.result, output_dir)["files"]
        return {kind: Path(output_dir) / name for kind, name in files.items()}

    def summary_lines(self) -> list[str]:
        """Top-1, top-5, the number of images and classes."""
        m = self.result.metrics()
        crops = ", ten crops each" if self.result.ten_crop else ""
        return [
            f"top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  ({m['num_images']} images, "
            f"{m['num_classes']} classes{crops})"
        ]


@dataclass
class ClassificationPredictions:
    """What :func:`predict` returns: one entry per predicted image (``predictions``, see
    :func:`top_classes`) and the images that could not be read (``failed``: ``(path,
    message)``)."""

    predictions: list[dict]
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        """``{"num_images", "num_failed"}``."""
        return {"num_images": len(self.predictions), "num_failed": len(self.failed)}

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """``predictions.json`` and ``predictions.csv`` (see :func:`write_predictions`)."""
        return write_predictions(self.predictions, output_dir)

    def summary_lines(self) -> list[str]:
        """The top class of the first ten images."""
        lines = []
        for item in self.predictions[:10]:
            best = item["top_k"][0]
            lines.append(f"{item['image']}: {best['class']} ({best['probability']:.3f})")
        if len(self.predictions) > 10:
            lines.append(f"... {len(self.predictions) - 10} more")
        return lines


@dataclass(frozen=True)
class ClassificationData:
    """The ImageFolder splits :func:`train` reads: ``root`` holding ``train/`` (and ``val/``,
    used when it exists), or ``train_dir`` / ``val_dir`` given (they win over ``root``'s)."""

    root: str | os.PathLike | None = None
    train_dir: str | os.PathLike | None = None
    val_dir: str | os.PathLike | None = None

    def splits(self) -> tuple[Path, Path | None]:
        """The training and validation folders (see :func:`resolve_splits`)."""
        return resolve_splits(self.root, self.train_dir, self.val_dir)


def evaluate(
    model: nn.Module,
    card: ModelCard,
    data: str | os.PathLike | Dataset | DataLoader,
    options: InferenceOptions,
    settings: ClassificationSettings,
) -> ClassificationEvaluation:
    """Top-1/top-5, per-class accuracy and the confusion matrix of ``model`` on ``data``: an
    ImageFolder split (read with ``card``'s eval preprocessing, its class folders matched to the
    card's classes: :func:`folder_dataset`), or a dataset / loader of ``(image, target)``."""
    if isinstance(data, (str, os.PathLike)):
        data = folder_dataset(data, card, ten_crop=settings.ten_crop)
    return ClassificationEvaluation(score_classifier(model, data, card.names(), options, settings))


def predict(
    model: nn.Module,
    card: ModelCard,
    data: Sequence[str | os.PathLike],
    options: InferenceOptions,
    settings: ClassificationSettings,
) -> ClassificationPredictions:
    """The top-``settings.top_k`` classes of the images ``data`` (files, or folders searched
    recursively: :func:`drnet.data.classification.list_images`). Unreadable images are left out
    and listed in ``failed``."""
    failed: list[tuple[str, str]] = []
    predictions = top_classes(model, card, list_images(data), options, settings, failed)
    return ClassificationPredictions(predictions, failed)


def train(
    model: nn.Module | None,
    card: ModelCard | None,
    data: ClassificationData | str | os.PathLike | tuple,
    options: InferenceOptions,
    settings: ClassificationTrainSettings,
) -> TrainingResult:
    """Train a classifier with the shared engine into ``settings.config.output_dir`` (the run
    folder: checkpoints, ``log.csv``, ``config.json`` and ``model.json``; see
    :func:`train_classifier`).

    ``data``: :class:`ClassificationData` (or its ``root``, a folder holding ``train/`` and
    ``val/``), a pair ``(train, val)`` of ImageFolder splits (``val`` may be ``None``), or a
    pair of datasets of ``(image, target)``
    (then ``card`` names the model, its classes and preprocessing). Without a ``card`` the model
    is ``settings.model`` and the classes are the training folder's. ``model``: start from this
    network instead of building the card's. ``options``: device, AMP, workers and progress of
    the training (``fast`` and ``dtype`` do not apply)."""
    config = replace(
        settings.config,
        device=options.device,
        amp=options.amp,
        workers=options.workers,
        progress=options.progress,
    )
    task = _training_task(card, data, settings)
    task.initial_model = model
    if task.card.num_classes == 1:
        logger.warning(
            "the training data has a single class folder: every image is that class, so the "
            "model learns nothing useful (accuracy is 100%% by construction)"
        )
    summary = train_with_card(task, task.card, config, settings.should_stop)
    return TrainingResult(summary, "top-1")


def _training_task(
    card: ModelCard | None, data: Any, settings: ClassificationTrainSettings
) -> ClassificationTask:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Dataset):
        if card is None:
            raise DrnetError("train: datasets need a card naming the model and its classes")
        return ClassificationTask(
            card, data[0], data[1], pretrained=settings.pretrained, weights=settings.weights,
            eval_batch_size=settings.eval_batch_size,
        )  # fmt: skip
    if isinstance(data, tuple):
        data = ClassificationData(None, *data)
    elif not isinstance(data, ClassificationData):
        data = ClassificationData(data)
    train_dir, val_dir = data.splits()
    if card is None:  # the classes come from the training folder
        model, channels, mean, std = settings.model, settings.channels, None, None
        crop_size, resize_size = settings.crop_size, settings.resize_size
    else:
        model, channels, mean, std = card.model, card.channels, card.mean, card.std
        crop_size, resize_size = card.crop_size or settings.crop_size, card.resize_size
    task = ClassificationTask.from_dirs(
        model, train_dir, val_dir, pretrained=settings.pretrained, weights=settings.weights,
        channels=channels, crop_size=crop_size, resize_size=resize_size, mean=mean, std=std,
        min_scale=settings.crop_scale, auto_augment=settings.auto_augment,
    )  # fmt: skip
    task.eval_batch_size = settings.eval_batch_size
    return task
