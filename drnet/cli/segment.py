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
from pathlib import Path

from drnet.cli import (
    BAD_INPUTS_HELP,
    best_epoch_text,
    ensure_writable,
    float_in,
    int_in,
    list_of,
    print_skips,
    report_failures,
)
from drnet.cli.engine_args import add_engine_arguments, train_config
from drnet.cli.vocab import (
    NAMES_HELP,
    Parser,
    add_batch_size,
    add_channels,
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
    hidden,
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
    add_num_classes(
        g, "number of classes (default: info.json, 19 Cityscapes)", ("-c", "--classes")
    )


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


def _add_inference_arguments(p: Parser) -> None:
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
    add_device(g)
    add_max_pixels(g)
    g.add_argument("--amp", action="store_true", help="mixed precision on GPU")
    add_no_progress(g)
    add_no_fast(g)
    add_dtype(g)


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
    _add_inference_arguments(evaluate)
    add_workers(evaluate, 2)
    add_batch_size(
        evaluate,
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
    _add_inference_arguments(predict)
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


def _scales(args: argparse.Namespace) -> tuple[float, ...]:
    from drnet.tasks.segment import DEFAULT_SCALES

    if args.scales:
        return args.scales
    return DEFAULT_SCALES if args.ms else (1.0,)


def run_train(args: argparse.Namespace) -> int:
    from drnet.tasks.segment import SegmentOptions, train_segmentation

    options = SegmentOptions(
        data_dir=args.data_dir,
        model=args.model,
        num_classes=args.num_classes,
        crop_size=args.crop_size,
        random_scale=args.random_scale,
        random_rotate=args.random_rotate,
        hflip=not args.no_flip,
        layout=args.layout,
        list_dir=args.list_dir,
        train_split=args.train_split,
        val_split=None if args.no_val else args.val_split,
        weights=args.weights,
        pretrained=bool(args.pretrained),
        pretrained_backbone=args.pretrained_backbone,
        backbone_weights=args.backbone_weights,
        channels=args.channels,
    )
    config = train_config(args)
    summary = train_segmentation(options, config)
    if summary["best_metric"] is not None:
        print(
            f"best mIoU {100 * summary['best_metric']:.2f} ({best_epoch_text(summary)}): "
            f"{summary['checkpoint_best']}"
        )
    print(f"last checkpoint: {summary['checkpoint_last']}")
    print_skips(summary)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from drnet.tasks.segment import run_evaluation

    ensure_writable(args.output_dir)
    result = run_evaluation(
        args.weights,
        args.data_dir,
        split=args.split,
        output_dir=args.output_dir,
        model=args.model,
        pretrained=bool(args.pretrained),
        workers=args.workers,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        layout=args.layout,
        list_dir=args.list_dir,
        scales=_scales(args),
        flip=args.flip,
        window=args.window,
        stride=args.stride,
        device=args.device,
        amp=args.amp,
        save_predictions=args.save_predictions,
        progress=not args.no_progress,
        channels=args.channels,
        fast=not args.no_fast,
        dtype=args.dtype,
    )
    print(f"mIoU {100 * result['miou']:.2f}  ({result['metrics_json']})")
    return 0


def _predict_items(args: argparse.Namespace, num_classes: int) -> list:
    """``(path, output name)`` of every input: files and folders named by :data:`NAMES_HELP`,
    list files and --split by their own names, repeats suffixed."""
    from drnet.data.images import relative_names, unique_names
    from drnet.tasks.segment import collect_inputs, split_inputs

    items = []
    if args.data_dir and args.split:
        items += split_inputs(args.data_dir, args.split, num_classes, args.layout, args.list_dir)
    files = []  # (position in items, path) of images given as files or in folders
    for source in args.inputs:
        found = collect_inputs(source)
        if Path(source).suffix.lower() != ".txt" or Path(source).is_dir():
            files += [(len(items) + i, path) for i, (path, _) in enumerate(found)]
        items += found
    for (position, path), name in zip(
        files, relative_names([path for _, path in files]), strict=True
    ):
        items[position] = (path, name)
    names = unique_names([name for _, name in items])
    return [(path, name) for (path, _), name in zip(items, names, strict=True)]


def run_predict(args: argparse.Namespace) -> int:
    from drnet.cli.vocab import load_from_args
    from drnet.data.segmentation import dataset_info
    from drnet.engine.distributed import resolve_device
    from drnet.engine.predict_folder import predict_folder
    from drnet.tasks.segment import check_save_kinds
    from drnet.tasks.segment_infer import check_window, predict_files

    if not args.inputs and not (args.data_dir and args.split):
        raise DrnetError("give image files/folders/lists, or --data-dir with --split SPLIT")
    check_save_kinds(args.save)  # before the model is loaded and -o is made
    check_window(args.window, args.stride)
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "segmentation")
    mean, std = card.mean, card.std
    if args.data_dir:  # the dataset's own statistics, as evaluation uses them
        info = dataset_info(args.data_dir, args.layout, args.split or "train")
        mean, std = info["mean"], info["std"]
    failed: list[tuple[str, str]] = []
    items = _predict_items(args, card.num_classes)
    inputs = [path for path, _ in items]
    with predict_folder(args.output_dir, "segment predict", inputs, overwrite=args.overwrite):
        results = predict_files(
            model,
            items,
            args.output_dir,
            mean,
            std,
            card.num_classes,
            resolve_device(args.device),
            scales=_scales(args),
            flip=args.flip,
            window=args.window,
            stride=args.stride,
            save=args.save,
            alpha=args.alpha,
            amp=args.amp,
            progress=not args.no_progress,
            fast=not args.no_fast,
            dtype=args.dtype,
            failed=failed,
        )
    print(f"wrote predictions of {len(results)} image(s) to {args.output_dir}")
    return report_failures(failed, len(results), args.output_dir)
