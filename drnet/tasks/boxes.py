"""The paper's box rule for weakly-supervised localization, coordinate mapping and IoU.

A classifier run without global pooling gives a dense class map ``f`` of shape ``[C, h, w]``
(``h = ceil(H / 8)`` for an ``H``-pixel input: output stride 8). For a predicted class ``c`` the
paper's box is the smallest box enclosing every position where ``c`` is the dominant class
(``g = argmax_c f``) and ``f(c) > t``, mapped back to image coordinates.

Choices this module makes (and docs/localization.md documents):

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
  column of cells of an image whose size is not a multiple of 8 are narrower. Cell ``j`` is thus
  centred on pixel ``s*j + (s-1)/2``. This alignment is measured on trained networks, not derived
  from the geometry (``tests/test_box_alignment.py`` pins it).
- **Resolution**: ``resolution="cell"`` (the default of the functions here) applies the
  rule to the cells, so boxes are quantised to 8 px; localization evaluation and prediction use
  :data:`DEFAULT_BOX_RESOLUTION` (pixel). ``resolution="pixel"`` first up-samples the
  class map to the network input (bilinear, ``align_corners=False``: cell ``j``'s value lands on
  pixel ``s*j + (s-1)/2``, the same alignment), then applies the rule per pixel: the dominant class
  comes from the up-sampled maps of *all* classes, the threshold compares with the up-sampled
  normalised response (normalised by the cell map's own range, so ``t`` means the same in both
  resolutions; the up-sampled peak can fall below 1, so a ``t`` near 1 can leave the region empty),
  and the fallback is the same as for cells. Large images are processed in bands of rows
  (:data:`PIXEL_BAND_ELEMENTS`), so memory stays bounded whatever the image and class count.
- **Boxes** are ``(x1, y1, x2, y2)`` float pixel *edges* (``x2`` exclusive), the convention of
  :mod:`torchvision.ops`: a one-pixel box at column 3 is ``(3, y, 4, y + 1)`` and its area is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import box_iou, masks_to_boxes

from drnet.constants import BOX_RESOLUTIONS, DEFAULT_BOX_RESOLUTION

ThresholdMode = Literal["minmax", "raw"]
Fallback = Literal["peak", "image"]
BoxResolution = Literal["cell", "pixel"]
THRESHOLD_MODES: tuple[str, ...] = ("minmax", "raw")
FALLBACKS: tuple[str, ...] = ("peak", "image")
OUTPUT_STRIDE = 8
# pixel boxes: at most this many up-sampled values (float32, 64 MiB) are held at once
PIXEL_BAND_ELEMENTS = 1 << 24


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
    # Cell j stands for [s*j, s*(j+1)), centred on s*j + (s-1)/2, not on s*j where the geometry
    # (3x3 pad-1 stride-2 convs centre output i on input 2i) puts its constant-weight receptive
    # field: trained networks centre a cell's evidence on the cell's middle. Measured: on the
    # demo's classifier, moving boxes 3.5 px toward s*j cut top-1 localization from 0.453 to
    # 0.275; tests/test_box_alignment.py pins this on a trained model.
    x1 = (cells[..., 0] * stride).clamp(0, width)
    y1 = (cells[..., 1] * stride).clamp(0, height)
    x2 = ((cells[..., 2] + 1) * stride).clamp(0, width)
    y2 = ((cells[..., 3] + 1) * stride).clamp(0, height)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def _source_cells(out_len: int, in_len: int, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """For bilinear up-sampling by ``stride`` (``align_corners=False``): each output pixel's two
    source cells along one axis and the weight of the second one."""
    # Pixel p samples cell position (p + 0.5) / s - 0.5, so cell j lands on p = s*j + (s-1)/2:
    # the cell rule's centre. Positions before the first cell clamp to it, as in PyTorch.
    position = ((torch.arange(out_len, dtype=torch.float64) + 0.5) / stride - 0.5).clamp_min(0)
    low = position.floor().long().clamp_max(in_len - 1)
    high = (low + 1).clamp_max(in_len - 1)
    return low, high, (position - low).float()


def _interpolate(maps: Tensor, rows: tuple[Tensor, ...], cols: tuple[Tensor, ...]) -> Tensor:
    """Separable bilinear interpolation of ``maps`` ``[K, h, w]`` at the given source cells."""
    (row_low, row_high, row_weight), (col_low, col_high, col_weight) = rows, cols
    maps = maps.float()
    # lerp keeps equal neighbours exactly equal, so ties between classes survive up-sampling
    band = torch.lerp(maps[:, row_low], maps[:, row_high], row_weight[:, None].to(maps.device))
    return torch.lerp(band[..., col_low], band[..., col_high], col_weight.to(maps.device))


def upsample_class_map(
    class_map: Tensor, input_size: tuple[int, int], stride: int = OUTPUT_STRIDE
) -> Tensor:
    """Class map ``[C, h, w]`` up-sampled to the network input ``input_size = (H, W)``.

    Bilinear with ``align_corners=False`` by a factor ``stride``, cropped to ``(H, W)``: the same
    as ``F.interpolate(class_map[None], scale_factor=stride, mode="bilinear")[0, :, :H, :W]``.
    Cell ``j``'s value lands on pixel ``stride*j + (stride-1)/2``, the centre of the cell rule.
    """
    _check_map(class_map)
    rows = _source_cells(input_size[0], class_map.shape[-2], stride)
    cols = _source_cells(input_size[1], class_map.shape[-1], stride)
    return _interpolate(class_map, rows, cols)


def _hit_edges(hit: Tensor) -> tuple[Tensor, Tensor]:
    """First index and one past the last index of the true entries of each row of ``hit``
    ``[N, L]`` (``L`` and 0 for a row with none)."""
    index = torch.arange(hit.shape[-1], device=hit.device)
    first = torch.where(hit, index, hit.shape[-1]).amin(dim=-1)
    last = torch.where(hit, index, -1).amax(dim=-1) + 1
    return first, last


def _cell_boxes(
    class_map: Tensor, classes: Tensor, thresholds: Tensor, image_size, stride: int, mode
) -> tuple[Tensor, Tensor]:
    """The rule on the cells: boxes ``[K, T, 4]`` in pixels and ``empty`` ``[K, T]``."""
    num_classes, num_thresholds = classes.numel(), thresholds.numel()
    height, width = class_map.shape[-2:]
    dominant = dominant_masks(class_map, classes)  # [K, h, w]
    response = normalize_response(class_map[classes], mode)  # [K, h, w]
    region = dominant[:, None] & (response[:, None] > thresholds[None, :, None, None])
    region = region.reshape(num_classes * num_thresholds, height, width)
    cell_boxes = masks_to_boxes(region).reshape(num_classes, num_thresholds, 4)
    empty = ~region.flatten(1).any(dim=1).reshape(num_classes, num_thresholds)
    return cell_boxes_to_pixels(cell_boxes, image_size, stride), empty


def _pixel_boxes(
    class_map: Tensor, classes: Tensor, thresholds: Tensor, image_size, stride: int, mode
) -> tuple[Tensor, Tensor]:
    """The rule on the up-sampled map, in bands of rows: boxes ``[K, T, 4]``, ``empty``."""
    shape = (classes.numel(), thresholds.numel())
    num_boxes = shape[0] * shape[1]
    height, width = image_size
    # normalised on the cells: min-max scaling commutes with bilinear up-sampling, so t keeps
    # the meaning it has for cell boxes
    response = normalize_response(class_map[classes], mode)
    rows = _source_cells(height, class_map.shape[-2], stride)
    cols = _source_cells(width, class_map.shape[-1], stride)
    per_row = (class_map.shape[0] + classes.numel() + num_boxes) * width
    band = max(1, PIXEL_BAND_ELEMENTS // per_row)
    row_hit = torch.zeros(num_boxes, height, dtype=torch.bool, device=class_map.device)
    col_hit = torch.zeros(num_boxes, width, dtype=torch.bool, device=class_map.device)
    for start in range(0, height, band):
        part = slice(start, start + band)
        band_rows = tuple(r[part] for r in rows)
        up = _interpolate(class_map, band_rows, cols)  # all classes: the dominant one per pixel
        dominant = up[classes] >= up.max(dim=0).values
        passed = _interpolate(response, band_rows, cols)[:, None] > thresholds[:, None, None]
        region = (dominant[:, None] & passed).flatten(0, 1)  # [K*T, band, W]
        row_hit[:, part] = region.any(dim=-1)
        col_hit |= region.any(dim=-2)
    (x1, x2), (y1, y2) = _hit_edges(col_hit), _hit_edges(row_hit)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).float().reshape(*shape, 4)
    return boxes, ~row_hit.any(dim=1).reshape(shape)


def _fallback_boxes(
    class_map: Tensor, classes: Tensor, image_size, stride: int, fallback: Fallback
) -> Tensor:
    """The box ``[K, 4]`` of each class when its region is empty."""
    if fallback == "image":
        whole = torch.tensor([0.0, 0.0, float(image_size[1]), float(image_size[0])])
        return whole.to(class_map.device).expand(classes.numel(), 4)
    width = class_map.shape[-1]
    peak = class_map[classes].flatten(1).argmax(dim=1)  # first maximum, row-major
    rows, cols = peak // width, peak % width
    return cell_boxes_to_pixels(torch.stack([cols, rows, cols, rows], dim=1), image_size, stride)


def boxes_from_class_map(
    class_map: Tensor,
    classes: Sequence[int] | Tensor,
    thresholds: Sequence[float] | Tensor | float,
    image_size: tuple[int, int],
    *,
    stride: int = OUTPUT_STRIDE,
    mode: ThresholdMode = "minmax",
    fallback: Fallback = "peak",
    resolution: BoxResolution = "cell",
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
        resolution: ``"cell"`` (the rule on the map's cells, boxes on the 8-px grid) or
            ``"pixel"`` (the rule on the map up-sampled to the image, boxes to the pixel).

    Returns:
        ``boxes`` float ``[K, T, 4]`` (pixel edges ``x1, y1, x2, y2``) and ``empty`` bool
        ``[K, T]``, true where the region was empty and the fallback was used.
    """
    _check_map(class_map)
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if resolution not in BOX_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {BOX_RESOLUTIONS}, got {resolution!r}")
    classes = torch.as_tensor(classes, dtype=torch.long, device=class_map.device).reshape(-1)
    thresholds = torch.as_tensor(thresholds, dtype=torch.float32, device=class_map.device)
    thresholds = thresholds.reshape(-1)
    rule = _cell_boxes if resolution == "cell" else _pixel_boxes
    boxes, empty = rule(class_map, classes, thresholds, image_size, stride, mode)
    if empty.any():
        replacement = _fallback_boxes(class_map, classes, image_size, stride, fallback)
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
    resolution: BoxResolution = "cell",
) -> Tensor:
    """The paper's box ``[4]`` (pixel edges) for one class at one threshold.

    See :func:`boxes_from_class_map` for the arguments and the rule.
    """
    boxes, _ = boxes_from_class_map(
        class_map,
        [cls],
        [threshold],
        image_size,
        stride=stride,
        mode=mode,
        fallback=fallback,
        resolution=resolution,
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


def box_centre_offset(box: Tensor, ground_truth: Tensor) -> Tensor:
    """Offset ``(dx, dy)`` in pixels of the centre of ``box`` ``[4]`` from the centre of the
    ground-truth box (of ``[G, 4]``) it overlaps most; positive: right of / below the truth."""
    ground_truth = torch.as_tensor(ground_truth, dtype=torch.float32).reshape(-1, 4)
    box = torch.as_tensor(box, dtype=torch.float32).reshape(4)
    best = ground_truth[iou(box[None], ground_truth)[0].argmax()]
    return (box[:2] + box[2:]) / 2 - (best[:2] + best[2:]) / 2


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
    "BOX_RESOLUTIONS",
    "DEFAULT_BOX_RESOLUTION",
    "FALLBACKS",
    "OUTPUT_STRIDE",
    "PIXEL_BAND_ELEMENTS",
    "THRESHOLD_MODES",
    "box_centre_offset",
    "box_from_class_map",
    "boxes_from_class_map",
    "cell_boxes_to_pixels",
    "centred_box",
    "dominant_masks",
    "iou",
    "normalize_response",
    "scale_boxes",
    "upsample_class_map",
]
