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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from drnet.constants import MAX_INPUT_PIXELS, MAX_INPUT_SIDE, OVERLAY_MAX_SIDE
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
from drnet.errors import DataError, DrnetError
from drnet.models.loading import ModelCard
from drnet.rendering import colorize_heatmap, render_overlay, upsample_heatmap  # noqa: F401
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

IOU_THRESHOLD = 0.5
METRICS_FILE = "localization_metrics.json"
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


@dataclass
class LocalizationSettings:
    """How boxes are made and scored (see :mod:`drnet.tasks.boxes` for the rule)."""

    threshold_mode: str = "minmax"
    fallback: str = "peak"
    resize_size: int | None = None  # None: the model card's resize_size; 0: native size
    top_k: int = 5
    iou_threshold: float = IOU_THRESHOLD
    box_resolution: str = DEFAULT_BOX_RESOLUTION  # "cell" (8-px grid) or "pixel" (up-sampled)

    def __post_init__(self) -> None:
        if self.threshold_mode not in THRESHOLD_MODES:
            raise DrnetError(
                f"threshold mode {self.threshold_mode!r}: expected one of {THRESHOLD_MODES}"
            )
        if self.fallback not in FALLBACKS:
            raise DrnetError(f"fallback {self.fallback!r}: expected one of {FALLBACKS}")
        if self.box_resolution not in BOX_RESOLUTIONS:
            raise DrnetError(
                f"box resolution {self.box_resolution!r}: expected one of {BOX_RESOLUTIONS}"
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
    *,
    record_threshold: float | None = None,
    on_image: Callable[[int, Path, ImageLocalization, dict], None] | None = None,
    device: str | torch.device = "auto",
    workers: int = 0,
    progress: bool = True,
    desc: str = "localize",
) -> SplitScores:
    """Localize every image of an ImageFolder split and count hits for each threshold.

    With ``record_threshold`` (one of ``thresholds``) a per-image record (boxes, IoUs,
    correctness) is kept for that threshold and passed to ``on_image``.
    """
    device = resolve_device(str(device))
    model.eval().to(device)
    resize_size = card.resize_size if settings.resize_size is None else settings.resize_size
    samples, names, loader = _split_loader(split_dir, card, resize_size, workers)
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


def _sweep(settings: LocalizationSettings, threshold: float | str, thresholds) -> list[float]:
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


def evaluate_localization(
    model: nn.Module,
    card: ModelCard,
    split_dir: str | Path,
    boxes_source: str | Path,
    output_dir: str | Path,
    *,
    threshold: float | str = "auto",
    thresholds: Sequence[float] | None = None,
    val_dir: str | Path | None = None,
    val_boxes_source: str | Path | None = None,
    settings: LocalizationSettings | None = None,
    xml_origin: int = 1,
    save_images: int = 16,
    device: str | torch.device = "auto",
    workers: int = 0,
    progress: bool = True,
    fast: bool = True,
    dtype: str | torch.dtype | None = None,
) -> dict:
    """Score localization on ``split_dir`` and write the results into ``output_dir``.

    ``threshold="auto"`` chooses ``t`` on the held-out split ``val_dir`` (boxes from
    ``val_boxes_source``, default ``boxes_source``); a number fixes it. Writes
    ``localization_metrics.json``, ``threshold_curve.csv``, ``boxes.json`` (per-image, at the
    chosen ``t``) and, for the first ``save_images`` images, heatmap + box overlays in
    ``overlays/``. Returns the metrics dict. ``fast``: the class maps come from an inference copy
    of the model (:func:`drnet.speed.inference.fast_inference`).
    """
    from drnet.speed.inference import fast_inference

    settings = settings or LocalizationSettings()
    model = fast_inference(model.eval().to(resolve_device(str(device))), enabled=fast, dtype=dtype)
    output_dir = Path(output_dir)
    thresholds = _sweep(settings, threshold, thresholds)
    common = dict(device=device, workers=workers, progress=progress)
    held_out: SplitScores | None = None
    if threshold == "auto":
        val_dir = _check_held_out(val_dir, split_dir)
        val_source = val_boxes_source or boxes_source
        val_boxes = _split_boxes(val_dir, val_source, xml_origin)
        held_out = score_split(
            model, card, val_dir, val_boxes, thresholds, settings, desc="held-out split", **common
        )
        _require_boxes(held_out, val_dir, val_source)
        chosen = float(choose_threshold(held_out.curve())["threshold"])
        source = "auto: lowest top-1 localization error on the held-out split"
    else:
        chosen, source = float(threshold), "fixed"

    boxes = _split_boxes(split_dir, boxes_source, xml_origin)
    overlays = _OverlayWriter(output_dir, save_images)
    scores = score_split(
        model, card, split_dir, boxes, thresholds, settings, record_threshold=chosen,
        on_image=overlays, desc="evaluation split", **common,
    )  # fmt: skip
    _require_boxes(scores, split_dir, boxes_source)
    metrics = _localization_metrics(card, settings, split_dir, scores, held_out, chosen, source)
    metrics["held_out_split"] = str(val_dir) if held_out is not None else None
    metrics["files"]["overlays"] = "overlays/" if overlays.written else None
    _write_localization(output_dir, metrics, scores, held_out)
    return metrics


def _localization_metrics(
    card: ModelCard,
    settings: LocalizationSettings,
    split_dir: str | Path,
    scores: SplitScores,
    held_out: SplitScores | None,
    chosen: float,
    source: str,
) -> dict:
    """``localization_metrics.json``: the errors at the chosen ``t``, its curves and the prior."""
    curve = scores.curve()
    at = next(row for row in curve if row["threshold"] == chosen)
    prior_from = held_out if held_out is not None else scores
    n = scores.num_scored
    resize_size = card.resize_size if settings.resize_size is None else settings.resize_size
    return {
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


def _write_localization(
    output_dir: Path, metrics: dict, scores: SplitScores, held_out: SplitScores | None
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    curves = {"evaluation": metrics["curve"]}
    if held_out is not None:
        curves = {"held_out": held_out.curve(), **curves}
    _write_curve(output_dir / CURVE_FILE, curves)
    atomic_write_json(output_dir / BOXES_FILE, scores.records, indent=1)
    atomic_write_json(output_dir / METRICS_FILE, metrics)


# ----------------------------------------------------------------------------- predict


def read_threshold(value: float | str) -> tuple[float, str | None]:
    """A threshold from a number or from a ``localization_metrics.json`` (its chosen ``t`` and
    threshold mode)."""
    try:
        return float(value), None
    except (TypeError, ValueError):
        pass
    path = Path(str(value))
    try:
        data = read_json(path, "threshold file")
        value = float(data["threshold"])
        if not math.isfinite(value):
            raise ValueError("not finite")
        return value, data.get("threshold_mode")
    except (OSError, ValueError, KeyError, TypeError, DataError) as exc:
        raise DrnetError(
            f"--threshold {value}: expected a number or a {METRICS_FILE} with a 'threshold'"
            + (f" ({exc})" if isinstance(exc, DataError) else "")
        ) from exc


@torch.no_grad()
def predict_localization(
    model: nn.Module,
    card: ModelCard,
    paths: Sequence[str | Path],
    output_dir: str | Path,
    *,
    threshold: float = 0.2,
    settings: LocalizationSettings | None = None,
    save_overlays: bool = True,
    save_heatmaps: bool = False,
    device: str | torch.device = "auto",
    workers: int = 0,
    progress: bool = True,
    fast: bool = True,
    dtype: str | torch.dtype | None = None,
    failed: list[tuple[str, str]] | None = None,
) -> list[dict]:
    """Boxes (and optionally class-activation heatmaps) of the top-k classes of each image.

    Writes ``boxes.json``, ``overlays/<name>.png`` (heatmap of the top-1 class, its box solid white)
    and, with ``save_heatmaps``, ``heatmaps/<name>_<class>.png`` (the min-max normalised class
    response over the image, jet colours) for every top-k class; names follow
    :data:`drnet.cli.vocab.NAMES_HELP`, overlays and heatmaps are drawn at
    :func:`display_size`. Returns the ``boxes.json`` entries: ``{"image", "width", "height",
    "predictions": [{"rank", "class", "index", "probability", "box", "fallback",
    "heatmap"?}], "overlay"?}``. ``fast``: the inference fast path (see
    :func:`evaluate_localization`). An unreadable image raises :class:`DataError`; with a
    ``failed`` list it is appended there as ``(path, message)`` and left out of the outputs
    (``boxes.json`` is still written for the others).
    """
    from drnet.speed.inference import fast_inference

    settings = settings or LocalizationSettings(top_k=1)
    device = resolve_device(str(device))
    model = fast_inference(model.eval().to(device), enabled=fast, dtype=dtype)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resize_size = card.resize_size if settings.resize_size is None else settings.resize_size
    files = SkipBad(ImageFiles(paths, BoundedTransform(resize_size, card.mean, card.std)))
    loader = DataLoader(files, batch_size=None, num_workers=workers)
    file_names = unique_names(relative_names(paths))
    written: set[str] = set()
    entries = []
    for image, index, size, error in tqdm(
        loader, desc="localize", disable=not progress, leave=False
    ):
        if error:
            if failed is None:
                raise DataError(error)
            failed.append((str(paths[index]), error))
            continue
        image_size = (int(size[0]), int(size[1]))
        result = localize_image(model, image.to(device), image_size, [threshold], settings)
        entry = _predict_entry(card.names(), paths[index], image_size, result)
        name = file_names[index]
        if save_heatmaps:
            _write_heatmaps(output_dir, name, entry, result, written)
        if save_overlays:
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
    atomic_write_json(output_dir / BOXES_FILE, entries, indent=1)
    return entries


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
