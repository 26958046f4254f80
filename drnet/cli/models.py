"""``drnet models``: every registered variant with its size, cost and weights."""

from __future__ import annotations

import argparse

from drnet.cli import positive_int
from drnet.cli.vocab import add_json, write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the model variants (parameters, FLOPs, output stride, weights)",
        description="List every registered model: parameters (1000 classes), GFLOPs of one "
        "forward pass at the given size (multiply-add = 2 FLOPs), output stride, and the "
        "published weights (imagenet / cityscapes).",
    )
    parser.add_argument("filter", nargs="?", default="", help="name filter, e.g. 'drn_d*'")
    parser.add_argument(
        "--image-size", type=positive_int, default=224, help="input size for FLOPs"
    )
    add_json(parser, "the table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.models import list_models
    from drnet.models.summary import model_table

    names = list_models(args.filter)
    if not names:
        print(f"no model matches {args.filter!r}")
        return 1
    rows = model_table(names, args.image_size)
    json_file = write_json(rows, args.json) if args.json else None
    if args.json == "-":
        return 0  # the JSON on stdout replaces the table
    width = max(11, *(len(row["name"]) for row in rows))
    gflops = "GFLOPs@" + str(args.image_size)
    header = f"{'model':<{width}} {'family':<7} {'params':>12} {gflops:>12}"
    print(header + f" {'stride':>6}  weights")
    for row in rows:
        print(
            f"{row['name']:<{width}} {row['family']:<7} {row['params']:>12,} "
            f"{row['gflops']:>12.2f} {row['output_stride']:>6}  {', '.join(row['weights']) or '-'}"
        )
    if json_file:
        print(f"wrote {json_file}")
    return 0
