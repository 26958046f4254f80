"""``drnet segment train|eval|predict``: semantic segmentation with DRNSeg.

Flags of the original ``segment.py`` keep working where they exist (``-d/--data-dir``,
``-l/--list-dir``, ``-c/--classes``, ``-s/--crop-size``, ``--step``, ``--lr-mode``, ``--wd``,
``-j/--workers``, ``--pretrained``, ``--phase``, ``--ms``, ``--save_path``...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drnet.cli import non_negative_int, positive_int
from drnet.cli.engine_args import add_engine_arguments, train_config
from drnet.errors import DrnetError

LAYOUTS_HELP = (
    "dataset layouts: (1) list files: info.json (mean, std) + {split}_images.txt / "
    "{split}_labels.txt, paths relative to --data-dir; (2) Cityscapes: leftImg8bit/ + gtFine/ "
    "*_labelTrainIds.png (make them with 'drnet data cityscapes-prepare'); (3) folders: "
    "images/{split}/ + masks/{split}/ paired by file stem. Labels: single-channel class "
    "indices, 255 = ignore."
)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,1.0,1.5: {text!r}") from exc


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected integers like 8,16,32: {text!r}") from exc


def _random_scale(text: str) -> float | tuple[float, float]:
    values = _floats(text)
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values  # type: ignore[return-value]
    raise argparse.ArgumentTypeError(f"--random-scale takes S or LOW,HIGH, got {text!r}")


def _add_data_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("-d", "--data-dir", required=required, help="dataset root")
    g.add_argument("-l", "--list-dir", help="folder of the list files (default: --data-dir)")
    g.add_argument(
        "--layout",
        choices=("auto", "list", "cityscapes", "folder"),
        default="auto",
        help="dataset layout (default: detect)",
    )
    g.add_argument(
        "-c",
        "--classes",
        type=positive_int,
        help="number of classes (default: info.json, 19 Cityscapes)",
    )


def _add_model_arguments(p: argparse.ArgumentParser, training: bool) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--arch",
        default="drn_d_22" if training else None,
        help="backbone (drnet models list)"
        + (", default drn_d_22" if training else "; read from drnet checkpoints"),
    )
    g.add_argument(
        "--weights",
        "--pretrained",
        dest="weights",
        required=not training,
        metavar="PATH",
        help=(
            "start from this checkpoint: a drnet run/checkpoint, the official DRNSeg .pth "
            "(e.g. drn_d_22_cityscapes.pth) or a classification checkpoint (backbone only)"
            if training
            else "checkpoint: a drnet training checkpoint or run directory, or the official "
            "DRNSeg .pth (then give --arch)"
        ),
    )
    g.add_argument(
        "--channels", type=_ints, help="per-level widths (8 values), e.g. a tiny net for tests"
    )


def _add_inference_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument(
        "--ms",
        action="store_true",
        help="multi-scale: average over scales 0.5,0.75,1.0,1.25,1.5,1.75",
    )
    g.add_argument("--scales", type=_floats, help="custom scales, e.g. 0.75,1.0,1.25")
    g.add_argument("--flip", action="store_true", help="also average horizontally flipped input")
    g.add_argument(
        "--window", type=positive_int, help="sliding-window size for images larger than it (pixels)"
    )
    g.add_argument("--stride", type=positive_int, help="sliding-window stride (default 2/3 window)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision on GPU")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument(
        "--no-fast",
        action="store_true",
        help="plain eager model instead of the inference fast path (BN folding, fused convs)",
    )


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
    train.add_argument("--train-split", default="train")
    train.add_argument("--val-split", default="val", help="validation split (default val)")
    train.add_argument("--no-val", action="store_true", help="no validation, no best model")
    _add_model_arguments(train, training=True)
    train.add_argument(
        "--pretrained-backbone",
        action="store_true",
        help="ImageNet weights for the backbone ($DRNET_WEIGHTS_DIR or download)",
    )
    train.add_argument("--backbone-weights", metavar="PATH", help="classification checkpoint")
    g = train.add_argument_group("augmentation")
    g.add_argument(
        "-s",
        "--crop-size",
        type=non_negative_int,
        default=896,
        help="training crop (default 896)",
    )
    g.add_argument(
        "--random-scale",
        type=_random_scale,
        default=0.0,
        help="S: scale by a random factor in [1/S, S] (paper: 2); or LOW,HIGH",
    )
    g.add_argument("--random-rotate", type=float, default=0.0, help="max degrees (paper: 10)")
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
    evaluate.add_argument("--phase", "--split", dest="split", default="val")
    _add_model_arguments(evaluate, training=False)
    _add_inference_arguments(evaluate)
    evaluate.add_argument("-o", "--output-dir", default="runs/segment-eval")
    evaluate.add_argument(
        "--save-predictions", action="store_true", help="also write label and colour PNGs"
    )
    evaluate.set_defaults(func=run_eval)

    predict = commands.add_parser(
        "predict",
        help="label, colour and overlay PNGs for images",
        description="Segment image files, folders (recursive) or list files (.txt, one path per "
        "line relative to the list), or a split of --data-dir (--phase). Writes labels/ (class "
        "indices), color/ (Cityscapes palette for 19 classes, generated otherwise) and overlay/.",
    )
    predict.add_argument("inputs", nargs="*", help="image files, folders or .txt lists")
    _add_data_arguments(predict, required=False)
    predict.add_argument("--phase", "--split", dest="split", help="predict this split of -d")
    _add_model_arguments(predict, training=False)
    _add_inference_arguments(predict)
    predict.add_argument("-o", "--output-dir", default="runs/segment-predict")
    predict.add_argument(
        "--save",
        type=lambda s: tuple(v for v in s.split(",") if v),
        default=("labels", "color", "overlay"),
        help="what to write: labels,color,overlay (default all)",
    )
    predict.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    predict.set_defaults(func=run_predict)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _scales(args: argparse.Namespace) -> tuple[float, ...]:
    from drnet.tasks.segment import DEFAULT_SCALES

    if args.scales:
        return args.scales
    return DEFAULT_SCALES if args.ms else (1.0,)


def resolve_weights(path: str) -> str:
    """A run directory means its best checkpoint (else its last one)."""
    p = Path(path)
    if p.is_dir():
        for name in ("checkpoint_best.pth", "checkpoint_last.pth"):
            if (p / name).is_file():
                return str(p / name)
        raise DrnetError(f"--weights {p} is a folder without checkpoint_best/last.pth")
    return path


def run_train(args: argparse.Namespace) -> int:
    from drnet.tasks.segment import SegmentOptions, train_segmentation

    options = SegmentOptions(
        data_dir=args.data_dir,
        arch=args.arch,
        num_classes=args.classes,
        crop_size=args.crop_size,
        random_scale=args.random_scale,
        random_rotate=args.random_rotate,
        hflip=not args.no_flip,
        layout=args.layout,
        list_dir=args.list_dir,
        train_split=args.train_split,
        val_split=None if args.no_val else args.val_split,
        weights=resolve_weights(args.weights) if args.weights else None,
        pretrained_backbone=args.pretrained_backbone,
        backbone_weights=args.backbone_weights,
        channels=args.channels,
    )
    config = train_config(args)
    summary = train_segmentation(options, config)
    if summary["best_metric"] is not None:
        print(
            f"best mIoU {100 * summary['best_metric']:.2f} at epoch {summary['best_epoch']}: "
            f"{summary['checkpoint_best']}"
        )
    print(f"last checkpoint: {summary['checkpoint_last']}")
    if summary.get("skipped_samples"):
        print(f"skipped {summary['skipped_samples']} bad sample(s) (--skip-bad-samples)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from drnet.tasks.segment import run_evaluation

    result = run_evaluation(
        resolve_weights(args.weights),
        args.data_dir,
        split=args.split,
        output_dir=args.output_dir,
        arch=args.arch,
        num_classes=args.classes,
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
    )
    print(f"mIoU {100 * result['miou']:.2f}  ({result['metrics_json']})")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from drnet.data.segmentation import dataset_info, open_segmentation_dataset
    from drnet.engine.distributed import resolve_device
    from drnet.tasks.segment import collect_inputs, load_segmentation_model, predict_segmentation

    if not args.inputs and not (args.data_dir and args.split):
        raise DrnetError("give image files/folders/lists, or --data-dir with --phase SPLIT")
    model, meta = load_segmentation_model(
        resolve_weights(args.weights), args.arch, args.classes, args.channels
    )
    num_classes = meta["num_classes"]
    mean, std = meta.get("mean"), meta.get("std")
    items = []
    if args.data_dir:
        info = dataset_info(args.data_dir, args.layout, args.split or "train")
        mean, std = info["mean"], info["std"]
        if args.split:
            ds = open_segmentation_dataset(
                args.data_dir,
                args.split,
                num_classes,
                layout=args.layout,
                list_dir=args.list_dir,
                require_labels=False,
            )
            items += [(s.image, s.name) for s in ds.samples]
    for source in args.inputs:
        items += collect_inputs(source)
    if mean is None:
        from drnet.data.cityscapes import CITYSCAPES_MEAN, CITYSCAPES_STD
        from drnet.data.segmentation import IMAGENET_MEAN, IMAGENET_STD

        city = num_classes == 19
        mean, std = (CITYSCAPES_MEAN, CITYSCAPES_STD) if city else (IMAGENET_MEAN, IMAGENET_STD)
        print(
            f"note: normalising with {'Cityscapes' if city else 'ImageNet'} mean/std "
            "(give --data-dir with an info.json to use the dataset's)",
            file=sys.stderr,
        )
    from drnet.speed.inference import fast_inference

    device = resolve_device(args.device)
    results = predict_segmentation(
        fast_inference(model.to(device), enabled=not args.no_fast),
        items,
        args.output_dir,
        mean,
        std,
        num_classes,
        device,
        scales=_scales(args),
        flip=args.flip,
        window=args.window,
        stride=args.stride,
        save=args.save,
        alpha=args.alpha,
        amp=args.amp,
        progress=not args.no_progress,
    )
    print(f"wrote predictions of {len(results)} image(s) to {args.output_dir}")
    return 0
