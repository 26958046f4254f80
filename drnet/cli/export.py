"""``drnet export onnx`` (ONNX with dynamic batch/size, checked against eager with onnxruntime)
and ``drnet export hub`` (the Hugging Face Hub layout)."""

from __future__ import annotations

import argparse

from drnet.cli import positive_int
from drnet.cli.vocab import (
    add_batch_size,
    add_json,
    add_model,
    add_num_classes,
    add_output_dir,
    add_pretrained,
    add_weights,
    model_from_args,
    write_json,
)
from drnet.errors import DrnetError


def _size(text: str) -> tuple[int, int]:
    """HEIGHTxWIDTH, HEIGHT,WIDTH (as --help shows the default) or SIZE (square)."""
    parts = text.lower().replace("x", " ").replace(",", " ").split()
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH, HEIGHT,WIDTH or SIZE, got {text!r}"
        )
    return int(parts[0]), int(parts[1])


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model (ONNX, Hugging Face Hub)",
        description="Export a model to another format.",
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    onnx = formats.add_parser(
        "onnx",
        help="ONNX with dynamic batch, height and width, checked with onnxruntime",
        description="Export a classification or segmentation model to ONNX (input 'input' "
        "[N,3,H,W]; output 'logits' or, for segmentation, 'out' [N,classes,H,W]), then run it "
        "in onnxruntime on two input sizes and print the difference from eager PyTorch. "
        "Needs: pip install 'drnet[onnx]'.",
    )
    onnx.add_argument("output", metavar="OUTPUT", help="the .onnx file to write")
    add_model(onnx, None, "architecture (default: the one --weights records, else drn_d_22)")
    onnx.add_argument(
        "--task",
        choices=("segmentation", "classification"),
        default=None,
        help="DRNSeg or the classifier (default: the task of --weights, else segmentation)",
    )
    add_num_classes(onnx, "classes (default: 19 segmentation, 1000 classification)")
    add_weights(onnx, "weights to load (path or URL; default: random initialisation)")
    add_pretrained(onnx, "the published weights for the task (Cityscapes / ImageNet)")
    onnx.add_argument("--size", type=_size, default=(512, 1024), help="example input HxW")
    add_batch_size(onnx, 1, "example input batch")
    onnx.add_argument("--opset", type=positive_int, default=17, help="ONNX opset")
    onnx.add_argument("--static", action="store_true", help="fixed input shape (no dynamic axes)")
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    onnx.add_argument(
        "--dynamo", action="store_true", help="torch.export-based exporter (needs onnxscript)"
    )
    add_json(onnx, "the report")
    onnx.set_defaults(func=run_onnx)
    hub = formats.add_parser(
        "hub",
        help="the Hugging Face Hub layout (model.safetensors, config.json, README.md)",
        description="Write a run (or any --weights source) as a Hugging Face Hub folder: "
        "model.safetensors, a config.json that drnet.from_pretrained and timm's hf-hub: loader "
        "read, and a README.md model card with the run's metrics and preprocessing. Upload it "
        "with `huggingface-cli upload OWNER/NAME DIR`. Needs: pip install 'drnet[hub]'.",
    )
    hub.add_argument("run", metavar="RUN", help="run directory, checkpoint or .safetensors file")
    add_output_dir(hub, None, "the folder to write (created if needed; required)")
    add_model(hub, None, "architecture, for a checkpoint that does not record it")
    add_json(hub, "the written files and the card")
    hub.set_defaults(func=run_hub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_onnx(args: argparse.Namespace) -> int:
    from drnet.speed.onnx_export import export_onnx

    model = model_from_args(args)
    report = export_onnx(
        model,
        args.output,
        input_size=(args.batch_size, 3, *args.size),
        opset=args.opset,
        dynamic=not args.static,
        check=not args.no_check,
        dynamo=args.dynamo,
    )
    json_file = write_json(report.to_dict(), args.json) if args.json else None
    if args.json == "-":
        return 0  # the JSON on stdout replaces the text
    print(f"wrote {report.path} (opset {report.opset}, {report.exporter} exporter)")
    print("".join(f"{_check_line(check)}\n" for check in report.checks), end="")
    if json_file:
        print(f"wrote {json_file}")
    return 0


def _check_line(check: object) -> str:
    """One line of an onnxruntime-against-eager check of ``export onnx``."""
    labels = "" if check.labels_equal is None else f", labels equal {check.labels_equal:.4%}"
    return (
        f"onnxruntime vs eager on {'x'.join(map(str, check.input_shape))}: max abs diff "
        f"{check.max_abs_diff:.3e}, max rel diff {check.max_rel_diff:.3e}{labels}"
    )


def run_hub(args: argparse.Namespace) -> int:
    from drnet.integrations.hub import run_metrics, save_pretrained
    from drnet.models.loading import load_model

    if not args.output_dir:
        raise DrnetError("drnet export hub needs -o/--output-dir DIR (the folder to write)")
    model, card = load_model(args.run, model=args.model)
    folder = save_pretrained(model, args.output_dir, card=card, metrics=run_metrics(args.run))
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    report = {"output_dir": str(folder), "files": files, "card": card.to_dict()}
    json_file = write_json(report, args.json) if args.json else None
    if args.json == "-":
        return 0
    print(f"wrote {folder}: {', '.join(files)} ({card.model}, {card.task})")
    if json_file:
        print(f"wrote {json_file}")
    return 0
