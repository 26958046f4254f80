"""Weakly-supervised localization with a DRN classifier (the paper's Section 6 protocol).

A classifier is run without global pooling (``model.forward_map``) on the whole image, resized so
its shorter side is ``resize_size`` (no crop), giving the dense class map ``f`` ``[C, h, w]`` at
output stride 8. Its spatial mean equals the classifier's logits for that input, so class
scores and boxes come from one forward pass. For each of the top-5 classes the box is the paper's
rule (:mod:`drnet.tasks.boxes`), mapped back to the original image. A prediction is correct when
its class is the image's class and its box has IoU > 0.5 with a ground-truth box of that class:
top-1 / top-5 localization error. ``gt_known_loc_err`` scores the box of the true class alone.

The threshold ``t`` is swept over a grid; with ``threshold="auto"`` it is chosen on a held-out
split (lowest top-1 localization error; ties go to the lower top-5 error, then the smaller ``t``)
and only then applied to the evaluation split. The evaluation split's own curve is reported
but never used to choose. A centred box of the mean ground-truth size (``centred_box_prior``),
scored the same way, is the baseline a method must beat. ``box_centre_offset`` is the mean offset
of the top-1 box's centre from the true box's centre over the images whose top-1 class is right:
a check of the cell-to-pixel alignment (near 0 when the rule's alignment suits the model).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from drnet.constants import (
    DEFAULT_BOX_THRESHOLD,
    MAX_INPUT_PIXELS,
    MAX_INPUT_SIDE,
    OVERLAY_MAX_SIDE,
)
from drnet.data.boxes import ImageBoxes, load_boxes
from drnet.data.classification import (
    ImageFiles,
    full_image_transform,
    image_folder,
    load_rgb,
    relative_key,
)
from drnet.data.images import SkipBad, relative_names, unique_names
from drnet.data.text import read_json
from drnet.engine.distributed import resolve_device
from drnet.engine.rundir import atomic_csv, atomic_save_image, atomic_write_json
from drnet.errors import DataError, DrnetError, SettingsError
from drnet.models.loading import ModelCard
from drnet.rendering import colorize_heatmap, render_overlay, upsample_heatmap  # noqa: F401
from drnet.speed.inference import fast_inference
from drnet.tasks.boxes import (
    BOX_RESOLUTIONS,
    DEFAULT_BOX_RESOLUTION,
    FALLBACKS,
    THRESHOLD_MODES,
    box_centre_offset,
    boxes_from_class_map,
    centred_box,
    iou,
    normalize_response,
    scale_boxes,
)
from drnet.tasks.classify import match_split_classes
from drnet.tasks.common import (
    METRICS_FILE,
    InferenceOptions,
    check_choice,
    check_range,
    legacy_options,
    write_metrics,
)

IOU_THRESHOLD = 0.5
#: The file name of earlier releases, still read (``--threshold FILE``, ``read_metrics``).
OLD_METRICS_FILE = "localization_metrics.json"
CURVE_FILE = "threshold_curve.csv"
BOXES_FILE = "boxes.json"


def default_thresholds() -> list[float]:
    """The default sweep for ``minmax`` thresholds: 0.00, 0.05, ..., 0.95."""
    return [round(0.05 * i, 2) for i in range(20)]


def parse_thresholds(text: str) -> list[float]:
    """``"0.1,0.2,0.5"`` or ``"START:STOP:STEP"`` (STOP excluded) to a sorted list of floats."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError("step must be positive")
            count = int(math.floor((stop - start) / step - 1e-9)) + 1
            values = [round(start + i * step, 10) for i in range(max(count, 0))]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise DrnetError(
            f"--thresholds {text!r}: expected a list like 0.1,0.2,0.3 or a range START:STOP:STEP"
        ) from exc
    if not values:
        raise DrnetError(f"--thresholds {text!r} gives no threshold")
    if not all(math.isfinite(v) for v in values) or len(values) > 10_000:
        raise DrnetError(f"--thresholds {text!r}: expected at most 10000 finite numbers")
    return sorted(set(values))


@dataclass(frozen=True)
class LocalizationSettings:
    """How boxes are made and scored (see :mod:`drnet.tasks.boxes` for the rule); checked when
    made (:class:`drnet.errors.SettingsError`, a ``ValueError``, naming the field).

    The rule: ``threshold_mode`` (``minmax``: ``t`` is a fraction of the class map's range, in
    0..1; ``raw``: ``t`` compares with the logit; ``None``: the mode of a ``threshold`` file,
    else minmax), ``fallback`` (the box when no position passes), ``box_resolution`` (``cell``
    or ``pixel``), ``resize_size`` (the shorter side of the network input; ``None``: the card's;
    0: the image's own), ``top_k`` classes boxed per image, ``iou_threshold`` for a hit.

    ``threshold``: ``"auto"`` (:func:`evaluate` chooses ``t`` on the held-out split;
    :func:`predict` uses :data:`~drnet.constants.DEFAULT_BOX_THRESHOLD`), a number, or the path of
    a ``metrics.json`` written by ``localize eval`` (its chosen ``t`` and mode). ``thresholds``:
    the sweep of :func:`evaluate` (numbers, or text ``"0.1,0.2"`` / ``"START:STOP:STEP"``;
    default 0, 0.05, ..., 0.95 for minmax).

    Pictures: ``save_images`` overlays of the first images of :func:`evaluate`,
    ``save_overlays`` / ``save_heatmaps`` of every image of :func:`predict`; they are written
    into ``output_dir`` as they are made (required when any is asked for)."""

    threshold_mode: str | None = None
    fallback: str = "peak"
    resize_size: int | None = None
    top_k: int = 5
    iou_threshold: float = IOU_THRESHOLD
    box_resolution: str = DEFAULT_BOX_RESOLUTION
    threshold: float | str = "auto"
    thresholds: tuple[float, ...] | str | None = None
    save_images: int = 0
    save_overlays: bool = False
    save_heatmaps: bool = False
    output_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        owner, mode = "LocalizationSettings", self.threshold_mode
        threshold = self.threshold
        if isinstance(threshold, str) and threshold.strip() == "auto":
            threshold = "auto"
        elif not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            threshold, mode_of_file = read_threshold(threshold)
            mode = mode or mode_of_file
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "threshold_mode", mode or "minmax")
        check_choice(owner, "threshold_mode", self.threshold_mode, THRESHOLD_MODES)
        check_choice(owner, "fallback", self.fallback, FALLBACKS)
        check_choice(owner, "box_resolution", self.box_resolution, BOX_RESOLUTIONS)
        check_range(owner, "top_k", self.top_k, 1, integer=True)
        check_range(owner, "iou_threshold", self.iou_threshold, 0, 1)
        check_range(owner, "save_images", self.save_images, 0, integer=True)
        if self.resize_size is not None:
            check_range(owner, "resize_size", self.resize_size, 0, integer=True)
        sweep = self.thresholds
        if isinstance(sweep, str):
            sweep = parse_thresholds(sweep)
        if sweep is not None:
            sweep = tuple(float(t) for t in sweep)
            if not sweep:
                raise SettingsError(f"{owner}.thresholds: the sweep is empty")
        object.__setattr__(self, "thresholds", sweep)
        if self.threshold_mode == "minmax":
            if threshold != "auto" and not 0 <= float(threshold) <= 1:
                raise SettingsError(
                    f"{owner}.threshold {threshold:g}: minmax thresholds are fractions of the "
                    "class map's range, in 0..1 (or use threshold_mode raw)"
                )
            if sweep and not 0 <= min(sweep) <= max(sweep) <= 1:
                raise SettingsError(f"{owner}.thresholds: minmax thresholds must be in 0..1")
        elif threshold != "auto":
            check_range(owner, "threshold", float(threshold))
        pictures = self.save_images or self.save_overlays or self.save_heatmaps
        if pictures and self.output_dir is None:
            raise SettingsError(
                f"{owner}.output_dir: needed for save_images / save_overlays / save_heatmaps "
                "(pictures are written as they are made)"
            )


# ----------------------------------------------------------------------------- dense maps


def compute_class_map(model: nn.Module, images: Tensor) -> Tensor:
    """The dense class map ``[N, C, h, w]``: ``model.forward_map`` when the model has it, else
    ``model(images)`` (a model built with ``out_map=True``)."""
    forward_map = getattr(model, "forward_map", None)
    output = forward_map(images) if callable(forward_map) else model(images)
    if not isinstance(output, Tensor) or output.dim() != 4:
        raise DrnetError(
            "the model did not return a dense class map [N, C, h, w]; build it with "
            "out_map=True or use a model with forward_map()"
        )
    return output


def output_stride(image_size: tuple[int, int], map_size: tuple[int, int]) -> int:
    """The stride ``s`` with ``map = ceil(image / s)`` (8 for every DRN)."""
    for stride in (8, 4, 16, 32, 2, 1):
        if all(-(-i // stride) == m for i, m in zip(image_size, map_size, strict=True)):
            return stride
    raise DrnetError(
        f"cannot relate a {map_size[0]}x{map_size[1]} class map to a "
        f"{image_size[0]}x{image_size[1]} input (expected ceil(size / stride))"
    )


# ----------------------------------------------------------------------------- bounded sizes


def network_input_size(image_size: tuple[int, int], resize_size: int | None) -> tuple[int, int]:
    """``(H, W)`` of the network input for an image of ``image_size``: its shorter side resized
    to ``resize_size`` (as ``torchvision``'s ``Resize`` does; ``None``/0: kept), then scaled
    down to :data:`MAX_INPUT_PIXELS` / :data:`MAX_INPUT_SIDE` when past them."""
    height, width = image_size
    if resize_size:
        short, long = sorted((height, width))
        new_short, new_long = resize_size, int(resize_size * long / short)
        height, width = (new_short, new_long) if height <= width else (new_long, new_short)
    factor = min(
        1.0,
        math.sqrt(MAX_INPUT_PIXELS / (height * width)),
        MAX_INPUT_SIDE / max(height, width),
    )
    if factor < 1.0:
        height, width = max(1, int(height * factor)), max(1, int(width * factor))
    return height, width


class BoundedTransform:
    """:func:`full_image_transform`, with an explicit output size for images whose resized
    input would be past :data:`MAX_INPUT_PIXELS` (a picklable class: DataLoader workers)."""

    def __init__(self, resize_size: int | None, mean: Sequence[float], std: Sequence[float]):
        self.resize_size, self.mean, self.std = resize_size, mean, std
        self.plain = full_image_transform(resize_size, mean, std)

    def __call__(self, image: Image.Image) -> Tensor:
        height, width = image.height, image.width
        if self.resize_size:
            short, long = sorted((height, width))
            height, width = self.resize_size, int(self.resize_size * long / short)
        if height * width <= MAX_INPUT_PIXELS and max(height, width) <= MAX_INPUT_SIDE:
            return self.plain(image)  # within bounds: exactly the usual preprocessing
        target = network_input_size((image.height, image.width), self.resize_size)
        resized = image.resize((target[1], target[0]), Image.Resampling.BILINEAR)
        return full_image_transform(None, self.mean, self.std)(resized)


def display_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """The size overlays and heatmaps of an image are drawn at (:data:`OVERLAY_MAX_SIDE`)."""
    height, width = image_size
    factor = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


# ----------------------------------------------------------------------------- rendering
# moved to drnet.rendering (one module draws for the report, localize and serve); the old names
# stay importable from here
colorize = colorize_heatmap


# ----------------------------------------------------------------------------- one image


@dataclass
class ImageLocalization:
    """Class scores and boxes of one image for every threshold of a sweep."""

    classes: Tensor  # [K] top-k classes, best first
    probabilities: Tensor  # [K]
    boxes: Tensor  # [K, T, 4] in original-image pixels
    fallback: Tensor  # [K, T] bool: the region was empty, the fallback box was used
    class_map: Tensor  # [C, h, w] raw responses
    input_size: tuple[int, int]
    image_size: tuple[int, int]
    stride: int


@torch.no_grad()
def localize_image(
    model: nn.Module,
    image: Tensor,
    image_size: tuple[int, int],
    thresholds: Sequence[float],
    settings: LocalizationSettings,
    extra_class: int | None = None,
) -> ImageLocalization:
    """Boxes of the top-k classes (and ``extra_class``, appended last, e.g. the true class) of
    one preprocessed image ``[3, h, w]`` (or ``[1, 3, h, w]``) for each threshold."""
    if image.dim() == 3:
        image = image[None]
    class_map = compute_class_map(model, image)[0].float().cpu()
    input_size = (int(image.shape[-2]), int(image.shape[-1]))
    stride = output_stride(input_size, tuple(class_map.shape[-2:]))
    probabilities = class_map.mean(dim=(1, 2)).softmax(dim=0)
    k = min(settings.top_k, class_map.shape[0])
    top_p, top_c = probabilities.topk(k)
    classes = top_c if extra_class is None else torch.cat([top_c, torch.tensor([extra_class])])
    boxes, empty = boxes_from_class_map(
        class_map,
        classes,
        list(thresholds),
        input_size,
        stride=stride,
        mode=settings.threshold_mode,
        fallback=settings.fallback,
        resolution=settings.box_resolution,
    )
    return ImageLocalization(
        classes=classes,
        probabilities=torch.cat([top_p, probabilities[classes[k:]]]),
        boxes=scale_boxes(boxes, input_size, image_size),
        fallback=empty,
        class_map=class_map,
        input_size=input_size,
        image_size=tuple(image_size),
        stride=stride,
    )


def class_heatmap(
    result: ImageLocalization, cls: int, size: tuple[int, int] | None = None
) -> Tensor:
    """The min-max normalised response of class ``cls`` as a heatmap over the original image
    (or an image of ``size``: the same image drawn smaller, see :func:`display_size`)."""
    response = normalize_response(result.class_map[cls], "minmax")
    size = result.image_size if size is None else size
    return upsample_heatmap(response, result.input_size, size, result.stride)


def bounded_overlay(
    path: str | Path,
    result: ImageLocalization,
    cls: int,
    predicted: Tensor,
    ground_truth: Tensor | None = None,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """:func:`render_overlay` of the image at ``path`` with the heatmap of ``cls``, drawn at
    :func:`display_size` (boxes in original-image pixels are scaled to it)."""
    size = display_size(result.image_size)
    image = load_rgb(path)
    if size != result.image_size:
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        predicted = scale_boxes(predicted, result.image_size, size)
        if ground_truth is not None:
            ground_truth = scale_boxes(ground_truth, result.image_size, size)
    heat = class_heatmap(result, cls, size)
    return render_overlay(image, heat, predicted, ground_truth, labels)


# ----------------------------------------------------------------------------- a scored split


@dataclass
class SplitScores:
    """Counts of a localization sweep over one split (one entry per threshold)."""

    thresholds: list[float]
    top1_ok: Tensor
    top5_ok: Tensor
    gt_known_ok: Tensor
    top1_fallback: Tensor
    num_images: int = 0  # images in the split
    num_scored: int = 0  # images with ground-truth boxes of their class
    top1_cls_ok: int = 0
    top5_cls_ok: int = 0
    size_fractions: list[tuple[float, float]] = field(default_factory=list)
    prior_inputs: list[tuple[tuple[int, int], Tensor, bool, bool]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    without_boxes: list[str] = field(default_factory=list)
    # (dx, dy) of the top-1 box centre from the true box centre, at the recorded threshold, for
    # images whose top-1 class is right
    centre_offsets: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def empty(cls, thresholds: Sequence[float]) -> SplitScores:
        zeros = [torch.zeros(len(thresholds), dtype=torch.long) for _ in range(4)]
        return cls(list(thresholds), *zeros)

    def curve(self) -> list[dict]:
        """One row per threshold: ``threshold, top1_loc_err, top5_loc_err, gt_known_loc_err,
        fallback_rate`` (errors are fractions)."""
        n = max(self.num_scored, 1)
        return [
            {
                "threshold": t,
                "top1_loc_err": 1 - int(self.top1_ok[i]) / n,
                "top5_loc_err": 1 - int(self.top5_ok[i]) / n,
                "gt_known_loc_err": 1 - int(self.gt_known_ok[i]) / n,
                "fallback_rate": int(self.top1_fallback[i]) / n,
            }
            for i, t in enumerate(self.thresholds)
        ]

    def mean_box_size(self) -> tuple[float, float]:
        """Mean ground-truth box width and height as fractions of the image size."""
        if not self.size_fractions:
            return (0.5, 0.5)
        widths, heights = zip(*self.size_fractions, strict=True)
        return (sum(widths) / len(widths), sum(heights) / len(heights))

    def box_centre_offset(self) -> dict:
        """Mean ``centre_offsets`` in pixels: ``{"x", "y", "images"}`` (``x``, ``y`` are None
        without images)."""
        count = len(self.centre_offsets)
        if count == 0:
            return {"x": None, "y": None, "images": 0}
        xs, ys = zip(*self.centre_offsets, strict=True)
        return {"x": round(sum(xs) / count, 4), "y": round(sum(ys) / count, 4), "images": count}

    def prior(self, box_size: tuple[float, float], iou_threshold: float = IOU_THRESHOLD) -> dict:
        """Score the centred box of ``box_size`` (fractions) the same way as the predictions."""
        top1 = top5 = known = 0
        for image_size, gt, top1_cls, top5_cls in self.prior_inputs:
            hit = bool((iou(centred_box(image_size, box_size)[None], gt) > iou_threshold).any())
            top1 += hit and top1_cls
            top5 += hit and top5_cls
            known += hit
        n = max(len(self.prior_inputs), 1)
        return {
            "top1_loc_err": 1 - top1 / n,
            "top5_loc_err": 1 - top5 / n,
            "gt_known_loc_err": 1 - known / n,
            "box_size": [round(box_size[0], 6), round(box_size[1], 6)],
        }


def _split_loader(
    split_dir: str | Path, card: ModelCard, resize_size: int | None, workers: int
) -> tuple[list[tuple[str, int]], list[str], DataLoader]:
    dataset = image_folder(split_dir)
    to_model = match_split_classes(dataset.classes, card, str(split_dir))
    samples = [(path, to_model[target]) for path, target in dataset.samples]
    transform = BoundedTransform(resize_size, card.mean, card.std)
    loader = DataLoader(
        ImageFiles([p for p, _ in samples], transform), batch_size=None, num_workers=workers
    )
    return samples, card.names(), loader


def score_split(
    model: nn.Module,
    card: ModelCard,
    split_dir: str | Path,
    boxes: dict[str, ImageBoxes],
    thresholds: Sequence[float],
    settings: LocalizationSettings,
    options: InferenceOptions | None = None,
    *,
    record_threshold: float | None = None,
    on_image: Callable[[int, Path, ImageLocalization, dict], None] | None = None,
    desc: str = "localize",
) -> SplitScores:
    """Localize every image of an ImageFolder split and count hits for each threshold.

    With ``record_threshold`` (one of ``thresholds``) a per-image record (boxes, IoUs,
    correctness) is kept for that threshold and passed to ``on_image``. ``options``: device,
    loader workers and progress (the model runs as given: no fast-path copy here).
    """
    options = options or InferenceOptions()
    device, progress = resolve_device(options.device), options.progress
    model.eval().to(device)
    resize_size = card.resize_size if settings.resize_size is None else settings.resize_size
    samples, names, loader = _split_loader(split_dir, card, resize_size, options.workers)
    scores = SplitScores.empty(thresholds)
    scores.num_images = len(samples)
    record_at = thresholds.index(record_threshold) if record_threshold is not None else None
    for image, index, size in tqdm(loader, desc=desc, disable=not progress, leave=False):
        path, target = samples[index]
        key = relative_key(path, split_dir)
        image_size = (int(size[0]), int(size[1]))
        entry = boxes.get(key)
        gt = entry.for_class(names[target], image_size) if entry is not None else torch.zeros(0, 4)
        if len(gt) == 0:
            scores.without_boxes.append(key)
            continue
        result = localize_image(
            model, image.to(device), image_size, thresholds, settings, extra_class=target
        )
        k = len(result.classes) - 1
        overlaps = iou(result.boxes.reshape(-1, 4), gt).reshape(k + 1, len(thresholds), -1)
        best_iou = overlaps.amax(dim=-1)
        hit = best_iou > settings.iou_threshold  # [K + 1, T]
        top1_cls = bool(result.classes[0] == target)
        top5_cls = bool((result.classes[:k] == target).any())
        scores.num_scored += 1
        scores.top1_cls_ok += top1_cls
        scores.top5_cls_ok += top5_cls
        scores.top1_ok += (hit[0] & top1_cls).long()
        scores.top5_ok += (hit[-1] & top5_cls).long()
        scores.gt_known_ok += hit[-1].long()
        scores.top1_fallback += result.fallback[0].long()
        for box in gt:
            scores.size_fractions.append(
                (float(box[2] - box[0]) / image_size[1], float(box[3] - box[1]) / image_size[0])
            )
        scores.prior_inputs.append((image_size, gt, top1_cls, top5_cls))
        if record_at is not None and top1_cls:
            dx, dy = box_centre_offset(result.boxes[0, record_at], gt).tolist()
            scores.centre_offsets.append((dx, dy))
        if record_at is not None:
            record = {
                "image": key,
                "path": str(path),
                "width": image_size[1],
                "height": image_size[0],
                "label": names[target],
                "gt_boxes": _round_boxes(gt),
                "predictions": [
                    {
                        "rank": rank + 1,
                        "class": names[int(c)],
                        "index": int(c),
                        "probability": float(result.probabilities[rank]),
                        "box": _round_boxes(result.boxes[rank, record_at]),
                        "iou": round(float(best_iou[rank, record_at]), 6),
                        "fallback": bool(result.fallback[rank, record_at]),
                    }
                    for rank, c in enumerate(result.classes[:k].tolist())
                ],
                "gt_known_box": _round_boxes(result.boxes[k, record_at]),
                "gt_known_iou": round(float(best_iou[k, record_at]), 6),
                "top1_loc_correct": bool(hit[0, record_at]) and top1_cls,
                "top5_loc_correct": bool(hit[k, record_at]) and top5_cls,
            }
            scores.records.append(record)
            if on_image is not None:
                on_image(len(scores.records) - 1, Path(path), result, record)
    return scores


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _round_boxes(boxes: Tensor) -> list:
    return (
        [round(float(v), 3) for v in boxes]
        if boxes.dim() == 1
        else [_round_boxes(b) for b in boxes]
    )


def choose_threshold(curve: Sequence[dict]) -> dict:
    """The row of ``curve`` with the lowest top-1 localization error (ties: lower top-5 error,
    then the smaller threshold)."""
    if not curve:
        raise DrnetError("no threshold to choose from")
    return min(curve, key=lambda r: (r["top1_loc_err"], r["top5_loc_err"], r["threshold"]))


def _write_curve(path: Path, curves: dict[str, list[dict]]) -> None:
    with atomic_csv(path) as handle:
        writer = csv.writer(handle)
        keys = ["threshold", "top1_loc_err", "top5_loc_err", "gt_known_loc_err", "fallback_rate"]
        writer.writerow(["split", *keys])
        for split, rows in curves.items():
            for row in rows:
                writer.writerow([split, *(f"{row[k]:.6g}" for k in keys)])


def _require_boxes(scores: SplitScores, split_dir: str | Path, source: str | Path) -> None:
    if scores.num_scored == 0:
        example = scores.without_boxes[0] if scores.without_boxes else "(no images)"
        raise DataError(
            f"{source}: no image of {split_dir} has a box labelled with its own class (e.g. "
            f"{example}); check the image paths and labels in the box file"
        )


def _sweep(settings: LocalizationSettings) -> list[float]:
    threshold, thresholds = settings.threshold, settings.thresholds
    if thresholds is None:
        if settings.threshold_mode == "raw" and threshold == "auto":
            raise DrnetError(
                "raw thresholds have no default sweep: pass --thresholds (e.g. 0:10:0.5) with "
                "--threshold-mode raw"
            )
        thresholds = default_thresholds() if settings.threshold_mode == "minmax" else []
    thresholds = list(thresholds)
    if threshold != "auto" and float(threshold) not in thresholds:
        thresholds = sorted([*thresholds, float(threshold)])
    return thresholds


def _split_boxes(split_dir: str | Path, source: str | Path, xml_origin: int) -> dict:
    keys = [relative_key(p, split_dir) for p, _ in image_folder(split_dir).samples]
    return load_boxes(source, keys, xml_origin=xml_origin, root=split_dir)


def _check_held_out(val_dir: str | Path | None, split_dir: str | Path) -> Path:
    if val_dir is None:
        raise DrnetError(
            "--threshold auto chooses t on a held-out split: pass --val-dir DIR (never the "
            "evaluation split), or a fixed --threshold such as 0.2"
        )
    if Path(val_dir).resolve() == Path(split_dir).resolve():
        raise DrnetError(
            f"--val-dir {val_dir} is the evaluation split; choose t on a held-out split"
        )
    return Path(val_dir)


class _OverlayWriter:
    """``on_image`` callback of :func:`score_split`: heatmap + box overlays of the first
    ``count`` images into ``output_dir/overlays``."""

    def __init__(self, output_dir: Path, count: int) -> None:
        self.directory, self.count, self.written = output_dir / "overlays", count, 0

    def __call__(self, number: int, path: Path, result: ImageLocalization, record: dict) -> None:
        if number >= self.count:
            return
        top = record["predictions"][0]
        gt = torch.tensor(record["gt_boxes"]).reshape(-1, 4)
        label = f"{top['class']} {top['probability']:.2f}"
        self.directory.mkdir(parents=True, exist_ok=True)
        name = _safe_name("__".join(Path(record["image"]).with_suffix("").parts)) + ".png"
        box = torch.tensor(top["box"])
        overlay = bounded_overlay(path, result, int(result.classes[0]), box, gt, [label])
        atomic_save_image(overlay, self.directory / name)
        record["overlay"] = f"overlays/{name}"
        self.written += 1


@dataclass(frozen=True)
class LocalizationData:
    """What :func:`evaluate` scores: the ImageFolder split ``images`` with its ground-truth
    ``boxes`` (a folder of Pascal-VOC ``.xml``, or a ``.csv``/``.json`` of
    ``image,x1,y1,x2,y2,label``), and the held-out split ``val_images`` (boxes ``val_boxes``,
    default ``boxes``) on which ``threshold="auto"`` chooses ``t``. ``xml_origin``: the index of
    the first pixel in XML files (1 for Pascal VOC)."""

    images: str | os.PathLike
    boxes: str | os.PathLike
    val_images: str | os.PathLike | None = None
    val_boxes: str | os.PathLike | None = None
    xml_origin: int = 1

    def __post_init__(self) -> None:
        check_choice("LocalizationData", "xml_origin", self.xml_origin, (0, 1))


@dataclass
class LocalizationEvaluation:
    """What :func:`evaluate` returns: ``metrics`` (``metrics.json``), the scores of the
    evaluation split (``scores``: its per-image ``records`` become ``boxes.json``) and of the
    held-out split (``held_out``, or ``None`` for a fixed ``t``)."""

    metrics: dict[str, Any]
    scores: SplitScores
    held_out: SplitScores | None = None

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """``metrics.json``, ``threshold_curve.csv`` and ``boxes.json`` (the overlays are
        written as they are made, into ``settings.output_dir``)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        curves = {"evaluation": self.metrics["curve"]}
        if self.held_out is not None:
            curves = {"held_out": self.held_out.curve(), **curves}
        _write_curve(output_dir / CURVE_FILE, curves)
        atomic_write_json(output_dir / BOXES_FILE, self.scores.records, indent=1)
        write_metrics(output_dir, self.metrics)
        return {k: output_dir / v for k, v in self.metrics["files"].items() if v}

    def summary_lines(self) -> list[str]:
        """The chosen ``t``, the errors, the centred-box prior and the box centre offset."""
        m, prior, offset = self.metrics, self.metrics["centred_box_prior"], None
        lines = [
            f"t = {m['threshold']:g} ({m['threshold_source']}), {m['num_images_scored']} images",
            f"top-1 loc err {m['top1_loc_err']:.4f}  top-5 loc err {m['top5_loc_err']:.4f}"
            f"  GT-known loc err {m['gt_known_loc_err']:.4f}"
            f"  (top-1 cls err {m['top1_cls_err']:.4f})",
            f"centred-box prior: top-1 loc err {prior['top1_loc_err']:.4f}  "
            f"top-5 loc err {prior['top5_loc_err']:.4f}",
        ]
        offset = m["box_centre_offset"]
        if offset["images"]:
            lines.append(
                f"box centre offset (predicted - true, {m['box_resolution']} boxes): "
                f"x {offset['x']:+.2f} px  y {offset['y']:+.2f} px over {offset['images']} "
                "images with the right top-1 class"
            )
        return lines


def evaluate(
    model: nn.Module,
    card: ModelCard,
    data: LocalizationData,
    options: InferenceOptions,
    settings: LocalizationSettings,
) -> LocalizationEvaluation:
    """Score localization on ``data.images`` (the paper's protocol; see the module docstring).

    ``settings.threshold="auto"`` chooses ``t`` on the held-out split ``data.val_images``; a
    number fixes it. Overlays of the first ``settings.save_images`` images go into
    ``settings.output_dir/overlays``. ``options.fast``: the class maps come from an inference
    copy of the model (:func:`drnet.speed.inference.fast_inference`).
    """
    device = resolve_device(options.device)
    dtype = options.dtype
    model = fast_inference(model.eval().to(device), enabled=options.fast, dtype=dtype)
    thresholds = _sweep(settings)
    held_out: SplitScores | None = None
    if settings.threshold == "auto":
        val_dir = _check_held_out(data.val_images, data.images)
        val_source = data.val_boxes or data.boxes
        val_boxes = _split_boxes(val_dir, val_source, data.xml_origin)
        held_out = score_split(
            model, card, val_dir, val_boxes, thresholds, settings, options, desc="held-out split"
        )
        _require_boxes(held_out, val_dir, val_source)
        chosen = float(choose_threshold(held_out.curve())["threshold"])
        source = "auto: lowest top-1 localization error on the held-out split"
    else:
        chosen, source = float(settings.threshold), "fixed"

    boxes = _split_boxes(data.images, data.boxes, data.xml_origin)
    overlays = None
    if settings.save_images:
        overlays = _OverlayWriter(Path(settings.output_dir), settings.save_images)
    scores = score_split(
        model, card, data.images, boxes, thresholds, settings, options, record_threshold=chosen,
        on_image=overlays, desc="evaluation split",
    )  # fmt: skip
    _require_boxes(scores, data.images, data.boxes)
    metrics = _localization_metrics(card, settings, data.images, scores, held_out, chosen, source)
    metrics["held_out_split"] = str(data.val_images) if held_out is not None else None
    metrics["files"]["overlays"] = "overlays/" if overlays and overlays.written else None
    return LocalizationEvaluation(metrics, scores, held_out)


def evaluate_localization(
    model: nn.Module,
    card: ModelCard,
    split_dir: str | Path,
    boxes_source: str | Path,
    output_dir: str | Path,
    **kwargs: Any,
) -> dict:
    """Kept for the demo / one release: :func:`evaluate`, then :meth:`LocalizationEvaluation.write`
    into ``output_dir``; returns the metrics. Keywords of earlier releases: ``threshold``
    (``"auto"``), ``thresholds``, ``val_dir``, ``val_boxes_source``, ``settings``,
    ``xml_origin`` (1), ``save_images`` (16) and the runtime keywords that
    :class:`~drnet.tasks.common.InferenceOptions` holds."""
    options = legacy_options(kwargs)
    data = LocalizationData(
        split_dir, boxes_source, kwargs.pop("val_dir", None),
        kwargs.pop("val_boxes_source", None), kwargs.pop("xml_origin", 1),
    )  # fmt: skip
    settings = replace(
        kwargs.pop("settings", None) or LocalizationSettings(),
        threshold=kwargs.pop("threshold", "auto"),
        thresholds=kwargs.pop("thresholds", None),
        save_images=kwargs.pop("save_images", 16),
        output_dir=output_dir,
    )
    if kwargs:
        raise TypeError(f"evaluate_localization: unexpected keyword(s) {', '.join(kwargs)}")
    result = evaluate(model, card, data, options, settings)
    result.write(output_dir)
    return result.metrics


def _localization_metrics(
    card: ModelCard,
    settings: LocalizationSettings,
    split_dir: str | Path,
    scores: SplitScores,
    held_out: SplitScores | None,
    chosen: float,
    source: str,
) -> dict:
    """``metrics.json``: the errors at the chosen ``t``, its curves and the prior."""
    curve = scores.curve()
    at = next(row for row in curve if row["threshold"] == chosen)
    prior_from = held_out if held_out is not None else scores
    n = scores.num_scored
    resize_size = card.resize_size if settings.resize_size is None else settings.resize_size
    return {
        "task": "localization",
        "split": str(split_dir),
        "held_out_split": None,
        "model": card.model,
        "num_images": scores.num_images,
        "num_images_scored": n,
        "num_images_without_boxes": len(scores.without_boxes),
        "threshold": chosen,
        "threshold_mode": settings.threshold_mode,
        "threshold_source": source,
        "fallback": settings.fallback,
        "box_resolution": settings.box_resolution,
        "iou_threshold": settings.iou_threshold,
        "resize_size": resize_size or None,
        "top_k": settings.top_k,
        "top1_loc_err": at["top1_loc_err"],
        "top5_loc_err": at["top5_loc_err"],
        "gt_known_loc_err": at["gt_known_loc_err"],
        "fallback_rate": at["fallback_rate"],
        "top1_cls_err": 1 - scores.top1_cls_ok / n,
        "top5_cls_err": 1 - scores.top5_cls_ok / n,
        "box_centre_offset": scores.box_centre_offset(),
        "centred_box_prior": {
            **scores.prior(prior_from.mean_box_size(), settings.iou_threshold),
            "box_size_from": "held_out" if held_out is not None else "evaluation",
        },
        "curve": curve,
        "held_out_curve": held_out.curve() if held_out is not None else None,
        "held_out_num_images_scored": held_out.num_scored if held_out is not None else None,
        "files": {"metrics": METRICS_FILE, "curve_csv": CURVE_FILE, "boxes": BOXES_FILE},
    }


# ----------------------------------------------------------------------------- predict


def read_threshold(value: float | str) -> tuple[float, str | None]:
    """A threshold from a number or from the ``metrics.json`` of ``localize eval`` (its chosen
    ``t`` and threshold mode; the file, or the folder holding it or the
    ``localization_metrics.json`` of earlier releases)."""
    try:
        return float(value), None
    except (TypeError, ValueError):
        pass
    path = Path(str(value))
    if path.is_dir():
        path = next(
            (path / n for n in (METRICS_FILE, OLD_METRICS_FILE) if (path / n).is_file()),
            path / METRICS_FILE,
        )
    try:
        data = read_json(path, "threshold file")
        value = float(data["threshold"])
        if not math.isfinite(value):
            raise ValueError("not finite")
        return value, data.get("threshold_mode")
    except (OSError, ValueError, KeyError, TypeError, DataError) as exc:
        raise DrnetError(
            f"--threshold {value}: expected a number or the {METRICS_FILE} of 'localize eval' "
            "(with a 'threshold')" + (f" ({exc})" if isinstance(exc, DataError) else "")
        ) from exc


@dataclass
class LocalizationPredictions:
    """What :func:`predict` returns: the ``boxes.json`` entries (``entries``) and the images
    that could not be read (``failed``: ``(path, message)``)."""

    entries: list[dict]
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        """``{"num_images", "num_failed"}``."""
        return {"num_images": len(self.entries), "num_failed": len(self.failed)}

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """``boxes.json`` (the overlays and heatmaps are written as they are made, into
        ``settings.output_dir``)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        return {"boxes": atomic_write_json(output_dir / BOXES_FILE, self.entries, indent=1)}

    def summary_lines(self) -> list[str]:
        """The top class and box of the first ten images."""
        lines = []
        for entry in self.entries[:10]:
            top = entry["predictions"][0]
            box = ", ".join(f"{v:g}" for v in top["box"])
            lines.append(f"{entry['image']}: {top['class']} ({top['probability']:.3f}) box [{box}]")
        if len(self.entries) > 10:
            lines.append(f"... {len(self.entries) - 10} more")
        return lines


@torch.no_grad()
def predict(
    model: nn.Module,
    card: ModelCard,
    data: Sequence[str | os.PathLike],
    options: InferenceOptions,
    settings: LocalizationSettings,
) -> LocalizationPredictions:
    """Boxes (and optionally class-activation heatmaps) of the top-k classes of each image of
    ``data`` (files, or folders searched recursively), at ``settings.threshold``
    (:data:`~drnet.constants.DEFAULT_BOX_THRESHOLD` for ``"auto"``).

    With ``settings.save_overlays``, ``overlays/<name>.png`` (heatmap of the top-1 class, its box
    solid white) and with ``settings.save_heatmaps`` ``heatmaps/<name>_<class>.png`` (the min-max
    normalised class response, jet colours) for every top-k class are written into
    ``settings.output_dir`` as they are made; names follow :data:`drnet.cli.vocab.NAMES_HELP`,
    pictures are drawn at :func:`display_size`. The entries are ``{"image", "width", "height",
    "predictions": [{"rank", "class", "index", "probability", "box", "fallback",
    "heatmap"?}], "overlay"?}``. Unreadable images are left out and listed in ``failed``.
    """
    from drnet.data.classification import list_images

    paths = list_images(data)
    threshold = DEFAULT_BOX_THRESHOLD if settings.threshold == "auto" else settings.threshold
    device = resolve_device(options.device)
    model = fast_inference(model.eval().to(device), enabled=options.fast, dtype=options.dtype)
    output_dir = Path(settings.output_dir) if settings.output_dir is not None else None
    resize_size = card.resize_size if settings.resize_size is None else settings.resize_size
    files = SkipBad(ImageFiles(paths, BoundedTransform(resize_size, card.mean, card.std)))
    loader = DataLoader(files, batch_size=None, num_workers=options.workers)
    file_names = unique_names(relative_names(paths))
    written: set[str] = set()
    entries, failed = [], []
    for image, index, size, error in tqdm(
        loader, desc="localize", disable=not options.progress, leave=False
    ):
        if error:
            failed.append((str(paths[index]), error))
            continue
        image_size = (int(size[0]), int(size[1]))
        result = localize_image(model, image.to(device), image_size, [threshold], settings)
        entry = _predict_entry(card.names(), paths[index], image_size, result)
        name = file_names[index]
        if settings.save_heatmaps:
            _write_heatmaps(output_dir, name, entry, result, written)
        if settings.save_overlays:
            top = entry["predictions"][0]
            overlay = bounded_overlay(
                paths[index],
                result,
                top["index"],
                result.boxes[0, 0],
                labels=[f"{top['class']} {top['probability']:.2f}"],
            )
            entry["overlay"] = _save_png(overlay, output_dir, f"overlays/{name}", written)
        entries.append(entry)
    return LocalizationPredictions(entries, failed)


def predict_localization(
    model: nn.Module,
    card: ModelCard,
    paths: Sequence[str | Path],
    output_dir: str | Path,
    **kwargs: Any,
) -> list[dict]:
    """Kept for one release: :func:`predict` into ``output_dir`` (``boxes.json`` written there);
    returns the entries. Keywords of earlier releases: ``threshold`` (0.2), ``settings``
    (default ``top_k=1``), ``save_overlays`` (True), ``save_heatmaps``, ``failed`` (a list that
    receives ``(path, message)`` of unreadable images; without it one raises
    :class:`DataError`), and the runtime keywords that
    :class:`~drnet.tasks.common.InferenceOptions` holds."""
    options = legacy_options(kwargs)
    settings = replace(
        kwargs.pop("settings", None) or LocalizationSettings(top_k=1),
        threshold=kwargs.pop("threshold", DEFAULT_BOX_THRESHOLD),
        save_overlays=kwargs.pop("save_overlays", True),
        save_heatmaps=kwargs.pop("save_heatmaps", False),
        output_dir=output_dir,
    )
    failed = kwargs.pop("failed", None)
    if kwargs:
        raise TypeError(f"predict_localization: unexpected keyword(s) {', '.join(kwargs)}")
    result = predict(model, card, [Path(p) for p in paths], options, settings)
    if result.failed and failed is None:
        raise DataError(result.failed[0][1])
    if failed is not None:
        failed.extend(result.failed)
    result.write(output_dir)
    return result.entries


def _predict_entry(
    names: Sequence[str], path: str | Path, image_size: tuple[int, int], result
) -> dict:
    return {
        "image": str(path),
        "width": image_size[1],
        "height": image_size[0],
        "predictions": [
            {
                "rank": rank + 1,
                "class": names[int(c)],
                "index": int(c),
                "probability": float(result.probabilities[rank]),
                "box": _round_boxes(result.boxes[rank, 0]),
                "fallback": bool(result.fallback[rank, 0]),
            }
            for rank, c in enumerate(result.classes.tolist())
        ],
    }


def _save_png(image: Image.Image, output_dir: Path, stem: str, written: set[str]) -> str:
    """Save ``image`` as ``stem.png`` under ``output_dir`` (``stem-2.png``... when a file of
    this run already has that name); returns the relative name."""
    name, number = f"{stem}.png", 1
    while name.casefold() in written:
        number += 1
        name = f"{stem}-{number}.png"
    written.add(name.casefold())
    (output_dir / name).parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(image, output_dir / name)
    return name


def _write_heatmaps(
    output_dir: Path, name: str, entry: dict, result: ImageLocalization, written: set[str]
) -> None:
    size = display_size(result.image_size)
    for prediction in entry["predictions"]:
        heat = class_heatmap(result, prediction["index"], size)
        picture = Image.fromarray(colorize(heat).permute(1, 2, 0).numpy())
        stem = f"heatmaps/{name}_{_safe_name(prediction['class'])}"
        prediction["heatmap"] = _save_png(picture, output_dir, stem, written)
