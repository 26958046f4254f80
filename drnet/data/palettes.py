"""Colour palettes for label maps, colourising and overlays."""

from __future__ import annotations

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


def generated_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours spread by bit-interleaving the class index (the PASCAL
    VOC scheme): neighbouring indices get clearly different colours; class 0 is black."""
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
    """The Cityscapes palette for 19 classes, a generated one otherwise (``[num_classes, 3]``)."""
    if num_classes == len(CITYSCAPES_PALETTE):
        return CITYSCAPES_PALETTE.copy()
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
