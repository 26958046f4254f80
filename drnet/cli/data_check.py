"""``drnet data check DIR``: find every problem of a dataset in one pass, before training."""

from __future__ import annotations

import argparse

from drnet.cli import non_negative_int, positive_int
from drnet.data.check import LAYOUTS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate a dataset up front: report every bad file in one pass",
        description="Check every file of a dataset the way training and evaluation read it and "
        "report all problems at once: missing or empty list files, listed files that do not "
        "exist, unreadable or truncated images, RGB label PNGs, label values >= classes (other "
        "than 255), label/image size mismatches, empty class folders, box files naming missing "
        "images or boxes outside the image. Images smaller than --crop-size are reported as "
        "info (training pads them). Layouts: segmentation list files / Cityscapes / image+mask "
        "folders, classification ImageFolder, and boxes*.csv|json or boxes/ XML found in DIR. "
        "Exit status: 0 clean, 1 problems found, 2 DIR cannot be checked.",
    )
    parser.add_argument("root", metavar="DIR", help="dataset root")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="auto", help="dataset layout (default: detect)"
    )
    parser.add_argument(
        "-c",
        "--classes",
        type=positive_int,
        help="number of classes: label values must be below it or 255 (default: info.json's "
        "'classes', 19 for Cityscapes)",
    )
    parser.add_argument(
        "-s", "--crop-size", type=positive_int, help="report images smaller than this training crop"
    )
    parser.add_argument(
        "--splits", help="comma-separated splits to check (default: all found), e.g. train,val"
    )
    parser.add_argument("-l", "--list-dir", help="folder of the list files (default: DIR)")
    parser.add_argument(
        "--boxes",
        action="append",
        default=[],
        metavar="PATH",
        help="also check this box file (.csv/.json) or folder of Pascal-VOC .xml (repeatable)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the full report as JSON")
    parser.add_argument(
        "--max-infos",
        type=non_negative_int,
        default=20,
        help="info lines to print (all go to --json)",
    )
    parser.add_argument(
        "-j",
        "--workers",
        type=non_negative_int,
        default=4,
        help="threads decoding images (default 4)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.data.check import check_dataset, write_report_json

    report = check_dataset(
        args.root,
        layout=args.layout,
        num_classes=args.classes,
        crop_size=args.crop_size,
        splits=[s for s in args.splits.split(",") if s] if args.splits else None,
        list_dir=args.list_dir,
        boxes=args.boxes,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(report.format(max_infos=args.max_infos))
    if args.json:
        print(f"wrote {write_report_json(report, args.json)}")
    return 0 if report.ok else 1
