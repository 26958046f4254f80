"""Images as people have them, turned into the RGB the models read.

- The EXIF orientation is applied, so pixels, boxes and masks are in the orientation a person
  sees (phones store many photos rotated, with an EXIF tag saying so).
- High-bit-depth greyscale (16-bit PNGs, 32-bit integer and float images) is converted by its
  value range instead of being clipped: PIL's own ``convert("RGB")`` turns every 16-bit value
  above 255 into white.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` upright (EXIF orientation) and in 8-bit RGB, high bit depths scaled by range."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit values map 0..65535 to 0..255; floats in [0, 1] map to 0..255; other ranges that
    exceed 8 bits are scaled by their maximum."""
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    high = float(values.max(initial=0.0))
    if is_float and high <= 1.0 and float(values.min(initial=0.0)) >= 0.0:
        scale = 255.0
    elif high <= 255.0:
        scale = 1.0
    elif high <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / high
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
