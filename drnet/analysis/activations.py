"""Per-level activation maps: collect them from a model and render them as a PNG grid.

The paper's gridding figure shows, for one input, the activation of each level of DRN-A, DRN-B and
DRN-C: :func:`collect_activations` gathers a model's per-level outputs with forward hooks, and
:func:`render_activation_grid` draws one row per model, one tile per level, each tile rescaled to
its own [0, 1] range (viridis-like colours, dark = low) and showing one of two statistics:
``"mean"``, the mean absolute activation over channels, or ``"max_channel"``, the map of the most
active channel (the largest mean activation), which is what the paper's figure shows
(:func:`most_active_channel`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from drnet import rendering
from drnet.atomic import atomic_save_image

__all__ = [
    "STATISTICS",
    "STATISTIC_LABELS",
    "activation_image",
    "activation_values",
    "collect_activations",
    "level_names",
    "most_active_channel",
    "render_activation_grid",
]

STATISTICS = ("mean", "max_channel")

# A compact viridis-like colour map: (position, RGB) anchors, interpolated linearly.
_ANCHORS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
_LUT = (
    np.stack(
        [np.interp(np.linspace(0, 1, 256), _ANCHORS, _COLOURS[:, c]) for c in range(3)], axis=1
    )
    .round()
    .astype(np.uint8)
)


def level_names(model: nn.Module) -> list[str]:
    """The modules whose outputs are the model's levels: drnet's ``level_info`` (every level,
    the stem first), else ``feature_info`` names (timm models), else its top-level children
    called ``layer*``."""
    info = getattr(model, "level_info", None) or getattr(model, "feature_info", None)
    if info is not None and hasattr(info, "module_name"):
        return list(info.module_name())
    return [name for name, _ in model.named_children() if name.startswith("layer")]


@torch.no_grad()
def collect_activations(
    model: nn.Module, inputs: torch.Tensor, module_names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Run ``model(inputs)`` once and return the outputs of the named modules, in forward order.

    Args:
        model: any module; it is run as it is (call ``model.eval()`` first for inference maps).
        inputs: the input batch.
        module_names: dotted names as in ``model.named_modules()``; None means
            :func:`level_names`.

    Returns:
        ``{name: detached tensor}``; a module that runs more than once keeps its last output.

    Raises:
        KeyError: a name is not a module of ``model``.
    """
    names = list(module_names) if module_names is not None else level_names(model)
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise KeyError(f"model has no module(s) {missing}; known: {list(modules)[:20]}...")
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def save(module: nn.Module, args: tuple, output) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            outputs.pop(name, None)
            outputs[name] = output.detach().clone()  # clone: a later in-place op must not alter it

        return save

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def most_active_channel(activation: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The map of the channel with the largest mean activation, per image.

    Args:
        activation: ``[C, H, W]`` (one image) or ``[N, C, H, W]``.

    Returns:
        ``[H, W]`` for one image, ``[N, H, W]`` for a batch (ties: the lowest channel index).
    """
    x = torch.as_tensor(activation).detach()
    if x.dim() not in (3, 4):
        raise ValueError(f"activation must be [C, H, W] or [N, C, H, W]; got {tuple(x.shape)}")
    batch = x if x.dim() == 4 else x[None]
    best = batch.mean(dim=(-2, -1)).argmax(dim=1)
    maps = batch[torch.arange(batch.shape[0], device=batch.device), best]
    return maps if x.dim() == 4 else maps[0]


def activation_values(
    activation: torch.Tensor | np.ndarray, sample: int = 0, statistic: str = "mean"
) -> np.ndarray:
    """One level's map before any rescaling: float ``[H, W]``, the statistic's own units.

    ``activation`` is ``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]`` (then ``sample`` picks the
    image). ``statistic`` is ``"mean"`` (mean absolute activation over channels) or
    ``"max_channel"`` (the absolute value of the most active channel,
    :func:`most_active_channel`, as the paper shows); a ``[H, W]`` map is shown as its absolute
    value either way.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}; got {statistic!r}")
    x = torch.as_tensor(activation).detach().float().cpu()
    if x.dim() == 4:
        x = x[sample]
    if x.dim() == 3:
        x = x.abs().mean(dim=0) if statistic == "mean" else most_active_channel(x).abs()
    elif x.dim() == 2:
        x = x.abs()
    else:
        raise ValueError(f"activation must be [H, W], [C, H, W] or [N, C, H, W]; got {x.shape}")
    return x.numpy()


def activation_image(
    activation: torch.Tensor | np.ndarray, sample: int = 0, statistic: str = "mean"
) -> np.ndarray:
    """One map per level, rescaled to its own [0, 1] range: float ``[H, W]``
    (:func:`activation_values`, min-max scaled). A constant map gives zeros."""
    x = activation_values(activation, sample, statistic)
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros(tuple(x.shape))


STATISTIC_LABELS = {
    "mean": "mean |activation| over channels",
    "max_channel": "|activation| of the most active channel",
}
"""What each statistic's tiles show, in words (row labels and colour bars)."""


def _tile(values: np.ndarray, size: int) -> Image.Image:
    coloured = _LUT[np.clip(np.rint(np.nan_to_num(values) * 255), 0, 255).astype(np.uint8)]
    height, width = values.shape
    scale = size / max(height, width)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return Image.fromarray(coloured, mode="RGB").resize(new, Image.Resampling.NEAREST)


def render_activation_grid(
    maps: Mapping[str, torch.Tensor] | Mapping[str, Mapping[str, torch.Tensor]],
    path: str | os.PathLike | None = None,
    *,
    image: np.ndarray | Image.Image | torch.Tensor | None = None,
    tile: int = 96,
    sample: int = 0,
    titles: Mapping[str, str] | None = None,
    statistic: str = "mean",
    scale: str = "tile",
    colour_bar: bool = False,
) -> Image.Image:
    """Draw activation maps as a grid of tiles and optionally save it as a PNG.

    Args:
        maps: ``{level: activation}`` for one row, or ``{row label: {level: activation}}`` for
            several rows (e.g. one per model). Activations as in :func:`activation_image`.
        path: where to save the PNG (parent folders are created); None to only return it.
        image: an input image (uint8 ``[H, W, 3]`` array, PIL image, or ``[3, H, W]`` float
            tensor in [0, 1]) drawn as the first tile of every row.
        tile: the longer side of each tile in pixels (maps are enlarged with nearest neighbour).
        sample: which batch element to draw for ``[N, C, H, W]`` activations.
        titles: extra text under a level's name, e.g. ``{"layer5": "grid 0.31"}``.
        statistic: what each tile shows: ``"mean"`` (mean |activation| over channels) or
            ``"max_channel"`` (the most active channel, as in the paper's figure); call twice to
            show both side by side.
        scale: ``"tile"``: each tile scaled to its own range (shapes only: a flat map looks as
            strong as a real one); ``"row"``: one scale per row, from 0 to the row's largest
            value, so that tiles of a row compare.
        colour_bar: draw under each row a colour bar naming the statistic and its scale
            (:func:`drnet.rendering.colour_bar`).

    Returns:
        The grid as a PIL image.
    """
    if not maps:
        raise ValueError("render_activation_grid needs at least one map")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}; got {statistic!r}")
    if scale not in ("tile", "row"):
        raise ValueError(f"scale must be 'tile' or 'row'; got {scale!r}")
    first = next(iter(maps.values()))
    rows = dict(maps) if isinstance(first, Mapping) else {"": maps}
    titles = titles or {}
    font = ImageFont.load_default()
    label_width = 0 if list(rows) == [""] else 8 + 7 * max(len(label) for label in rows)
    text_height = 26 if titles else 14
    bar_height = 46 if colour_bar else 0
    columns = max(len(levels) for levels in rows.values()) + (image is not None)
    cell = tile + 4
    row_height = cell + text_height + bar_height
    grid = Image.new("RGB", (label_width + columns * cell, len(rows) * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    input_tile = None
    if image is not None:
        if isinstance(image, torch.Tensor):
            array = image.detach().float().cpu().clamp(0, 1).mul(255).round().byte()
            image = Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        factor = tile / max(image.size)
        input_tile = image.convert("RGB").resize(
            (max(1, round(image.width * factor)), max(1, round(image.height * factor))),
            Image.Resampling.BILINEAR,
        )
    for r, (label, levels) in enumerate(rows.items()):
        top = r * row_height
        if label:
            draw.text((4, top + tile // 2), label, fill=(0, 0, 0), font=font)
        values = {n: activation_values(a, sample, statistic) for n, a in levels.items()}
        high = max((float(v.max()) for v in values.values()), default=0.0)
        if scale == "row":
            tiles = {n: v / high if high > 0 else np.zeros_like(v) for n, v in values.items()}
        else:
            tiles = {n: activation_image(v, statistic=statistic) for n, v in values.items()}
        if colour_bar:
            words = STATISTIC_LABELS[statistic]
            words += ": one scale for the row" if scale == "row" else ": each tile its own range"
            low_high = (0.0, high) if scale == "row" else (0.0, 1.0)
            bar = rendering.colour_bar(
                *low_high, words, width=max(120, min(360, columns * cell - 8))
            )
            grid.paste(bar, (label_width + 2, top + cell + text_height))
        entries = list(levels.items())
        if input_tile is not None:
            entries.insert(0, ("input", None))
        for c, (name, activation) in enumerate(entries):
            left = label_width + c * cell
            pasted = input_tile if activation is None else _tile(tiles[name], tile)
            grid.paste(pasted, (left + 2, top + 2))
            draw.text((left + 2, top + cell), str(name), fill=(0, 0, 0), font=font)
            if name in titles:
                draw.text((left + 2, top + cell + 12), titles[name], fill=(80, 80, 80), font=font)
    if path is not None:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        atomic_save_image(grid, path, format="PNG")  # never a truncated PNG
    return grid
