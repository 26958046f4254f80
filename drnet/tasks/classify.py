"""Image classification: evaluation (top-1/top-5, per-class accuracy, confusion matrix),
prediction with top-k probabilities, and the model card that lets a trained run be reloaded.

Every function here is what ``drnet classify ...`` calls; a notebook can call them the same way.
Accuracies are fractions in ``[0, 1]``; "top-5" means top-``min(5, num_classes)``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from drnet.data.classification import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFiles,
    default_resize_size,
    eval_transform,
    image_folder,
    train_transform,
)
from drnet.engine.distributed import resolve_device
from drnet.engine.trainer import Task, TrainConfig, autocast_context, train
from drnet.errors import CheckpointError, DataError, DrnetError

MODEL_CARD = "model.json"
CONFUSION_IMAGE_MAX_CLASSES = 30


# ----------------------------------------------------------------------------- model card & loading


@dataclass
class ClassifierCard:
    """What is needed to rebuild and feed a trained classifier; saved as ``model.json`` beside
    its checkpoints by ``drnet classify train``."""

    model: str
    num_classes: int
    classes: list[str] = field(default_factory=list)
    channels: list[int] | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_size: int = 224
    resize_size: int = 256

    def class_names(self) -> list[str]:
        """Class names, or ``"0", "1", ...`` when the card has none."""
        if len(self.classes) == self.num_classes:
            return list(self.classes)
        return [str(i) for i in range(self.num_classes)]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MODEL_CARD
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> ClassifierCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise DrnetError(f"{path}: cannot read the model card ({exc})") from exc


def find_card(weights: str | Path | None) -> ClassifierCard | None:
    """The ``model.json`` beside ``weights`` (or inside it, if ``weights`` is a run directory)."""
    if weights is None:
        return None
    weights = Path(weights)
    candidate = weights / MODEL_CARD if weights.is_dir() else weights.parent / MODEL_CARD
    return ClassifierCard.read(candidate) if candidate.is_file() else None


def resolve_weights(weights: str | Path | None) -> Path | None:
    """A run directory stands for its ``checkpoint_best.pth`` (else ``checkpoint_last.pth``)."""
    if weights is None:
        return None
    weights = Path(weights)
    if weights.is_dir():
        for name in ("checkpoint_best.pth", "checkpoint_last.pth"):
            if (weights / name).is_file():
                return weights / name
        raise CheckpointError(f"{weights}: no checkpoint_best.pth or checkpoint_last.pth in it")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint file not found")
    return weights


def _num_classes_in(state_dict: dict) -> int | None:
    weight = state_dict.get("fc.weight")
    return int(weight.shape[0]) if weight is not None else None


def load_classifier(
    model: str | None = None,
    weights: str | Path | None = None,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    channels: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[nn.Module, ClassifierCard]:
    """Build a classifier and load its weights; returns the model (eval mode) and its card.

    ``weights`` is a checkpoint file (bare state dict, official or drnet training checkpoint) or a
    training run directory. Missing arguments come from the run's ``model.json`` when there is one,
    and ``num_classes`` from the checkpoint's ``fc.weight`` otherwise.
    """
    import drnet
    from drnet.models.weights import load_into, load_state_dict_file

    card = find_card(weights)
    weights_file = resolve_weights(weights)
    state_dict = load_state_dict_file(weights_file) if weights_file is not None else None
    model = model or (card.model if card else None)
    if model is None:
        raise DrnetError("no model name: pass --model (or --weights of a run with a model.json)")
    if num_classes is None:
        if card is not None:
            num_classes = card.num_classes
        elif state_dict is not None and _num_classes_in(state_dict) is not None:
            num_classes = _num_classes_in(state_dict)
        elif classes:
            num_classes = len(classes)
        else:
            num_classes = 1000
    if channels is None and card is not None and card.channels:
        channels = card.channels
    kwargs = {"channels": tuple(channels)} if channels else {}
    network = drnet.create_model(
        model, pretrained=pretrained and state_dict is None, num_classes=num_classes, **kwargs
    )
    if state_dict is not None:
        load_into(network, state_dict, strict=True, source=str(weights_file))
    network.eval()
    if card is None:
        card = ClassifierCard(model=model, num_classes=num_classes)
        card.channels = list(channels) if channels else None
        registered = getattr(network, "pretrained_cfg", None)
        if registered is not None:  # the eval preprocessing published with the weights
            card.mean, card.std = list(registered.mean), list(registered.std)
            card.crop_size = registered.crop_size or card.crop_size
            card.resize_size = registered.resize_size or default_resize_size(card.crop_size)
    if classes:
        if len(classes) != num_classes:
            raise DrnetError(
                f"--classes lists {len(classes)} names but the model has {num_classes} classes"
            )
        card.classes = list(classes)
    return network, card


def match_split_classes(
    split_classes: Sequence[str], card: ClassifierCard, split: str
) -> list[int]:
    """Model class index of each class folder of a split (``ImageFolder.classes``).

    With named classes on the card every folder must be one of them. Without names, a split with
    exactly ``num_classes`` folders is taken in sorted order (ImageNet's synset folders and the
    official checkpoints agree this way) and the card takes their names.
    """
    if card.classes:
        unknown = [c for c in split_classes if c not in card.classes]
        if unknown:
            shown = ", ".join(card.classes[:10]) + ("..." if len(card.classes) > 10 else "")
            raise DataError(
                f"{split}: class folder(s) {', '.join(unknown[:5])} are not classes of the model "
                f"(it knows {shown})"
            )
        return [card.classes.index(c) for c in split_classes]
    if len(split_classes) != card.num_classes:
        raise DataError(
            f"{split}: {len(split_classes)} class folders but the model has {card.num_classes} "
            "classes and no class names; pass --classes FILE (one name per line)"
        )
    card.classes = list(split_classes)
    return list(range(len(split_classes)))


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or a JSON list."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DrnetError(f"{path}: cannot read the class names ({exc})") from exc
    if path.suffix.lower() == ".json":
        names = json.loads(text)
        if not isinstance(names, list):
            raise DrnetError(f"{path}: expected a JSON list of class names")
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


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
        """``top1``, ``top5``, ``loss``, ``num_images``, ``num_classes``, ``per_class_accuracy``
        and ``mean_class_accuracy`` (over classes with images)."""
        n = max(self.num_images, 1)
        per_class = self.per_class_accuracy()
        present = [v for v in per_class.values() if v is not None]
        return {
            "top1": self.topk[1] / n,
            "top5": self.topk[5] / n,
            "loss": self.loss_sum / n,
            "num_images": self.num_images,
            "num_classes": len(self.class_names),
            "mean_class_accuracy": sum(present) / len(present) if present else None,
            "per_class_accuracy": per_class,
        }


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    loader: DataLoader,
    class_names: Sequence[str],
    device: str | torch.device = "auto",
    *,
    amp: bool = False,
    progress: bool = True,
) -> ClassificationResult:
    """Run ``model`` over ``loader`` (batches of ``(images, targets)``) and count the results."""
    device = resolve_device(str(device))
    model.eval().to(device)
    result = ClassificationResult.empty(class_names)
    for images, target in tqdm(loader, desc="eval", disable=not progress, leave=False):
        with autocast_context(device, amp):
            logits = model(images.to(device, non_blocking=True))
        result.update(logits, target)
    return result


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
    image.save(path)
    return path


def write_classification_report(result: ClassificationResult, output_dir: str | Path) -> dict:
    """Write ``classification_metrics.json``, ``per_class_accuracy.csv``,
    ``confusion_matrix.csv`` and (up to 30 classes) ``confusion_matrix.png``; return the metrics
    dict (with a ``files`` entry naming what was written)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = result.metrics()
    totals = result.confusion.sum(dim=1)
    with (output_dir / "per_class_accuracy.csv").open("w", newline="") as handle:
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
    with (output_dir / "confusion_matrix.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *result.class_names])
        for name, row in zip(result.class_names, result.confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    files = {
        "metrics": "classification_metrics.json",
        "per_class_accuracy": "per_class_accuracy.csv",
        "confusion_matrix_csv": "confusion_matrix.csv",
    }
    png = save_confusion_matrix_png(
        result.confusion, result.class_names, output_dir / "confusion_matrix.png"
    )
    if png is not None:
        files["confusion_matrix_png"] = png.name
    metrics["confusion_matrix"] = result.confusion.tolist()
    metrics["class_names"] = list(result.class_names)
    metrics["files"] = files
    (output_dir / files["metrics"]).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_classes(
    model: nn.Module,
    paths: Sequence[str | Path],
    class_names: Sequence[str],
    *,
    crop_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    top_k: int = 5,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> list[dict]:
    """Top-``k`` classes and softmax probabilities for each image (eval preprocessing: resize +
    centre crop). Returns ``[{"image", "top_k": [{"class", "index", "probability"}]}]``."""
    device = resolve_device(str(device))
    model.eval().to(device)
    transform = eval_transform(crop_size, resize_size, mean, std)
    loader = DataLoader(
        ImageFiles(paths, transform), batch_size=batch_size, num_workers=workers, shuffle=False
    )
    k = min(top_k, len(class_names))
    predictions: list[dict] = []
    for images, indices, _ in tqdm(loader, desc="predict", disable=not progress, leave=False):
        probabilities = model(images.to(device)).float().softmax(dim=1).cpu()
        values, classes = probabilities.topk(k, dim=1)
        for index, row_values, row_classes in zip(indices.tolist(), values, classes, strict=True):
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


def write_predictions(predictions: Sequence[dict], output_dir: str | Path) -> dict[str, Path]:
    """Write ``predictions.json`` (all top-k) and ``predictions.csv`` (one row per image and
    rank: ``image,rank,class,index,probability``)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output_dir / "predictions.json", output_dir / "predictions.csv"
    json_path.write_text(json.dumps(list(predictions), indent=2) + "\n")
    with csv_path.open("w", newline="") as handle:
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


class ClassificationTask(Task):
    """Image classification on ImageFolder splits, for the shared engine (:func:`train`).

    Training: RandomResizedCrop(``crop_size``, area ``min_scale``..1) + flip; validation:
    resize ``resize_size`` + centre crop; cross-entropy loss; metrics ``top1`` (selects the best
    checkpoint), ``top5``, ``loss``, ``mean_class_accuracy``. ``weights`` initialises from a
    checkpoint (a classifier with another number of classes keeps its backbone and gets a fresh
    ``fc``).
    """

    name = "classification"
    main_metric = "top1"

    def __init__(
        self,
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
    ) -> None:
        import drnet.models

        drnet.models.get_spec(model)  # an unknown --model fails before model.json is written
        if pretrained and (mean is None or std is None):
            registered = drnet.models.get_weights(model, pretrained)
            mean, std = mean or registered.mean, std or registered.std
        mean, std = list(mean or IMAGENET_MEAN), list(std or IMAGENET_STD)
        self.model_name = model
        self.pretrained = pretrained
        self.weights = weights
        self.train_set = image_folder(
            train_dir, train_transform(crop_size, mean, std, min_scale=min_scale)
        )
        classes = list(self.train_set.classes)
        self.val_set = None
        if val_dir is not None:
            self.val_set = image_folder(val_dir, eval_transform(crop_size, resize_size, mean, std))
            if list(self.val_set.classes) != classes:
                raise DataError(
                    f"{val_dir}: class folders {self.val_set.classes[:8]} differ from the "
                    f"training split's {classes[:8]} ({train_dir}); both need the same classes"
                )
        self.card = ClassifierCard(
            model=model,
            num_classes=len(classes),
            classes=classes,
            channels=list(channels) if channels else None,
            mean=mean,
            std=std,
            crop_size=crop_size,
            resize_size=resize_size or default_resize_size(crop_size),
        )

    def build_model(self) -> nn.Module:
        import drnet

        kwargs = {"channels": tuple(self.card.channels)} if self.card.channels else {}
        return drnet.create_model(
            self.model_name,
            pretrained=self.pretrained,
            num_classes=self.card.num_classes,
            checkpoint_path=self.weights,
            **kwargs,
        )

    def train_dataset(self) -> Dataset:
        return self.train_set

    def val_dataset(self) -> Dataset | None:
        return self.val_set

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device
    ) -> dict[str, float]:
        loader = DataLoader(
            dataset, batch_size=config.batch_size, num_workers=config.workers, shuffle=False
        )
        result = evaluate_classifier(
            model, loader, self.card.class_names(), device, amp=config.amp, progress=False
        )
        metrics = result.metrics()
        return {
            k: metrics[k]
            for k in ("top1", "top5", "loss", "mean_class_accuracy")
            if metrics[k] is not None
        }

    def describe(self) -> dict:
        return {"name": self.name, "pretrained": self.pretrained, **asdict(self.card)}


def train_classifier(task: ClassificationTask, config: TrainConfig) -> dict:
    """Train with the shared engine; also writes ``model.json`` (the :class:`ClassifierCard`)
    into ``config.output_dir`` so ``eval``/``predict``/``localize`` can rebuild the model from
    the run directory alone. Returns the engine's summary."""
    if int(os.environ.get("RANK", "0")) == 0:
        task.card.save(config.output_dir)
    return train(task, config)
