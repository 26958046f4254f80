"""``drnet quantize``: post-training static int8 (CPU) with a calibration set, and its check."""

from __future__ import annotations

import argparse

from drnet.cli import positive_int
from drnet.cli.vocab import (
    add_channels,
    add_data,
    add_json,
    add_model,
    add_num_classes,
    add_weights,
    write_json,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="int8 post-training static quantization (CPU, PT2E) and its accuracy check",
        description="Quantize a segmentation model to int8 with a calibration set (PT2E flow, "
        "X86InductorQuantizer, torch.compile), then score float32 and int8 side by side on "
        "validation data: mIoU, labels unchanged, and time per image. Data: a segmentation "
        "dataset folder (list files / Cityscapes / image+mask folders). "
        "Needs: pip install 'drnet[int8]'.",
    )
    add_model(parser, None, "architecture (default: the one --weights records, else drn_d_22)")
    add_weights(parser, "trained DRNSeg weights (a drnet checkpoint or the official .pth)", True)
    add_num_classes(parser, "classes (default: from the data)")
    add_channels(parser)
    add_data(
        parser,
        "segmentation dataset folder: the train split calibrates, the val split is scored "
        "(built-in scenes: write them with `drnet data scenes`)",
        old_spellings=("--data",),
    )
    parser.add_argument("--calibration", type=positive_int, default=32, help="calibration images")
    parser.add_argument("--val", type=positive_int, default=100, help="validation images scored")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip torch.compile: int8 reference graph, same labels, no speed-up",
    )
    add_json(parser, "the report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.speed.quantize_eval import evaluate_int8, summary_lines

    report = evaluate_int8(
        args.weights,
        args.data_dir,
        model=args.model,
        num_classes=args.num_classes,
        channels=args.channels,
        calibration_images=args.calibration,
        val_images=args.val,
        compile=not args.no_compile,
    )
    json_file = write_json(report, args.json) if args.json else None
    if args.json == "-":
        return 0  # the JSON on stdout replaces the text
    print("\n".join(summary_lines(report)))
    if json_file:
        print(f"wrote {json_file}")
    return 0
