"""The memory layout a run trains in: measured on this machine, never assumed.

channels-last convolutions are 10-30% faster than NCHW for some models and CPUs and slower for
others (narrow layers, AVX2 against AVX-512, the GPU's tensor cores with or without AMP), so
``TrainConfig.channels_last="auto"`` times a few training steps of each layout on a copy of the
model with the run's first batch and keeps the faster one (NCHW unless channels-last wins by
:data:`MARGIN`). The layout changes the speed, and the rounding of a float sum, never the
arithmetic; so the choice is cached per machine, torch version, thread count, model structure
and input shape (``$DRNET_CACHE_DIR``, else ``~/.cache/drnet``, file ``layouts.json``): two runs
of the same setting train in the same layout, and a resumed run keeps its checkpoint's layout.
Models whose channels-last backward is unsafe on torch's CPU kernels (see
:func:`drnet.engine.trainer.channels_last_is_safe`) are never measured in it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

MARGIN = 1.05  # channels-last must be this much faster to be chosen
STEPS = 5  # timed steps per layout (interleaved), after one untimed step each
CACHE_FILE = "layouts.json"


def cache_dir() -> Path:
    """drnet's cache folder: ``$DRNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/drnet`` or
    ``~/.cache/drnet``."""
    if os.environ.get("DRNET_CACHE_DIR"):
        return Path(os.environ["DRNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "drnet"


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_name_and_flags() -> tuple[str, str]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (what decides the kernels)."""
    name, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        flags = " ".join(f for f in CPU_FLAGS if f" {f}" in text)
    return name, flags


def cpu_signature() -> str:
    """``"<model name> [<flags>]"``, e.g. ``"AMD EPYC 7B13 [avx2]"``."""
    name, flags = cpu_name_and_flags()
    return f"{name} [{flags}]"


def layout_key(model: nn.Module, example: torch.Tensor, device: torch.device, amp: bool) -> str:
    """What the measured choice depends on, as a short hash."""
    shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    parts = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_signature(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": type(model).__name__,
        "shapes": hashlib.sha1(repr(shapes).encode()).hexdigest(),
        "input": list(example.shape),
        "dtype": str(example.dtype),
        "amp": amp,
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache() -> dict[str, Any]:
    try:
        return json.loads((cache_dir() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the cache (best effort: an unwritable cache only costs a re-measure)."""
    path = cache_dir() / CACHE_FILE
    data = _read_cache()
    data[key] = entry
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_layouts(
    model: nn.Module,
    step: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    device: torch.device,
    layouts: tuple[bool, ...] = (False, True),
    steps: int = 5,
) -> dict[bool, float]:
    """Median seconds per step of each layout, the layouts' steps interleaved (a moment of
    contention on a shared machine then hits both alike), after one untimed step each."""
    trials = {}
    for channels_last in layouts:
        trial = copy.deepcopy(model).train()
        x = example
        if channels_last:
            trial = trial.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        trials[channels_last] = (trial, x)
    times: dict[bool, list[float]] = {layout: [] for layout in layouts}
    for i in range(steps + 1):
        for channels_last, (trial, x) in trials.items():
            _sync(device)
            t0 = time.perf_counter()
            trial.zero_grad(set_to_none=True)
            step(trial, x).backward()
            _sync(device)
            if i:
                times[channels_last].append(time.perf_counter() - t0)
    return {layout: sorted(t)[len(t) // 2] for layout, t in times.items()}


def choose_channels_last(
    model: nn.Module,
    step: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    device: torch.device,
    amp: bool = False,
    use_cache: bool = True,
) -> tuple[bool, dict[str, Any]]:
    """``(channels_last, record)``: whether channels-last trains ``model`` measurably faster on
    ``example`` here. ``record`` holds the timings (seconds per step) and whether they came from
    the cache."""
    key = layout_key(model, example, device, amp)
    if use_cache:
        cached = _read_cache().get(key)
        if isinstance(cached, dict) and "channels_last" in cached:
            return bool(cached["channels_last"]), {**cached, "cached": True}
    timed = measure_layouts(model, step, example, device, (False, True), STEPS)
    nchw, nhwc = timed[False], timed[True]
    chosen = nhwc * MARGIN < nchw
    record = {"channels_last": chosen, "nchw_s": round(nchw, 5), "channels_last_s": round(nhwc, 5)}
    if use_cache:
        _write_cache(key, record)
    logger.debug("layout %s: NCHW %.4f s, channels-last %.4f s per step", key, nchw, nhwc)
    return chosen, {**record, "cached": False}
