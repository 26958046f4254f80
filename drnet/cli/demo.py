"""``drnet demo``: the paper's three experiments in miniature on the built-in data."""

from __future__ import annotations

import argparse

PLAN = """drnet demo (being built) will:
  1. generate scenes from the packaged Fashion-MNIST items and CC0 textures,
  2. train a small-width DRN classifier; report top-1 and weakly-supervised localization error,
  3. train a small-width DRN segmenter; report mIoU beside the all-background baseline,
  4. render per-level activation maps and a gridding score,
  5. write demo-out/report.html and demo-out/metrics.json.
Until it lands this command only prints this plan."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the built-in demo (prints its plan for now)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(PLAN)
    return 0
