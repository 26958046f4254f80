"""Colour palettes for label maps, colourising and overlays."""

from __future__ import annotations

import functools

import numpy as np

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# The Cityscapes colours of the 19 training classes (cityscapesScripts' labels.py order).
CITYSCAPES_PALETTE = np.array(
    [
        [128, 64, 128],
        [244, 35, 232],
        [70, 70, 70],
        [102, 102, 156],
        [190, 153, 153],
        [153, 153, 153],
        [250, 170, 30],
        [220, 220, 0],
        [107, 142, 35],
        [152, 251, 152],
        [70, 130, 180],
        [220, 20, 60],
        [255, 0, 0],
        [0, 0, 142],
        [0, 0, 70],
        [0, 60, 100],
        [0, 80, 100],
        [0, 0, 230],
        [119, 11, 32],
    ],
    dtype=np.uint8,
)

IGNORE_COLOUR = (0, 0, 0)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or 0-255 float) sRGB colours ``[..., 3]`` as CIELAB ``[..., 3]`` (D65 white)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = (
        linear
        @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    )
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def min_colour_distance(palette: np.ndarray) -> float:
    """The smallest CIELAB distance (Delta E 1976) between two colours of ``palette``: about
    2.3 is just noticeable; under about 10 two classes are easily confused in a small legend."""
    lab = srgb_to_lab(palette)
    distances = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    distances[np.diag_indices(len(lab))] = np.inf
    return float(distances.min()) if len(lab) > 1 else float("inf")


def _candidates() -> np.ndarray:
    levels = np.linspace(0, 255, 18).round()
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid.astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _distinct(num_classes: int) -> np.ndarray:
    candidates = _candidates()
    lab = srgb_to_lab(candidates)
    chosen = [0]  # black: class 0 (background, as in VOC-style palettes)
    nearest = np.linalg.norm(lab - lab[0], axis=1)
    for _ in range(1, num_classes):
        best = int(nearest.argmax())
        chosen.append(best)
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[best], axis=1))
    return candidates[chosen]


def distinct_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours chosen greedily to be as far apart as possible in
    CIELAB (each new colour maximises its distance to the nearest one already chosen, from an
    18-level RGB grid): class 0 is black, and every pair of classes stays distinguishable (see
    :func:`min_colour_distance`)."""
    return _distinct(int(num_classes)).copy()


def generated_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours spread by bit-interleaving the class index (the PASCAL
    VOC scheme): class 0 is black. Kept for reproducing earlier pictures; its near pairs (e.g.
    classes 1 and 9 of 11) are why :func:`get_palette` uses :func:`distinct_palette`."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        value, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[c] = (r, g, b)
    return palette


def get_palette(num_classes: int) -> np.ndarray:
    """The Cityscapes palette for 19 classes, :func:`distinct_palette` otherwise (up to 256
    classes; beyond, the VOC scheme): ``[num_classes, 3]``."""
    if num_classes == len(CITYSCAPES_PALETTE):
        return CITYSCAPES_PALETTE.copy()
    if num_classes <= 256:
        return distinct_palette(num_classes)
    return generated_palette(num_classes)


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``[H, W]`` class indices -> ``[H, W, 3]`` uint8 colours; indices outside the palette
    (e.g. 255 = ignore) are black."""
    label = np.asarray(label)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = palette[:256]
    lut[len(palette) :] = IGNORE_COLOUR
    return lut[np.clip(label, 0, 255).astype(np.intp)]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``[H, W, 3]`` uint8 ``colours`` over ``image`` with weight ``alpha``."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return blended.round().clip(0, 255).astype(np.uint8)
