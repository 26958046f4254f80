"""``drnet benchmark``: eager baseline vs the fast variants, side by side in one process."""

from __future__ import annotations

import argparse
import logging
import sys

from drnet.cli import non_negative_int, positive_int
from drnet.cli.vocab import (
    add_batch_size,
    add_channels,
    add_device,
    add_model,
    add_no_progress,
    add_num_classes,
    add_output_dir,
    add_weights,
)
from drnet.constants import INFERENCE_VARIANTS, TRAINING_VARIANTS

log = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", " ").replace(",", " ").split()
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH or SIZE, got {text!r}")
    return int(parts[0]), int(parts[1])


def _names(choices: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(choices)}"
            )
        return names

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="time the eager baseline against the fast variants (inference, training)",
        description="Measure this machine's conv peak, then the eager fp32 NCHW baseline and "
        "each variant in the same process on the same weights and input (medians of "
        "interleaved repeats): ms/img, img/s, GFLOP (multiply-add = 2), GFLOP/s, %% of the "
        "measured peak, peak memory, and the output difference from the baseline. "
        "Segmentation inference times image -> label map. Writes JSON and a markdown table.",
    )
    add_model(parser, None, "architecture (default: the one --weights records, else drn_d_22)")
    parser.add_argument(
        "--task",
        choices=("segmentation", "classification"),
        default=None,
        help="DRNSeg (image -> label map) or the classifier (default: the task of --weights, "
        "else segmentation)",
    )
    parser.add_argument(
        "--size", type=_size, default=None, help="input HxW (default: 512x1024 seg, 224 cls)"
    )
    add_batch_size(parser, 1)
    add_num_classes(parser, "classes (default: 19 segmentation, 1000 classification)")
    parser.add_argument(
        "--mode",
        choices=("inference", "training", "both"),
        default="inference",
        help="what to time",
    )
    parser.add_argument(
        "--variants",
        type=_names(INFERENCE_VARIANTS),
        default=("eager", "fast"),
        help=f"inference variants, comma-separated ({', '.join(INFERENCE_VARIANTS)}); "
        "'--variants eager' times the plain model alone; bf16: the fast path in bfloat16 "
        "(emulated, and slow, on CPUs without native bf16)",
    )
    parser.add_argument(
        "--train-variants",
        type=_names(TRAINING_VARIANTS),
        default=("eager", "engine", "channels_last", "grad_checkpoint"),
        help=f"training variants ({', '.join(TRAINING_VARIANTS)}; amp and bf16: autocast on GPU, "
        "or bf16 + channels_last on CPUs with native bf16, skipped elsewhere)",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=5, help="timed runs per variant"
    )
    parser.add_argument(
        "--warmup", type=non_negative_int, default=1, help="untimed runs before timing"
    )
    add_device(parser)
    add_channels(parser)
    add_weights(parser, "weights to load (path or URL; default: random initialisation)")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads")
    parser.add_argument("--no-peak", action="store_true", help="skip the conv peak measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory runs")
    add_output_dir(parser, "benchmarks/results", "folder for the JSON and .md", old=("--out",))
    parser.add_argument("--name", default=None, help="file stem (default: from the settings)")
    add_no_progress(parser, quiet_alias=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from drnet.models.loading import read_run
    from drnet.speed.benchmark import (
        BenchmarkConfig,
        default_stem,
        markdown_table,
        run_benchmark,
        write_results,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    model, task, num_classes = args.model, args.task, args.num_classes
    channels, checkpoint = args.channels, None
    if args.weights:  # a run, a checkpoint or an official file: it says what it holds
        run = read_run(
            args.weights, model=model, task=task, num_classes=num_classes, default_model="drn_d_22"
        )
        model, task, num_classes = run.card.model, run.card.task, run.card.num_classes
        channels, checkpoint = channels or run.card.channels, run.checkpoint
    model, task = model or "drn_d_22", task or "segmentation"
    size = args.size or ((512, 1024) if task == "segmentation" else (224, 224))
    config = BenchmarkConfig(
        model=model,
        task=task,
        height=size[0],
        width=size[1],
        batch=args.batch_size,
        num_classes=num_classes,
        mode=args.mode,
        inference_variants=args.variants,
        training_variants=args.train_variants,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        channels=tuple(channels) if channels else None,
        checkpoint=checkpoint,
        measure_peak=not args.no_peak,
        measure_memory=not args.no_memory,
    )

    def progress(message: str) -> None:
        if not args.no_progress:
            log.info("[benchmark] %s", message)

    result = run_benchmark(config, progress)
    result["command"] = "drnet " + " ".join(sys.argv[1:]) if sys.argv else None
    paths = write_results(result, args.output_dir, args.name or default_stem(config))
    print(markdown_table(result))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0
