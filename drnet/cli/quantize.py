"""``drnet quantize``: post-training static int8 (CPU) with a calibration set, and its check."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="int8 post-training static quantization (CPU, PT2E) and its accuracy check",
        description="Quantize a segmentation model to int8 with a calibration set (PT2E flow, "
        "X86InductorQuantizer, torch.compile), then score float32 and int8 side by side on "
        "validation data: mIoU, labels unchanged, and time per image. Data: a segmentation "
        "dataset folder (list files / Cityscapes / image+mask folders). "
        "Needs: pip install 'drnet[int8]'.",
    )
    parser.add_argument("--model", default="drn_d_22", help="registered backbone name")
    parser.add_argument("--checkpoint", required=True, help="trained DRNSeg weights")
    parser.add_argument("--num-classes", type=int, default=None, help="default: from the data")
    parser.add_argument("--channels", default=None, help="per-level widths of the checkpoint")
    parser.add_argument(
        "--data",
        required=True,
        help="segmentation dataset folder: train split calibrates, val split is scored "
        "(built-in scenes: write them with `drnet data scenes`)",
    )
    parser.add_argument("--calibration", type=int, default=32, help="calibration images")
    parser.add_argument("--val", type=int, default=100, help="validation images scored")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip torch.compile: int8 reference graph, same labels, no speed-up",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drnet.speed.quantize_eval import evaluate_int8

    channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
    report = evaluate_int8(
        args.model,
        args.checkpoint,
        data=args.data,
        num_classes=args.num_classes,
        channels=channels,
        calibration_images=args.calibration,
        val_images=args.val,
        compile=not args.no_compile,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"mIoU float32 {report['miou_fp32']:.4f}, int8 {report['miou_int8']:.4f} "
        f"(change {100 * (report['miou_int8'] - report['miou_fp32']):+.2f} points); labels "
        f"unchanged {report['labels_unchanged']:.4%}; {report['ms_fp32']:.1f} -> "
        f"{report['ms_int8']:.1f} ms/img ({report['speedup']:.2f}x) on {report['val_images']} "
        f"images"
    )
    return 0
