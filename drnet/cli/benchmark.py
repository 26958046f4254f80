"""``drnet benchmark``: eager baseline vs the fast variants, side by side in one process."""

from __future__ import annotations

import argparse
import sys

from drnet.speed.benchmark import INFERENCE_VARIANTS, TRAINING_VARIANTS


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


def _channels(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(","))


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
    parser.add_argument("--model", default="drn_d_22", help="registered backbone name")
    parser.add_argument(
        "--task", choices=("segmentation", "classification"), default="segmentation"
    )
    parser.add_argument(
        "--size", type=_size, default=None, help="HxW (default 512x1024 seg, 224 cls)"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--mode", choices=("inference", "training", "both"), default="inference")
    parser.add_argument(
        "--variants",
        type=_names(INFERENCE_VARIANTS),
        default=("eager", "fast"),
        help=f"inference variants, comma-separated ({', '.join(INFERENCE_VARIANTS)})",
    )
    parser.add_argument(
        "--train-variants",
        type=_names(TRAINING_VARIANTS),
        default=("eager", "channels_last", "grad_checkpoint"),
        help=f"training variants ({', '.join(TRAINING_VARIANTS)}; amp only on CUDA)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--channels", type=_channels, default=None, help="per-level widths")
    parser.add_argument("--checkpoint", default=None, help="weights to load (path or URL)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-peak", action="store_true", help="skip the conv peak measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory runs")
    parser.add_argument("--out", default="benchmarks/results", help="folder for JSON and .md")
    parser.add_argument("--name", default=None, help="file stem (default from the settings)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from drnet.speed.benchmark import (
        BenchmarkConfig,
        default_stem,
        markdown_table,
        run_benchmark,
        write_results,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ((512, 1024) if args.task == "segmentation" else (224, 224))
    config = BenchmarkConfig(
        model=args.model,
        task=args.task,
        height=size[0],
        width=size[1],
        batch=args.batch,
        num_classes=args.num_classes,
        mode=args.mode,
        inference_variants=args.variants,
        training_variants=args.train_variants,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        channels=args.channels,
        checkpoint=args.checkpoint,
        measure_peak=not args.no_peak,
        measure_memory=not args.no_memory,
    )

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[benchmark] {message}", file=sys.stderr, flush=True)

    result = run_benchmark(config, log)
    result["command"] = "drnet " + " ".join(sys.argv[1:]) if sys.argv else None
    paths = write_results(result, args.out, args.name or default_stem(config))
    print(markdown_table(result))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0
