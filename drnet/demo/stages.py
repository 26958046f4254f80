"""The demo's stages: thin adaptors over the library tasks.

Each stage builds what a task takes (a :class:`~drnet.models.card.ModelCard`, the scene
datasets, a :class:`~drnet.engine.TrainConfig`, the task's settings and
:class:`~drnet.tasks.common.InferenceOptions`), calls the same task functions as the command line
(the ``evaluate`` entry points of ``drnet classify eval``, ``drnet localize eval`` and ``drnet
segment eval``; the engine's trainings of ``classify train`` and ``segment train``) and keeps what
``metrics.json`` and the report need: train a classifier and score it, localize with it,
train a segmenter and score it, collect activation maps and gridding scores.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from drnet.analysis import collect_activations, gridding_scores
from drnet.data.classification import full_image_transform, load_rgb
from drnet.data.fashion_mnist import CLASS_NAMES
from drnet.demo.budget import Plan, use_channels_last
from drnet.demo.config import DemoConfig, fmt_s, say
from drnet.demo.data import SceneData, single_thread
from drnet.demo.recipes import Recipe
from drnet.engine import TrainConfig
from drnet.engine.precision import amp_dtype
from drnet.metrics import segmentation_metrics, wilson_interval
from drnet.models.card import ModelCard
from drnet.models.loading import load_model
from drnet.tasks import classify, localize, segment
from drnet.tasks.boxes import BOX_RESOLUTIONS, iou
from drnet.tasks.classify import write_classification_report
from drnet.tasks.common import InferenceOptions
from drnet.tasks.localize import LocalizationSettings, class_heatmap, localize_image, render_overlay
from drnet.timing import Stopwatch


def train_run(train, card: ModelCard, data: tuple, train_config: TrainConfig, settings) -> dict:
    """Train through a task's ``train`` entry point (:func:`drnet.tasks.classify.train` or
    :func:`drnet.tasks.segment.train`, as ``drnet classify train`` and ``drnet segment train``
    do) on the ``(train, val)`` datasets; the engine stops by itself at
    ``train_config.time_limit`` (the budget's safety net), keeping the weights so far."""
    options = InferenceOptions(
        device=train_config.device,
        amp=train_config.amp,
        workers=train_config.workers,
        progress=train_config.progress,
    )
    with Stopwatch() as watch:
        summary = train(None, card, data, options, settings).summary
    if summary["stopped_early"]:
        say(
            f"note: training stopped at its time limit ({fmt_s(train_config.time_limit)}); "
            "using the weights so far"
        )
    return {
        "stopped_early": summary["stopped_early"],
        "history": summary["history"],
        "images_seen": summary["samples_seen"],
        # with --model-ema the average is the model the demo evaluates (and builds on)
        "checkpoint": Path(summary.get("checkpoint_ema") or summary["checkpoint_last"]),
        "run_dir": Path(summary["output_dir"]),
        "seconds": watch.seconds,
    }


def use_amp(config: DemoConfig, device: torch.device) -> bool:
    """Mixed precision for training: unless ``--dtype float32``, where the device has a fast
    low-precision dtype (bf16 on CPUs with native bf16; bf16/fp16 on CUDA)."""
    return config.dtype != "float32" and amp_dtype(device) is not None


def training_config(
    recipe: Recipe,
    model_name: str,
    kind: str,
    out: Path,
    config: DemoConfig,
    device: torch.device,
    time_limit: float | None,
) -> TrainConfig:
    cls = kind == "classification"
    ema = recipe.cls_ema_decay if cls else recipe.seg_ema_decay
    return TrainConfig(
        output_dir=str(out),
        epochs=recipe.cls_epochs if cls else recipe.seg_epochs,
        batch_size=recipe.cls_batch if cls else recipe.seg_batch,
        lr=recipe.cls_lr if cls else recipe.seg_lr,
        lr_mode=recipe.cls_lr_mode if cls else recipe.seg_lr_mode,
        weight_decay=recipe.cls_weight_decay if cls else recipe.seg_weight_decay,
        opt=recipe.cls_opt if cls else recipe.seg_opt,
        lr_warmup_epochs=recipe.cls_warmup_epochs if cls else recipe.seg_warmup_epochs,
        label_smoothing=recipe.cls_label_smoothing if cls else recipe.seg_label_smoothing,
        model_ema=ema > 0,
        model_ema_decay=ema or 0.999,
        mixup_alpha=recipe.cls_mixup_alpha if cls else 0.0,
        cutmix_alpha=recipe.cls_cutmix_alpha if cls else 0.0,
        momentum=0.9,
        workers=config.workers,
        device=str(device),
        amp=use_amp(config, device),
        seed=config.seed,
        progress=config.progress,
        handle_signals=True,
        # measured by the engine (and cached per machine) where the recipe allows it
        channels_last="auto" if use_channels_last(recipe, model_name) else False,
        time_limit=time_limit,
        overwrite=True,  # each demo replaces the previous demo's models
    )


def train_demo_classifier(
    model_name: str,
    recipe: Recipe,
    data: SceneData,
    plan: Plan,
    out: Path,
    config: DemoConfig,
    device: torch.device,
    time_limit: float | None,
) -> dict:
    """Train one classifier on the demo's scenes with the library task
    (:func:`drnet.tasks.classify.train`); returns the run's record."""
    card = ModelCard(
        model=model_name,
        num_classes=10,
        class_names=list(data.cls_val.scenes.classes),
        channels=list(recipe.model_channels(model_name)),
        mean=list(data.cls_mean),
        std=list(data.cls_std),
        crop_size=recipe.cls_canvas,
        resize_size=recipe.cls_canvas,
    )
    train_set = data.cls_train(recipe, plan.cls_per_epoch, config.seed)
    monitor = Subset(data.cls_val, range(min(recipe.cls_monitor, recipe.cls_val)))
    train_config = training_config(
        recipe, model_name, "classification", out, config, device, time_limit
    )
    settings = classify.ClassificationTrainSettings(config=train_config, eval_batch_size=64)
    record = train_run(classify.train, card, (train_set, monitor), train_config, settings)
    return {**record, "card": card}


def evaluate_classification(
    run: dict,
    data: SceneData,
    out: Path,
    device: torch.device,
    progress: bool,
    dtype: str | None = None,
) -> tuple[nn.Module, dict]:
    """Top-1/top-5, per-class accuracy and the confusion matrix on the val scenes on disk,
    through the same functions as ``drnet classify eval`` (the inference fast path included)."""
    model, card = load_model(run["checkpoint"], task="classification")
    options = InferenceOptions(device=str(device), dtype=dtype, progress=progress)
    # the defaults of ``drnet classify eval`` (batch 32): the batch size moves the loss in its
    # last digits, and the demo's metrics.json is the command's, whole
    settings = classify.ClassificationSettings()
    evaluation = classify.evaluate(model, card, data.loc_dir / "val", options, settings)
    metrics = write_classification_report(evaluation.result, out)  # metrics.json's, with files
    metrics["samples"] = _classification_samples(model.to(device), card, data, device)
    return model, metrics


@torch.no_grad()
def _classification_samples(model: nn.Module, card: ModelCard, data: SceneData, device) -> list:
    """The report's sample predictions: the first two val scenes of each class."""
    images = torch.stack([data.cls_val[i][0] for i in range(20)])
    probabilities = model.eval()(images.to(device)).float().softmax(1).cpu()
    samples = []
    for i in range(20):
        p, c = probabilities[i].max(0)
        truth = data.cls_val[i][1]
        samples.append(
            {
                "index": i,
                "true": card.class_names[truth],
                "predicted": card.class_names[int(c)],
                "probability": round(float(p), 4),
                "correct": int(c) == truth,
            }
        )
    return samples


def evaluate_localization_stage(
    model: nn.Module,
    card,
    data: SceneData,
    out: Path,
    device: torch.device,
    progress: bool,
    dtype: str | None = None,
) -> dict:
    """The paper's protocol on the val scenes, threshold chosen on the holdout scenes, through
    the same function as ``drnet localize eval``."""
    with single_thread():
        metrics = _evaluate_localization(model, card, data, out, device, progress, dtype=dtype)
        metrics["examples"] = localization_examples(
            model, card, data, out, metrics["threshold"], device
        )
        # both box resolutions on the same model: the default one above, the other beside it
        metrics["by_box_resolution"] = {metrics["box_resolution"]: _resolution_summary(metrics)}
        for resolution in BOX_RESOLUTIONS:
            if resolution != metrics["box_resolution"]:
                other = _evaluate_localization(
                    model, card, data, out / resolution, device, progress, resolution, dtype
                )
                metrics["by_box_resolution"][resolution] = _resolution_summary(other)
    n = metrics["num_images_scored"]
    hits = round((1 - metrics["top1_loc_err"]) * n)
    metrics["top1_accuracy_ci95"] = wilson_interval(hits, n)
    prior = metrics["centred_box_prior"]
    metrics["top1_accuracy"] = 1 - metrics["top1_loc_err"]
    metrics["top1_error"] = metrics["top1_loc_err"]
    metrics["top5_error"] = metrics["top5_loc_err"]
    metrics["gt_known_error"] = metrics["gt_known_loc_err"]
    prior["top1_accuracy"] = 1 - prior["top1_loc_err"]
    prior["gt_known_accuracy"] = 1 - prior["gt_known_loc_err"]
    return metrics


def _resolution_summary(metrics: dict) -> dict:
    """What the report shows per box resolution: accuracies on val and held-out, t, offset."""
    held_out = min(metrics["held_out_curve"] or [], key=lambda r: r["top1_loc_err"], default=None)
    return {
        "top1_accuracy": 1 - metrics["top1_loc_err"],
        "threshold": metrics["threshold"],
        "held_out_top1_accuracy": None if held_out is None else 1 - held_out["top1_loc_err"],
        "box_centre_offset": metrics.get("box_centre_offset"),
    }


@torch.no_grad()
def localization_examples(
    model: nn.Module, card, data: SceneData, out: Path, threshold: float, device, count: int = 20
) -> list[dict]:
    """Heatmap-and-box pictures of the first ``count`` val scenes (two per class), drawn at
    twice the scene size with the localization library's overlay; returns their captions."""
    transform = full_image_transform(card.resize_size, card.mean, card.std)
    settings = LocalizationSettings(top_k=1)
    names = card.names()
    examples = []
    (out / "examples").mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(data.cls_val))):
        name = CLASS_NAMES[i % len(CLASS_NAMES)]  # scene i shows class i % 10
        image = load_rgb(data.loc_dir / "val" / name / f"{i:06d}.png")
        size = (image.height, image.width)
        target = names.index(name)
        result = localize_image(
            model, transform(image).to(device), size, [threshold], settings, extra_class=target
        )
        predicted = int(result.classes[0])
        box = result.boxes[0, 0]
        gt = torch.tensor(data.cls_val.scenes.render(i).placements[0].box, dtype=torch.float32)
        overlap = float(iou(box[None], gt[None])[0, 0])
        heat = class_heatmap(result, predicted)
        big = F.interpolate(heat[None, None], scale_factor=2, mode="bilinear")[0, 0]
        picture = render_overlay(image.resize((2 * size[1], 2 * size[0])), big, 2 * box, 2 * gt)
        path = out / "examples" / f"{i:06d}.png"
        picture.save(path)
        examples.append(
            {
                "image": f"val/{name}/{i:06d}.png",
                "picture": str(path.relative_to(out)),
                "true": name,
                "predicted": names[predicted],
                "probability": round(float(result.probabilities[0]), 4),
                "iou": round(overlap, 4),
                "correct": predicted == target and overlap > settings.iou_threshold,
            }
        )
    return examples


def _evaluate_localization(
    model,
    card,
    data: SceneData,
    out: Path,
    device,
    progress,
    resolution: str | None = None,
    dtype: str | None = None,
) -> dict:
    scenes = localize.LocalizationData(
        data.loc_dir / "val",
        data.loc_dir / "boxes_val.csv",
        val_images=data.loc_dir / "holdout",
        val_boxes=data.loc_dir / "boxes_holdout.csv",
    )
    settings = LocalizationSettings(
        **({"box_resolution": resolution} if resolution else {}),
        threshold="auto",  # chosen on the holdout scenes
        save_images=0,  # the report draws its own examples (two per class)
        output_dir=out,
    )
    options = InferenceOptions(device=str(device), dtype=dtype, progress=progress)
    evaluation = localize.evaluate(model, card, scenes, options, settings)
    evaluation.write(out)
    return evaluation.metrics


def train_segmenter(
    model_name: str,
    recipe: Recipe,
    data: SceneData,
    plan: Plan,
    out: Path,
    config: DemoConfig,
    device: torch.device,
    time_limit: float | None,
    backbone: Path | None,
) -> dict:
    """Train one segmenter with the library task (backbone from the classifier's checkpoint)."""
    card = ModelCard(
        model=model_name,
        num_classes=data.seg_val.num_classes,
        task="segmentation",
        class_names=list(data.seg_val.class_names),
        channels=list(recipe.model_channels(model_name)),
        mean=list(data.seg_mean),
        std=list(data.seg_std),
        crop_size=None,
        resize_size=None,
    )
    train_set = data.seg_train(recipe, plan.seg_per_epoch, config.seed)
    monitor = Subset(data.seg_val, range(min(recipe.seg_monitor, recipe.seg_val)))
    train_config = training_config(
        recipe, model_name, "segmentation", out, config, device, time_limit
    )
    settings = segment.SegmentationTrainSettings(
        config=train_config, backbone_weights=None if backbone is None else str(backbone)
    )
    with warnings.catch_warnings():  # the classifier's fc is dropped on purpose
        warnings.simplefilter("ignore")
        return train_run(segment.train, card, (train_set, monitor), train_config, settings)


def background_baseline(confusion: torch.Tensor) -> dict:
    """mIoU and pixel accuracy of predicting background (class 0) everywhere, on the same
    pixels as ``confusion`` (rows = ground truth)."""
    hist = torch.zeros_like(confusion)
    hist[:, 0] = confusion.sum(1)
    metrics = segmentation_metrics(hist)
    return {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"]}


def evaluate_segmentation_stage(
    run: dict,
    data: SceneData,
    out: Path,
    device: torch.device,
    progress: bool,
    examples: int = 6,
    dtype: str | None = None,
) -> dict:
    """mIoU, per-class IoU, pixel accuracy on the val scenes on disk through the same function as
    ``drnet segment eval`` (``out/metrics.json``), the all-background baseline, and a few
    predictions (arrays kept for the report)."""
    options = InferenceOptions(device=str(device), dtype=dtype, progress=progress)
    settings = segment.SegmentationSettings(scales=(1.0,), output_dir=out)
    with single_thread():
        network, card = load_model(run["checkpoint"], task="segmentation")
        evaluation = segment.evaluate(
            network, card, segment.SegmentationData(data.seg_dir, "val"), options, settings
        )
        evaluation.metrics["weights"] = str(run["checkpoint"])
        evaluation.write(out)
    metrics = evaluation.metrics
    confusion = torch.tensor(metrics["confusion_matrix"])
    names = list(data.seg_val.class_names)
    baseline = background_baseline(confusion)
    result = {
        "miou": metrics["miou"],
        "miou_ci95": metrics["miou_ci95"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "mean_accuracy": metrics["mean_accuracy"],
        "background_baseline_miou": baseline["miou"],
        "background_baseline_pixel_accuracy": baseline["pixel_accuracy"],
        "per_class_iou": {
            n: (None if math.isnan(v) else v) for n, v in zip(names, metrics["iou"], strict=True)
        },
        "class_names": names,
        "confusion_matrix": metrics["confusion_matrix"],
        "num_images": metrics["num_images"],
    }
    model, _ = load_model(run["checkpoint"], task="segmentation")
    model.to(device)
    samples = []
    with torch.no_grad():
        for i in range(min(examples, len(data.seg_val))):
            scene = data.seg_val.scenes.render(i)
            image, _ = data.seg_val[i]
            pred = model(image[None].to(device))["out"].argmax(1)[0].cpu().numpy()
            samples.append(
                {"image": scene.image, "label": scene.mask, "pred": pred.astype(np.uint8)}
            )
    return {**result, "_samples": samples}


# ----------------------------------------------------------------------------------- activations


def activation_analysis(
    model: nn.Module, data: SceneData, count: int, device: torch.device
) -> tuple[dict, dict]:
    """Per-level activations on ``count`` probe scenes (val items on a canvas twice the
    training one) and their gridding scores.

    Returns ``(scores, activations of the first scene)``; a level whose maps are smaller than
    8x8 has ``score`` None (:func:`drnet.analysis.gridding_scores`).
    """
    model.eval()
    images = torch.stack([data.activation_probe[i][0] for i in range(count)]).to(device)
    acts = collect_activations(model, images)
    scores = gridding_scores(acts)
    first = {name: a[:1].cpu() for name, a in acts.items()}
    return scores, first


def run_record(run: dict, images: int, images_per_s: float) -> dict:
    """What ``metrics.json`` keeps of a training run."""
    return {
        "images_seen": run["images_seen"],
        "images_planned": images,
        "epochs": len(run["history"]),
        "stopped_early": run["stopped_early"],
        "training_seconds": round(run["seconds"], 2),
        "images_per_s": round(run["images_seen"] / max(run["seconds"], 1e-9), 1),
        "history": run["history"],
        "probed_images_per_s": round(images_per_s, 1),
    }
