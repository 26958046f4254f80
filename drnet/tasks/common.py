"""The contract every task keeps (classification, localization, segmentation).

Each task module exports the same entry points, taking the same five arguments::

    train(model, card, data, options, settings)      # classify, segment
    evaluate(model, card, data, options, settings)   # classify, localize, segment
    predict(model, card, data, options, settings)    # classify, localize, segment

- ``model`` and ``card``: the network and its :class:`drnet.models.loading.ModelCard`, as
  :func:`drnet.models.loading.load_model` returns them (``train`` also takes ``None``: the task
  builds the model the card names);
- ``data``: what the step reads (a split folder, a dataset, image paths; each task says);
- ``options``: :class:`InferenceOptions`, where and how the network runs (device, dtype, fast
  path, AMP, loader workers, progress bars), the same for every task;
- ``settings``: the task's own settings class (``ClassificationSettings``,
  ``LocalizationSettings``, ``SegmentationSettings``, ...), which checks itself when it is made.

Every entry point returns a :class:`Result`: its ``metrics`` dict, ``write(output_dir)`` (the
result files: ``metrics.json`` for an evaluation, under one spelling for every task) and
``summary_lines()`` (what a command prints). The CLI, the demo and ``drnet serve`` are consumers of
these entry points. This module is torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from drnet.atomic import atomic_write_json
from drnet.constants import DTYPE_CHOICES
from drnet.data.text import read_json
from drnet.errors import SettingsError

__all__ = [
    "METRICS_FILE",
    "RUNTIME_PARAMETERS",
    "InferenceOptions",
    "Result",
    "TrainingResult",
    "check_choice",
    "check_range",
    "legacy_options",
    "read_metrics",
    "write_metrics",
]

#: The one name of every task's evaluation results (``classification_metrics.json`` and
#: ``localization_metrics.json`` of earlier releases are still read, never written).
METRICS_FILE = "metrics.json"

#: The runtime parameters that travel together in :class:`InferenceOptions`.
RUNTIME_PARAMETERS = ("device", "dtype", "fast", "amp", "workers", "progress")


def check_range(
    owner: str,
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise :class:`SettingsError` naming ``owner.name`` unless ``value`` is a number (an
    ``int`` with ``integer``) within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value != value:
        wanted = "an integer" if integer else "a number"
        raise SettingsError(f"{owner}.{name}: expected {wanted}, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise SettingsError(f"{owner}.{name} must be in {span}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`SettingsError` naming ``owner.name`` unless ``value`` is one of
    ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        shown = ", ".join(map(str, choices))
        raise SettingsError(f"{owner}.{name}: expected one of {shown}, got {value!r}")


def _dtype_name(dtype: Any) -> str | None:
    """``"float32"``, ``"bfloat16"``, ``"auto"`` or ``None`` for a name or a ``torch.dtype``."""
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    check_choice("InferenceOptions", "dtype", name, (*DTYPE_CHOICES, "float"))
    return "float32" if name == "float" else name


@dataclass(frozen=True)
class InferenceOptions:
    """Where and how a task runs its network; the same six fields for every task.

    ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` (a
    ``torch.device`` is taken too). ``dtype``: what an inference network computes in,
    ``float32``, ``bfloat16`` (where the device has it natively, else float32 with a note) or
    ``auto`` (see :func:`drnet.engine.precision.inference_dtype`); ``None`` is float32.
    ``fast``: the inference fast path (:func:`drnet.speed.inference.fast_inference`: BN
    folded, fused convolutions; the same numbers within 1e-4 relative). ``amp``: mixed
    precision (autocast) on a GPU. ``workers``: data-loading processes. ``progress``: progress
    bars. Checked when made (:class:`drnet.errors.SettingsError` naming the field)."""

    device: str = "auto"
    dtype: str | None = None
    fast: bool = True
    amp: bool = False
    workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        device = str(self.device).strip().lower()
        known = device in ("auto", "cpu", "cuda", "mps") or (
            device.startswith("cuda:") and device[5:].isdigit()
        )
        if not known:
            raise SettingsError(
                f"InferenceOptions.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}"
            )
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        check_range("InferenceOptions", "workers", self.workers, 0, 256, integer=True)
        for name in ("fast", "amp", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(
                    f"InferenceOptions.{name}: expected True or False, got {getattr(self, name)!r}"
                )

    def replace(self, **changes: Any) -> InferenceOptions:
        """A copy with ``changes`` (checked again)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return InferenceOptions(**{**values, **changes})


@runtime_checkable
class Result(Protocol):
    """What every task entry point returns."""

    @property
    def metrics(self) -> dict[str, Any]:
        """The numbers of the step, as written to its JSON file (strict JSON: no NaN)."""
        ...

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write the result files into ``output_dir`` (made if missing); returns them by kind
        (``"metrics"`` is ``output_dir/metrics.json`` for an evaluation)."""
        ...

    def summary_lines(self) -> list[str]:
        """A few lines saying what the step found, for a person (what the CLI prints)."""
        ...


def write_metrics(output_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` as ``output_dir/metrics.json`` (strict JSON, atomically; the folder is
    made if missing)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(output_dir / METRICS_FILE, metrics)


def read_metrics(output_dir: str | os.PathLike, old_names: Iterable[str] = ()) -> dict[str, Any]:
    """The ``metrics.json`` of ``output_dir``, else the first of ``old_names`` there (the file
    names of earlier releases, e.g. ``classification_metrics.json``: read for one release)."""
    output_dir = Path(output_dir)
    for name in (METRICS_FILE, *old_names):
        if (output_dir / name).is_file():
            return read_json(output_dir / name, "metrics file")
    return read_json(output_dir / METRICS_FILE, "metrics file")  # the one-line error


def legacy_options(
    kwargs: dict[str, Any], defaults: dict[str, Any] | None = None
) -> InferenceOptions:
    """:class:`InferenceOptions` from the runtime keywords of an earlier signature (``device``,
    ``dtype``, ``fast``, ``amp``, ``workers``, ``progress``), popped from ``kwargs``;
    ``defaults``: that signature's defaults where they differ from the options'. For the thin
    wrappers kept for one release (their new form takes ``options``)."""
    values = {**(defaults or {})}
    for name in RUNTIME_PARAMETERS:
        if name in kwargs:
            values[name] = kwargs.pop(name)
    if "device" in values:
        values["device"] = str(values["device"])
    return InferenceOptions(**values)


@dataclass
class TrainingResult:
    """What ``train`` of a task returns: the engine's summary (``metrics``; see
    :func:`drnet.engine.train`) and the name of the metric that chose the best checkpoint. The
    engine has written the run folder itself; :meth:`write` writes nothing more."""

    summary: dict[str, Any]
    main_metric: str = "metric"

    @property
    def metrics(self) -> dict[str, Any]:
        """The engine's summary."""
        return self.summary

    def __getitem__(self, key: str) -> Any:  # the summary dict of earlier releases
        return self.summary[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``summary.get``: a training result reads like the summary dict it wraps."""
        return self.summary.get(key, default)

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """The run's files (written by the engine while it trained), by kind."""
        kinds = ("checkpoint_last", "checkpoint_best", "checkpoint_ema")
        return {k: Path(self.summary[k]) for k in kinds if self.summary.get(k)}

    def summary_lines(self) -> list[str]:
        """The best validation metric (and its epoch), the last checkpoint, the run folder and
        any skipped samples."""
        s = self.summary
        lines = []
        best = s.get("best_metric")
        if best is not None:
            epoch = s.get("best_epoch")
            at = f" (epoch {epoch})" if epoch is not None else ""
            lines.append(f"best {self.main_metric} {best:.4f}{at}")
        lines.append(f"trained for {s.get('epochs')} epochs: {s.get('output_dir')}")
        return lines
