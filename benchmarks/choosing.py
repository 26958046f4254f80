"""How long choosing the fast path takes: fresh (an empty cache) and from the cache, for the
issue's workloads and for the demo's two models as ``drnet serve`` warms them up.

Each case builds the model (random weights, non-trivial BatchNorm), then times
``optimize_for_inference(model, example_input=x)`` with an empty cache folder (every candidate
built and timed on the proxy input) and again with the decision cached (only the chosen path
built). The demo cases mirror ``drnet serve``'s start-up: ``fast_inference(model)`` and one
call on its warm-up image (the classifier at its 48 px canvas, the segmenter at 256x256).

    python benchmarks/choosing.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import drnet
from drnet.speed.benchmark import randomize_batchnorm
from drnet.speed.inference import fast_inference, optimize_for_inference

DEMO_CHANNELS = (16, 16, 32, 64, 64, 64, 64, 64)  # drnet.demo.recipes.default_recipe


def _time(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="choosing")
    parser.add_argument("--skip-large", action="store_true", help="only the demo's models")
    parser.add_argument("--only", default=None, help="only the cases whose label contains this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = []
    if not args.skip_large:
        cases += [
            ("D-22 segmentation 512x1024", "seg", "drn_d_22", None, 19, (512, 1024)),
            ("D-22 segmentation 1024x2048", "seg", "drn_d_22", None, 19, (1024, 2048)),
            ("C-26 classification 224", "cls", "drn_c_26", None, 1000, (224, 224)),
        ]
    demo = [
        ("demo classifier (serve warm-up, 48 px)", "cls", "drn_d_22", DEMO_CHANNELS, 10, (48, 48)),
        (
            "demo segmenter (serve warm-up, 256 px)",
            "seg",
            "drn_d_22",
            DEMO_CHANNELS,
            11,
            (256, 256),
        ),
    ]
    rows = []
    load_start = os.getloadavg()
    for label, task, name, channels, classes, (height, width) in cases + demo:
        if args.only and args.only not in label:
            continue
        if task == "seg":
            model = drnet.create_segmentation_model(name, num_classes=classes, channels=channels)
        else:
            model = drnet.create_model(name, num_classes=classes, channels=channels)
        model = randomize_batchnorm(model.eval())
        x = torch.randn(1, 3, height, width)
        os.environ["DRNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="drnet-choosing-")
        row = {"case": label, "input": [height, width]}
        for when in ("fresh", "cached"):
            if (label, task) in [(d[0], d[1]) for d in demo]:  # as drnet serve starts

                def start(model=model, x=x):
                    deferred = fast_inference(model)
                    with torch.inference_mode():
                        deferred(x)
                    return deferred.fast

                seconds, fast = _time(start)
            else:
                seconds, fast = _time(lambda model=model, x=x: optimize_for_inference(model, x))
            row[f"{when}_s"] = round(seconds, 2)
            row[f"{when}_choice"] = fast.choice.candidate
            if when == "fresh":
                row["medians_ms"] = {k: round(v * 1e3, 1) for k, v in fast.choice.seconds.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    demo_rows = [r for r in rows if r["case"].startswith("demo")]
    summary = {
        "threads": args.threads,
        "load_average": [load_start, os.getloadavg()],
        "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "rows": rows,
        "demo_serve_start_fresh_s": round(sum(r["fresh_s"] for r in demo_rows), 2),
        "demo_serve_start_cached_s": round(sum(r["cached_s"] for r in demo_rows), 2),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))


if __name__ == "__main__":
    main()
