"""What ``drnet serve`` computes for one image and one model, as plain JSON-ready dicts.

Everything runs through the library's task functions; this module only decodes, times and
encodes:

- classifier: :func:`drnet.tasks.localize.localize_image` (the dense class map on the fast path,
  top-k classes, the paper's pixel boxes) and :func:`drnet.tasks.boxes.boxes_from_class_map`
  (cell boxes). The class map goes to the page as float32 arrays so that the page can show any
  class's map and redraw the box when the threshold slider moves, without asking the server
  again: the page's port of the box rule (``static/index.html``, ``boxRule``) works on exactly
  these arrays, and ``tests/test_serve.py`` holds it equal to the Python rule;
- segmenter: :func:`drnet.speed.inference.predict_labels` (the label map, fast path), coloured
  with :mod:`drnet.data.palettes`, and the share of pixels of each class;
- both: what the model knows (its classes, the size it looked at, and notices when the input
  is far from what it was trained on: :func:`input_notices`), the time each step took, and on
  request (``activations=True``: they are most of the answer's bytes and of its compute) the
  per-level activations (:func:`drnet.analysis.collect_activations`), drawn as the mean
  absolute activation and as the most active channel on one colour scale per statistic, each
  with its gridding score (:func:`drnet.analysis.gridding_scores`).

A classifier's first box uses its run's tuned threshold (:func:`tuned_threshold`: the ``t``
chosen on held-out scenes by ``drnet localize eval`` or the demo), else ``--threshold``, else
the paper's default.

Nothing is written to disk: images arrive as bytes and leave as base64 PNG data URIs.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from drnet.constants import DEFAULT_BOX_THRESHOLD, SEGMENT_MAX_SIDE
from drnet.data.images import as_rgb
from drnet.errors import DrnetError
from drnet.models.loading import ModelCard

DEFAULT_THRESHOLD = DEFAULT_BOX_THRESHOLD  # the paper's minmax t: `localize predict`'s default
TOP_K = 5
MIN_SIDE = 8  # one cell of the stride-8 class map
# class maps are sent whole (every class, any can be shown) up to this many values (4 MiB as
# float32); a larger head (ImageNet's 1000 classes) sends its top-k classes only
MAX_MAP_VALUES = 1 << 20
ACTIVATION_SIDE = 512  # activations are collected on the input reduced to this longer side
BOX_FALLBACK = "peak"
BOX_MODE = "minmax"
# where a classifier's run keeps its tuned threshold: the localization metrics file (old and new
# name), in the run folder or in a sibling "localization" folder (the demo's layout)
THRESHOLD_FILES = ("metrics.json", "localization_metrics.json")
# an input this many times smaller or larger (shorter side) than the model's training size, or
# whose normalised colours are this far off, gets a notice
SIZE_RATIO_NOTICE = 2.0
COLOUR_MEAN_NOTICE = 1.5  # |mean| of a normalised channel, in training standard deviations
COLOUR_STD_NOTICE = (0.15, 3.0)  # normalised standard deviation outside this range


class UploadError(DrnetError):
    """A request the server refuses: ``status`` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- models


@dataclass
class ServedModel:
    """A loaded model as the server shows it: ``model`` (eager, eval mode: activation hooks),
    ``runner`` (the inference fast path, or ``model`` itself) and its card."""

    id: str
    name: str
    source: str
    model: nn.Module
    runner: nn.Module
    card: ModelCard
    device: torch.device
    threshold: float = DEFAULT_THRESHOLD
    threshold_source: str = "the paper's default"

    @classmethod
    def create(
        cls,
        model: nn.Module,
        card: ModelCard,
        source: str,
        *,
        id: str,  # noqa: A002 - the API's word
        device: str | torch.device = "cpu",
        fast: bool = True,
        dtype: str = "auto",
        threshold: float | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> ServedModel:
        """Wrap a model from :func:`drnet.models.loading.load_model` (moved to ``device``);
        ``dtype`` as ``--dtype`` (``auto``: bfloat16 where the device has it natively).
        ``threshold``: a classifier's box threshold (``--threshold``); None: its run's tuned
        one (:func:`tuned_threshold`) where ``source`` has it, else the paper's default.
        ``progress``: called with a line for each step of choosing the fast path (at
        :meth:`warm_up`), so that a server says what it is doing before it answers."""
        from drnet.speed.inference import fast_inference

        device = torch.device(device)
        model = model.eval().to(device)
        runner = fast_inference(model, enabled=fast, dtype=dtype, progress=progress)
        short = "/".join(str(source).replace("\\", "/").rstrip("/").split("/")[-2:])
        name = f"{card.model} {card.task} ({short})"
        served = cls(id, name, str(source), model, runner, card, device)
        if threshold is not None:
            served.threshold, served.threshold_source = check_threshold(threshold), "--threshold"
        elif card.task == "classification" and (tuned := tuned_threshold(source)) is not None:
            served.threshold, served.threshold_source = tuned
        return served

    @property
    def task(self) -> str:
        return self.card.task

    def warm_up(self) -> None:
        """Run once on a grey image of a typical size, so that the fast path's one-time choice
        of layout (timed on its first input) is not paid by the first person's request."""
        if self.runner is self.model:
            return
        side = self.card.resize_size or 256
        predict(self, Image.new("RGB", (side, side), (128, 128, 128)))

    def describe(self) -> dict[str, Any]:
        """``GET /api/models`` entry: id, name, task, architecture, classes, source, and the
        dtype inference computes in."""
        dtype = getattr(self.runner, "dtype", torch.float32)
        entry = {
            "dtype": str(dtype).removeprefix("torch."),
            "id": self.id,
            "name": self.name,
            "task": self.task,
            "model": self.card.model,
            "num_classes": self.card.num_classes,
            "classes": self.card.names(),
            "source": self.source,
            "training_size": training_size(self.card),
        }
        if self.task == "classification":
            entry["threshold"] = self.threshold
            entry["threshold_source"] = self.threshold_source
        return entry


def check_threshold(value: float, name: str = "threshold") -> float:
    """``value`` as a box threshold: a finite number in [0, 1] (the min-max scaled response),
    else :class:`UploadError` 400 naming ``name``."""
    value = float(value)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise UploadError(
            400, f"{name}={value:g}: expected a number from 0 to 1 (a fraction of the class "
            "map's range), such as 0.2"
        )  # fmt: skip
    return value


def tuned_threshold(source: str | Path | None) -> tuple[float, str] | None:
    """The box threshold a classifier's run chose on held-out scenes, and the file it is in.

    Looks, in the run folder (``source`` itself, or the folder of a checkpoint file) and in a
    sibling ``localization`` folder (the demo's ``models/<name>/localization``), for a
    ``metrics.json`` (or the older ``localization_metrics.json``) with a ``threshold`` in
    min-max mode.
    None when there is none (a bare checkpoint, published weights)."""
    if source is None:
        return None
    path = Path(str(source))
    if not path.exists():
        return None
    folder = path if path.is_dir() else path.parent
    for base in (folder, folder.parent / "localization"):
        for name in THRESHOLD_FILES:
            file = base / name
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            value = data.get("threshold")
            if data.get("threshold_mode", BOX_MODE) != BOX_MODE:
                continue
            if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1:
                return float(value), str(file)
    return None


def training_size(card: ModelCard) -> int | None:
    """The shorter side of the images the model was trained on, where its card says
    (``crop_size``, else ``resize_size``; a segmenter's recipe crop): None when unknown."""
    training = card.training or {}
    sizes = [training.get("crop_size")]
    if card.task == "classification":  # a segmenter's card sizes are not what it saw
        sizes += [card.crop_size, card.resize_size]
    for value in sizes:
        if isinstance(value, int) and value > 0:
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
            return min(value)
    return None


def input_notices(card: ModelCard, image_size: tuple[int, int], x: Tensor) -> list[str]:
    """Plain-words notices when the input is far from what the model was trained on: a size
    far from its training size, colour statistics far from its training normalisation
    (``x`` is the normalised input ``[1, 3, H, W]``), a nearly uniform image. Hints, not
    verdicts: an image without notices may still be unlike the training data."""
    notices = []
    height, width = image_size
    trained = training_size(card)
    looked = (int(x.shape[-2]), int(x.shape[-1]))
    if trained:
        ratio = min(height, width) / trained
        if ratio >= SIZE_RATIO_NOTICE or ratio <= 1 / SIZE_RATIO_NOTICE:
            notices.append(
                f"size: trained on images about {trained} px on the shorter side; this one is "
                f"{width}x{height} ({ratio:.2g}x), seen at {looked[1]}x{looked[0]}"
            )
    values = x[0].float()
    mean = values.mean(dim=(-2, -1))
    std = values.std(dim=(-2, -1)) if values[0].numel() > 1 else torch.zeros(len(values))
    if float(std.max()) < 0.05:
        notices.append("nearly uniform image: a class on it says little about the image")
    elif float(mean.abs().max()) > COLOUR_MEAN_NOTICE or not (
        COLOUR_STD_NOTICE[0] <= float(std.mean()) <= COLOUR_STD_NOTICE[1]
    ):
        shown = ", ".join(f"{m:+.1f}" for m in mean.tolist())
        notices.append(
            f"colours: far from the training images (channel means {shown} and spread "
            f"{float(std.mean()):.2f} in training standard deviations; training: 0 and 1)"
        )
    return notices


def model_knowledge(served: ServedModel, x: Tensor, image_size: tuple[int, int]) -> dict:
    """What the page says under a result: the classes the model knows, the size it was
    trained at and the size it looked at, and :func:`input_notices`."""
    return {
        "classes": served.card.names(),
        "num_classes": served.card.num_classes,
        "training_size": training_size(served.card),
        "looked_at": [int(x.shape[-2]), int(x.shape[-1])],
        "notices": input_notices(served.card, image_size, x),
    }


# ----------------------------------------------------------------------------- images


def decode_image(data: bytes, name: str = "upload", max_pixels: int = 12_000_000) -> Image.Image:
    """The uploaded bytes as an upright 8-bit RGB image (:func:`drnet.data.images.as_rgb`).

    Raises :class:`UploadError`: 400 for an empty body, bytes that are not an image, or an image
    smaller than 8 px a side; 413 for more than ``max_pixels`` pixels (checked from the header,
    before the pixels are decoded).
    """
    if not data:
        raise UploadError(400, "empty upload: send an image file (PNG, JPEG, WebP, ...)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise UploadError(413, f"{name}: too many pixels to decode safely") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise UploadError(
            400, f"{name} is not an image (expected PNG, JPEG, WebP, BMP, TIFF, ...)"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(
            413,
            f"{name} is {width}x{height} ({width * height / 1e6:.1f} MP): the server takes at "
            f"most {max_pixels / 1e6:.1f} MP (--max-pixels)",
        )
    if min(width, height) < MIN_SIDE:
        raise UploadError(
            400, f"{name} is {width}x{height}: images need at least {MIN_SIDE} px a side"
        )
    try:
        return as_rgb(image)
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
        raise UploadError(400, f"{name}: cannot decode the image ({exc})") from None


def png_data_uri(array: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a uint8 ``[H, W]``/``[H, W, 3]`` or uint16 ``[H, W]``
    array (fast compression: these travel once over a local socket)."""
    from drnet.rendering import png_data_uri as encode

    return encode(array, fast=True)


def float32_base64(values: Tensor) -> str:
    """A tensor as base64 of its float32 little-endian values, row-major (JS: Float32Array)."""
    array = np.ascontiguousarray(values.detach().float().cpu().numpy(), dtype="<f4")
    return base64.b64encode(array.tobytes()).decode("ascii")


class Timings(dict):
    """Milliseconds per named step, filled by :meth:`step`."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self[name] = round((time.perf_counter() - start) * 1000, 2)


def _shorter_side_for(image_size: tuple[int, int], max_side: int | None) -> int | None:
    """The shorter side that brings the longer one down to ``max_side`` (None: keep the size)."""
    height, width = image_size
    if not max_side or max(height, width) <= max_side:
        return None
    return max(1, round(min(height, width) * max_side / max(height, width)))


# ----------------------------------------------------------------------------- activations


def _levels(model: nn.Module) -> tuple[list[str], list[str]]:
    """Module names of the stem and levels of a DRN or DRNSeg, and the labels shown for them
    (``stem``, ``layer1`` ... as in the classifier, whichever of the two the model is)."""
    from drnet.analysis import level_names
    from drnet.models.segmentation import DRNSeg

    if isinstance(model, DRNSeg):
        levels = [
            f"layer{i}" for i, level in enumerate(model.backbone_spec.levels, 1) if level.count
        ]
        first = model.num_stem_modules - 1
        modules = [f"base.{i}" for i in range(first, first + 1 + len(levels))]
        return modules, ["stem", *levels]
    modules = level_names(model)
    return modules, ["stem", *modules[1:]]


def level_activations(model: nn.Module, x: Tensor) -> list[dict[str, Any]]:
    """Per level: label, module, map size, channels, gridding score (None below 8x8 maps),
    the mean |activation| and the most active channel as PNG data URIs (viridis colours on
    one scale per statistic across the levels, from 0 to ``scale_max[statistic]``, so that a
    flat level looks flat) and that channel's index."""
    from drnet.analysis import activation_values, collect_activations, gridding_scores
    from drnet.rendering import colorize_values

    shorter = _shorter_side_for(tuple(x.shape[-2:]), ACTIVATION_SIDE)
    if shorter is not None:
        x = F.interpolate(x, size=_scaled(tuple(x.shape[-2:]), shorter), mode="bilinear")
    modules, labels = _levels(model)
    activations = collect_activations(model, x, modules)
    scores = gridding_scores({name: act[0] for name, act in activations.items()})
    statistics = ("mean", "max_channel")
    values = {
        module: {s: activation_values(activations[module][0], statistic=s) for s in statistics}
        for module in modules
    }
    scale_max = {s: max(float(v[s].max()) for v in values.values()) for s in statistics}
    levels = []
    for module, label in zip(modules, labels, strict=True):
        act = activations[module][0].float().cpu()
        images = {
            s: png_data_uri(colorize_values(values[module][s], "viridis", 0.0, scale_max[s]))
            for s in statistics
        }
        levels.append(
            {
                "level": label,
                "module": module,
                "size": [int(act.shape[-2]), int(act.shape[-1])],
                "channels": int(act.shape[0]),
                "gridding_score": _round(scores[module]["score"]),
                "png": images["mean"],
                "png_max_channel": images["max_channel"],
                # the channel most_active_channel draws: the largest mean activation
                "max_channel": int(act.mean(dim=(-2, -1)).argmax()),
                "scale_max": {s: _round(scale_max[s], 6) for s in statistics},
                "peak": {s: _round(float(values[module][s].max()), 6) for s in statistics},
            }
        )
    return levels


def _scaled(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    height, width = size
    if height <= width:
        return shorter, max(1, round(width * shorter / height))
    return max(1, round(height * shorter / width)), shorter


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _box(values: Tensor) -> list[float]:
    return [round(float(v), 3) for v in values]


# ----------------------------------------------------------------------------- classifier


def pixel_max(class_map: Tensor, input_size: tuple[int, int], stride: int) -> Tensor:
    """The maximum over all classes of the class map up-sampled to the input (``[H, W]``), as
    the pixel box rule compares with it (:func:`drnet.tasks.boxes.upsample_class_map`),
    computed a few classes at a time so that memory stays bounded."""
    from drnet.tasks.boxes import upsample_class_map

    best: Tensor | None = None
    chunk = max(1, (1 << 22) // max(1, input_size[0] * input_size[1]))
    for start in range(0, class_map.shape[0], chunk):
        up = upsample_class_map(class_map[start : start + chunk], input_size, stride).amax(0)
        best = up if best is None else torch.maximum(best, up)
    assert best is not None
    return best


def class_map_payload(result: Any, names: list[str]) -> dict[str, Any]:
    """What the page needs to show class maps and re-run the box rule: the raw maps of every
    class (or of the top-k when the head is large), the per-cell and per-pixel maxima over all
    classes (the rule's "dominant class" test), and the sizes that map cells to image pixels."""
    class_map: Tensor = result.class_map
    count, height, width = class_map.shape
    sent = list(range(count)) if class_map.numel() <= MAX_MAP_VALUES else result.classes.tolist()
    return {
        "encoding": "base64 float32 little-endian, row-major",
        "classes": sent,
        "names": [names[c] for c in sent],
        "shape": [len(sent), height, width],
        "data": float32_base64(class_map[sent]),
        "cell_max": float32_base64(class_map.amax(dim=0)),
        "pixel_max": float32_base64(pixel_max(class_map, result.input_size, result.stride)),
        "input_size": list(result.input_size),
        "image_size": list(result.image_size),
        "stride": result.stride,
        "threshold_mode": BOX_MODE,
        "fallback": BOX_FALLBACK,
    }


@torch.inference_mode()
def classify(
    served: ServedModel,
    image: Image.Image,
    threshold: float | None = None,
    top_k: int = TOP_K,
    activations: bool = False,
) -> dict[str, Any]:
    """Top-k classes with scores, the paper's boxes (cell and pixel) at ``threshold`` (None:
    the model's own, ``served.threshold``), the class map, what the model knows, timings and,
    with ``activations``, the per-level activations of a classifier on ``image``."""
    threshold = served.threshold if threshold is None else check_threshold(threshold)
    from drnet.data.classification import full_image_transform
    from drnet.tasks.boxes import boxes_from_class_map, scale_boxes
    from drnet.tasks.localize import LocalizationSettings, localize_image

    card, timings = served.card, Timings(served.device)
    image_size = (image.height, image.width)
    with timings.step("preprocess"):
        transform = full_image_transform(card.resize_size, card.mean, card.std)
        x = transform(image)[None].to(served.device)
    settings = LocalizationSettings(
        threshold_mode=BOX_MODE, fallback=BOX_FALLBACK, top_k=top_k, box_resolution="pixel"
    )
    with timings.step("class map, top-k, pixel boxes"):
        result = localize_image(served.runner, x, image_size, [threshold], settings)
    with timings.step("cell boxes"):
        cell, cell_empty = boxes_from_class_map(
            result.class_map, result.classes, [threshold], result.input_size,
            stride=result.stride, mode=BOX_MODE, fallback=BOX_FALLBACK, resolution="cell",
        )  # fmt: skip
        cell = scale_boxes(cell, result.input_size, image_size)
    names = card.names()
    top = [
        {
            "rank": rank + 1,
            "class": names[c],
            "index": c,
            "score": round(float(result.probabilities[rank]), 6),
            "boxes": {"pixel": _box(result.boxes[rank, 0]), "cell": _box(cell[rank, 0])},
            "fallback": {
                "pixel": bool(result.fallback[rank, 0]),
                "cell": bool(cell_empty[rank, 0]),
            },
        }
        for rank, c in enumerate(result.classes.tolist())
    ]
    with timings.step("class map for the page"):
        class_map = class_map_payload(result, names)
    levels = None
    if activations:
        with timings.step("activations"):
            levels = level_activations(served.model, x)
    return {
        "top5": top,
        "threshold": threshold,
        "threshold_source": (
            served.threshold_source if threshold == served.threshold else "the request"
        ),
        "class_map": class_map,
        "model_info": model_knowledge(served, x, image_size),
        "activations": levels,
        "timings_ms": dict(timings),
    }


# ----------------------------------------------------------------------------- segmenter


@torch.inference_mode()
def segment(
    served: ServedModel,
    image: Image.Image,
    max_side: int | None = SEGMENT_MAX_SIDE,
    activations: bool = False,
) -> dict[str, Any]:
    """Label map (class indices and colours, PNG), per-class pixel shares with their legend
    colours, what the model knows, timings and, with ``activations``, the per-level
    activations of a segmenter on ``image`` (reduced to ``max_side`` on its longer side first,
    when larger; None or 0: never)."""
    from drnet.data.classification import full_image_transform
    from drnet.data.palettes import colorize, get_palette
    from drnet.speed.inference import predict_labels

    card, timings = served.card, Timings(served.device)
    with timings.step("preprocess"):
        shorter = _shorter_side_for((image.height, image.width), max_side)
        x = full_image_transform(shorter, card.mean, card.std)(image)[None].to(served.device)
    with timings.step("label map"):
        labels = predict_labels(served.runner, x)[0].cpu().numpy()
    with timings.step("colours and shares"):
        palette = get_palette(card.num_classes)
        counts = np.bincount(labels.ravel(), minlength=card.num_classes)
        shares = counts / max(1, labels.size)
        index_png = labels.astype(np.uint8 if card.num_classes <= 256 else np.uint16)
        label_png = png_data_uri(index_png)
        color_png = png_data_uri(colorize(labels, palette))
    classes = [
        {
            "index": c,
            "name": name,
            "color": "#{:02x}{:02x}{:02x}".format(*(int(v) for v in palette[c])),
            "share": round(float(shares[c]), 6),
        }
        for c, name in enumerate(card.names())
    ]
    levels = None
    if activations:
        with timings.step("activations"):
            levels = level_activations(served.model, x)
    return {
        "input_size": [int(x.shape[-2]), int(x.shape[-1])],
        "label_png": label_png,
        "color_png": color_png,
        "classes": classes,
        "model_info": model_knowledge(served, x, (image.height, image.width)),
        "activations": levels,
        "timings_ms": dict(timings),
    }


def predict(
    served: ServedModel,
    image: Image.Image,
    *,
    threshold: float | None = None,
    top_k: int = TOP_K,
    max_side: int | None = SEGMENT_MAX_SIDE,
    activations: bool = False,
) -> dict[str, Any]:
    """One model's results on ``image``: ``{"id", "name", "task", "image_size", ...}`` plus
    :func:`classify`'s or :func:`segment`'s entries (activations only when asked: they are
    most of the bytes and, on large images, most of the time)."""
    entry: dict[str, Any] = {
        "id": served.id,
        "name": served.name,
        "task": served.task,
        "image_size": [image.height, image.width],
    }
    if served.task == "classification":
        entry.update(classify(served, image, threshold, top_k, activations))
    else:
        entry.update(segment(served, image, max_side, activations))
    return entry
