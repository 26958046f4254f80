"""Timing: wall-clock measurements that wait for the device, and a budget clock with stages.

- :func:`measure` times calls of a function after untimed warm-up calls, synchronising CUDA so
  that a call's time is its work's; :func:`median` is what every speed figure reports (a moment
  of contention on a shared machine moves a median far less than a mean).
- :class:`Stopwatch` times one block (``with Stopwatch() as watch: ...; watch.seconds``).
- :class:`StageClock` is a run's clock: seconds since its start, the time left of a budget, and
  the seconds spent per named stage (``with clock.stage("probe"): ...``).
- :func:`process_age` is how long this process has run (a budget counts the start-up too).

The one timing helper of drnet: :mod:`drnet.speed.timing` re-exports it, and the demo's budget
and plan are built on it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the work queued on ``device`` (CUDA; a no-op elsewhere)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
    *,
    give_up_after: float = math.inf,
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    With ``give_up_after`` the warm-up calls are timed too, and a call slower than that many
    seconds ends the measurement: the result is then ``[math.inf]`` (too slow to be worth
    measuring further).
    """
    limited = math.isfinite(give_up_after)
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        synchronize(device)
        if limited and time.perf_counter() - start > give_up_after:
            return [math.inf]
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds = time.perf_counter() - start
        if seconds > give_up_after:
            return [math.inf]
        times.append(seconds)
    return times


def median(values: list[float]) -> float:
    """The median of ``values`` (what speed figures report)."""
    return statistics.median(values)


class Stopwatch:
    """Seconds spent in a ``with`` block (:func:`time.perf_counter`): ``watch.seconds``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start

    def elapsed(self) -> float:
        """Seconds since the start (while the block runs)."""
        return time.perf_counter() - self.start


class StageClock:
    """Wall time since ``start`` (a :func:`time.monotonic` reading; None: now) against a budget
    of ``budget_s`` seconds, and the seconds spent in each named stage (``stages``, summed when
    a stage runs several times, rounded to the millisecond)."""

    def __init__(self, budget_s: float = math.inf, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.budget_s = budget_s
        self.stages: dict[str, float] = {}

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds of the budget left (negative once it is spent)."""
        return self.budget_s - self.elapsed()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Count the seconds of the ``with`` block towards stage ``name``."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - t0
            self.stages[name] = round(self.stages.get(name, 0.0) + spent, 3)


def process_age() -> float:
    """Seconds since this process started (0 where /proc is not available): a budget that
    counts the command's start-up (importing torch) starts from ``time.monotonic() -
    process_age()``."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
