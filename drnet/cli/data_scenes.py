"""``drnet data scenes``: write built-in scene datasets (Fashion-MNIST items on textures)."""

from __future__ import annotations

import argparse

from drnet.cli.vocab import RawDescriptionHelpFormatter, add_no_progress

DESCRIPTION = """\
Compose Fashion-MNIST items onto texture (or black) backgrounds and write them with exact labels.

  classification  one item per scene: ImageFolder trees train/, val/ and holdout/, plus boxes
                  (VOC XML and/or CSV) for weakly-supervised localization. holdout/ uses training
                  items that train scenes never use, for choosing thresholds.
  segmentation    1..k items per scene: label PNGs (0 background, k+1 for Fashion-MNIST class k),
                  {train,val}_{images,labels}.txt and info.json, as the original DRN code reads.
"""

EPILOG = """\
examples:
  drnet data scenes classification data/cls --train 5000 --test 1000
  drnet data scenes segmentation data/seg --train 3000 --test 500 --canvas 96 --items 1 4
  drnet data scenes classification data/cls --box-format csv --fashion-mnist ~/fashion-mnist

Items come from --fashion-mnist DIR (the four canonical idx .gz files), else $DRNET_FASHION_MNIST,
else /usr/share/datasets/fashion-mnist/ (Debian's dataset-fashion-mnist), else the subset packaged
with drnet (800 training and 200 test items per class); --fashion-mnist packaged forces the subset.
Train scenes use training items only, val scenes test items only; the same arguments and item
source always give byte-identical files. See docs/data.md, "Scenes", for the formats.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scenes",
        help="write scenes of Fashion-MNIST items for classification, localization, segmentation",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", choices=("classification", "segmentation"), help="which format")
    # the output folder: positional OUTPUT_DIR, or -o/--output-dir like every other command
    parser.add_argument(
        "output_dir",
        nargs="?",
        metavar="OUTPUT_DIR",
        default=argparse.SUPPRESS,
        help="output folder (new or empty)",
    )
    parser.add_argument(
        "-o", "--output-dir", dest="output_dir", metavar="DIR", help="same as OUTPUT_DIR"
    )
    parser.require("output_dir", "OUTPUT_DIR (or -o/--output-dir)")
    parser.add_argument("--train", type=int, default=5000, help="training scenes")
    parser.add_argument("--test", type=int, default=1000, help="val scenes, from test items")
    parser.add_argument(
        "--holdout",
        type=int,
        default=None,
        help="classification: holdout scenes (default: as many as --test)",
    )
    parser.add_argument(
        "--canvas", type=int, default=None, help="scene side in pixels (64 classification, 96 seg)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="item size as a multiple of 28 px (default 0.8 1.4 classification, 1.0 2.0 seg)",
    )
    parser.add_argument(
        "--items",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(1, 4),
        help="segmentation: items per scene",
    )
    parser.add_argument(
        "--background", choices=("texture", "black"), default="texture", help="scene background"
    )
    parser.add_argument(
        "--box-format",
        choices=("voc", "csv", "both"),
        default="both",
        help="classification: VOC XML per image, a CSV per split, or both",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    parser.add_argument(
        "--fashion-mnist",
        metavar="DIR",
        default=None,
        help="folder of the canonical Fashion-MNIST idx files, or 'packaged'",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace scenes written earlier into OUT_DIR"
    )
    add_no_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.data.scenes import make_classification_scenes, make_segmentation_scenes

    common = dict(
        background=args.background,
        seed=args.seed,
        source=args.fashion_mnist,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if args.task == "classification":
        summary = make_classification_scenes(
            args.output_dir, args.train, args.test, args.holdout, canvas=args.canvas or 64,
            scale=args.scale or (0.8, 1.4), box_format=args.box_format, **common,
        )  # fmt: skip
    else:
        summary = make_segmentation_scenes(
            args.output_dir, args.train, args.test, canvas=args.canvas or 96, items=args.items,
            scale=args.scale or (1.0, 2.0), **common,
        )  # fmt: skip
    print(f"wrote {summary}")
    print("\n".join(_layout_lines(args, summary.out_dir)))
    return 0


def _layout_lines(args: argparse.Namespace, out: object) -> list[str]:
    """Where the scenes of ``drnet data scenes`` are, and in which formats."""
    if args.task != "classification":
        return [f"  lists:  {out}/{{train,val}}_{{images,labels}}.txt; stats: {out}/info.json"]
    lines = [f"  images: {out}/{{train,val,holdout}}/<class>/*.png (ImageFolder)"]
    if args.box_format in ("csv", "both"):
        lines.append(
            f"  boxes:  {out}/boxes_<split>.csv (image,x1,y1,x2,y2,label; 0-based, ends excl.)"
        )
    if args.box_format in ("voc", "both"):
        lines.append(f"  boxes:  {out}/boxes/<split>/<class>/*.xml (PASCAL VOC, 1-based inclusive)")
    return lines
