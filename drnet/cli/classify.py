"""``drnet classify train|eval|predict``: image classification on ImageFolder trees."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from drnet.cli import (
    BAD_INPUTS_HELP,
    best_epoch_text,
    ensure_writable,
    float_in,
    int_in,
    positive_int,
    print_skips,
    report_failures,
)
from drnet.cli.engine_args import add_engine_arguments, train_config
from drnet.cli.vocab import (
    Parser,
    add_batch_size,
    add_channels,
    add_class_names,
    add_data,
    add_device,
    add_dtype,
    add_max_pixels,
    add_model,
    add_no_fast,
    add_no_progress,
    add_num_classes,
    add_output_dir,
    add_predict_overwrite,
    add_pretrained,
    add_weights,
    add_workers,
    group,
    load_from_args,
)
from drnet.constants import AUTO_AUGMENT_POLICIES

log = logging.getLogger(__name__)


#: Network input sides: 16 px is the smallest a DRN (output stride 8) still maps to a 2x2 grid;
#: past 8192 px one image would not fit an accelerator.
CROP_RANGE = (16, 8192)

DATA_LAYOUT = "ImageFolder layout: <split>/<class_name>/<image>, classes = sorted folder names"


def add_model_arguments(
    parser: Parser, training: bool = False, sizes: bool = True, inference: bool = True
) -> None:
    """``--model``, ``--weights``, ``--pretrained``, ``--channels``; for eval/predict also
    ``--num-classes`` and ``--class-names``; with ``sizes`` ``--crop-size`` / ``--resize-size``."""
    g = group(parser, "model")
    if training:
        add_model(g, "drn_d_22")
        add_weights(
            g,
            "initialise from this checkpoint (a classifier with another number of classes "
            "keeps its backbone and gets a fresh fc)",
        )
    else:
        add_weights(
            g,
            "a 'drnet classify train' run directory (its model.json gives the architecture, "
            "classes and preprocessing), a drnet checkpoint or an official .pth",
        )
        add_model(g, help="architecture name, when --weights has no model.json")
        add_num_classes(g, "classes of the model (default: model.json or the checkpoint's fc)")
        add_class_names(g)
    add_pretrained(g, "start from the published ImageNet weights")
    add_channels(g)
    if not sizes:
        return
    g.add_argument(
        "--crop-size",
        type=int_in(*CROP_RANGE),
        default=224 if training else None,
        help="network input size: RandomResizedCrop in training, centre crop in eval"
        + ("" if training else " (default: the run's model.json, else 224)"),
    )
    if training:
        g.add_argument(
            "--crop-scale",
            type=float_in(0, 1, low_open=True),
            default=0.08,
            help="smallest RandomResizedCrop area as a fraction of the image (0.08 is the "
            "ImageNet recipe; raise it for small objects on small images)",
        )
    g.add_argument(
        "--resize-size",
        type=int_in(*CROP_RANGE),
        help="eval resize of the shorter side before the centre crop (default: crop/0.875, "
        "256 for 224)",
    )


def add_inference_arguments(
    parser: Parser, output_dir: str, batch_size: int | None, workers: int, amp: bool = True
) -> None:
    """What every eval/predict command of an image classifier takes: output, batch, workers,
    device, AMP, progress and the fast path."""
    g = group(parser, "running")
    add_output_dir(g, output_dir)
    if batch_size is not None:
        add_batch_size(g, batch_size)
    add_workers(g, workers)
    add_device(g)
    add_max_pixels(g)
    if amp:
        g.add_argument("--amp", action="store_true", help="mixed precision on GPU")
    add_no_progress(g)
    add_no_fast(g)
    add_dtype(g)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="image classification: train, evaluate (top-1/top-5), predict",
        description=f"Image classification on ImageFolder trees ({DATA_LAYOUT}).",
    )
    commands = parser.add_subparsers(dest="classify_command", metavar="ACTION")

    train = commands.add_parser(
        "train",
        help="train a classifier with the shared engine",
        description="Train on DATA/train, validate on DATA/val each epoch (top-1 selects "
        "checkpoint_best.pth). Augmentation: RandomResizedCrop + horizontal flip; eval: resize + "
        "centre crop; SGD with step (default) or cosine LR. Writes model.json, config.json, "
        "log.csv, checkpoint_last.pth and checkpoint_best.pth into --output-dir. Multi-GPU: "
        "torchrun --nproc-per-node N -m drnet classify train ...",
    )
    add_data(train, "dataset root holding train/ and val/", required=False)
    train.add_argument("--train-dir", help="training split (default: DATA/train)")
    train.add_argument(
        "--val-dir", help="validation split (default: DATA/val when it exists; none otherwise)"
    )
    add_model_arguments(train, training=True)
    add_engine_arguments(
        train,
        output_dir="runs/classify",
        epochs=90,
        batch_size=256,
        lr=0.1,
        lr_mode="step",
        lr_step=30,
    )
    train.add_argument(
        "--auto-augment",
        choices=AUTO_AUGMENT_POLICIES,
        help="automatic augmentation after the crop and flip, as torchvision's reference "
        "names it: ta_wide (TrivialAugmentWide), ra (RandAugment), augmix, or an AutoAugment "
        "policy (imagenet, cifar10, svhn); default none",
    )
    train.set_defaults(func=run_train)

    evaluate = commands.add_parser(
        "eval",
        help="top-1/top-5, per-class accuracy, confusion matrix",
        description="Evaluate a classifier on one split (resize + centre crop, or ten crops "
        "with --ten-crop). Writes classification_metrics.json (top1, top5, loss, "
        "per_class_accuracy, mean_class_accuracy, confusion_matrix, ten_crop), "
        "per_class_accuracy.csv, confusion_matrix.csv and, for up to 30 classes, "
        "confusion_matrix.png.",
    )
    add_data(evaluate, f"the split to evaluate ({DATA_LAYOUT})")
    add_model_arguments(evaluate)
    group(evaluate, "inference").add_argument(
        "--ten-crop",
        action="store_true",
        help="ten-crop testing as in the DRN paper's Table 1 (Yu, Koltun, Funkhouser, CVPR 2017): "
        "after the resize, the four corner crops, the centre crop and their horizontal flips; "
        "their softmax scores are averaged (10x the compute; --batch-size counts images)",
    )
    add_inference_arguments(evaluate, "runs/classify-eval", batch_size=32, workers=2)
    evaluate.set_defaults(func=run_eval)

    predict = commands.add_parser(
        "predict",
        help="top-k classes with probabilities for images or folders",
        description="Predict the top-k classes of image files or folders (searched "
        "recursively). Writes predictions.json and predictions.csv. " + BAD_INPUTS_HELP,
    )
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_model_arguments(predict)
    predict.add_argument("--top-k", type=positive_int, default=5, help="classes per image")
    add_inference_arguments(predict, "runs/classify-predict", 16, workers=0, amp=False)
    add_predict_overwrite(predict)
    predict.set_defaults(func=run_predict)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_train(args: argparse.Namespace) -> int:
    from drnet.tasks.classify import ClassificationTask, resolve_splits, train_classifier

    train_dir, val_dir = resolve_splits(args.data_dir, args.train_dir, args.val_dir)
    task = ClassificationTask.from_dirs(
        args.model,
        train_dir,
        val_dir,
        pretrained=args.pretrained,
        weights=args.weights,
        channels=args.channels,
        crop_size=args.crop_size,
        resize_size=args.resize_size,
        min_scale=args.crop_scale,
        auto_augment=args.auto_augment,
    )
    if task.card.num_classes == 1:
        log.warning(
            "%s has a single class folder: every image is that class, so the model learns "
            "nothing useful (accuracy is 100%% by construction)",
            train_dir,
        )
    summary = train_classifier(task, train_config(args))
    best = summary.get("best_metric")
    shown = f"best top-1 {best:.4f} ({best_epoch_text(summary)})" if best is not None else ""
    print(f"trained {args.model} for {summary['epochs']} epochs {shown}".rstrip())
    print(f"run directory: {summary['output_dir']}")
    print_skips(summary)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from drnet.tasks.classify import (
        evaluate_classifier,
        folder_dataset,
        write_classification_report,
    )

    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "classification")
    result = evaluate_classifier(
        model,
        folder_dataset(args.data_dir, card, ten_crop=args.ten_crop),
        card.names(),
        args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        fast=not args.no_fast,
        dtype=args.dtype,
        progress=not args.no_progress,
        ten_crop=args.ten_crop,
    )
    metrics = write_classification_report(result, args.output_dir)
    print(
        f"top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
        f"({metrics['num_images']} images, {metrics['num_classes']} classes"
        f"{', ten crops each' if args.ten_crop else ''})"
    )
    print(f"wrote {Path(args.output_dir) / metrics['files']['metrics']}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from drnet.data.classification import list_images
    from drnet.engine.predict_folder import predict_folder
    from drnet.tasks.classify import predict_classes, write_predictions

    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "classification")
    paths = list_images(args.inputs)
    failed: list[tuple[str, str]] = []
    with predict_folder(args.output_dir, "classify predict", paths, overwrite=args.overwrite):
        predictions = predict_classes(
            model,
            paths,
            card.names(),
            crop_size=card.crop_size,
            resize_size=card.resize_size,
            mean=card.mean,
            std=card.std,
            top_k=args.top_k,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            fast=not args.no_fast,
            dtype=args.dtype,
            progress=not args.no_progress,
            failed=failed,
        )
        files = write_predictions(predictions, args.output_dir)
    for item in predictions[:10]:
        best = item["top_k"][0]
        print(f"{item['image']}: {best['class']} ({best['probability']:.3f})")
    if len(predictions) > 10:
        print(f"... {len(predictions) - 10} more")
    print(f"wrote {files['json']} and {files['csv']}")
    return report_failures(failed, len(predictions), args.output_dir)
