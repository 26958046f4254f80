"""``drnet data cityscapes-prepare``: write Cityscapes trainIds label PNGs from labelIds."""

from __future__ import annotations

import argparse

from drnet.cli.vocab import add_data, add_no_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cityscapes-prepare",
        help="write gtFine *_labelTrainIds.png (19 classes, 255 = ignore) from *_labelIds.png",
        description="Convert Cityscapes gtFine/*/*/*_gtFine_labelIds.png (34 label ids) into "
        "*_gtFine_labelTrainIds.png (the 19 evaluated classes 0..18, everything else 255), "
        "next to the originals. Existing files are kept unless --overwrite.",
    )
    add_data(parser, "Cityscapes root (with leftImg8bit/, gtFine/)")
    parser.add_argument("--splits", nargs="+", help="gtFine sub-folders to convert (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing files")
    add_no_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.data.cityscapes import prepare_cityscapes

    counts = prepare_cityscapes(
        args.data_dir,
        tuple(args.splits) if args.splits else None,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"wrote {counts['written']} trainIds file(s), kept {counts['skipped']} existing")
    return 0
