"""The paper's box rule for weakly-supervised localization, coordinate mapping and IoU.

A classifier run without global pooling gives a dense class map ``f`` of shape ``[C, h, w]``
(``h = ceil(H / 8)`` for an ``H``-pixel input: output stride 8). For a predicted class ``c`` the
paper's box is the smallest box enclosing every position where ``c`` is the dominant class
(``g = argmax_c f``) and ``f(c) > t``, mapped back to image coordinates.

Choices this module makes (and the README documents):

- **Threshold** ``t``: with ``mode="minmax"`` (the default) the map of class ``c`` is rescaled to
  ``[0, 1]`` by its own minimum and maximum over the image, so ``t`` is a fraction of that class's
  range and one ``t`` suits models whose logits have different scales. A constant map counts as
  all ones. With ``mode="raw"``, ``t`` compares with the raw response (logit) itself.
- **Ties** in the argmax: a position whose maximum is shared by several classes is dominant for
  *each* of them. The result does not depend on class order.
- **Empty region** (no position passes): ``fallback="peak"`` (default) returns the cell of the
  highest response of ``c`` (first in row-major order if tied); ``fallback="image"`` returns the
  whole image.
- **Cells to pixels**: cell ``(i, j)`` of the map covers pixels ``[s*j, s*j + s)`` horizontally and
  ``[s*i, s*i + s)`` vertically (``s`` = stride, 8), clipped to the image, so the last row and
  column of cells of an image whose size is not a multiple of 8 are narrower.
- **Boxes** are ``(x1, y1, x2, y2)`` float pixel *edges* (``x2`` exclusive), the convention of
  :mod:`torchvision.ops`: a one-pixel box at column 3 is ``(3, y, 4, y + 1)`` and its area is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import box_iou, masks_to_boxes

ThresholdMode = Literal["minmax", "raw"]
Fallback = Literal["peak", "image"]
THRESHOLD_MODES: tuple[str, ...] = ("minmax", "raw")
FALLBACKS: tuple[str, ...] = ("peak", "image")
OUTPUT_STRIDE = 8


def _check_map(class_map: Tensor) -> None:
    if class_map.dim() != 3:
        raise ValueError(f"class map must be [C, h, w], got shape {tuple(class_map.shape)}")


def normalize_response(response: Tensor, mode: ThresholdMode = "minmax") -> Tensor:
    """Rescale per-class response maps ``[..., h, w]`` for thresholding.

    ``"minmax"`` maps each map to ``[0, 1]`` by its own min and max (a constant map becomes all
    ones); ``"raw"`` returns the response unchanged (as float).
    """
    response = response.float()
    if mode == "raw":
        return response
    if mode != "minmax":
        raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    flat = response.flatten(-2)
    low = flat.min(dim=-1).values[..., None, None]
    high = flat.max(dim=-1).values[..., None, None]
    span = high - low
    normalized = (response - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, normalized, torch.ones_like(normalized))


def dominant_masks(class_map: Tensor, classes: Sequence[int] | Tensor) -> Tensor:
    """Where each of ``classes`` is the dominant class of ``class_map`` ``[C, h, w]``.

    Returns a bool tensor ``[K, h, w]``. A position where several classes share the maximum counts
    as dominant for every one of them.
    """
    _check_map(class_map)
    classes = torch.as_tensor(classes, dtype=torch.long, device=class_map.device).reshape(-1)
    best = class_map.max(dim=0).values
    return class_map[classes] >= best


def cell_boxes_to_pixels(
    cell_boxes: Tensor, image_size: tuple[int, int], stride: int = OUTPUT_STRIDE
) -> Tensor:
    """Map boxes in cell indices to pixel-edge boxes.

    ``cell_boxes`` ``[..., 4]`` holds ``(j1, i1, j2, i2)``: the first and last (inclusive) column
    and row of the region on the map. Cell ``(i, j)`` covers pixels ``[stride*j, stride*(j+1))``
    by ``[stride*i, stride*(i+1))``; the result is clipped to ``image_size = (H, W)``.
    """
    height, width = image_size
    cells = cell_boxes.float()
    x1 = (cells[..., 0] * stride).clamp(0, width)
    y1 = (cells[..., 1] * stride).clamp(0, height)
    x2 = ((cells[..., 2] + 1) * stride).clamp(0, width)
    y2 = ((cells[..., 3] + 1) * stride).clamp(0, height)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def boxes_from_class_map(
    class_map: Tensor,
    classes: Sequence[int] | Tensor,
    thresholds: Sequence[float] | Tensor | float,
    image_size: tuple[int, int],
    *,
    stride: int = OUTPUT_STRIDE,
    mode: ThresholdMode = "minmax",
    fallback: Fallback = "peak",
) -> tuple[Tensor, Tensor]:
    """The paper's box for each class in ``classes`` and each threshold (vectorised sweep).

    Args:
        class_map: dense class map ``[C, h, w]`` of one image (raw responses, e.g. logits).
        classes: the classes to box (e.g. the top-5 predictions), ``K`` of them.
        thresholds: ``T`` thresholds (a float gives ``T = 1``), meaning set by ``mode``.
        image_size: ``(H, W)`` of the image the map was computed on.
        stride: pixels per map cell (8 for every DRN).
        mode: ``"minmax"`` (t is a fraction of the class map's range) or ``"raw"``.
        fallback: box used when no position passes: ``"peak"`` cell or whole ``"image"``.

    Returns:
        ``boxes`` float ``[K, T, 4]`` (pixel edges ``x1, y1, x2, y2``) and ``empty`` bool
        ``[K, T]``, true where the region was empty and the fallback was used.
    """
    _check_map(class_map)
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    classes = torch.as_tensor(classes, dtype=torch.long, device=class_map.device).reshape(-1)
    thresholds = torch.as_tensor(thresholds, dtype=torch.float32, device=class_map.device)
    thresholds = thresholds.reshape(-1)
    num_classes, num_thresholds = classes.numel(), thresholds.numel()
    height, width = class_map.shape[-2:]

    dominant = dominant_masks(class_map, classes)  # [K, h, w]
    response = normalize_response(class_map[classes], mode)  # [K, h, w]
    region = dominant[:, None] & (response[:, None] > thresholds[None, :, None, None])
    region = region.reshape(num_classes * num_thresholds, height, width)
    cell_boxes = masks_to_boxes(region).reshape(num_classes, num_thresholds, 4)
    empty = ~region.flatten(1).any(dim=1).reshape(num_classes, num_thresholds)
    boxes = cell_boxes_to_pixels(cell_boxes, image_size, stride)

    if empty.any():
        if fallback == "image":
            whole = torch.tensor([0.0, 0.0, float(image_size[1]), float(image_size[0])])
            replacement = whole.to(boxes.device).expand(num_classes, 4)
        else:
            peak = class_map[classes].flatten(1).argmax(dim=1)  # first maximum, row-major
            rows, cols = peak // width, peak % width
            peak_cells = torch.stack([cols, rows, cols, rows], dim=1)
            replacement = cell_boxes_to_pixels(peak_cells, image_size, stride)
        boxes = torch.where(empty[..., None], replacement[:, None, :], boxes)
    return boxes, empty


def box_from_class_map(
    class_map: Tensor,
    cls: int,
    threshold: float,
    image_size: tuple[int, int],
    *,
    stride: int = OUTPUT_STRIDE,
    mode: ThresholdMode = "minmax",
    fallback: Fallback = "peak",
) -> Tensor:
    """The paper's box ``[4]`` (pixel edges) for one class at one threshold.

    See :func:`boxes_from_class_map` for the arguments and the rule.
    """
    boxes, _ = boxes_from_class_map(
        class_map, [cls], [threshold], image_size, stride=stride, mode=mode, fallback=fallback
    )
    return boxes[0, 0]


def iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``[N, M]`` of pixel-edge boxes, defined as 0 where the union is empty.

    Wraps :func:`torchvision.ops.box_iou`, which gives NaN for two zero-area boxes.
    """
    boxes1 = torch.as_tensor(boxes1, dtype=torch.float32).reshape(-1, 4)
    boxes2 = torch.as_tensor(boxes2, dtype=torch.float32).reshape(-1, 4)
    if boxes1.numel() == 0 or boxes2.numel() == 0:
        return torch.zeros(boxes1.shape[0], boxes2.shape[0])
    return torch.nan_to_num(box_iou(boxes1, boxes2), nan=0.0)


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Rescale boxes ``[..., 4]`` from an image of ``from_size = (H, W)`` to one of ``to_size``."""
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32, device=boxes.device)
    return boxes.float() * scale


def centred_box(image_size: tuple[int, int], size_fraction: tuple[float, float]) -> Tensor:
    """A box centred in an image of ``(H, W)``, ``size_fraction = (w, h)`` of its width/height."""
    height, width = image_size
    box_w, box_h = size_fraction[0] * width, size_fraction[1] * height
    x1, y1 = (width - box_w) / 2, (height - box_h) / 2
    return torch.tensor([x1, y1, x1 + box_w, y1 + box_h], dtype=torch.float32)


__all__ = [
    "FALLBACKS",
    "OUTPUT_STRIDE",
    "THRESHOLD_MODES",
    "box_from_class_map",
    "boxes_from_class_map",
    "cell_boxes_to_pixels",
    "centred_box",
    "dominant_masks",
    "iou",
    "normalize_response",
    "scale_boxes",
]
