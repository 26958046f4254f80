"""Choosing the inference fast path: measured here, never slower, decided once per machine.

The candidates (see :func:`drnet.speed.inference.optimize_for_inference`) are timed on a proxy
of the input (at most :data:`PROXY_PIXELS` pixels, same aspect ratio, one image), interleaved
round by round, and compared by their medians (a candidate far slower than the baseline in the
first round is not timed again). The baseline is eager with BatchNorm folded
(``"fold"``); another candidate is chosen only when its median is at least :data:`MARGIN`
faster than the baseline's in the same run, so the result is never one measured slower.

The decision is cached per machine (CPU name and flags, or GPU name), torch and backend
versions, thread count, model structure, input shape, dtype and backend request, in
``fast_paths.json`` under drnet's cache folder (``$DRNET_CACHE_DIR``, else
``$XDG_CACHE_HOME/drnet`` or ``~/.cache/drnet``), written atomically: a later process with the
same key builds the chosen path without timing anything, and a new torch, CPU or model measures
again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import drnet
from drnet.atomic import WriteError, atomic_write_json
from drnet.engine.layout import cache_dir, cpu_signature
from drnet.timing import median, synchronize

logger = logging.getLogger(__name__)

BASELINE = "fold"  # eager with BatchNorm folded: what the fast path falls back to
MARGIN = 1.03  # a candidate must be this much faster than the baseline to be chosen
PROXY_PIXELS = 256 * 512  # inputs larger than this are timed on a smaller copy
TIME_BUDGET_S = 4.0  # timed rounds stop once this is spent (after MIN_ROUNDS)
MIN_ROUNDS = 2
PRUNE = 1.3  # a candidate this much slower than the baseline in round one is timed no more
CACHE_FILE = "fast_paths.json"

Progress = Callable[[str], None]


def proxy_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """The shape the candidates are timed on: one image, at most :data:`PROXY_PIXELS` pixels,
    the aspect ratio kept and each side a multiple of 8 (the output stride)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        return shape
    _, channels, height, width = shape
    if height * width <= PROXY_PIXELS:
        return (1, channels, height, width)
    scale = math.sqrt(PROXY_PIXELS / (height * width))
    return (
        1,
        channels,
        max(8, round(height * scale / 8) * 8),
        max(8, round(width * scale / 8) * 8),
    )


def proxy_input(x: torch.Tensor) -> torch.Tensor:
    """``x``'s first image resized to :func:`proxy_shape` (``x[:1]`` when already small)."""
    shape = proxy_shape(x.shape)
    if tuple(x.shape) == shape:
        return x
    first = x[:1]
    if tuple(first.shape) == shape:
        return first
    return F.interpolate(first.float(), size=shape[-2:], mode="bilinear", align_corners=False).to(
        x.dtype
    )


def decision_key(
    model: nn.Module,
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype,
    request: dict[str, Any],
) -> str:
    """What the decision depends on, as a short hash: the machine (CPU name and flags, or the
    GPU), torch, drnet and the installed backends' versions, threads, the model's class and
    parameter shapes, the input shape, the dtype and the ``request`` (backend, fold, fuse)."""
    from drnet.speed.backends import backend_versions

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    parts = {
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_signature(),
        "torch": torch.__version__,
        "drnet": drnet.__version__,
        "backends": backend_versions() if device.type == "cpu" else {},
        "threads": torch.get_num_threads(),
        "model": type(model).__name__,
        "shapes": hashlib.sha1(repr(shapes).encode()).hexdigest(),
        "input": [int(s) for s in shape],
        "dtype": str(dtype),
        "request": request,
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _read_all() -> dict[str, Any]:
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_decision(key: str) -> dict[str, Any] | None:
    """The cached decision for ``key`` (``{"choice": name, "seconds": {...}, ...}``), if any."""
    entry = _read_all().get(key)
    if isinstance(entry, dict) and isinstance(entry.get("choice"), str):
        return entry
    return None


def write_decision(key: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` under ``key`` (atomically; an unwritable cache only costs a re-measure)."""
    data = _read_all()
    data[key] = entry
    path = cache_dir() / CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data, indent=1)
    except (OSError, WriteError) as exc:
        logger.debug("fast-path cache %s not written: %s", path, exc)


def pick(seconds: dict[str, float], baseline: str = BASELINE, margin: float = MARGIN) -> str:
    """The candidate to use: the fastest by ``seconds`` (medians), if it beats ``baseline`` by
    ``margin``; else ``baseline``. Never a candidate measured slower than the baseline."""
    if baseline not in seconds:
        raise ValueError(f"the baseline {baseline!r} was not timed")
    best = min(seconds, key=lambda name: (seconds[name], name != baseline))
    if best != baseline and seconds[best] * margin < seconds[baseline]:
        return best
    return baseline


def time_candidates(
    candidates: dict[str, Callable[[], Any]],
    rounds: int,
    budget_s: float = TIME_BUDGET_S,
    device: torch.device | None = None,
    baseline: str = BASELINE,
    prune: float = PRUNE,
) -> dict[str, list[float]]:
    """Seconds of each call, round by round (every candidate once per round, after one untimed
    warm-up call each), for ``rounds`` rounds or until ``budget_s`` is spent after
    :data:`MIN_ROUNDS` (or ``rounds``, if fewer). A candidate whose first timed call took more
    than ``prune`` times the ``baseline``'s is not timed again (it cannot be chosen: on an AVX2
    CPU the fused oneDNN paths take 1.6-2.6x the baseline's time, and timing them again would
    double the choosing time)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    active = dict(candidates)
    with torch.inference_mode():
        for run in candidates.values():
            run()  # oneDNN primitive creation, a backend's first-run setup
        synchronize(device)
        start = time.perf_counter()
        for index in range(max(1, rounds)):
            if index >= min(MIN_ROUNDS, rounds) and time.perf_counter() - start > budget_s:
                break
            for name, run in active.items():
                t0 = time.perf_counter()
                run()
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
            if index == 0 and baseline in times:
                limit = prune * times[baseline][0]
                active = {n: r for n, r in active.items() if n == baseline or times[n][0] <= limit}
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each candidate's times."""
    return {name: median(values) for name, values in times.items() if values}


def say(progress: Progress | None, message: str) -> None:
    """``message`` to ``progress`` when given (e.g. ``print`` in a server), else to the log
    (at INFO; at DEBUG beside ``progress``, so that a server does not print it twice)."""
    logger.log(logging.INFO if progress is None else logging.DEBUG, "%s", message)
    if progress is not None:
        with contextlib.suppress(Exception):
            progress(message)
