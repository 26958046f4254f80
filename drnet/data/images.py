"""Images as people have them, turned into the RGB the models read.

- The EXIF orientation is applied, so pixels, boxes and masks are in the orientation a person
  sees (phones store many photos rotated, with an EXIF tag saying so).
- High-bit-depth greyscale (16-bit PNGs, 32-bit integer and float images) is converted by its
  value range instead of being clipped: PIL's own ``convert("RGB")`` turns every 16-bit value
  above 255 into white.
- A pixel budget (:data:`MAX_PIXELS`, PIL's own default of about 89.5 megapixels; environment
  variable ``DRNET_MAX_PIXELS``, option ``--max-pixels``): a larger image is refused in one line
  naming the file, before it is decoded (a 699-byte PNG can declare 2 x 60000 pixels, a crafted
  one billions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from drnet.errors import DataError, DrnetError

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")

#: PIL's default decompression-bomb limit (its warning threshold), about 89.5 megapixels.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
#: How a refused image's message tells the user to raise the budget.
BUDGET_HINT = "raise the pixel budget with --max-pixels N or DRNET_MAX_PIXELS"
_PIL_LIMIT = Image.MAX_IMAGE_PIXELS


class ImageTooLarge(ValueError):
    """An image past the pixel budget. A ``ValueError`` so that the image readers
    (:func:`drnet.data.classification.load_rgb`, :func:`drnet.data.segmentation.read_image`)
    report it, like any unreadable image, in one line naming the file."""


def _budget_from_env() -> int:
    text = os.environ.get("DRNET_MAX_PIXELS", "").strip()
    try:
        value = int(float(text)) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        value = DEFAULT_MAX_PIXELS
    return value if value > 0 else DEFAULT_MAX_PIXELS


#: The pixel budget (width x height) of one image; change it with :func:`set_max_pixels`.
MAX_PIXELS = DEFAULT_MAX_PIXELS


def set_max_pixels(pixels: int | None) -> int:
    """Set the pixel budget (``None``: ``DRNET_MAX_PIXELS`` or the default) and return it.
    PIL's own guard is raised along (never lowered), so a larger budget is honoured."""
    global MAX_PIXELS
    MAX_PIXELS = _budget_from_env() if pixels is None else int(pixels)
    limit = _PIL_LIMIT if _PIL_LIMIT is not None else MAX_PIXELS
    Image.MAX_IMAGE_PIXELS = max(limit, MAX_PIXELS)
    return MAX_PIXELS


def check_pixels(image: Image.Image, name: object = None) -> None:
    """Raise :class:`ImageTooLarge` when ``image`` (opened, not yet decoded) is past the budget;
    ``name`` (e.g. the file) starts the message when given."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(
            f"{f'{name}: ' if name is not None else ''}{width}x{height} = {width * height:,} "
            f"pixels, past the pixel budget of {MAX_PIXELS:,} ({BUDGET_HINT})"
        )


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` upright (EXIF orientation) and in 8-bit RGB, high bit depths scaled by range.
    Raises :class:`ImageTooLarge` (before decoding) for an image past :data:`MAX_PIXELS`."""
    check_pixels(image)
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


# -- output names of predict commands -------------------------------------------------------------


def relative_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Each path relative to the deepest folder common to all of them, without its extension
    (``/``-separated); :func:`unique_names` then renames repeats."""
    resolved = [Path(os.path.abspath(p)) for p in paths]
    if not resolved:
        return []
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    return [p.relative_to(root).with_suffix("").as_posix() for p in resolved]


def list_names(entries: Sequence[str], base: str | os.PathLike) -> list[str]:
    """Output names of the entries of a list file (paths relative to ``base``, the list's or
    the dataset's folder): each entry's path relative to ``base`` without its extension; when
    an entry is absolute or leaves ``base`` (``..``), every entry is named relative to the
    deepest folder common to all of them (:func:`relative_names`). A name is never absolute
    and never holds ``..``, so outputs stay inside the output folder."""
    base = os.path.abspath(base)
    paths = [os.path.normpath(os.path.join(base, entry)) for entry in entries]
    inside = all(os.path.commonpath([base, p]) == base and p != base for p in paths)
    if not inside:
        return relative_names(paths)
    return [Path(os.path.relpath(p, base)).with_suffix("").as_posix() for p in paths]


def output_path(output_dir: str | os.PathLike, *parts: str) -> Path:
    """``output_dir/parts...``, refused (:class:`DrnetError`) when a name would lead outside
    ``output_dir`` (an absolute name, ``..``): no output is ever written over an input."""
    root = os.path.abspath(output_dir)
    path = os.path.normpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root or path == root:
        raise DrnetError(f"output name {'/'.join(parts)!r} leads outside {output_dir}")
    return Path(path)


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats (compared case-insensitively, as some file systems do) renamed
    ``name-2``, ``name-3``, ... in order, never onto another name of the list."""
    taken = {n.casefold() for n in names}
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, number = name, 1
        # a suffixed name must not be one that another input has as its own name
        while candidate.casefold() in seen or (candidate != name and candidate.casefold() in taken):
            number += 1
            candidate = f"{name}-{number}"
        seen.add(candidate.casefold())
        result.append(candidate)
    return result


def failure_message(exc: BaseException) -> str:
    """The one-line reason an input image failed (PIL's decompression-bomb guard gets the
    budget hint)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError):
        text = f"{text} ({BUDGET_HINT})"
    return text


class SkipBad:
    """A prediction dataset (items ``(image, index, size)``) whose unreadable images
    (:class:`drnet.errors.DataError`, PIL's decompression-bomb guard) become the item
    ``(placeholder, index, (0, 0), message)`` instead of an exception, so that a DataLoader,
    worker processes included, goes on with the other images. Good items get ``""`` as
    message."""

    def __init__(self, dataset, placeholder=None) -> None:
        self.dataset, self.placeholder = dataset, placeholder

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, number, size = self.dataset[index]
        except (DataError, Image.DecompressionBombError) as exc:
            placeholder = self.placeholder
            if placeholder is None:
                import torch  # here: reading images needs no torch

                placeholder = torch.zeros(0)
            return placeholder, index, (0, 0), failure_message(exc)
        return image, number, size, ""


set_max_pixels(None)  # DRNET_MAX_PIXELS, and PIL's guard raised to match
