"""Int8 and bf16 vs float32 on real data: mIoU, unchanged labels and time per image, side by
side.

mIoU and pixel accuracy come from the segmentation task's own evaluation
(:func:`drnet.tasks.segment.evaluate`, on the same images for every precision); this module adds
only what an evaluation does not measure: the share of labels each precision leaves unchanged
and the time per image, taken in interleaved rounds (load hits every path alike).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Subset

from drnet.data.segmentation import open_segmentation_dataset
from drnet.engine.precision import native_bf16
from drnet.errors import DataError
from drnet.models.loading import load_model, logits_of
from drnet.speed.inference import optimize_for_inference
from drnet.speed.quantize import quantize_int8
from drnet.tasks import segment
from drnet.tasks.common import InferenceOptions
from drnet.timing import median


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
    bf16: bool = True,
) -> dict[str, Any]:
    """Quantize a trained DRNSeg with ``calibration_images`` of ``calibration_split`` and score
    float32 (eager) and int8 on up to ``val_images`` images of ``val_split``.

    ``weights``: a segmentation run directory, drnet checkpoint or official ``.pth`` (anything
    :func:`drnet.models.loading.load_model` takes); ``model``, ``num_classes`` and ``channels``
    for files that do not record them (``default_model`` when nothing names the architecture).

    Returns mIoU and pixel accuracy of both, the share of labels int8 left unchanged, and the
    median milliseconds per image of each (int8 timed after its compile warm-up). Without
    ``compile`` the int8 graph runs as float reference ops: same labels, no speed-up.

    With ``bf16`` the bf16 fast path (:func:`drnet.speed.inference.optimize_for_inference` with
    ``dtype=torch.bfloat16``) is scored the same way (``*_bf16`` keys). Its accuracy is the same on
    any CPU; its time means something only where ``bf16_native`` is true (elsewhere bf16 is
    emulated, several times slower than float32).
    """
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
        num_classes=num_classes,  # the user's --num-classes only: a mismatch is blamed on it
        channels=channels,
    )
    if card.num_classes != classes:
        raise DataError(
            f"{weights} predicts {card.num_classes} classes but {data} has {classes} (its "
            "info.json 'classes'); use weights trained on this data, or pass --num-classes"
        )
    calibration = [
        calibration_set[i][0][None] for i in _evenly(len(calibration_set), calibration_images)
    ]
    start = time.perf_counter()
    quantized = quantize_int8(network, calibration, example_input=calibration[0], compile=compile)
    quantize_s = time.perf_counter() - start

    models = {"fp32": network, "int8": quantized}
    if bf16:
        models["bf16"] = optimize_for_inference(network, channels_last=True, dtype=torch.bfloat16)
    indices = _evenly(len(val_set), val_images)
    # the scores: the task's evaluation on the same images (each model runs as it is given)
    options = InferenceOptions(device="cpu", fast=False, progress=False)
    subset = Subset(val_set, indices)
    settings = segment.SegmentationSettings()
    metrics = {
        name: segment.evaluate(model, card, subset, options, settings).metrics
        for name, model in models.items()
    }
    # the time per image and the labels each precision changes: interleaved rounds
    runners = {"fp32": lambda x: logits_of(network(x)).argmax(1), "int8": quantized.labels}
    if bf16:
        runners["bf16"] = models["bf16"].labels
    times: dict[str, list[float]] = {name: [] for name in runners}
    same = dict.fromkeys(runners, 0)
    total = 0
    first = val_set[indices[0]][0][None]
    for runner in runners.values():
        runner(first)  # compile / pack for this shape outside the timing
    for i in indices:
        x = val_set[i][0][None]
        labels = {}
        for name, runner in runners.items():  # interleaved: load hits every path alike
            t0 = time.perf_counter()
            labels[name] = runner(x)
            times[name].append(time.perf_counter() - t0)
            same[name] += int((labels[name] == labels["fp32"]).sum())
        total += labels["fp32"].numel()
    ms = {name: 1e3 * median(values) for name, values in times.items()}
    fp32_metrics, int8_metrics = metrics["fp32"], metrics["int8"]
    ms_fp32, ms_int8 = ms["fp32"], ms["int8"]
    report = {
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
        "labels_unchanged": same["int8"] / max(1, total),
        "ms_fp32": ms_fp32,
        "ms_int8": ms_int8,
        "speedup": ms_fp32 / ms_int8,
        "quantize_s": quantize_s,
        "compiled": compile,
    }
    if bf16:
        report.update(
            miou_bf16=float(metrics["bf16"]["miou"]),
            pixel_accuracy_bf16=float(metrics["bf16"]["pixel_accuracy"]),
            labels_unchanged_bf16=same["bf16"] / max(1, total),
            ms_bf16=ms["bf16"],
            speedup_bf16=ms_fp32 / ms["bf16"],
            bf16_native=native_bf16("cpu"),
        )
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What ``drnet quantize`` prints for a :func:`evaluate_int8` report: mIoU in points (x100,
    as ``segment eval`` prints it) and its change, the unchanged labels and the time per image."""
    r = report
    lines = [
        f"mIoU float32 {100 * r['miou_fp32']:.2f}, int8 {100 * r['miou_int8']:.2f} "
        f"(change {100 * (r['miou_int8'] - r['miou_fp32']):+.2f} points); labels "
        f"unchanged {r['labels_unchanged']:.4%}; {r['ms_fp32']:.1f} -> "
        f"{r['ms_int8']:.1f} ms/img ({r['speedup']:.2f}x) on {r['val_images']} images"
    ]
    if "miou_bf16" in r:
        native = "" if r["bf16_native"] else " (emulated on this CPU: time not meaningful)"
        lines.append(
            f"bf16: mIoU {100 * r['miou_bf16']:.2f} (change "
            f"{100 * (r['miou_bf16'] - r['miou_fp32']):+.2f} points); labels unchanged "
            f"{r['labels_unchanged_bf16']:.4%}; {r['ms_bf16']:.1f} ms/img "
            f"({r['speedup_bf16']:.2f}x){native}"
        )
    return lines
