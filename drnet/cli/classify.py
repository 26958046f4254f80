"""``drnet classify train|eval|predict``: image classification on ImageFolder trees."""

from __future__ import annotations

import argparse
from pathlib import Path

from drnet.cli import non_negative_int, positive_int
from drnet.cli.engine_args import add_engine_arguments, train_config
from drnet.errors import DrnetError

DATA_LAYOUT = "ImageFolder layout: <split>/<class_name>/<image>, classes = sorted folder names"


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected integers like 16,32,64: {text!r}") from exc


def add_model_arguments(
    parser: argparse.ArgumentParser, training: bool = False, sizes: bool = True
) -> None:
    """``--model``, ``--weights``, ``--pretrained``, ``--channels``, ``--classes`` and (with
    ``sizes``) ``--crop-size`` / ``--resize-size``."""
    group = parser.add_argument_group("model")
    if training:
        group.add_argument("--model", default="drn_d_22", help="architecture (drnet models)")
        group.add_argument(
            "--weights",
            help="initialise from this checkpoint (a classifier with another number of classes "
            "keeps its backbone and gets a fresh fc)",
        )
    else:
        group.add_argument(
            "--weights",
            help="checkpoint file, or a 'drnet classify train' run directory (its model.json "
            "gives the architecture, classes and preprocessing)",
        )
        group.add_argument("--model", help="architecture, when --weights has no model.json")
        group.add_argument(
            "--classes", help="class names, one per line (or a JSON list), in index order"
        )
    group.add_argument(
        "--pretrained", action="store_true", help="start from the published ImageNet weights"
    )
    group.add_argument(
        "--channels",
        type=_int_list,
        help="per-level widths, e.g. 8,16,32,64,128,128,128,128 for a tiny DRN-C/D",
    )
    if not sizes:
        return
    group.add_argument(
        "--crop-size",
        type=positive_int,
        default=224 if training else None,
        help="network input size: RandomResizedCrop in training, centre crop in eval "
        "(default 224, or the run's model.json)",
    )
    if training:
        group.add_argument(
            "--crop-scale",
            type=float,
            default=0.08,
            help="smallest RandomResizedCrop area as a fraction of the image (0.08, the "
            "ImageNet recipe; raise it for small objects on small images)",
        )
    group.add_argument(
        "--resize-size",
        type=positive_int,
        help="eval resize of the shorter side before the centre crop (default crop/0.875, "
        "256 for 224)",
    )


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
    train.add_argument("data", nargs="?", help="dataset root holding train/ and val/")
    train.add_argument("--train-dir", help="training split (default DATA/train)")
    train.add_argument(
        "--val-dir", help="validation split (default DATA/val when it exists; none otherwise)"
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
    train.set_defaults(func=run_train)

    evaluate = commands.add_parser(
        "eval",
        help="top-1/top-5, per-class accuracy, confusion matrix",
        description="Evaluate a classifier on one split (resize + centre crop). Writes "
        "classification_metrics.json (top1, top5, loss, per_class_accuracy, "
        "mean_class_accuracy, confusion_matrix), per_class_accuracy.csv, confusion_matrix.csv "
        "and, for up to 30 classes, confusion_matrix.png.",
    )
    evaluate.add_argument("split", help=f"split folder ({DATA_LAYOUT})")
    add_model_arguments(evaluate)
    evaluate.add_argument("--output-dir", default="runs/classify-eval")
    evaluate.add_argument("--batch-size", type=positive_int, default=32)
    evaluate.add_argument("--workers", type=non_negative_int, default=2)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--amp", action="store_true", help="mixed precision on GPU")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.add_argument(
        "--no-fast",
        action="store_true",
        help="plain eager model instead of the inference fast path (BN folding, fused convs)",
    )
    evaluate.set_defaults(func=run_eval)

    predict = commands.add_parser(
        "predict",
        help="top-k classes with probabilities for images or folders",
        description="Predict the top-k classes of image files or folders (searched "
        "recursively). Writes predictions.json and predictions.csv.",
    )
    predict.add_argument("inputs", nargs="+", help="image files and/or folders")
    add_model_arguments(predict)
    predict.add_argument("--top-k", type=positive_int, default=5)
    predict.add_argument("--output-dir", default="runs/classify-predict")
    predict.add_argument("--batch-size", type=positive_int, default=16)
    predict.add_argument("--workers", type=non_negative_int, default=0)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--no-progress", action="store_true")
    predict.add_argument(
        "--no-fast",
        action="store_true",
        help="plain eager model instead of the inference fast path (BN folding, fused convs)",
    )
    predict.set_defaults(func=run_predict)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def load_model_from_args(args: argparse.Namespace):
    """The classifier and its card from ``--weights/--model/--pretrained/--channels/--classes``
    and the size overrides."""
    from drnet.tasks.classify import default_resize_size, load_classifier, read_class_names

    if not args.weights and not args.pretrained:
        raise DrnetError("pass --weights CHECKPOINT_OR_RUN_DIR (or --model NAME --pretrained)")
    classes = read_class_names(args.classes) if getattr(args, "classes", None) else None
    model, card = load_classifier(
        args.model,
        args.weights,
        pretrained=args.pretrained,
        channels=args.channels,
        classes=classes,
    )
    if getattr(args, "crop_size", None):
        card.crop_size = args.crop_size
        card.resize_size = default_resize_size(args.crop_size)
    if getattr(args, "resize_size", None):
        card.resize_size = args.resize_size
    if hasattr(args, "no_fast"):
        from drnet.engine.distributed import resolve_device
        from drnet.speed.inference import fast_inference

        model = fast_inference(model.to(resolve_device(args.device)), enabled=not args.no_fast)
    return model, card


def run_train(args: argparse.Namespace) -> int:
    from drnet.tasks.classify import ClassificationTask, train_classifier

    if not args.data and not args.train_dir:
        raise DrnetError("give the dataset root DATA (with train/ and val/) or --train-dir")
    train_dir = Path(args.train_dir or Path(args.data) / "train")
    val_dir = args.val_dir
    if val_dir is None and args.data and (Path(args.data) / "val").is_dir():
        val_dir = Path(args.data) / "val"
    task = ClassificationTask(
        args.model,
        train_dir,
        val_dir,
        pretrained=args.pretrained,
        weights=args.weights,
        channels=args.channels,
        crop_size=args.crop_size,
        resize_size=args.resize_size,
        min_scale=args.crop_scale,
    )
    summary = train_classifier(task, train_config(args))
    best = summary.get("best_metric")
    shown = f"best top-1 {best:.4f} (epoch {summary['best_epoch']})" if best is not None else ""
    print(f"trained {args.model} for {summary['epochs']} epochs {shown}".rstrip())
    print(f"run directory: {summary['output_dir']}")
    if summary.get("skipped_samples"):
        print(f"skipped {summary['skipped_samples']} bad sample(s) (--skip-bad-samples)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from drnet.data.classification import eval_transform, image_folder
    from drnet.tasks.classify import (
        evaluate_classifier,
        match_split_classes,
        write_classification_report,
    )

    model, card = load_model_from_args(args)
    transform = eval_transform(card.crop_size, card.resize_size, card.mean, card.std)
    dataset = image_folder(args.split, transform)
    to_model = match_split_classes(dataset.classes, card, args.split)
    dataset.target_transform = to_model.__getitem__
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    result = evaluate_classifier(
        model,
        loader,
        card.class_names(),
        args.device,
        amp=args.amp,
        progress=not args.no_progress,
    )
    metrics = write_classification_report(result, args.output_dir)
    print(
        f"top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
        f"({metrics['num_images']} images, {metrics['num_classes']} classes)"
    )
    print(f"wrote {Path(args.output_dir) / metrics['files']['metrics']}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from drnet.data.classification import list_images
    from drnet.tasks.classify import predict_classes, write_predictions

    model, card = load_model_from_args(args)
    paths = list_images(args.inputs)
    predictions = predict_classes(
        model,
        paths,
        card.class_names(),
        crop_size=card.crop_size,
        resize_size=card.resize_size,
        mean=card.mean,
        std=card.std,
        top_k=args.top_k,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    files = write_predictions(predictions, args.output_dir)
    for item in predictions[:10]:
        best = item["top_k"][0]
        print(f"{item['image']}: {best['class']} ({best['probability']:.3f})")
    if len(predictions) > 10:
        print(f"... {len(predictions) - 10} more")
    print(f"wrote {files['json']} and {files['csv']}")
    return 0
