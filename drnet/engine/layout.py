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
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drnet.machine import (  # re-exported: the CPU's name and flags were read here before
    CPU_FLAGS,
    cpu_name_and_flags,
    cpu_signature,
)
from drnet.timing import measure

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_FILE",
    "CPU_FLAGS",
    "MARGIN",
    "STEPS",
    "cache_dir",
    "choose_channels_last",
    "cpu_name_and_flags",
    "cpu_signature",
    "layout_key",
    "measure_layouts",
]

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

    def one_step(trial: nn.Module, x: torch.Tensor) -> None:
        trial.zero_grad(set_to_none=True)
        step(trial, x).backward()

    for i in range(steps + 1):
        for channels_last, (trial, x) in trials.items():
            (seconds,) = measure(
                functools.partial(one_step, trial, x), repeats=1, warmup=0, device=device
            )
            if i:
                times[channels_last].append(seconds)
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
