"""Int8 and bf16 accuracy with trained weights (float32 vs int8 vs bf16 mIoU).

On the demo's trained segmenter (what issue 12 asks: a well-trained model), after ``drnet demo``:

    python benchmarks/int8_accuracy.py --checkpoint demo-out/models/drn_d_22/segmentation \
        --data demo-out/data/segmentation --out benchmarks/results

Without ``--checkpoint`` it writes the built-in Fashion-MNIST scenes (``drnet.data.scenes``) and
trains a DRNSeg on them with a plain SGD loop (~10 min on 2 CPU cores). Either way it runs
:func:`drnet.speed.quantize_eval.evaluate_int8`: calibration on training scenes, mIoU of float32,
int8 and the bf16 fast path on the val scenes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import drnet
from drnet.constants import IGNORE_INDEX
from drnet.data.scenes import make_segmentation_scenes
from drnet.data.segmentation import open_segmentation_dataset
from drnet.speed.quantize_eval import evaluate_int8


def train(args: argparse.Namespace, data: Path, checkpoint: Path) -> dict:
    torch.manual_seed(args.seed)
    dataset = open_segmentation_dataset(data, "train")
    model = drnet.create_segmentation_model(
        args.model, num_classes=dataset.num_classes, channels=args.channels
    ).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=0
    )
    total = args.epochs * len(loader)
    step, start, loss_value = 0, time.perf_counter(), float("nan")
    for epoch in range(args.epochs):
        for images, labels in loader:
            if torch.rand(()) < 0.5:  # horizontal flip of the whole batch
                images, labels = images.flip(-1), labels.flip(-1)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * (1 - step / total) ** 0.9
            loss = F.cross_entropy(model(images)["out"], labels.long(), ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {loss_value:.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    torch.save(model.state_dict(), checkpoint)
    return {"train_steps": step, "train_s": time.perf_counter() - start, "final_loss": loss_value}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="drn_d_22")
    parser.add_argument(
        "--channels",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        default=(16, 16, 32, 64, 128, 128, 128, 128),
        help="per-level widths (a small-width DRN, as the demo trains)",
    )
    parser.add_argument("--work", default="/tmp/drnet-int8-accuracy", help="scenes + weights")
    parser.add_argument(
        "--checkpoint", default=None, help="trained weights or a run folder (skip training)"
    )
    parser.add_argument(
        "--data", default=None, help="a segmentation dataset folder (default: scenes in --work)"
    )
    parser.add_argument("--train-scenes", type=int, default=2000)
    parser.add_argument("--val-scenes", type=int, default=200)
    parser.add_argument("--canvas", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    work = Path(args.work)
    data = Path(args.data) if args.data else work / "scenes"
    if not args.data and not (data / "info.json").is_file():
        make_segmentation_scenes(
            data, args.train_scenes, args.val_scenes, canvas=args.canvas, seed=args.seed
        )
    training: dict = {}
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "drnseg.pth"
    if args.checkpoint is None and not checkpoint.is_file():
        training = train(args, data, checkpoint)
    run_folder = checkpoint.is_dir()  # a run's model.json names the model and its widths
    report = evaluate_int8(
        checkpoint,
        data,
        model=None if run_folder else args.model,
        channels=None if run_folder else args.channels,
        calibration_images=args.calibration,
        val_images=args.val_scenes,
    )
    report.update(training)
    report["channels"] = (
        json.loads((checkpoint / "model.json").read_text())["channels"]
        if (run_folder)
        else list(args.channels)
    )
    report["command"] = "python " + " ".join(sys.argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    widths = ",".join(map(str, report["channels"]))
    print(
        "| model | widths | val images | path | mIoU | change (points) | labels unchanged | "
        "ms/img |\n|---|---|---:|---|---:|---:|---:|---:|"
    )
    print(
        f"| {report['model']} | {widths} | {report['val_images']} | fp32 | "
        f"{report['miou_fp32']:.4f} | | | {report['ms_fp32']:.1f} |"
    )
    for path, suffix in (("int8", "_int8"), ("bf16", "_bf16")):
        change = 100 * (report[f"miou{suffix}"] - report["miou_fp32"])
        unchanged = report["labels_unchanged" if path == "int8" else "labels_unchanged_bf16"]
        print(
            f"| | | | {path} | {report[f'miou{suffix}']:.4f} | {change:+.2f} | "
            f"{100 * unchanged:.2f}% | {report[f'ms{suffix}']:.1f} |"
        )
    return 0 if math.isfinite(report["miou_int8"]) else 1


if __name__ == "__main__":
    sys.exit(main())
