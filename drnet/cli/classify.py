"""``drnet classify train|eval|predict``: image classification on ImageFolder trees."""

from __future__ import annotations

import argparse

from drnet.cli import BAD_INPUTS_HELP, best_epoch_text, ensure_writable, positive_int, print_skips
from drnet.cli.engine_args import add_engine_arguments, train_config
from drnet.cli.vocab import (
    add_classifier_model,
    add_data,
    add_predict_overwrite,
    add_running,
    finish,
    group,
    image_inputs,
    inference_options,
    load_from_args,
    predict_output,
)
from drnet.constants import AUTO_AUGMENT_POLICIES

DATA_LAYOUT = "ImageFolder layout: <split>/<class_name>/<image>, classes = sorted folder names"


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
    add_classifier_model(train, training=True)
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
    add_classifier_model(evaluate)
    group(evaluate, "inference").add_argument(
        "--ten-crop",
        action="store_true",
        help="ten-crop testing as in the DRN paper's Table 1 (Yu, Koltun, Funkhouser, CVPR 2017): "
        "after the resize, the four corner crops, the centre crop and their horizontal flips; "
        "their softmax scores are averaged (10x the compute; --batch-size counts images)",
    )
    add_running(evaluate, "runs/classify-eval", batch_size=32, workers=2)
    evaluate.set_defaults(func=run_eval)

    predict = commands.add_parser(
        "predict",
        help="top-k classes with probabilities for images or folders",
        description="Predict the top-k classes of image files or folders (searched "
        "recursively). Writes predictions.json and predictions.csv. " + BAD_INPUTS_HELP,
    )
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_classifier_model(predict)
    predict.add_argument("--top-k", type=positive_int, default=5, help="classes per image")
    add_running(predict, "runs/classify-predict", 16, workers=0, amp=False)
    add_predict_overwrite(predict)
    predict.set_defaults(func=run_predict)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_train(args: argparse.Namespace) -> int:
    from drnet.tasks.classify import ClassificationData, ClassificationTrainSettings, train

    settings = ClassificationTrainSettings(
        config=train_config(args), model=args.model, channels=args.channels,
        crop_size=args.crop_size, resize_size=args.resize_size, crop_scale=args.crop_scale,
        auto_augment=args.auto_augment, pretrained=args.pretrained, weights=args.weights,
    )  # fmt: skip
    data = ClassificationData(args.data_dir, args.train_dir, args.val_dir)
    summary = train(None, None, data, inference_options(args), settings).summary
    best = summary.get("best_metric")
    shown = f"best top-1 {best:.4f} ({best_epoch_text(summary)})" if best is not None else ""
    print(f"trained {args.model} for {summary['epochs']} epochs {shown}".rstrip())
    print(f"run directory: {summary['output_dir']}")
    print_skips(summary)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from drnet.tasks.classify import ClassificationSettings, evaluate

    settings = ClassificationSettings(batch_size=args.batch_size, ten_crop=args.ten_crop)
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "classification")
    result = evaluate(model, card, args.data_dir, inference_options(args), settings)
    return finish(result, args.output_dir, result.write(args.output_dir)["metrics"])


def run_predict(args: argparse.Namespace) -> int:
    from drnet.tasks.classify import ClassificationSettings, predict

    settings = ClassificationSettings(batch_size=args.batch_size, top_k=args.top_k)
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "classification")
    paths = image_inputs(args.inputs)
    with predict_output(args, "classify predict", paths):
        result = predict(model, card, paths, inference_options(args), settings)
        files = result.write(args.output_dir)
    return finish(result, args.output_dir, f"{files['json']} and {files['csv']}")
