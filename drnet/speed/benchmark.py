"""Side-by-side speed measurements: eager baseline vs each fast variant, in one process.

Every figure is a median over repeats, measured in the same run as the baseline (plain eager
fp32, NCHW, BatchNorm unfused) on the same weights and input. Inference and training are timed
separately; before either, the machine's own conv peak is measured (a large 3x3 conv) so that
achieved GFLOP/s can be read as a share of what this machine can do.

Inference workloads: classification = logits; segmentation = image -> label map (arg-max at the
input size), the baseline being ``model(x)["out"].argmax(1)``.
Training workload: forward, loss (cross entropy, ignore 255 for segmentation), backward and an SGD
step.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import drnet
from drnet.constants import IGNORE_INDEX, INFERENCE_VARIANTS, TRAINING_VARIANTS
from drnet.engine.layout import choose_channels_last
from drnet.engine.precision import (
    amp_dtype,
    amp_unavailable_reason,
    autocast_context,
    native_bf16,
)
from drnet.engine.trainer import channels_last_is_safe
from drnet.errors import DrnetError
from drnet.machine import machine_info
from drnet.models.loading import logits_of
from drnet.models.summary import count_flops
from drnet.speed.backends import backend_installed, backend_versions
from drnet.speed.chooser import proxy_shape
from drnet.speed.inference import (
    BACKEND_CANDIDATES,
    InferenceModel,
    build_candidate,
    optimize_for_inference,
)
from drnet.speed.timing import measure, median, synchronize

_LOG = logging.getLogger(__name__)  # progress messages when the caller passes no ``log``

LOW_PRECISION_VARIANTS = ("bf16",)  # their % of peak is against the bf16 conv peak
DEFAULT_INFERENCE = ("eager", "fast")
DEFAULT_TRAINING = ("eager", "engine", "channels_last", "grad_checkpoint")


@dataclass
class BenchmarkConfig:
    """What to measure."""

    model: str = "drn_d_22"
    task: str = "segmentation"  # "segmentation" | "classification"
    height: int = 512
    width: int = 1024
    batch: int = 1
    num_classes: int | None = None  # default: 19 (segmentation) / 1000 (classification)
    mode: str = "inference"  # "inference" | "training" | "both"
    inference_variants: tuple[str, ...] = DEFAULT_INFERENCE
    training_variants: tuple[str, ...] = DEFAULT_TRAINING
    repeats: int = 5
    warmup: int = 1
    device: str = "auto"
    channels: tuple[int, ...] | None = None  # per-level widths (tiny runs)
    checkpoint: str | None = None  # weights to load (same weights for every variant)
    calibration_batches: int = 4  # int8: random-input batches unless calibration is given
    measure_peak: bool = True
    measure_memory: bool = True
    seed: int = 0


@dataclass
class Row:
    """One variant's figures."""

    variant: str
    mode: str
    ms_per_img: float
    img_per_s: float
    gflop_per_img: float
    gflops: float  # achieved GFLOP/s (multiply-add = 2)
    pct_peak: float | None
    speedup: float  # baseline median / this median
    peak_memory_mb: float | None
    max_rel_diff: float | None  # vs the baseline's output (logits / loss and gradients)
    labels_equal: float | None  # share of arg-max labels equal to the baseline's
    times_s: list[float] = field(default_factory=list)
    note: str = ""


# ------------------------------------------------------------------------------------ helpers
def benchmark_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DrnetError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def conv_peak_gflops(
    device: torch.device, repeats: int = 5, channels: int = 256, size: int = 64
) -> dict[str, float]:
    """The machine's practical fp32 conv throughput: a ``channels``->``channels`` 3x3 conv at
    ``size``x``size``, in both layouts; returns GFLOP/s per layout and the best (``peak``), and
    ``bf16`` (channels_last) where the device has native bf16."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device).eval()
    x = torch.randn(1, channels, size, size, device=device)
    flops = 2 * channels * channels * 9 * size * size
    result = {}
    with torch.inference_mode():
        for name, fmt in (
            ("nchw", torch.contiguous_format),
            ("channels_last", torch.channels_last),
        ):
            c = copy.deepcopy(conv).to(memory_format=fmt)
            xx = x.contiguous(memory_format=fmt)
            # the fastest run: a peak is what the machine can do, not its typical state
            seconds = min(measure(lambda c=c, xx=xx: c(xx), repeats, 2, device))
            result[name] = flops / seconds / 1e9
        if native_bf16(device):
            c = copy.deepcopy(conv).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
            xx = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            seconds = min(measure(lambda c=c, xx=xx: c(xx), repeats, 2, device))
            bf16 = flops / seconds / 1e9
    result["peak"] = max(result.values())
    if native_bf16(device):
        result["bf16"] = bf16
    return result


class LiveTensorMemory:
    """Peak bytes of tensor storages created while active (a ``TorchDispatchMode``).

    Every op's outputs are seen (forward, backward, optimizer, recomputation); a storage that is
    not one of the op's inputs' is a new allocation, counted until it is freed (a weak reference
    expires). Memory that existed before (weights, earlier gradients) is not counted, so the peak
    is what the measured call adds. Works on any device; CPU has no allocator statistics.
    """

    def __init__(self, device_type: str = "cpu") -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self
        self.device_type = device_type
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {
                    t.untyped_storage()._cdata
                    for t in tree_leaves((args, kwargs))
                    if tracker._tracked(t)
                }
                for t in tree_leaves(out):
                    if not tracker._tracked(t):
                        continue
                    storage = t.untyped_storage()
                    key = storage._cdata
                    if key in inputs or key in tracker.live:
                        continue
                    tracker.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    tracker.current += storage.nbytes()
                tracker._collect()
                return out

        self._mode = _Mode()

    def _tracked(self, t: Any) -> bool:
        # opaque tensors (oneDNN's packed weights) have no storage to follow
        return (
            isinstance(t, torch.Tensor)
            and t.layout == torch.strided
            and t.device.type == self.device_type
        )

    def _collect(self) -> None:
        self.peak = max(self.peak, self.current)
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __enter__(self) -> LiveTensorMemory:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self._collect()


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak memory of the tensors ``fn()`` allocates, above what was allocated before (MiB).

    CUDA: the caching allocator's statistics. CPU: :class:`LiveTensorMemory`.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    tracker = LiveTensorMemory(device.type)
    with tracker:
        fn()
    return tracker.peak / 2**20


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def build_benchmark_model(config: BenchmarkConfig, device: torch.device) -> nn.Module:
    """The benchmarked model with its (random or loaded) weights, on ``device``."""
    torch.manual_seed(config.seed)
    if config.task == "segmentation":
        model = drnet.create_segmentation_model(
            config.model,
            num_classes=config.num_classes or 19,
            channels=config.channels,
            checkpoint_path=config.checkpoint,
        )
    elif config.task == "classification":
        model = drnet.create_model(
            config.model,
            num_classes=config.num_classes or 1000,
            channels=config.channels,
            checkpoint_path=config.checkpoint,
        )
    else:
        raise DrnetError(f"--task {config.task!r}: choose segmentation or classification")
    return model.to(device)


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters (seeded), as trained
    weights have: with the initial ones (mean 0, variance 1, scale 1, shift 0) folding them
    away would be trivially exact and free."""
    generator = torch.Generator().manual_seed(seed + 7)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.rand(shape, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
            if module.weight is not None:
                module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(shape, generator=generator) * 0.4 - 0.2)
    return model


def model_gflop(config: BenchmarkConfig) -> float:
    """GFLOP of one forward pass of one image (multiply-add = 2), counted on the meta device."""
    with torch.device("meta"):
        model = build_benchmark_model(replace(config, checkpoint=None), torch.device("meta"))
    return count_flops(model.eval(), (1, 3, config.height, config.width)) / 1e9


# ---------------------------------------------------------------------------------- inference
def inference_runners(
    model: nn.Module, x: torch.Tensor, config: BenchmarkConfig, variants: tuple[str, ...]
) -> dict[str, tuple[Callable[[], Any], Callable[[], torch.Tensor], str]]:
    """Per variant: (timed call, call giving logits for the accuracy check, note)."""
    segmentation = config.task == "segmentation"
    runners: dict[str, tuple[Callable[[], Any], Callable[[], torch.Tensor], str]] = {}

    def timed_for(fast: nn.Module) -> Callable[[], Any]:
        if segmentation:
            return lambda: fast.labels(x)
        return lambda: fast(x)

    for variant in variants:
        if variant == "eager":
            base = model.eval()
            runners[variant] = (
                (lambda b=base: b(x)["out"].argmax(1)) if segmentation else (lambda b=base: b(x)),
                lambda b=base: logits_of(b(x)),
                "plain eager fp32 NCHW, BN unfused" + (" + arg-max" if segmentation else ""),
            )
        elif variant in ("fast", "fast_nchw", "fast_channels_last"):
            start = time.perf_counter()
            if variant == "fast":  # chosen afresh (not from the cache): its time is reported
                fast = optimize_for_inference(model, example_input=x, use_cache=False)
            else:
                fast = optimize_for_inference(
                    model, channels_last=variant.endswith("last"), backend="torch"
                )
            took = time.perf_counter() - start
            note = fast.choice.name
            if fast.choice.seconds:
                proxy = "x".join(str(s) for s in proxy_shape(x.shape)[-2:])
                note += f" (auto, chosen in {took:.1f} s on {proxy}: " + ", ".join(
                    f"{k} {v * 1e3:.0f} ms" for k, v in fast.choice.seconds.items()
                )
                note += ")"
            runners[variant] = (timed_for(fast), lambda f=fast: logits_of(f(x)), note)
        elif variant == "winograd":  # the fast path's Winograd candidate, built directly
            if x.device.type != "cpu":
                _LOG.info("winograd skipped: a CPU path (cuDNN has its own Winograd kernels)")
                continue
            fast = build_candidate(model, variant)
            runners[variant] = (timed_for(fast), lambda f=fast: logits_of(f(x)), fast.choice.name)
        elif variant in BACKEND_CANDIDATES:
            if x.device.type != "cpu":
                continue
            if not backend_installed(variant):
                _LOG.info("%s skipped: not installed", variant)
                continue
            start = time.perf_counter()
            fast = build_candidate(model, variant)
            version = backend_versions().get(variant, "").split("-")[0]
            note = (
                f"{variant} {version} on the BN-folded ONNX export "
                f"(the fast path's backend; built in {time.perf_counter() - start:.1f} s)"
                + (", up-sampling + arg-max in torch" if segmentation else "")
            )
            runners[variant] = (timed_for(fast), lambda f=fast: logits_of(f(x)), note)
        elif variant == "bf16":
            fast = optimize_for_inference(model, example_input=x, dtype=torch.bfloat16)
            note = fast.choice.name + (
                "" if native_bf16(x.device) else " (emulated: this device has no native bf16)"
            )
            runners[variant] = (timed_for(fast), lambda f=fast: logits_of(f(x)), note)
        elif variant == "compile":
            fast = optimize_for_inference(model, channels_last="auto", fuse=False, compile=True)
            runners[variant] = (timed_for(fast), lambda f=fast: logits_of(f(x)), fast.choice.name)
        elif variant == "int8":
            if x.device.type != "cpu":
                continue
            from drnet.speed.quantize import quantize_int8

            generator = torch.Generator().manual_seed(config.seed + 1)
            calibration = [
                torch.randn(x.shape, generator=generator) for _ in range(config.calibration_batches)
            ]
            start = time.perf_counter()
            quantized = quantize_int8(model, calibration, example_input=x, dynamic=False)
            setup = time.perf_counter() - start
            runners[variant] = (
                timed_for(quantized) if segmentation else (lambda q=quantized: q(x)),
                lambda q=quantized: logits_of(q(x)),
                f"PT2E X86InductorQuantizer, {config.calibration_batches} random calibration "
                f"batches, torch.compile (quantize {setup:.0f} s)",
            )
        elif variant in ("onnx", "onnx_openvino"):
            runtime = "onnxruntime" if variant == "onnx" else "openvino"
            if runtime != "onnxruntime" and not backend_installed(runtime):
                _LOG.info("%s skipped: openvino is not installed", variant)
                continue
            runners[variant] = _onnx_runner(model, x, config, runtime)
        else:
            raise DrnetError(
                f"unknown inference variant {variant!r}; "
                f"choose from {', '.join(INFERENCE_VARIANTS)}"
            )
    return runners


def _onnx_runner(model: nn.Module, x: torch.Tensor, config: BenchmarkConfig, runtime: str):
    """``drnet export onnx``'s file (logits at the input size, BN unfolded) in ONNX Runtime or
    OpenVINO, as a user who exports the model would run it; the arg-max in torch."""
    from drnet.speed.onnx_export import _require, export_onnx

    _require("onnxruntime" if runtime == "onnxruntime" else "openvino")
    tmp = tempfile.mkdtemp(prefix="drnet-onnx-")
    path = Path(tmp) / "model.onnx"
    export_onnx(model.cpu(), path, tuple(x.shape), check=False)
    array = x.cpu().numpy()
    threads = torch.get_num_threads()
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # no busy-waiting between runs: it would slow the variants interleaved with it
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def logits() -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"input": array})[0])

        note = f"onnxruntime {ort.__version__} CPU on `drnet export onnx`"
    else:
        import openvino as ov

        core = ov.Core()
        network = core.read_model(str(path))
        network.reshape({"input": list(array.shape)})
        config_ov = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        request = core.compile_model(network, "CPU", config_ov).create_infer_request()

        def logits() -> torch.Tensor:
            request.infer({0: array}, share_inputs=True)
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

        note = f"OpenVINO {ov.__version__.split('-')[0]} CPU (f32) on `drnet export onnx`"
    if config.task == "segmentation":
        return (lambda: logits().argmax(1), logits, note + " (+ arg-max in torch)")
    return (logits, logits, note)


def benchmark_inference(
    model: nn.Module,
    config: BenchmarkConfig,
    device: torch.device,
    gflop: float,
    peak: float | None,
    log: Callable[[str], None] = _LOG.info,
) -> list[Row]:
    variants = tuple(dict.fromkeys(("eager", *config.inference_variants)))
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.batch, 3, config.height, config.width, generator=generator).to(device)
    model = model.eval()
    rows: list[Row] = []
    with torch.inference_mode():
        reference = logits_of(model(x)).float()
        runners = inference_runners(model, x, config, variants)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for name, (timed, _, _) in runners.items():
            log(f"warm-up {name}")
            measure(timed, 0, max(1, config.warmup), device)
        # interleaved: each round times every variant once, so load changes hit all alike
        for round_index in range(config.repeats):
            for name, (timed, _, _) in runners.items():
                times[name] += measure(timed, 1, 0, device)
            log(f"round {round_index + 1}/{config.repeats}")
        base_seconds = median(times["eager"])
        for name, (timed, logits_fn, note) in runners.items():
            seconds = median(times[name])
            logits = logits_fn().float()
            memory = peak_memory_mb(timed, device) if config.measure_memory else None
            achieved = gflop * config.batch / seconds
            rows.append(
                Row(
                    variant=name,
                    mode="inference",
                    ms_per_img=seconds / config.batch * 1e3,
                    img_per_s=config.batch / seconds,
                    gflop_per_img=gflop,
                    gflops=achieved,
                    pct_peak=100 * achieved / peak if peak else None,
                    speedup=base_seconds / seconds,
                    peak_memory_mb=memory,
                    max_rel_diff=_relative(logits, reference),
                    labels_equal=float((logits.argmax(1) == reference.argmax(1)).float().mean()),
                    times_s=times[name],
                    note=note,
                )
            )
    return rows


# ----------------------------------------------------------------------------------- training
def _loss(task: str, output: Any, target: torch.Tensor) -> torch.Tensor:
    logits = logits_of(output).float()
    if task == "segmentation":
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, target)


def training_setup(
    model: nn.Module, variant: str, device: torch.device
) -> tuple[nn.Module, nn.Module, bool, bool]:
    """(the module trained, the module whose params/buffers are compared, channels_last, amp)."""
    trained = copy.deepcopy(model).to(device).train()
    # bf16: channels_last as the engine trains it on CPU, where torch's kernels are safe
    channels_last = variant == "channels_last" or (
        variant == "bf16" and channels_last_is_safe(trained)
    )
    amp = variant in ("amp", "bf16")
    if variant == "grad_checkpoint":
        trained.set_grad_checkpointing(True)
    if channels_last:
        trained = trained.to(memory_format=torch.channels_last)
    runner: nn.Module = trained
    if variant == "compile":
        runner = torch.compile(trained)
    if variant not in TRAINING_VARIANTS:
        raise DrnetError(
            f"unknown training variant {variant!r}; choose from {', '.join(TRAINING_VARIANTS)}"
        )
    return runner, trained, channels_last, amp


def benchmark_training(
    model: nn.Module,
    config: BenchmarkConfig,
    device: torch.device,
    gflop: float,
    peak: float | None,
    log: Callable[[str], None] = _LOG.info,
) -> list[Row]:
    variants = tuple(dict.fromkeys(("eager", *config.training_variants)))
    if amp_dtype(device) is None:  # e.g. a CPU without native bf16
        for skipped in {"amp", "bf16"} & set(variants):
            log(f"{skipped} skipped: {amp_unavailable_reason(device)}")
        variants = tuple(v for v in variants if v not in ("amp", "bf16"))
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.batch, 3, config.height, config.width, generator=generator).to(device)
    classes = config.num_classes or (19 if config.task == "segmentation" else 1000)
    if config.task == "segmentation":
        target = torch.randint(0, classes, (config.batch, config.height, config.width))
        target[:, : config.height // 16] = IGNORE_INDEX
    else:
        target = torch.randint(0, classes, (config.batch,))
    target = target.to(device)
    step_gflop = 3 * gflop  # forward + backward (about twice the forward)

    states = {}
    for variant in variants:
        runner, trained, channels_last, amp = training_setup(model, variant, device)
        if variant == "engine" and channels_last_is_safe(trained):
            channels_last, record = choose_channels_last(
                trained, lambda m, inp: _loss(config.task, m(inp), target), x, device
            )
            log(f"training engine: channels-last {channels_last} ({record})")
            if channels_last:
                trained = runner = trained.to(memory_format=torch.channels_last)
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        optimizer = torch.optim.SGD(
            [p for p in trained.parameters() if p.requires_grad], lr=1e-3, momentum=0.9
        )
        read_every = 10 if variant == "engine" else 1
        count = [0]

        def step(
            runner=runner, optimizer=optimizer, xx=xx, amp=amp, apply=True, every=read_every,
            count=count,
        ):  # fmt: skip
            with autocast_context(device, amp):
                output = runner(xx)
            loss = _loss(config.task, output, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if apply:
                optimizer.step()
            count[0] += 1
            if count[0] % every == 0:
                loss.item()  # the host sync of the loss check
            return loss

        # first step without the update: loss, gradients and BN buffers vs the baseline
        loss = step(apply=False).detach()
        grads = [
            p.grad.detach().clone() if p.grad is not None else None for p in trained.parameters()
        ]
        buffers = [b.detach().clone() for b in trained.buffers()]
        states[variant] = (runner, trained, step, loss, grads, buffers)
        log(f"training {variant}: first step done (loss {float(loss):.5f})")

    base_loss, base_grads, base_buffers = states["eager"][3:6]
    times: dict[str, list[float]] = {v: [] for v in variants}
    for variant in variants:
        measure(states[variant][2], 0, max(1, config.warmup), device)
    for round_index in range(config.repeats):
        for variant in variants:
            times[variant] += measure(states[variant][2], 1, 0, device)
        log(f"training round {round_index + 1}/{config.repeats}")
    base_seconds = median(times["eager"])
    rows = []
    for variant in variants:
        _, _, step, loss, grads, buffers = states[variant]
        diffs = [abs(float(loss) - float(base_loss)) / max(abs(float(base_loss)), 1e-12)]
        for g, g0 in zip(grads, base_grads, strict=True):
            if g is not None and g0 is not None:
                diffs.append(_relative(g, g0))
        buffer_diff = max(
            (_relative(b.float(), b0.float()) for b, b0 in zip(buffers, base_buffers, strict=True)),
            default=0.0,
        )
        seconds = median(times[variant])
        memory = peak_memory_mb(step, device) if config.measure_memory else None
        achieved = step_gflop * config.batch / seconds
        rows.append(
            Row(
                variant=variant,
                mode="training",
                ms_per_img=seconds / config.batch * 1e3,
                img_per_s=config.batch / seconds,
                gflop_per_img=step_gflop,
                gflops=achieved,
                pct_peak=100 * achieved / peak if peak else None,
                speedup=base_seconds / seconds,
                peak_memory_mb=memory,
                max_rel_diff=max(diffs),
                labels_equal=None,
                times_s=times[variant],
                note=f"BN buffers max rel diff {buffer_diff:.1e}",
            )
        )
    return rows


# ------------------------------------------------------------------------------------- driver
def run_benchmark(
    config: BenchmarkConfig, log: Callable[[str], None] = _LOG.info
) -> dict[str, Any]:
    """Measure the conv peak, then inference and/or training variants; returns a JSON-able dict
    with ``machine``, ``config``, ``conv_peak``, ``gflop_per_img`` and ``rows``."""
    if config.mode not in ("inference", "training", "both"):
        raise DrnetError(f"--mode {config.mode!r}: choose inference, training or both")
    device = benchmark_device(config.device)
    machine = machine_info(device)
    gflop = model_gflop(config)
    peak = None
    peak_info: dict[str, float] = {}
    if config.measure_peak:
        log("measuring the conv peak")
        peak_info = conv_peak_gflops(device, repeats=max(10, config.repeats))
        peak = peak_info["peak"]
    model = build_benchmark_model(config, device)
    if config.checkpoint is None:
        randomize_batchnorm(model, config.seed)
    rows: list[Row] = []
    if config.mode in ("inference", "both"):
        rows += benchmark_inference(model, config, device, gflop, peak, log)
    if config.mode in ("training", "both"):
        rows += benchmark_training(model, config, device, gflop, peak, log)
    if config.measure_peak:  # again at the end: keep the better of the two (load may change)
        again = conv_peak_gflops(device, repeats=max(10, config.repeats))
        peak_info = {k: max(v, again[k]) for k, v in peak_info.items()}
        for row in rows:  # bf16 rows against the bf16 peak where there is one
            row_peak = peak_info["peak"]
            if row.variant in LOW_PRECISION_VARIANTS:
                row_peak = peak_info.get("bf16", row_peak)
            row.pct_peak = 100 * row.gflops / row_peak
    machine["load_average_end"] = machine_info(device).get("load_average")
    return {
        "machine": machine,
        "config": asdict(config),
        "conv_peak": peak_info,
        "gflop_per_img": gflop,
        "rows": [asdict(r) for r in rows],
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(result: dict[str, Any]) -> str:
    """The rows of :func:`run_benchmark` as a markdown table (plus a header line)."""
    config, machine = result["config"], result["machine"]
    lines = [
        f"**{config['model']} {config['task']}, {config['height']}x{config['width']}, batch "
        f"{config['batch']}** — {machine['cpu']} ({machine['device']}, "
        f"{machine['torch_threads']} threads, torch {machine['torch']}); "
        f"load average {machine.get('load_average')} -> {machine.get('load_average_end')}; "
        f"{result['gflop_per_img']:.4g} GFLOP/img forward; conv peak "
        + (
            f"{result['conv_peak']['peak']:.0f} GFLOP/s"
            if result.get("conv_peak")
            else "not measured"
        ),
        "",
        "| mode | variant | ms/img | img/s | GFLOP/img | GFLOP/s | % peak | speed-up | "
        "peak MB | max rel diff | labels equal | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        labels = None if row["labels_equal"] is None else 100 * row["labels_equal"]
        lines.append(
            f"| {row['mode']} | {row['variant']} | {row['ms_per_img']:.1f} | "
            f"{row['img_per_s']:.3g} | {row['gflop_per_img']:.4g} | {row['gflops']:.4g} | "
            f"{_fmt(row['pct_peak'], '.0f')} | {row['speedup']:.2f}x | "
            f"{_fmt(row['peak_memory_mb'], '.0f')} | {_fmt(row['max_rel_diff'], '.1e')} | "
            f"{_fmt(labels, '.3f')} | {row['note']} |"
        )
    return "\n".join(lines)


def write_results(result: dict[str, Any], out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """``<stem>.json`` and ``<stem>.md`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown_table(result) + "\n")
    return [json_path, md_path]


def default_stem(config: BenchmarkConfig) -> str:
    return (
        f"{config.model}_{config.task}_{config.height}x{config.width}_b{config.batch}_{config.mode}"
    )


__all__ = [
    "BenchmarkConfig",
    "InferenceModel",
    "Row",
    "conv_peak_gflops",
    "markdown_table",
    "peak_memory_mb",
    "run_benchmark",
    "write_results",
]
