"""Reasons to end a training run early, looked at once per iteration.

Three sources: SIGTERM/SIGINT (the run writes a checkpoint, then raises
:class:`~drnet.engine.trainer.TrainingInterrupted`), the config's ``time_limit`` and a caller's
``should_stop()`` (for those two the run writes the same checkpoint and returns normally). Every
process votes; the votes travel in the per-step all-reduce together with the loss, so all ranks of
a ``torchrun`` job stop after the same iteration.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

SIGNAL, SHOULD_STOP, TIME_LIMIT = "signal", "should_stop", "time_limit"
REASONS = (SIGNAL, SHOULD_STOP, TIME_LIMIT)  # the order of the votes, and precedence


class SignalFlag:
    """While entered, SIGTERM/SIGINT ask the loop to stop after the current iteration; a second
    signal stops at once (KeyboardInterrupt). Disabled, or off the main thread, it does nothing.

    A signal within :attr:`ECHO_S` seconds of the first is not a second one: a signal to the
    process group reaches a torchrun worker twice (directly, and forwarded by the agent).
    """

    ECHO_S = 2.0

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
        elif now - self._first_at > self.ECHO_S:  # a second signal: stop now
            raise KeyboardInterrupt

    def __enter__(self) -> SignalFlag:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def name(self) -> str:
        """``"SIGTERM"``, ``"SIGINT"``, or ``"a signal"`` (another rank received it)."""
        return signal.Signals(self.signum).name if self.signum else "a signal"


class StopCheck:
    """This process's votes to stop, one per reason of :data:`REASONS`.

    ``time_limit`` counts seconds of wall time from ``started`` (a :func:`time.perf_counter`
    value); ``should_stop`` is called exactly once per vote.
    """

    def __init__(
        self,
        signals: SignalFlag,
        time_limit: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        started: float | None = None,
    ) -> None:
        self.signals = signals
        self.time_limit = time_limit
        self.should_stop = should_stop
        self.started = time.perf_counter() if started is None else started

    def votes(self) -> list[float]:
        """1.0 (stop) or 0.0 for each reason, in the order of :data:`REASONS`."""
        out_of_time = (
            self.time_limit is not None and time.perf_counter() - self.started >= self.time_limit
        )
        asked = self.should_stop is not None and bool(self.should_stop())
        return [float(self.signals.signum is not None), float(asked), float(out_of_time)]

    @staticmethod
    def agreed(summed_votes: Sequence[float]) -> str | None:
        """The reason to stop given the votes summed over processes (None: carry on)."""
        for reason, votes in zip(REASONS, summed_votes, strict=True):
            if votes > 0:
                return reason
        return None
