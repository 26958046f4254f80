"""The output folder of a predict command: one writer at a time, and no mixing of results.

``classify predict``, ``localize predict`` and ``segment predict`` write into ``-o`` through
:func:`predict_folder`, which

- takes the folder's lock (:class:`drnet.engine.rundir.RunFolderLock`, the one training takes),
  so a second predict, or a training, into the same folder at the same time fails with one line
  naming the folder and the pid of the process that holds it;
- keeps a run marker, ``predict.json``: the command, its inputs (resolved paths, in order),
  whether it completed, and the files it wrote (relative to the folder);
- refuses, one after the other, a folder whose ``predict.json`` was written by another command
  or for other inputs, unless ``overwrite`` (``--overwrite``), which first deletes the files the
  earlier predict wrote (those its marker lists; an interrupted one lists none, and its files
  are replaced only where the new one writes the same names). The same command on the same
  inputs (a re-run, or completing an interrupted one) needs no flag.

A folder without ``predict.json`` (a new one, or results of an older drnet) is used as before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drnet.engine.rundir import LOCK_FILE, RunFolderLock, atomic_write_text
from drnet.errors import DrnetError

logger = logging.getLogger(__name__)

PREDICT_MARKER = "predict.json"


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``directory``."""
    found = {}
    for path in directory.rglob("*"):
        if path.is_file() and path.name not in (PREDICT_MARKER, LOCK_FILE):
            stat = path.stat()
            found[path.relative_to(directory).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found


def read_marker(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``predict.json`` of ``directory`` (None when there is none or it is unreadable)."""
    try:
        marker = json.loads((Path(directory) / PREDICT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _remove_outputs(directory: Path, marker: dict[str, Any]) -> int:
    """Delete the files an earlier predict recorded (inside ``directory`` only); their count."""
    removed = 0
    root = directory.resolve()
    for name in marker.get("outputs") or []:
        path = (directory / str(name)).resolve()
        if root in path.parents and path.is_file():
            path.unlink()
            removed += 1
    return removed


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    atomic_write_text(directory / PREDICT_MARKER, json.dumps(marker, indent=2) + "\n")


@contextmanager
def predict_folder(
    directory: str | os.PathLike,
    command: str,
    inputs: Sequence[str | os.PathLike],
    *,
    overwrite: bool = False,
) -> Iterator[Path]:
    """Claim ``directory`` for the predict ``command`` (e.g. ``"segment predict"``) on
    ``inputs`` (the image files, in order) for the length of the ``with`` block; see the module
    docstring for the rule. Raises :class:`DrnetError` (one line) when another process holds the
    folder or it holds another predict's results without ``overwrite``. On a clean exit the
    marker records the files written in the block and ``"complete": true``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = RunFolderLock(directory, owner=command)
    lock.acquire()
    try:
        names = [os.path.abspath(p) for p in inputs]
        earlier = read_marker(directory)
        same = earlier is not None and (earlier.get("command"), earlier.get("inputs")) == (
            command,
            names,
        )
        if earlier is not None and not same:
            _replace_or_refuse(directory, earlier, overwrite)
        before = _snapshot(directory)
        marker = {"command": command, "inputs": names, "complete": False, "outputs": None}
        _write_marker(directory, marker)
        yield directory
        after = _snapshot(directory)
        written = sorted(name for name, stat in after.items() if before.get(name) != stat)
        if same and earlier.get("outputs"):  # a re-run keeps the files of the first one
            written = sorted(set(written) | {n for n in earlier["outputs"] if n in after})
        _write_marker(directory, {**marker, "complete": True, "outputs": written})
    finally:
        lock.release()


def _replace_or_refuse(directory: Path, earlier: dict[str, Any], overwrite: bool) -> None:
    what = earlier.get("command") or "predict"
    count = len(earlier.get("inputs") or [])
    state = "complete" if earlier.get("complete") else "interrupted"
    if not overwrite:
        raise DrnetError(
            f"{directory} already holds the results of another drnet {what} ({count} "
            f"input(s), {state}; see its {PREDICT_MARKER}): pass --overwrite to replace them, "
            "or choose another -o/--output-dir"
        )
    removed = _remove_outputs(directory, earlier)
    if earlier.get("complete"):
        logger.info("--overwrite: removed the %d file(s) of the earlier %s in %s", removed, what,
                    directory)  # fmt: skip
    else:
        logger.warning(
            "--overwrite: the earlier %s in %s was interrupted and did not record its files; "
            "they are replaced only where this run writes the same names",
            what,
            directory,
        )
