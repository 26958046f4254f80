"""``drnet demo``: the paper's three experiments in miniature on the built-in data."""

from __future__ import annotations

import argparse
import sys

from drnet.cli import positive_int
from drnet.cli.vocab import add_device, add_dtype, add_no_progress, add_output_dir, add_workers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train and evaluate small DRNs on built-in scenes; write an HTML report",
        description="Generate scenes of Fashion-MNIST items, train a small DRN classifier (top-1, "
        "weakly-supervised localization) and segmenter (mIoU), render activation maps and write "
        "OUTPUT_DIR/report.html and OUTPUT_DIR/metrics.json, within a time budget (6 minutes on a "
        "2-core CPU; 60 with --paper).",
    )
    add_output_dir(parser, "demo-out", "where to write (an earlier demo's output is replaced)")
    parser.add_argument(
        "--paper",
        action="store_true",
        help="the paper's comparison: ResNet-18, DRN-A-18, DRN-B-26, DRN-C-26, DRN-D-22",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="wall-time budget the run is planned to fit (default 6, or 60 with --paper)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny networks and data: a smoke test of the pipeline"
    )
    add_device(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of scenes and training")
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        help="run the whole demo N times (seeds SEED..SEED+N-1, each in OUTPUT/seed-K with 1/N "
        "of the budget) and report the mean and spread over the runs",
    )
    parser.add_argument(
        "--fashion-mnist",
        metavar="DIR",
        default=None,
        help="the full Fashion-MNIST (folder of the four idx files) instead of the packaged subset",
    )
    add_workers(parser, 0, "data-loading processes (0: render the scenes in-process)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1, or more where a probe finds them clearly faster)",
    )
    parser.add_argument(
        "--cls-images",
        type=int,
        default=None,
        help="training scenes per classifier instead of the planned number (reproduce a run; "
        "a fixed plan is trained in full, without the budget's hard stop)",
    )
    parser.add_argument(
        "--seg-images",
        type=int,
        default=None,
        help="training scenes per segmenter instead of the planned number",
    )
    add_dtype(
        parser,
        default="auto",
        help="what training and evaluation compute in: auto trains under bf16 autocast and "
        "evaluates in bf16 where the CPU (avx512_bf16/AMX) or GPU has native bf16, and plans the "
        "scene counts from that faster speed; float32 turns it off",
    )
    add_no_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.demo.run import run_demo, summary_lines

    config = _config(args)
    metrics = run_demo(config)
    if config.seeds > 1:
        from drnet.demo.seeds import summary_lines as seeds_summary

        print("\n".join(seeds_summary(metrics, config.output_dir)))
    else:
        print("\n".join(summary_lines(metrics, config.output_dir)))
    sys.stdout.flush()
    return 0


def _config(args: argparse.Namespace):
    """The :class:`drnet.demo.run.DemoConfig` of a parsed ``drnet demo`` command line."""
    import time

    from drnet.demo.run import DemoConfig, process_age

    return DemoConfig(
        output_dir=args.output_dir,
        paper=args.paper,
        quick=args.quick,
        budget_minutes=args.budget_minutes,
        device=args.device,
        seed=args.seed,
        seeds=args.seeds,
        fashion_mnist=args.fashion_mnist,
        workers=args.workers,
        threads=args.threads,
        progress=not args.no_progress,
        cls_images=args.cls_images,
        seg_images=args.seg_images,
        dtype=args.dtype,
        started=time.monotonic() - process_age(),
    )
