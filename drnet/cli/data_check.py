"""``drnet data check DIR``: find every problem of a dataset in one pass, before training."""

from __future__ import annotations

import argparse

from drnet.cli import non_negative_int, positive_int
from drnet.cli.vocab import (
    add_data,
    add_json,
    add_no_progress,
    add_num_classes,
    add_workers,
    hidden,
    write_json,
)
from drnet.constants import DATA_CHECK_LAYOUTS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate a dataset up front: report every bad file in one pass",
        description="Check every file of a dataset the way training and evaluation read it and "
        "report all problems at once: missing or empty list files, listed files that do not "
        "exist, unreadable or truncated images, RGB label PNGs, JPEG labels (lossy: wrong classes "
        "at edges), label values >= classes (other than 255), label/image size mismatches, "
        "empty class folders, dangling or looping symbolic links, box files naming missing "
        "images or boxes outside the image. Images smaller than --crop-size are reported as "
        "info (training pads them). Layouts: segmentation list files / Cityscapes / image+mask "
        "folders, classification ImageFolder, and boxes*.csv|json or boxes/ XML found in DIR. "
        "Exit status: 0 clean, 1 problems found, 2 DIR cannot be checked.",
    )
    add_data(parser, "dataset root")
    parser.add_argument(
        "--layout",
        choices=DATA_CHECK_LAYOUTS,
        default="auto",
        help="dataset layout; auto detects it",
    )
    add_num_classes(
        parser,
        "number of classes: label values must be below it or 255 (default: info.json's "
        "'classes', 19 for Cityscapes)",
        ("-c", "--classes"),
    )
    parser.add_argument(
        "--crop-size", type=positive_int, help="report images smaller than this training crop"
    )
    hidden(parser, "-s", dest="crop_size", type=positive_int)
    parser.add_argument(
        "--splits", help="comma-separated splits to check (default: all found), e.g. train,val"
    )
    parser.add_argument("-l", "--list-dir", help="folder of the list files (default: DATA)")
    parser.add_argument(
        "--boxes",
        action="append",
        default=[],
        metavar="PATH",
        help="also check this box file (.csv/.json) or folder of Pascal-VOC .xml (repeatable)",
    )
    add_json(parser, "the full report")
    parser.add_argument(
        "--max-infos",
        type=non_negative_int,
        default=20,
        help="info lines to print (all go to --json)",
    )
    add_workers(parser, 4, "threads decoding images")
    add_no_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.data.check import check_dataset

    report = check_dataset(
        args.data_dir,
        layout=args.layout,
        num_classes=args.num_classes,
        crop_size=args.crop_size,
        splits=[s for s in args.splits.split(",") if s] if args.splits else None,
        list_dir=args.list_dir,
        boxes=args.boxes,
        workers=args.workers,
        progress=not args.no_progress,
    )
    json_file = write_json(report.to_dict(), args.json) if args.json else None
    if args.json != "-":  # the JSON on stdout replaces the text
        print(report.format(max_infos=args.max_infos))
    if json_file:
        print(f"wrote {json_file}")
    return 0 if report.ok else 1
