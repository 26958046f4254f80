"""The fast path against eager for every registered model (classification, 224 px, batch 1).

The fast path times its candidates (eager with BatchNorm folded, the fused NCHW and channels_last
paths, the Winograd path, ONNX Runtime and OpenVINO where installed) on the example input and
keeps another than the folded baseline only when it measured faster, so it should never lose to
eager; this checks it on every model, side by side (the fast path chosen afresh for each).

    python benchmarks/all_models.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from drnet.models import list_models
from drnet.speed.benchmark import BenchmarkConfig, run_benchmark


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", default=None, help="comma-separated (default: all)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else list_models()
    rows = []
    lines = [
        "| model | eager ms | fast ms | speed-up | fast path chose | max rel diff | top-1 equal |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name in names:
        config = BenchmarkConfig(
            model=name,
            task="classification",
            height=args.size,
            width=args.size,
            inference_variants=("eager", "fast"),
            repeats=args.repeats,
            measure_peak=False,
            measure_memory=False,
        )
        result = run_benchmark(config)
        eager, fast = result["rows"]
        rows.append({"model": name, "eager": eager, "fast": fast, "machine": result["machine"]})
        line = (
            f"| {name} | {eager['ms_per_img']:.1f} | {fast['ms_per_img']:.1f} | "
            f"{fast['speedup']:.2f}x | {fast['note'].split(' (')[0]} | "
            f"{fast['max_rel_diff']:.1e} | {fast['labels_equal']:.0%} |"
        )
        lines.append(line)
        print(line, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "all_models.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "all_models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
