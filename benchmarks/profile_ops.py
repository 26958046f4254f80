"""Where inference time goes, per op: drnet's torch paths against ONNX Runtime on one graph.

Torch paths (plain eager, eager with BatchNorm folded, the fused oneDNN path) are timed per
module with forward hooks: each convolution grouped by kernel, dilation, widths and output size
(with its GFLOP/s), BatchNorm, ReLU, the residual adds (a block's time less its modules'), and for
segmentation the up-sampling and the arg-max timed on their own. ONNX Runtime runs the same
model's BN-folded export with its profiler on, and its per-node times are grouped by the op
types its optimiser left (FusedConv = conv + bias + add + ReLU in one kernel; ReorderInput /
ReorderOutput = its NCHWc blocked layout; NCHWc convolutions are reported as Conv, with the
adds and ReLUs they absorbed gone from the list). Medians over --repeats runs, after one warm-up.

    python benchmarks/profile_ops.py --model drn_d_22 --size 512x1024 --threads 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import drnet
from drnet.speed.benchmark import randomize_batchnorm
from drnet.speed.fused import ConvAct
from drnet.speed.inference import build_candidate


def _conv_key(module: nn.Module, out: torch.Tensor) -> str:
    c_out, c_in, kh, kw = module.weight.shape
    dilation, stride = module.dilation[0], module.stride[0]
    return f"conv {kh}x{kw} d{dilation} s{stride} {c_in}->{c_out} @ {out.shape[-2]}x{out.shape[-1]}"


def _conv_flops(module: nn.Module, out: torch.Tensor) -> float:
    c_out, c_in, kh, kw = module.weight.shape
    return 2.0 * c_out * c_in * kh * kw * out.shape[-2] * out.shape[-1] * out.shape[0]


def profile_torch(model: nn.Module, run, repeats: int) -> dict[str, dict[str, float]]:
    """Per category: median ms per run (and GFLOP/s for convolutions)."""
    totals: dict[str, list[float]] = collections.defaultdict(list)
    flops: dict[str, float] = {}  # per conv group, summed over its layers (one run)
    run_flops: dict[str, float] = collections.defaultdict(float)
    current: dict[str, float] = collections.defaultdict(float)
    starts: dict[int, float] = {}
    leaf_times: list[tuple[float, float]] = []  # (start, seconds) of this run's leaf modules
    blocks = [m for m in model.modules() if hasattr(m, "residual")]
    leaves = [m for m in model.modules() if not list(m.children()) or isinstance(m, ConvAct)]
    leaves = [m for m in leaves if not isinstance(m, nn.Identity)]
    handles = []

    def pre(module, _inputs):
        starts[id(module)] = time.perf_counter()

    def leaf_post(module, inputs, out):
        elapsed = time.perf_counter() - starts[id(module)]
        if isinstance(module, (nn.Conv2d, ConvAct)):
            key = _conv_key(module, out)
            if isinstance(module, ConvAct):
                fused = ("+add" if len(inputs) > 1 else "") + ("+ReLU" if module.relu else "")
                key += f" (+bias{fused} fused)"
            run_flops[key] += _conv_flops(module, out)
        elif isinstance(module, nn.BatchNorm2d):
            key = "batchnorm"
        elif isinstance(module, nn.ReLU):
            key = "relu"
        else:
            key = type(module).__name__
        current[key] += elapsed
        leaf_times.append((starts[id(module)], elapsed))

    def block_post(module, _inputs, _out):
        start = starts[id(module)]
        elapsed = time.perf_counter() - start
        inner = sum(seconds for begun, seconds in leaf_times if begun >= start)
        current["residual add (block less its modules)"] += max(0.0, elapsed - inner)

    for leaf in leaves:
        handles += [leaf.register_forward_pre_hook(pre), leaf.register_forward_hook(leaf_post)]
    for block in blocks:
        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(block_post)]
    try:
        with torch.inference_mode():
            run()  # warm-up
            for _ in range(repeats):
                current.clear()
                leaf_times.clear()
                run_flops.clear()
                start = time.perf_counter()
                extra = run()
                current["total"] = time.perf_counter() - start
                for key, value in (extra or {}).items():
                    current[key] += value
                for key, value in current.items():
                    totals[key].append(value)
                flops.update(run_flops)
    finally:
        for handle in handles:
            handle.remove()
    table = {}
    for key, values in totals.items():
        ms = statistics.median(values) * 1e3
        row = {"ms": ms}
        if key in flops:
            row["gflops"] = flops[key] / (ms / 1e3) / 1e9
        table[key] = row
    return table


def profile_onnxruntime(folded: nn.Module, x: torch.Tensor, repeats: int, threads: int) -> dict:
    """ONNX Runtime's own profiler on the BN-folded export: ms per run by op type."""
    import onnxruntime as ort

    from drnet.speed.backends import export_bytes

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(
        export_bytes(folded), options, providers=["CPUExecutionProvider"]
    )
    array = x.numpy()
    session.run(None, {"input": array})
    for _ in range(repeats):
        session.run(None, {"input": array})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_type: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    runs = [e for e in events if e.get("name") == "model_run"]
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            by_type[op] += event["dur"] / 1e3
            count[op] += 1
    n_runs = max(1, len(runs))
    table = {
        op: {"ms": total / n_runs, "nodes": count[op] // n_runs}
        for op, total in sorted(by_type.items(), key=lambda kv: -kv[1])
    }
    table["total (model_run)"] = {"ms": statistics.median(e["dur"] for e in runs[1:] or runs) / 1e3}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="drn_d_22")
    parser.add_argument(
        "--task", default="segmentation", choices=("segmentation", "classification")
    )
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    if args.task == "segmentation":
        model = drnet.create_segmentation_model(args.model, num_classes=19)
    else:
        model = drnet.create_model(args.model, num_classes=1000)
    model = randomize_batchnorm(model.eval())
    x = torch.randn(1, 3, height, width)
    segmentation = args.task == "segmentation"
    results: dict[str, dict] = {}

    def timed_tail(low_fn, up_fn):
        def run():
            low = low_fn()
            start = time.perf_counter()
            labels = up_fn(low)
            middle = time.perf_counter()
            if labels.dim() == 4:  # logits: the arg-max still to take
                labels.argmax(1)
                return {"up-sampling": middle - start, "arg-max": time.perf_counter() - middle}
            return {"up-sampling + arg-max (labels in bands)": middle - start}

        return run

    if segmentation:
        results["eager"] = profile_torch(
            model,
            timed_tail(
                lambda: model.seg(model.base(x)), lambda low: model.upsample(low, (height, width))
            ),
            args.repeats,
        )
    else:
        results["eager"] = profile_torch(model, lambda: model(x) and None, args.repeats)
    for name in ("fold", "fast_nchw", "fast_channels_last"):
        fast = build_candidate(model, name)
        xx = fast._prepare(x)
        if segmentation:
            run = timed_tail(
                lambda f=fast, xx=xx: f._lowres(xx),
                lambda low, f=fast: f.upsample.labels(low, (height, width)),
            )
        else:
            run = lambda f=fast, xx=xx: f(xx) and None  # noqa: E731
        results[name] = profile_torch(fast.model, run, args.repeats)
    try:
        folded = build_candidate(model, "fold").model
        results["onnxruntime"] = profile_onnxruntime(folded, x, args.repeats, args.threads)
    except ImportError:
        results["onnxruntime"] = {}
    name = args.name or f"profile_{args.model}_{args.task}_{height}x{width}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
    }
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "paths": results}, indent=1))
    lines = [f"# per-op profile: {args.model} {args.task} {height}x{width}, {meta}", ""]
    for path, table in results.items():
        lines += [f"## {path}", "", "| op | ms/run | GFLOP/s | nodes |", "|---|---:|---:|---:|"]
        for key, row in sorted(table.items(), key=lambda kv: -kv[1]["ms"]):
            gflops = f"{row['gflops']:.0f}" if "gflops" in row else ""
            lines.append(f"| {key} | {row['ms']:.1f} | {gflops} | {row.get('nodes', '')} |")
        lines.append("")
    (out / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
