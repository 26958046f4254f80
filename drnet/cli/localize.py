"""``drnet localize eval|predict``: weakly-supervised localization with a classifier's dense map."""

from __future__ import annotations

import argparse
import math

from drnet.cli import (
    BAD_INPUTS_HELP,
    ensure_writable,
    finite_float,
    int_in,
    non_negative_int,
    positive_int,
)
from drnet.cli.vocab import (
    CROP_RANGE,
    NAMES_HELP,
    add_classifier_model,
    add_data,
    add_predict_overwrite,
    add_running,
    finish,
    image_inputs,
    inference_options,
    load_from_args,
    predict_output,
)
from drnet.constants import (
    BOX_RESOLUTIONS,
    DEFAULT_BOX_RESOLUTION,
    DEFAULT_BOX_THRESHOLD,
    MAX_INPUT_PIXELS,
    MAX_INPUT_SIDE,
    OVERLAY_MAX_SIDE,
)

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
    """``--threshold`` of predict: a finite number, or the metrics.json of ``localize eval``."""
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
            default=DEFAULT_BOX_THRESHOLD,
            help="t, or the metrics.json written by 'localize eval' (or its folder) to reuse "
            "its chosen t",
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
        "Writes metrics.json (errors, chosen t, curve, held_out_curve, "
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
    add_classifier_model(evaluate, sizes=False)
    _add_box_arguments(evaluate, evaluating=True)
    add_running(evaluate, "runs/localize-eval", None, workers=2, amp=False)
    evaluate.set_defaults(func=run_eval)

    predict = commands.add_parser(
        "predict",
        help="boxes and class-activation heatmaps for images or folders",
        description="Localize the top-k classes of image files or folders. " + RULE + " Writes "
        "boxes.json, overlays/<name>.png and, with --save-heatmaps, "
        "heatmaps/<name>_<class>.png (the class response over the image, jet colours). "
        + NAMES_HELP
        + " "
        + SIZE_HELP
        + " "
        + BAD_INPUTS_HELP
        + " boxes.json lists the "
        "images that were predicted.",
    )
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_classifier_model(predict, sizes=False)
    _add_box_arguments(predict, evaluating=False)
    predict.add_argument(
        "--save-heatmaps", action="store_true", help="write a heatmap PNG per top-k class"
    )
    predict.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    add_running(predict, "runs/localize-predict", None, workers=0, amp=False)
    add_predict_overwrite(predict)
    predict.set_defaults(func=run_predict)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _settings(args: argparse.Namespace, **pictures: object):
    from drnet.tasks.localize import LocalizationSettings

    return LocalizationSettings(
        threshold_mode=args.threshold_mode, fallback=args.fallback, resize_size=args.resize_size,
        top_k=args.top_k, box_resolution=args.box_resolution, threshold=args.threshold,
        output_dir=args.output_dir, **pictures,
    )  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    from drnet.tasks.localize import LocalizationData, evaluate

    settings = _settings(args, thresholds=args.thresholds, save_images=args.save_images)
    data = LocalizationData(
        args.data_dir, args.boxes, args.val_dir, args.val_boxes, args.xml_origin
    )
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "classification")
    result = evaluate(model, card, data, inference_options(args), settings)
    return finish(result, args.output_dir, result.write(args.output_dir)["metrics"])


def run_predict(args: argparse.Namespace) -> int:
    from drnet.tasks.localize import predict

    settings = _settings(args, save_overlays=not args.no_overlays, save_heatmaps=args.save_heatmaps)
    paths = image_inputs(args.inputs)
    ensure_writable(args.output_dir)
    model, card = load_from_args(args, "classification")
    with predict_output(args, "localize predict", paths):
        result = predict(model, card, paths, inference_options(args), settings)
        files = result.write(args.output_dir)
    return finish(result, args.output_dir, files["boxes"])
