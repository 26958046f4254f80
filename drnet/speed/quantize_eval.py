"""Int8 vs float32 on real data: mIoU, unchanged labels and time per image, side by side."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from drnet.errors import DataError
from drnet.metrics import ConfusionMatrix


def _evenly(count: int, wanted: int) -> list[int]:
    wanted = max(1, min(count, wanted))
    return sorted({round(i * (count - 1) / max(1, wanted - 1)) for i in range(wanted)})


@torch.no_grad()
def evaluate_int8(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    *,
    model: str | None = None,
    default_model: str | None = "drn_d_22",
    num_classes: int | None = None,
    channels: Sequence[int] | None = None,
    calibration_images: int = 32,
    val_images: int = 100,
    calibration_split: str = "train",
    val_split: str = "val",
    compile: bool = True,  # noqa: A002
) -> dict[str, Any]:
    """Quantize a trained DRNSeg with ``calibration_images`` of ``calibration_split`` and score
    float32 (eager) and int8 on up to ``val_images`` images of ``val_split``.

    ``weights``: a segmentation run directory, drnet checkpoint or official ``.pth`` (anything
    :func:`drnet.models.loading.load_model` takes); ``model``, ``num_classes`` and ``channels``
    for files that do not record them (``default_model`` when nothing names the architecture).

    Returns mIoU and pixel accuracy of both, the share of labels int8 left unchanged, and the
    median milliseconds per image of each (int8 timed after its compile warm-up). Without
    ``compile`` the int8 graph runs as float reference ops: same labels, no speed-up.
    """
    from drnet.data.segmentation import open_segmentation_dataset
    from drnet.models.loading import load_model
    from drnet.speed.quantize import quantize_int8

    if data is None:
        raise DataError("--data: give a segmentation dataset folder (e.g. from drnet data scenes)")
    calibration_set = open_segmentation_dataset(data, calibration_split, num_classes)
    val_set = open_segmentation_dataset(data, val_split, calibration_set.num_classes)
    classes = val_set.num_classes
    network, card = load_model(
        weights,
        model=model,
        default_model=default_model,
        task="segmentation",
        num_classes=classes,
        channels=channels,
    )
    calibration = [
        calibration_set[i][0][None] for i in _evenly(len(calibration_set), calibration_images)
    ]
    start = time.perf_counter()
    quantized = quantize_int8(network, calibration, example_input=calibration[0], compile=compile)
    quantize_s = time.perf_counter() - start

    fp32_cm, int8_cm = ConfusionMatrix(classes), ConfusionMatrix(classes)
    same = total = 0
    fp32_times: list[float] = []
    int8_times: list[float] = []
    indices = _evenly(len(val_set), val_images)
    first = val_set[indices[0]][0][None]
    quantized.predict_labels(first)  # compile for this shape outside the timing
    for i in indices:
        image, label = val_set[i]
        x = image[None]
        t0 = time.perf_counter()
        fp32 = network(x)["out"].argmax(1)
        t1 = time.perf_counter()
        int8 = quantized.predict_labels(x)
        t2 = time.perf_counter()
        fp32_times.append(t1 - t0)
        int8_times.append(t2 - t1)
        fp32_cm.update(fp32[0], label)
        int8_cm.update(int8[0], label)
        same += int((fp32 == int8).sum())
        total += fp32.numel()
    fp32_metrics, int8_metrics = fp32_cm.compute(), int8_cm.compute()
    ms_fp32 = 1e3 * float(torch.tensor(fp32_times).median())
    ms_int8 = 1e3 * float(torch.tensor(int8_times).median())
    return {
        "model": card.model,
        "checkpoint": str(weights),
        "data": str(data),
        "classes": classes,
        "calibration_images": len(calibration),
        "val_images": len(indices),
        "miou_fp32": float(fp32_metrics["miou"]),
        "miou_int8": float(int8_metrics["miou"]),
        "pixel_accuracy_fp32": float(fp32_metrics["pixel_accuracy"]),
        "pixel_accuracy_int8": float(int8_metrics["pixel_accuracy"]),
        "labels_unchanged": same / max(1, total),
        "ms_fp32": ms_fp32,
        "ms_int8": ms_int8,
        "speedup": ms_fp32 / ms_int8,
        "quantize_s": quantize_s,
        "compiled": compile,
    }
