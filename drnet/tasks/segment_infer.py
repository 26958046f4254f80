"""Segmentation inference: whole image, multi-scale + flip fusion, sliding window; labels of
large images in bands of rows (:func:`image_labels`) and the files of ``segment predict``
(:func:`predict_files`).

Every function returns class *probabilities* ``[N, C, H, W]`` at the input size (softmax of the
model's scores), so results of different scales, flips and windows can be averaged. With a single
scale of 1.0, no flip and a window at least as large as the image, the result is exactly
``softmax(model(x))``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from drnet.constants import OVERLAY_MAX_SIDE
from drnet.data.images import failure_message, output_path
from drnet.data.palettes import colorize, get_palette, overlay
from drnet.data.segmentation import read_image
from drnet.engine.distributed import resolve_device
from drnet.engine.rundir import atomic_save_image, atomic_write_text
from drnet.engine.trainer import autocast_context
from drnet.errors import DataError, DrnetError
from drnet.models.loading import ModelCard, logits_of
from drnet.speed.inference import fast_inference
from drnet.tasks.common import InferenceOptions

if TYPE_CHECKING:  # the settings class lives with the task (drnet.tasks.segment)
    from drnet.tasks.segment import SegmentationSettings

logger = logging.getLogger(__name__)

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

#: What ``segment predict --save`` can write.
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


def model_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class scores ``[N, C, H, W]`` at the input size from any DRNSeg output convention:
    ``{"out": logits}``, the official ``(log_softmax, low_res)`` pair, or a plain tensor."""
    out = logits_of(model(images))
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


def check_window(window: int | Sequence[int] | None, stride: int | Sequence[int] | None) -> None:
    """Refuse a ``stride`` larger than the ``window`` (:class:`DrnetError`): the rows and
    columns between two windows would get no prediction (labelled 0, or a crash)."""
    if window is None or stride is None:
        return
    windows = (window, window) if isinstance(window, int) else tuple(window)
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if any(s > w for s, w in zip(strides, windows, strict=True)):
        raise DrnetError(
            f"--stride {stride} is larger than --window {window}: the pixels between two "
            "windows would get no prediction; give a stride of at most the window"
        )


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    starts.append(length - window)  # last window flush with the border
    return starts


def sliding_window_probs(
    model: nn.Module,
    images: torch.Tensor,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Probabilities from overlapping ``window`` crops (averaged where they overlap).

    ``stride`` defaults to two thirds of the window. A window at least as large as the image is
    a single plain forward pass.
    """
    check_window(window, stride)
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    if stride is None:
        sh, sw = max(1, wh * 2 // 3), max(1, ww * 2 // 3)
    else:
        sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    n, _, height, width = images.shape
    if height <= wh and width <= ww:
        return model_scores(model, images).float().softmax(1)
    total = None
    count = torch.zeros(1, 1, height, width, device=images.device)
    for top in _window_starts(height, wh, sh):
        for left in _window_starts(width, ww, sw):
            crop = images[..., top : top + wh, left : left + ww]
            probs = model_scores(model, crop).float().softmax(1)
            if total is None:
                total = torch.zeros(n, probs.shape[1], height, width, device=images.device)
            total[..., top : top + wh, left : left + ww] += probs
            count[..., top : top + wh, left : left + ww] += 1
    return total / count


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Class probabilities ``[N, C, H, W]`` averaged over ``scales`` (and horizontal flips).

    Each scale resizes the normalised images bilinearly, runs the model (through a sliding
    window when ``window`` is given and the scaled image is larger), and resizes the
    probabilities back to the input size. The model must be in eval mode.
    """
    height, width = images.shape[-2:]
    total = None
    views = 0
    for scale in scales:
        if scale == 1.0:
            scaled = images
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            if window is not None:
                probs = sliding_window_probs(model, x, window, stride)
            else:
                probs = model_scores(model, x).float().softmax(1)
            if flipped:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(
                    probs, size=(height, width), mode="bilinear", align_corners=False
                )
            total = probs if total is None else total + probs
            views += 1
    return total / views


# -- bounded-memory labels ------------------------------------------------------------------------

#: Output rows per band of :func:`image_labels` (at least one window's height is used).
BAND_ROWS = 256


def _starts(length: int, window: int, stride: int) -> list[int]:
    return _window_starts(length, window, stride)


def _cover_counts(length: int, starts: Sequence[int], window: int) -> torch.Tensor:
    """How many windows cover each position of one axis."""
    counts = torch.zeros(length)
    for start in starts:
        counts[start : start + window] += 1
    return counts


class _View:
    """One scale (and flip) of an image for :func:`image_labels`: its sliding-window
    probabilities, produced in rows from top to bottom in a rolling buffer (the rows no later
    band needs are dropped), so memory grows with the image width, not its area."""

    def __init__(self, crop, size, flipped, model, window, stride) -> None:
        self.crop, (self.height, self.width), self.flipped, self.model = crop, size, flipped, model
        self.wh, self.ww = min(window[0], self.height), min(window[1], self.width)
        self.tops = _starts(self.height, window[0], stride[0])
        self.lefts = _starts(self.width, window[1], stride[1])
        self.counts = _cover_counts(self.height, self.tops, self.wh)[:, None] * _cover_counts(
            self.width, self.lefts, self.ww
        )
        self.next_top, self.low, self.sums = 0, 0, None

    def rows(self, first: int, stop: int) -> torch.Tensor:
        """Probabilities ``[N, C, stop - first, width]`` of rows ``[first, stop)`` (un-flipped);
        ``first`` never decreases from one call to the next."""
        while self.next_top < len(self.tops) and self.tops[self.next_top] < stop:
            self._add_window_row(self.tops[self.next_top])
            self.next_top += 1
        if first > self.low:  # rows above ``first`` are done with
            self.sums = self.sums[:, :, first - self.low :].clone()
            self.low = first
        part = self.sums[:, :, first - self.low : stop - self.low]
        probs = part / self.counts[first:stop].to(part.device)
        return probs.flip(-1) if self.flipped else probs

    def _add_window_row(self, top: int) -> None:
        for left in self.lefts:
            probs = model_scores(self.model, self.crop(top, left, self.wh, self.ww, self.flipped))
            probs = probs.float().softmax(1)
            if self.sums is None:
                shape = (probs.shape[0], probs.shape[1], 0, self.width)
                self.sums = torch.zeros(shape, device=probs.device)
            missing = top + self.wh - (self.low + self.sums.shape[2])
            if missing > 0:
                pad = self.sums.new_zeros(*self.sums.shape[:2], missing, self.width)
                self.sums = torch.cat([self.sums, pad], 2)
            start = top - self.low
            self.sums[:, :, start : start + self.wh, left : left + self.ww] += probs


def _row_weights(out_rows: range, height: int, src_height: int) -> tuple:
    """Source rows and weights of a bilinear (align_corners=False) resize of ``src_height`` rows
    to ``height``, for the output rows ``out_rows``: as ``F.interpolate`` computes them."""
    scale = src_height / height
    src = ((torch.tensor(out_rows, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0)
    low = src.floor().long().clamp_max(src_height - 1)
    high = (low + 1).clamp_max(src_height - 1)
    return low, high, (src - low).float()


@torch.no_grad()
def image_labels(
    model: nn.Module,
    image: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    band_rows: int = BAND_ROWS,
) -> torch.Tensor:
    """Class labels ``[H, W]`` (int64) of one uint8 image ``[3, H, W]``: the argmax of
    :func:`predict_probs` on the normalised image.

    With ``window``, memory is bounded by the image *width*: output rows are produced in bands
    of ``band_rows``, each scale/flip runs its windows once, top to bottom, keeping only the
    window rows the current band needs, and scale-1 crops are normalised as they are cut (no
    full-size float copy, no ``[C, H, W]`` probabilities). Other scales keep their resized
    image. Without ``window`` the whole image goes through the model at once.
    """
    device = torch.device(device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    height, width = image.shape[-2:]
    if window is None:
        x = ((image.to(device).float() / 255.0 - mean_t) / std_t)[None]
        return predict_probs(model, x, scales, flip)[0].argmax(0).cpu()
    check_window(window, stride)
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    if stride is None:
        stride = (max(1, wh * 2 // 3), max(1, ww * 2 // 3))
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    views = []
    for scale in scales:
        crop, size = _crop_source(image, scale, mean_t, std_t, device)
        for flipped in (False, True) if flip else (False,):
            views.append(_View(crop, size, flipped, model, (wh, ww), stride))
    labels = torch.empty(height, width, dtype=torch.int64)
    for first in range(0, height, max(1, band_rows)):
        rows = range(first, min(height, first + max(1, band_rows)))
        total = None
        for view in views:
            probs = _band_of(view, rows, height, width)
            total = probs if total is None else total + probs
        labels[rows.start : rows.stop] = (total / len(views))[0].argmax(0).cpu()
    return labels


def _crop_source(image: torch.Tensor, scale: float, mean_t, std_t, device):
    """``crop(top, left, h, w, flipped)`` of the normalised image at ``scale``, and its size."""
    height, width = image.shape[-2:]
    if scale == 1.0:
        source = image
    else:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = ((image.to(device).float() / 255.0 - mean_t) / std_t)[None]
        source = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
    full_width = source.shape[-1]

    def crop(top: int, left: int, h: int, w: int, flipped: bool) -> torch.Tensor:
        if flipped:  # the window at ``left`` of the mirrored image
            part = source[:, top : top + h, full_width - left - w : full_width - left].flip(-1)
        else:
            part = source[:, top : top + h, left : left + w]
        if scale == 1.0:
            part = (part.to(device).float() / 255.0 - mean_t) / std_t
        return part[None]

    return crop, tuple(source.shape[-2:])


def _band_of(view: _View, rows: range, height: int, width: int) -> torch.Tensor:
    """The view's probabilities on output ``rows``, resized back to the input size."""
    if view.height == height:
        probs = view.rows(rows.start, rows.stop)
    else:
        low, high, weight = _row_weights(rows, height, view.height)
        first, stop = int(low.min()), int(high.max()) + 1
        block = view.rows(first, stop)
        weight = weight.to(block.device).view(1, 1, -1, 1)
        probs = (1 - weight) * block[:, :, low - first] + weight * block[:, :, high - first]
    if view.width != width:
        probs = F.interpolate(probs, size=(probs.shape[2], width), mode="bilinear")
    return probs


# -- predicting files -----------------------------------------------------------------------------

#: Written into the output folder of :func:`predict_files` while it runs, removed when it ends:
#: a folder holding it is partial (the run was interrupted); running the command again
#: completes it.
INCOMPLETE_MARKER = "INCOMPLETE.txt"


class IncompleteMarker:
    """:data:`INCOMPLETE_MARKER` in ``output_dir`` for the length of a ``with`` block, left in
    place (with a log line saying so) when the block is interrupted or fails."""

    def __init__(self, output_dir: str | Path, command: str) -> None:
        self.path = Path(output_dir) / INCOMPLETE_MARKER
        self.command = command
        self.done = 0

    def __enter__(self) -> IncompleteMarker:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.path,
            f"{self.command} was interrupted before it finished: the files in this folder are "
            "whole, but some inputs have none yet. Run the same command again to complete "
            "it.\n",
        )
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.path.unlink(missing_ok=True)
            return
        logger.error(
            "%s stopped after %d image(s): %s marks %s as partial (every file written is "
            "whole); run the command again to complete it",
            self.command, self.done, self.path.name, self.path.parent,
        )  # fmt: skip


def _capped(array: np.ndarray, resample: int) -> np.ndarray:
    height, width = array.shape[:2]
    factor = OVERLAY_MAX_SIDE / max(height, width)
    if factor >= 1:
        return array
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(array).resize(size, resample))


def save_segmentation(
    labels: np.ndarray,
    image: np.ndarray,
    output_dir: Path,
    name: str,
    palette: np.ndarray,
    save: Sequence[str],
    alpha: float,
) -> dict[str, str]:
    """Write ``labels/NAME.png`` (class indices), ``color/NAME.png`` (palette colours) and
    ``overlay/NAME.png`` (colours over the image, at most :data:`OVERLAY_MAX_SIDE` pixels on
    its longer side) as ``save`` asks; returns the written paths."""
    written: dict[str, str] = {}

    def write(kind: str, array: np.ndarray) -> None:
        path = output_path(output_dir, kind, f"{name}.png")  # never outside output_dir
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_image(array, path)  # Ctrl-C never leaves a truncated PNG
        written[kind] = str(path)

    if "labels" in save:
        write("labels", labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16))
    if "color" in save or "overlay" in save:
        colours = colorize(labels, palette)
        if "color" in save:
            write("color", colours)
        if "overlay" in save:
            small = _capped(image, Image.Resampling.BILINEAR)
            colours = _capped(colours, Image.Resampling.NEAREST)
            write("overlay", overlay(small, colours, alpha))
    return written


@torch.no_grad()
def predict_files(
    model: nn.Module,
    card: ModelCard,
    items: Sequence[tuple[Path, str]],
    options: InferenceOptions,
    settings: SegmentationSettings,
    failed: list[tuple[str, str]] | None = None,
) -> list[dict[str, str]]:
    """Segment ``(path, output name)`` items and write their PNGs (:func:`save_segmentation`)
    into ``settings.output_dir``, one image at a time through :func:`image_labels` (memory
    bounded by the image width with ``settings.window``), normalised with ``card.mean`` /
    ``card.std``. Output names must be unique (see :func:`drnet.data.images.unique_names`). An
    unreadable image, or one past the pixel budget, raises :class:`DataError`; with a ``failed``
    list it is appended there as ``(path, message)`` and the other images are still
    predicted."""
    s = settings
    names = [name for _, name in items]
    if len(set(names)) != len(names):
        raise DrnetError("predict_files: two inputs have the same output name")
    device = resolve_device(options.device)
    model = fast_inference(model.eval().to(device), enabled=options.fast, dtype=options.dtype)
    palette = get_palette(card.num_classes)
    output_dir = Path(s.output_dir)
    results: list[dict[str, str]] = []
    with IncompleteMarker(output_dir, "segment predict") as marker:
        for path, name in tqdm(items, desc="predict", unit="img", disable=not options.progress):
            try:
                raw = read_image(path)
            except (DataError, Image.DecompressionBombError) as exc:
                if failed is None:
                    raise
                failed.append((str(path), failure_message(exc)))
                continue
            with autocast_context(device, options.amp):
                labels = image_labels(
                    model, raw, card.mean, card.std, s.scales, s.flip, s.window, s.stride, device
                )
            image = raw.permute(1, 2, 0).numpy()
            saved = save_segmentation(
                labels.numpy(), image, output_dir, name, palette, s.save, s.alpha
            )
            results.append(saved)
            marker.done = len(results)
    return results
