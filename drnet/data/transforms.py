"""Joint image + mask transforms for segmentation, built on ``torchvision.transforms.v2``.

The image travels as :class:`tv_tensors.Image` (uint8 until normalised) and the label as
:class:`tv_tensors.Mask`; v2 resizes and rotates masks with nearest interpolation, and the fill
values below pad/rotate labels with 255 (ignore). Only the random scale is written here, since v2
has no "scale by a random factor" transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from drnet.constants import IGNORE_INDEX
from drnet.errors import DrnetError

FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}


def scale_range(random_scale: float | Sequence[float] | None) -> tuple[float, float] | None:
    """``--random-scale`` as a range: ``s`` -> ``(1/s, s)`` (the original code's meaning),
    ``(lo, hi)`` as given, ``0``/``1``/None -> no scaling."""
    if random_scale is None:
        return None
    if isinstance(random_scale, (int, float)):
        if random_scale in (0, 1):
            return None
        if random_scale < 0:
            raise DrnetError(f"--random-scale {random_scale} must be positive")
        s = max(random_scale, 1 / random_scale)
        return (1 / s, s)
    lo, hi = (float(v) for v in random_scale)
    if not 0 < lo <= hi:
        raise DrnetError(f"--random-scale {lo},{hi} must satisfy 0 < low <= high")
    return (lo, hi)


class RandomScale(v2.Transform):
    """Resize image and mask together by a factor drawn uniformly from ``scale_range``.

    The image is resized bilinearly (antialiased), the mask with nearest neighbour.
    """

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = next(
            F.get_size(x) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask))
        )
        lo, hi = self.scale_range
        ratio = lo + torch.rand(()).item() * (hi - lo)
        return {"size": [max(1, round(height * ratio)), max(1, round(width * ratio))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize,
            inpt,
            size=params["size"],
            interpolation=v2.InterpolationMode.BILINEAR,
            antialias=True,
        )


def _to_float_and_normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def segmentation_train_transform(
    crop_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    random_scale: float | Sequence[float] | None = 0,
    random_rotate: float = 0,
    hflip: bool = True,
) -> v2.Compose:
    """Training augmentation: random scale, random rotation (label fill 255), random crop padded
    where the image is smaller (image 0, label 255), horizontal flip, normalisation.

    Args:
        crop_size: side (or ``(height, width)``) of the training crops.
        mean, std: the dataset's normalisation (of pixel values in [0, 1]).
        random_scale: ``s`` scales by a factor in ``[1/s, s]``; ``(lo, hi)`` by one in that range.
        random_rotate: maximum rotation in degrees (uniform in ``[-d, d]``).
        hflip: flip horizontally with probability 0.5.
    """
    steps: list[v2.Transform] = []
    scales = scale_range(random_scale)
    if scales is not None:
        steps.append(RandomScale(scales))
    if random_rotate:
        steps.append(
            v2.RandomRotation(random_rotate, interpolation=v2.InterpolationMode.BILINEAR, fill=FILL)
        )
    if crop_size:
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=FILL))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += _to_float_and_normalize(mean, std)
    return v2.Compose(steps)


def segmentation_eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Evaluation: the whole image, only converted and normalised."""
    return v2.Compose(_to_float_and_normalize(mean, std))
