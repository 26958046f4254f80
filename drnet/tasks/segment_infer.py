"""Segmentation inference: whole image, multi-scale + flip fusion, sliding window.

Every function returns class *probabilities* ``[N, C, H, W]`` at the input size (softmax of the
model's scores), so results of different scales, flips and windows can be averaged. With a single
scale of 1.0, no flip and a window at least as large as the image, the result is exactly
``softmax(model(x))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drnet.models.loading import logits_of

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def model_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class scores ``[N, C, H, W]`` at the input size from any DRNSeg output convention:
    ``{"out": logits}``, the official ``(log_softmax, low_res)`` pair, or a plain tensor."""
    out = logits_of(model(images))
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


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
