"""``drnet data cityscapes-prepare``: write Cityscapes trainIds label PNGs from labelIds."""

from __future__ import annotations

import argparse

from drnet.errors import DrnetError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cityscapes-prepare",
        help="write gtFine *_labelTrainIds.png (19 classes, 255 = ignore) from *_labelIds.png",
        description="Convert Cityscapes gtFine/*/*/*_gtFine_labelIds.png (34 label ids) into "
        "*_gtFine_labelTrainIds.png (the 19 evaluated classes 0..18, everything else 255), "
        "next to the originals. Existing files are kept unless --overwrite.",
    )
    parser.add_argument("root", nargs="?", help="Cityscapes root (with leftImg8bit/, gtFine/)")
    parser.add_argument("-d", "--data-dir", help="same as ROOT")
    parser.add_argument("--splits", nargs="+", help="gtFine sub-folders to convert (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing files")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.data.cityscapes import prepare_cityscapes

    root = args.root or args.data_dir
    if not root:
        raise DrnetError("give the Cityscapes root: drnet data cityscapes-prepare ROOT")
    counts = prepare_cityscapes(
        root,
        tuple(args.splits) if args.splits else None,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"wrote {counts['written']} trainIds file(s), kept {counts['skipped']} existing")
    return 0
