"""``drnet localize eval|predict``: weakly-supervised localization with a classifier's dense map."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from drnet.cli import (
    BAD_INPUTS_HELP,
    ensure_writable,
    finite_float,
    int_in,
    non_negative_int,
    positive_int,
    report_failures,
)
from drnet.cli.classify import CROP_RANGE, add_inference_arguments, add_model_arguments
from drnet.cli.vocab import NAMES_HELP, add_data, add_predict_overwrite, load_from_args
from drnet.constants import (
    BOX_RESOLUTIONS,
    DEFAULT_BOX_RESOLUTION,
    MAX_INPUT_PIXELS,
    MAX_INPUT_SIDE,
    OVERLAY_MAX_SIDE,
)
from drnet.errors import DrnetError

SIZE_HELP = (
    f"The network input is scaled down to at most {MAX_INPUT_PIXELS:,} pixels and "
    f"{MAX_INPUT_SIDE} px a side (boxes still refer to the original image); overlays and "
    f"heatmaps are drawn at most {OVERLAY_MAX_SIDE} px on their longer side."
)

RULE = (
    "Box rule (the paper's): for a predicted class c, the smallest box enclosing every position "
    "of the stride-8 class map where c is the dominant class (argmax over classes; ties count "
    "for every tied class) and its response exceeds t, mapped to image pixels (cell (i, j) "
    "covers pixels [8j, 8j+8) x [8i, 8i+8), clipped to the image); with --box-resolution pixel "
    "the same rule per pixel of the class map up-sampled to the image."
)


def _threshold_or_auto(text: str) -> float | str:
    """``--threshold`` of eval: ``auto`` or a finite number."""
    return "auto" if text.strip() == "auto" else finite_float(text)


def _threshold_or_file(text: str) -> float | str:
    """``--threshold`` of predict: a finite number, or a localization_metrics.json path."""
    try:
        value = float(text)
    except ValueError:
        return text  # a file; read_threshold reads and checks it
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number or a file, got {text!r}")
    return value


def _add_box_arguments(parser: argparse.ArgumentParser, evaluating: bool) -> None:
    group = parser.add_argument_group("box rule")
    if evaluating:
        group.add_argument(
            "--threshold",
            type=_threshold_or_auto,
            default="auto",
            help="t: 'auto' chooses it on the held-out --val-dir by top-1 localization error; "
            "or a number",
        )
        group.add_argument(
            "--thresholds",
            help="the sweep: a list 0.1,0.2 or a range START:STOP:STEP (default 0:1:0.05 for "
            "minmax; required for raw)",
        )
    else:
        group.add_argument(
            "--threshold",
            type=_threshold_or_file,
            default=0.2,
            help="t, or a localization_metrics.json written by 'localize eval' to reuse its "
            "chosen t",
        )
    group.add_argument(
        "--threshold-mode",
        choices=("minmax", "raw"),
        default=None,
        help="minmax (default): t is a fraction of the class map's range over the image "
        "(min -> 0, max -> 1; t in 0..1), comparable across models; raw: t compares with the "
        "logit itself",
    )
    group.add_argument(
        "--fallback",
        choices=("peak", "image"),
        default="peak",
        help="box when no position passes: the cell of the class's peak response, or the whole "
        "image",
    )
    group.add_argument(
        "--box-resolution",
        choices=BOX_RESOLUTIONS,
        default=DEFAULT_BOX_RESOLUTION,
        help="cell: apply the rule to the stride-8 map's cells (boxes on the 8-px grid); pixel: "
        "up-sample the class map to the image first (bilinear, cell j's value on pixel 8j+3.5) "
        "and apply it per pixel (boxes to the pixel). Default: %(default)s",
    )
    group.add_argument(
        "--resize-size",
        type=int_in(*CROP_RANGE, zero=True),
        help="resize the shorter side to this before the network, no crop (default: the "
        "classifier's eval resize, e.g. 256; 0 keeps the image size); boxes are mapped back to "
        "the original image",
    )
    group.add_argument(
        "--top-k",
        type=positive_int,
        default=5 if evaluating else 1,
        help="classes boxed per image"
        + (" (5 for the top-5 localization error)" if evaluating else ""),
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "localize",
        help="weakly-supervised localization and class-activation heatmaps",
        description="Weakly-supervised localization from a classifier's dense class map "
        "(out_map mode). " + RULE,
    )
    commands = parser.add_subparsers(dest="localize_command", metavar="ACTION")

    evaluate = commands.add_parser(
        "eval",
        help="top-1/top-5 localization error, threshold sweep",
        description="Score localization on an ImageFolder split: correct when the class is "
        "right and IoU > 0.5 with a ground-truth box of that class. " + RULE + " t is swept; "
        "with --threshold auto it is chosen on --val-dir (never on the evaluation split). "
        "Writes localization_metrics.json (errors, chosen t, curve, held_out_curve, "
        "centred_box_prior), threshold_curve.csv, boxes.json (per image, at the chosen t) and "
        "overlays/*.png (heatmap, ground truth green, prediction red). " + SIZE_HELP,
    )
    add_data(evaluate, "ImageFolder split to evaluate: DATA/<class>/<image>")
    evaluate.add_argument(
        "--boxes",
        required=True,
        help="ground truth: a folder of Pascal-VOC .xml files (the ImageNet format), or a "
        ".csv / .json of image,x1,y1,x2,y2,label",
    )
    evaluate.add_argument("--val-dir", help="held-out split on which t is chosen")
    evaluate.add_argument("--val-boxes", help="ground truth of --val-dir (default: --boxes)")
    evaluate.add_argument(
        "--xml-origin",
        type=int_in(0, 1),
        default=1,
        help="index of the first pixel in XML files: 1 for Pascal VOC, 0 for 0-based files",
    )
    evaluate.add_argument(
        "--save-images",
        type=non_negative_int,
        default=16,
        help="overlay PNGs for the first N images",
    )
    add_model_arguments(evaluate, sizes=False)
    _add_box_arguments(evaluate, evaluating=True)
    add_inference_arguments(evaluate, "runs/localize-eval", None, workers=2, amp=False)
    evaluate.set_defaults(func=run_eval)

    predict = commands.add_parser(
        "predict",
        help="boxes and class-activation heatmaps for images or folders",
        description="Localize the top-k classes of image files or folders. " + RULE + " Writes "
        "boxes.json, overlays/<name>.png and, with --save-heatmaps, "
        "heatmaps/<name>_<class>.png (the class response over the image, jet colours). "
        + NAMES_HELP + " " + SIZE_HELP + " " + BAD_INPUTS_HELP + " boxes.json lists the "
        "images that were predicted.",
    )
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_model_arguments(predict, sizes=False)
    _add_box_arguments(predict, evaluating=False)
    predict.add_argument(
        "--save-heatmaps", action="store_true", help="write a heatmap PNG per top-k class"
    )
    predict.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    add_inference_arguments(predict, "runs/localize-predict", None, workers=0, amp=False)
    add_predict_overwrite(predict)
    predict.set_defaults(func=run_predict)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _settings(
    args: argparse.Namespace, mode: str | None = None, threshold: float | str = "auto"
):
    from drnet.tasks.localize import LocalizationSettings

    if args.top_k < 1:
        raise DrnetError(f"--top-k must be at least 1, got {args.top_k}")
    mode = args.threshold_mode or mode or "minmax"
    if mode == "minmax" and threshold != "auto" and not 0 <= float(threshold) <= 1:
        raise DrnetError(
            f"--threshold {threshold:g}: minmax thresholds are fractions of the class map's "
            "range, in 0..1 (or use --threshold-mode raw)"
        )
    return LocalizationSettings(
        threshold_mode=mode,
        fallback=args.fallback,
        resize_size=args.resize_size,
        top_k=args.top_k,
        box_resolution=args.box_resolution,
    )


def run_eval(args: argparse.Namespace) -> int:
    from drnet.tasks.localize import evaluate_localization, parse_thresholds

    threshold: float | str = args.threshold
    settings = _settings(args, threshold=threshold)
    thresholds = parse_thresholds(args.thresholds) if args.thresholds else None
    if thresholds and settings.threshold_mode == "minmax" and not 0 <= min(thresholds) <= max(
        thresholds
    ) <= 1:
        raise DrnetError(f"--thresholds {args.thresholds}: minmax thresholds must be in 0..1")
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "classification")
    metrics = evaluate_localization(
        model,
        card,
        args.data_dir,
        args.boxes,
        args.output_dir,
        threshold=threshold,
        thresholds=thresholds,
        val_dir=args.val_dir,
        val_boxes_source=args.val_boxes,
        settings=settings,
        xml_origin=args.xml_origin,
        save_images=args.save_images,
        device=args.device,
        workers=args.workers,
        fast=not args.no_fast,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    prior = metrics["centred_box_prior"]
    print(
        f"t = {metrics['threshold']:g} ({metrics['threshold_source']}), "
        f"{metrics['num_images_scored']} images"
    )
    print(
        f"top-1 loc err {metrics['top1_loc_err']:.4f}  top-5 loc err {metrics['top5_loc_err']:.4f}"
        f"  GT-known loc err {metrics['gt_known_loc_err']:.4f}"
        f"  (top-1 cls err {metrics['top1_cls_err']:.4f})"
    )
    print(
        f"centred-box prior: top-1 loc err {prior['top1_loc_err']:.4f}  "
        f"top-5 loc err {prior['top5_loc_err']:.4f}"
    )
    offset = metrics["box_centre_offset"]
    if offset["images"]:
        print(
            f"box centre offset (predicted - true, {metrics['box_resolution']} boxes): "
            f"x {offset['x']:+.2f} px  y {offset['y']:+.2f} px over {offset['images']} images "
            "with the right top-1 class"
        )
    print(f"wrote {Path(args.output_dir) / metrics['files']['metrics']}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from drnet.data.classification import list_images
    from drnet.engine.predict_folder import predict_folder
    from drnet.tasks.localize import predict_localization, read_threshold

    threshold, mode = read_threshold(args.threshold)
    settings = _settings(args, mode, threshold)
    paths = list_images(args.inputs)
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "classification")
    failed: list[tuple[str, str]] = []
    with predict_folder(args.output_dir, "localize predict", paths, overwrite=args.overwrite):
        entries = predict_localization(
            model,
            card,
            paths,
            args.output_dir,
            threshold=threshold,
            settings=settings,
            save_overlays=not args.no_overlays,
            save_heatmaps=args.save_heatmaps,
            device=args.device,
            workers=args.workers,
            fast=not args.no_fast,
            dtype=args.dtype,
            progress=not args.no_progress,
            failed=failed,
        )
    for entry in entries[:10]:
        top = entry["predictions"][0]
        box = ", ".join(f"{v:g}" for v in top["box"])
        print(f"{entry['image']}: {top['class']} ({top['probability']:.3f}) box [{box}]")
    if len(entries) > 10:
        print(f"... {len(entries) - 10} more")
    print(f"wrote {Path(args.output_dir) / 'boxes.json'}")
    return report_failures(failed, len(entries), args.output_dir)
