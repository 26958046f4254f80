"""``drnet segment train|eval|predict``: semantic segmentation with DRNSeg.

Flags of the original ``segment.py`` keep working (``-d/--data-dir``, ``-l/--list-dir``,
``-j/--workers``, ``--lr-mode``, ``--ms`` as they are; ``--arch``, ``-c/--classes``, ``-s``,
``--step``, ``--wd``, ``--phase``, ``--pretrained PATH``, ``--save_path`` as hidden aliases of
``--model``, ``--num-classes``, ``--crop-size``, ``--lr-step``, ``--weight-decay``, ``--split``,
``--weights PATH``, ``--output-dir``).
"""

from __future__ import annotations

import argparse
import logging

from drnet.cli import (
    BAD_INPUTS_HELP,
    best_epoch_text,
    ensure_writable,
    float_in,
    int_in,
    list_of,
    print_skips,
)
from drnet.cli.engine_args import add_engine_arguments, train_config
from drnet.cli.vocab import (
    NAMES_HELP,
    Parser,
    add_batch_size,
    add_channels,
    add_data,
    add_inference_options,
    add_model,
    add_num_classes,
    add_output_dir,
    add_predict_overwrite,
    add_pretrained,
    add_weights,
    finish,
    group,
    hidden,
    inference_options,
    load_from_args,
    predict_output,
)
from drnet.constants import OVERLAY_MAX_SIDE
from drnet.errors import DrnetError

log = logging.getLogger(__name__)


LAYOUTS_HELP = (
    "dataset layouts: (1) list files: info.json (mean, std) + {split}_images.txt / "
    "{split}_labels.txt, paths relative to --data-dir; (2) Cityscapes: leftImg8bit/ + gtFine/ "
    "*_labelTrainIds.png (make them with 'drnet data cityscapes-prepare'); (3) folders: "
    "images/{split}/ + masks/{split}/ paired by file stem. Labels: single-channel class "
    "indices, 255 = ignore."
)


MAX_SCALE = 8.0
MAX_SIDE = 8192  # crops and windows: larger ones would not fit any accelerator
_scale = float_in(0.0, MAX_SCALE, low_open=True)
_scale_list = list_of(_scale)


def _random_scale(text: str) -> float | tuple[float, float]:
    values = _scale_list(text) if text.strip() not in ("0", "0.0") else (0.0,)
    if len(values) == 1:
        return values[0]
    if len(values) == 2 and values[0] <= values[1]:
        return values  # type: ignore[return-value]
    raise argparse.ArgumentTypeError(f"takes S or LOW,HIGH with LOW <= HIGH, got {text!r}")


def _add_data_arguments(p: Parser, required: bool = True, positional: bool = True) -> None:
    add_data(p, "dataset root", required=required, positional=positional)
    g = group(p, "data")
    g.add_argument("-l", "--list-dir", help="folder of the list files (default: DATA)")
    g.add_argument(
        "--layout",
        choices=("auto", "list", "cityscapes", "folder"),
        default="auto",
        help="dataset layout; auto detects it",
    )
    add_num_classes(g, "number of classes (default: info.json, 19 Cityscapes)", ("-c", "--classes"))


def _add_split(p: Parser, default: str | None, help: str) -> None:
    p.add_argument("--split", default=default, help=help)
    hidden(p, "--phase", dest="split")


def _add_model_arguments(p: Parser, training: bool) -> None:
    g = group(p, "model")
    add_model(
        g,
        "drn_d_22" if training else None,
        "backbone (`drnet models` lists them)"
        + ("" if training else "; read from drnet checkpoints"),
    )
    add_weights(
        g,
        "start from this checkpoint: a drnet run/checkpoint, the official DRNSeg .pth "
        "(e.g. drn_d_22_cityscapes.pth) or a classification checkpoint (backbone only)"
        if training
        else "a drnet run directory or checkpoint, or the official DRNSeg .pth (then give "
        "--model); required unless --pretrained",
    )
    add_pretrained(
        g,
        "the published Cityscapes DRNSeg weights of --model ($DRNET_WEIGHTS_DIR or download)",
        accepts_path=True,
    )
    add_channels(g)


def _add_inference_arguments(p: Parser, workers: int) -> argparse._ArgumentGroup:
    g = group(p, "inference")
    g.add_argument(
        "--ms",
        action="store_true",
        help="multi-scale: average over scales 0.5,0.75,1.0,1.25,1.5,1.75",
    )
    g.add_argument(
        "--scales",
        type=_scale_list,
        help=f"custom scales in (0, {MAX_SCALE:g}], e.g. 0.75,1.0,1.25",
    )
    g.add_argument("--flip", action="store_true", help="also average horizontally flipped input")
    g.add_argument(
        "--window",
        type=int_in(8, MAX_SIDE),
        help="sliding-window size for images larger than it (pixels); bounds the memory of "
        "large images",
    )
    g.add_argument(
        "--stride", type=int_in(1, MAX_SIDE), help="sliding-window stride (default: 2/3 window)"
    )
    return add_inference_options(p, workers)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="semantic segmentation: train, evaluate (mIoU), predict",
        description="Semantic segmentation with DRNSeg. " + LAYOUTS_HELP,
    )
    commands = parser.add_subparsers(dest="segment_command", metavar="ACTION")

    train = commands.add_parser(
        "train",
        help="train DRNSeg with the shared engine",
        description="Train on the train split and score whole val images each epoch (mIoU picks "
        "checkpoint_best.pth). Writes config.json, log.csv, checkpoint_last.pth, "
        "checkpoint_best.pth to --output-dir. Multi-GPU: torchrun --nproc-per-node N -m drnet "
        "segment train ... (--batch-size is the global batch). " + LAYOUTS_HELP,
    )
    _add_data_arguments(train)
    train.add_argument("--train-split", default="train", help="training split")
    train.add_argument("--val-split", default="val", help="validation split")
    train.add_argument("--no-val", action="store_true", help="no validation, no best model")
    _add_model_arguments(train, training=True)
    train.add_argument(
        "--pretrained-backbone",
        action="store_true",
        help="ImageNet weights for the backbone ($DRNET_WEIGHTS_DIR or download)",
    )
    train.add_argument("--backbone-weights", metavar="PATH", help="classification checkpoint")
    g = group(train, "augmentation")
    crop = int_in(8, MAX_SIDE, zero=True)
    g.add_argument(
        "--crop-size", type=crop, default=896, help=f"training crop, 8..{MAX_SIDE} (0: none)"
    )
    hidden(g, "-s", dest="crop_size", type=crop)
    g.add_argument(
        "--random-scale",
        type=_random_scale,
        default=0.0,
        help="S: scale by a random factor in [1/S, S] (paper: 2); or LOW,HIGH",
    )
    g.add_argument(
        "--random-rotate", type=float_in(0, 180), default=0.0, help="max degrees (paper: 10)"
    )
    g.add_argument("--no-flip", action="store_true", help="no horizontal flip")
    add_engine_arguments(
        train,
        output_dir="runs/segment",
        epochs=10,
        batch_size=8,
        lr=0.01,
        lr_mode="poly",
        lr_step=200,
        output_aliases=("--save_path",),
    )
    train.set_defaults(func=run_train)

    evaluate = commands.add_parser(
        "eval",
        aliases=["test"],
        help="mIoU, per-class IoU, pixel accuracy on a split",
        description="Evaluate whole images (optionally multi-scale/flip or sliding window) and "
        "write metrics.json (miou, pixel_accuracy, mean_accuracy, per_class, confusion_matrix); "
        "print the per-class table. " + LAYOUTS_HELP,
    )
    _add_data_arguments(evaluate)
    _add_split(evaluate, "val", "split to evaluate")
    _add_model_arguments(evaluate, training=False)
    running = _add_inference_arguments(evaluate, workers=2)
    add_batch_size(
        running,
        1,
        "images per forward pass: consecutive images of one size go through the network "
        "together (memory grows with N)",
    )
    add_output_dir(evaluate, "runs/segment-eval")
    evaluate.add_argument(
        "--save-predictions", action="store_true", help="also write label and colour PNGs"
    )
    evaluate.set_defaults(func=run_eval)

    predict = commands.add_parser(
        "predict",
        help="label, colour and overlay PNGs for images",
        description="Segment image files, folders (recursive) or list files (.txt, one path per "
        "line relative to the list), or a split of --data-dir (--phase). Writes labels/ (class "
        "indices), color/ (Cityscapes palette for 19 classes, generated otherwise) and overlay/ "
        f"(at most {OVERLAY_MAX_SIDE} px on its longer side). " + NAMES_HELP + " List files and "
        "--split keep their own names (with the same suffixes). " + BAD_INPUTS_HELP + " With "
        "--window, memory grows with the image width only (bands of rows); without it the "
        "whole image goes through the network at once.",
    )
    predict.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="image files, folders or .txt lists"
    )
    _add_data_arguments(predict, required=False, positional=False)
    _add_split(predict, None, "predict this split of --data-dir")
    _add_model_arguments(predict, training=False)
    _add_inference_arguments(predict, workers=0)
    add_output_dir(predict, "runs/segment-predict")
    predict.add_argument(
        "--save",
        type=lambda s: tuple(v for v in s.split(",") if v),
        default=("labels", "color", "overlay"),
        help="what to write: labels,color,overlay",
    )
    predict.add_argument("--alpha", type=float_in(0, 1), default=0.5, help="overlay opacity, 0..1")
    add_predict_overwrite(predict)
    predict.set_defaults(func=run_predict)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _settings(args: argparse.Namespace, **files: object):
    from drnet.tasks.segment import SegmentationSettings

    return SegmentationSettings(
        scales=args.scales, multi_scale=args.ms, flip=args.flip, window=args.window,
        stride=args.stride, output_dir=args.output_dir, **files,
    )  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from drnet.tasks.segment import SegmentationData, SegmentationTrainSettings, train

    settings = SegmentationTrainSettings(
        config=train_config(args), model=args.model, num_classes=args.num_classes,
        crop_size=args.crop_size, random_scale=args.random_scale,
        random_rotate=args.random_rotate, hflip=not args.no_flip, train_split=args.train_split,
        val_split=None if args.no_val else args.val_split, weights=args.weights,
        pretrained=bool(args.pretrained), pretrained_backbone=args.pretrained_backbone,
        backbone_weights=args.backbone_weights, channels=args.channels,
    )  # fmt: skip
    data = SegmentationData(args.data_dir, layout=args.layout, list_dir=args.list_dir)
    summary = train(None, None, data, inference_options(args), settings).summary
    if summary["best_metric"] is not None:
        print(
            f"best mIoU {100 * summary['best_metric']:.2f} ({best_epoch_text(summary)}): "
            f"{summary['checkpoint_best']}"
        )
    print(f"last checkpoint: {summary['checkpoint_last']}")
    print_skips(summary)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from drnet.tasks.segment import SegmentationData, SegmentationSettings, evaluate

    settings: SegmentationSettings = _settings(
        args, batch_size=args.batch_size, save_predictions=args.save_predictions
    )
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "segmentation")
    data = SegmentationData(args.data_dir, args.split, args.layout, args.list_dir)
    result = evaluate(model, card, data, inference_options(args), settings)
    result.metrics["weights"] = str(args.weights)  # what was evaluated, as earlier releases
    files = result.write(args.output_dir)
    if files:  # rank 0 of torchrun
        print(f"{result.summary_lines()[0]}  ({files['metrics']})")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from drnet.tasks.segment import SegmentationData, predict

    settings = _settings(args, save=args.save, alpha=args.alpha)
    data = SegmentationData(
        args.data_dir, args.split, args.layout, args.list_dir, tuple(args.inputs)
    )
    if not data.inputs and not (data.data_dir and data.split):
        raise DrnetError("give image files/folders/lists, or --data-dir with --split SPLIT")
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "segmentation")
    items = data.prediction_items(card.num_classes)
    with predict_output(args, "segment predict", [path for path, _ in items]):
        result = predict(model, card, data, inference_options(args), settings)
    return finish(
        result,
        args.output_dir,
        f"predictions of {len(result.outputs)} image(s) to {args.output_dir}",
    )
