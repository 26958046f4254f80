"""Pictures drnet draws: colour maps with their colour bars, heatmap overlays with boxes, PNG
data URIs and files, and inline SVG line charts. One module, used by the demo's report,
``drnet localize`` and ``drnet serve``, so that a heatmap, a box or a chart looks the same
wherever it is shown.

Conventions every picture follows:

- **colour maps**: ``"jet"`` for class-map heatmaps (the localization literature's habit) and
  ``"viridis"`` for activation maps (perceptually ordered, dark = low). A map compared with
  others is drawn on one shared scale, and a colour bar (:func:`colour_bar`) says which.
- **boxes** differ by more than hue (readable without colour vision): the predicted box is a
  solid white line with a black edge, the ground truth a dashed yellow-and-black line
  (:data:`BOX_STYLES`); neither colour occurs in the jet map's red end.
- **charts** (:func:`line_chart`) keep reference-line labels out of the plot, in the legend,
  drawn with the line's own dash pattern: they never collide with the data.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "BOX_STYLES",
    "COLOUR_MAPS",
    "CHART_COLOURS",
    "colour_bar",
    "colorize_heatmap",
    "colorize_values",
    "draw_box",
    "line_chart",
    "nice_ticks",
    "png_data_uri",
    "render_overlay",
    "save_png",
    "upsample_heatmap",
]

# ----------------------------------------------------------------------------- colour maps

# viridis-like: (position, RGB) anchors, interpolated linearly
_VIRIDIS_ANCHORS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


def _jet_lut() -> np.ndarray:
    v = np.linspace(0, 1, 256)
    channels = [np.clip(1.5 - np.abs(4 * v - c), 0, 1) for c in (3.0, 2.0, 1.0)]
    return (np.stack(channels, axis=1) * 255).round().astype(np.uint8)


COLOUR_MAPS: dict[str, np.ndarray] = {
    "viridis": np.stack(
        [np.interp(np.linspace(0, 1, 256), _VIRIDIS_ANCHORS, _VIRIDIS[:, c]) for c in range(3)],
        axis=1,
    )
    .round()
    .astype(np.uint8),
    "jet": _jet_lut(),
}
"""``{name: [256, 3] uint8}`` look-up tables of the colour maps drnet draws with."""


def colorize_heatmap(values: Tensor) -> Tensor:
    """The jet colour map: ``values`` ``[H, W]`` in ``[0, 1]`` to uint8 RGB ``[3, H, W]``."""
    v = values.float().clamp(0, 1)
    channels = [(1.5 - (4 * v - c).abs()).clamp(0, 1) for c in (3.0, 2.0, 1.0)]
    return (torch.stack(channels) * 255).round().to(torch.uint8)


def colorize_values(
    values: np.ndarray | Tensor,
    cmap: str = "viridis",
    low: float | None = None,
    high: float | None = None,
) -> np.ndarray:
    """``[H, W]`` values to uint8 RGB ``[H, W, 3]`` through the colour map ``cmap`` on the
    scale ``[low, high]`` (default: the values' own range; pass a shared one to compare maps).
    Values outside the scale are clipped; a scale of zero width draws the low colour."""
    array = torch.as_tensor(values).detach().float().cpu().numpy()
    if cmap not in COLOUR_MAPS:
        raise ValueError(f"cmap must be one of {sorted(COLOUR_MAPS)}; got {cmap!r}")
    low = float(array.min()) if low is None else float(low)
    high = float(array.max()) if high is None else float(high)
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    index = np.clip(np.rint(np.nan_to_num(scaled) * 255), 0, 255).astype(np.intp)
    return COLOUR_MAPS[cmap][index]


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _format(value: float) -> str:
    return f"{value:.3g}"


def colour_bar(
    low: float,
    high: float,
    label: str,
    *,
    cmap: str = "viridis",
    width: int = 200,
    height: int = 12,
) -> Image.Image:
    """A horizontal colour bar as a PIL image: the colour map from ``low`` (left) to ``high``
    (right), both values printed under its ends and ``label`` (what the colours measure, and
    on which scale) above it."""
    lut = COLOUR_MAPS[cmap]
    ramp = lut[np.linspace(0, 255, width).round().astype(np.intp)]
    strip = np.repeat(ramp[None], height, axis=0)
    font = _font()
    bar = Image.new("RGB", (width + 2, height + 30), (255, 255, 255))
    draw = ImageDraw.Draw(bar)
    draw.text((1, 0), label, fill=(30, 30, 30), font=font)
    bar.paste(Image.fromarray(strip), (1, 13))
    draw.rectangle((0, 12, width + 1, 13 + height), outline=(90, 90, 90))
    low_text, high_text = _format(low), _format(high)
    draw.text((1, height + 16), low_text, fill=(30, 30, 30), font=font)
    right = width + 1 - int(draw.textlength(high_text, font=font))
    draw.text((right, height + 16), high_text, fill=(30, 30, 30), font=font)
    return bar


# ----------------------------------------------------------------------------- heatmaps, boxes


def upsample_heatmap(
    response: Tensor, input_size: tuple[int, int], image_size: tuple[int, int], stride: int = 8
) -> Tensor:
    """A class response ``[h, w]`` (already in ``[0, 1]``) as a heatmap ``[H, W]`` over the
    original image: bilinear over the cell centres (cell ``(i, j)`` centred on pixel
    ``stride * j + (stride - 1) / 2`` of the network input, as for pixel boxes), cropped to the
    input and resized to the image."""
    from drnet.tasks.boxes import upsample_class_map

    up = upsample_class_map(response[None], input_size, stride)[0]
    if tuple(input_size) != tuple(image_size):
        up = F.interpolate(up[None, None], size=image_size, mode="bilinear")[0, 0]
    return up.clamp(0, 1)


BOX_STYLES: dict[str, dict[str, Any]] = {
    "predicted": {"colour": (255, 255, 255), "edge": (0, 0, 0), "dash": None,
                  "words": "solid white line (black edge)"},
    "truth": {"colour": (255, 212, 0), "edge": (0, 0, 0), "dash": 6,
              "words": "dashed yellow-and-black line"},
}  # fmt: skip
"""How boxes are drawn: the predicted box solid white, the ground truth dashed yellow, each
with a black edge so that it shows on light and dark pixels alike."""


def _dashes(start: float, end: float, dash: int) -> list[tuple[float, float]]:
    spans, position = [], start
    while position < end:
        spans.append((position, min(end, position + dash)))
        position += 2 * dash
    return spans


def draw_box(
    image: Image.Image, box: Sequence[float], kind: str = "predicted", width: int = 2
) -> None:
    """Draw one box ``(x1, y1, x2, y2)`` (pixel edges, ``x2`` exclusive) on ``image`` in place,
    in the style of :data:`BOX_STYLES` ``[kind]``."""
    style = BOX_STYLES[kind]
    draw = ImageDraw.Draw(image)
    x1, y1, x2, y2 = (float(v) for v in box)
    x2, y2 = x2 - 1, y2 - 1
    edge = width + 2
    draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=style["edge"], width=edge)
    if style["dash"] is None:
        draw.rectangle((x1, y1, x2, y2), outline=style["colour"], width=width)
        return
    half = width / 2
    for a, b in _dashes(x1, x2, style["dash"]):
        for y in (y1 + half - 0.5, y2 - half + 0.5):
            draw.line((a, y, b, y), fill=style["colour"], width=width)
    for a, b in _dashes(y1, y2, style["dash"]):
        for x in (x1 + half - 0.5, x2 - half + 0.5):
            draw.line((x, a, x, b), fill=style["colour"], width=width)


def render_overlay(
    image: Image.Image,
    heatmap: Tensor | None,
    predicted: Tensor | None = None,
    ground_truth: Tensor | None = None,
    labels: Sequence[str] | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """The image blended with a jet heatmap, ground-truth boxes dashed yellow and predicted
    boxes solid white (:data:`BOX_STYLES`), the predicted ones labelled when the image is at
    least 128 px on its shorter side."""
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    if heatmap is not None:
        heat = colorize_heatmap(heatmap).permute(1, 2, 0).numpy().astype(np.float32)
        pixels = (1 - alpha) * pixels + alpha * heat
    picture = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
    width = max(2, min(picture.size) // 100)
    if ground_truth is not None and len(ground_truth):
        for box in ground_truth.reshape(-1, 4).tolist():
            draw_box(picture, box, "truth", width)
    if predicted is not None and len(predicted):
        boxes = predicted.reshape(-1, 4).tolist()
        for box in boxes:
            draw_box(picture, box, "predicted", width)
        if labels and min(picture.size) >= 128:
            draw = ImageDraw.Draw(picture)
            for box, label in zip(boxes, labels, strict=False):
                x, y = box[0] + width + 2, box[1] + width + 1
                draw.text((x, y), str(label), fill=(255, 255, 255), font=_font(),
                          stroke_width=2, stroke_fill=(0, 0, 0))  # fmt: skip
    return picture


# ----------------------------------------------------------------------------- PNGs


def png_data_uri(image: Image.Image | np.ndarray, fast: bool = False) -> str:
    """``data:image/png;base64,...`` of a PIL image or a uint8 ``[H, W]``/``[H, W, 3]`` (or
    uint16 ``[H, W]``) array; ``fast``: light compression (for answers over a local socket)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    options = {"compress_level": 1} if fast else {"optimize": True}
    image.save(buffer, format="PNG", **options)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike) -> str:
    """Save ``image`` as a PNG at ``path`` atomically (parent folders created): an interrupted
    run never leaves a truncated file. Returns the path as a string."""
    from drnet.engine.rundir import atomic_save_image

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_save_image(image, path, format="PNG")
    return path


# ----------------------------------------------------------------------------- charts

CHART_COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
"""Series colours of :func:`line_chart`: the Okabe-Ito colour-blind-safe set."""

_REFERENCE_DASH = ("5 4", "2 3", "8 3 2 3")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) within
    ``[low, high]``."""
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    title: str,
    x_label: str,
    y_label: str,
    *,
    width: int = 500,
    height: int = 260,
    y_range: tuple[float, float] | None = None,
    hlines: Sequence[tuple[float, str]] = (),
    vlines: Sequence[tuple[float, str]] = (),
) -> str:
    """An inline SVG line chart: one polyline (with dots) per series, axes with ticks, dashed
    reference lines ``(value, label)``. Series and reference lines are named in a legend above
    the plot (a reference line's entry drawn with its dash pattern), so that no label is
    written over the data. The SVG scales down to its container (``viewBox``)."""
    points = [p for s in series.values() for p in s if p[1] is not None]
    if not points:
        return f'<p class="note">{_e(title)}: no data.</p>'
    left, right, bottom = 52, 14, 40
    entries: list[tuple[str, str, str]] = []  # (kind, label, colour or dash)
    if len(series) > 1:
        entries += [
            ("series", str(n), CHART_COLOURS[i % len(CHART_COLOURS)]) for i, n in enumerate(series)
        ]
    references = [(v, label, "h") for v, label in hlines] + [(v, label, "v") for v, label in vlines]
    for i, (value, label, _) in enumerate(references):
        label = f"{label} ({_format(value)})" if _format(value) not in label else label
        entries.append(("reference", label, _REFERENCE_DASH[i % len(_REFERENCE_DASH)]))
    legend, lx, ly = [], left, 34
    for _, label, _ in entries:
        advance = 34 + 6 * len(label)
        if lx + advance > width - right and lx > left:
            lx, ly = left, ly + 14
        legend.append((lx, ly))
        lx += advance
    legend_rows = (ly - 34) // 14 + 1 if legend else 0
    top = 26 + 14 * legend_rows
    height += 14 * legend_rows
    xs = [p[0] for p in points] + [v for v, _ in vlines]
    ys = [p[1] for p in points] + [v for v, _ in hlines]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if not y_range:
        pad = 0.06 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(title)}" class="chart">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{left}" y="15" style="font-weight:600">{_e(title)}</text>',
    ]
    for y in nice_ticks(y0, y1):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'stroke="#e6e9ed"/>'
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>'
        )
    whole = all(float(x).is_integer() for x in xs)
    if whole and x1 - x0 <= 12:
        x_ticks = [float(x) for x in range(int(x0), int(x1) + 1)]
    else:
        x_ticks = nice_ticks(x0, x1)
    for x in x_ticks:
        parts.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:.3g}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#888"/>'
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'stroke="#888"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{_e(x_label)}'
        f"</text>"
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{_e(y_label)}</text>'
    )
    for i, (value, _, kind) in enumerate(references):
        dash = _REFERENCE_DASH[i % len(_REFERENCE_DASH)]
        if kind == "h":
            parts.append(
                f'<line x1="{left}" x2="{width - right}" y1="{sy(value):.1f}" '
                f'y2="{sy(value):.1f}" stroke="#555" stroke-dasharray="{dash}"/>'
            )
        else:
            parts.append(
                f'<line x1="{sx(value):.1f}" x2="{sx(value):.1f}" y1="{top}" '
                f'y2="{top + plot_h}" stroke="#555" stroke-dasharray="{dash}"/>'
            )
    for i, data in enumerate(series.values()):
        colour = CHART_COLOURS[i % len(CHART_COLOURS)]
        valid = [(x, y) for x, y in data if y is not None]
        if not valid:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in valid)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in valid
        ]
    for (kind, label, style), (lx, ly) in zip(entries, legend, strict=True):
        if kind == "series":
            parts.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{style}"/>')
            text_x = lx + 14
        else:
            parts.append(
                f'<line x1="{lx}" x2="{lx + 20}" y1="{ly - 3}" y2="{ly - 3}" stroke="#555" '
                f'stroke-width="1.5" stroke-dasharray="{style}"/>'
            )
            text_x = lx + 24
        parts.append(f'<text x="{text_x}" y="{ly + 1}">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
