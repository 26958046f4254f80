"""Segmentation metrics from a confusion matrix, and the intervals drnet reports beside its
accuracies.

The confusion matrix ``hist[t, p]`` counts pixels of ground-truth class ``t`` predicted as ``p``.
Pixels whose label is the ignore index (255) are not counted; any other label outside
``[0, num_classes)`` is an error (a wrong class count or a broken label file, not something to
drop silently). From it:

* IoU of class c = ``hist[c, c] / (row_c + col_c - hist[c, c])``; NaN when the class appears in
  neither the labels nor the predictions (a class that is only predicted has IoU 0).
* mIoU = mean of the per-class IoUs ignoring NaN (``nanmean``), as the original evaluation does.
* pixel accuracy = ``trace / total``; mean class accuracy = nanmean of ``hist[c, c] / row_c``.

Intervals (95%): :func:`wilson_interval` for a proportion over independent images (top-1,
localization accuracy), :func:`bootstrap_miou_interval` for mIoU, resampling whole images
(pixels of one image are not independent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from drnet.constants import IGNORE_INDEX
from drnet.engine.distributed import all_reduce_sum
from drnet.errors import DataError


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts, rows = ground truth, columns = prediction.

    ``pred`` and ``target`` hold class indices of the same shape; target pixels equal to
    ``ignore_index`` are skipped. Raises :class:`~drnet.errors.DataError` naming the values when
    another target value lies outside ``[0, num_classes)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    outside = keep & ((target < 0) | (target >= num_classes))
    if outside.any():
        values = torch.unique(target[outside])[:8].tolist()
        raise DataError(
            f"label values {values} outside [0, {num_classes}) (ignore index {ignore_index}): "
            "wrong number of classes, or bad label files (`drnet data check` names them)"
        )
    index = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches (and over ranks with :meth:`all_reduce`)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.hist = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.hist += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def all_reduce(self) -> None:
        """Sum the matrix over the ranks of a distributed run (no-op in one process)."""
        self.hist = all_reduce_sum(self.hist.clone())

    def compute(self) -> dict[str, object]:
        return segmentation_metrics(self.hist)


def segmentation_metrics(hist: torch.Tensor) -> dict[str, object]:
    """``miou``, ``pixel_accuracy``, ``mean_accuracy`` and the per-class lists ``iou``,
    ``accuracy`` (NaN for absent classes) and ``pixels`` (ground-truth pixels per class)."""
    hist = hist.double()
    tp = hist.diag()
    gt = hist.sum(1)
    predicted = hist.sum(0)
    union = gt + predicted - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    total = hist.sum()
    return {
        "miou": _nanmean(iou),
        "pixel_accuracy": (tp.sum() / total).item() if total > 0 else float("nan"),
        "mean_accuracy": _nanmean(acc),
        "iou": iou.tolist(),
        "accuracy": acc.tolist(),
        "pixels": [int(v) for v in gt.tolist()],
    }


def _nanmean(values: torch.Tensor) -> float:
    valid = ~values.isnan()
    return values[valid].mean().item() if valid.any() else float("nan")


def format_iou_table(metrics: dict, class_names: Sequence[str] | None = None) -> str:
    """A printable per-class table (IoU and accuracy in percent) followed by the summary."""
    iou, acc, pixels = metrics["iou"], metrics["accuracy"], metrics["pixels"]
    names = list(class_names) if class_names else [str(i) for i in range(len(iou))]
    width = max(8, *(len(n) for n in names))

    def pct(v: float) -> str:
        return "     -" if math.isnan(v) else f"{100 * v:6.2f}"

    lines = [f"{'class':<{width}}   IoU %   acc %      pixels"]
    for name, i, a, n in zip(names, iou, acc, pixels, strict=True):
        lines.append(f"{name:<{width}}  {pct(i)}  {pct(a)}  {n:10d}")
    lines.append(
        f"{'mIoU':<{width}}  {pct(metrics['miou'])}"
        f"   pixel accuracy {pct(metrics['pixel_accuracy'])}"
        f"   mean accuracy {pct(metrics['mean_accuracy'])}"
    )
    return "\n".join(lines)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> list[float] | None:
    """The Wilson score interval ``[low, high]`` of a proportion (95% for ``z=1.96``); None for
    ``total == 0``. Unlike the normal approximation it stays inside [0, 1] near 0 and 1."""
    if total <= 0:
        return None
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def bootstrap_miou_interval(
    per_image: Sequence[torch.Tensor] | torch.Tensor,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[float] | None:
    """A percentile bootstrap interval of mIoU over images: ``per_image`` holds one confusion
    matrix per image (``[N, C, C]``); each resample draws N images with replacement and
    recomputes mIoU from their summed matrix. None for fewer than two images."""
    hists = torch.stack(list(per_image)) if not torch.is_tensor(per_image) else per_image
    n = hists.shape[0]
    if n < 2:
        return None
    generator = torch.Generator().manual_seed(seed)
    flat = hists.reshape(n, -1).double()
    draws = torch.randint(n, (resamples, n), generator=generator)
    counts = torch.zeros(resamples, n, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    summed = (counts @ flat).reshape(resamples, *hists.shape[1:])
    values = torch.tensor([segmentation_metrics(h)["miou"] for h in summed], dtype=torch.float64)
    values = values[~values.isnan()]
    tail = (1 - level) / 2
    return [float(values.quantile(tail)), float(values.quantile(1 - tail))]
