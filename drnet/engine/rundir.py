"""The run folder of a training: atomic writes, the "holds a run" check, and the lock.

A failed or second training must never damage a run that is already in a folder, so the engine
(:func:`drnet.engine.train`) writes nothing there until the arguments, the model and the data are
checked, then:

- refuses a folder that already holds a run (:data:`RUN_FILES`) unless it continues it
  (``--resume``) or replaces it on request (``--overwrite``): :func:`check_run_folder`;
- keeps a second process out of a folder in use with an ``flock`` on ``<run>/.drnet.lock``
  (rank 0 only, released by the OS even after ``kill -9``): :class:`RunFolderLock`;
- writes every file atomically (temporary file in the same folder + :func:`os.replace`), so a
  reader, or a crash, never leaves a half-written ``config.json``, ``log.csv`` or checkpoint:
  :func:`drnet.atomic.atomic_write_text`, :func:`drnet.atomic.atomic_write` (re-exported here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

# re-exported: the atomic writers live in drnet.atomic (torch-free, every layer uses them)
from drnet.atomic import (
    WriteError,
    atomic_csv,
    atomic_save_image,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
)
from drnet.errors import DrnetError

__all__ = [
    "LOCK_FILE",
    "RUN_FILES",
    "RunFolderLock",
    "WriteError",
    "atomic_csv",
    "atomic_save_image",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_run_folder",
    "claim_run_folder",
    "clear_run",
    "run_files",
]

try:  # POSIX only; Windows trains without the lock
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


LOCK_FILE = ".drnet.lock"
# a folder holding one of these holds a run (model.json alone is left by a start that failed)
RUN_FILES = ("checkpoint_last.pth", "checkpoint_best.pth", "checkpoint_ema.pth", "log.csv")


# ------------------------------------------------------------------------- "holds a run"


def run_files(directory: str | os.PathLike) -> list[str]:
    """The files of :data:`RUN_FILES` that ``directory`` holds (none for a missing folder)."""
    directory = Path(directory)
    return [name for name in RUN_FILES if (directory / name).exists()]


def check_run_folder(directory: str | os.PathLike, *, resume: str | None, overwrite: bool) -> None:
    """Refuse a folder that already holds a run, unless ``resume`` (any value) or ``overwrite``.

    Raises :class:`DrnetError` with one line naming the folder and the two ways out (or saying
    that ``directory`` is a file)."""
    if Path(directory).exists() and not Path(directory).is_dir():
        raise DrnetError(f"--output-dir {directory} exists and is not a folder")
    found = run_files(directory)
    if found and not resume and not overwrite:
        raise DrnetError(
            f"{directory} already holds a training run ({', '.join(found)}); continue it with "
            "--resume auto, or replace it with --overwrite (or choose another --output-dir)"
        )


def clear_run(directory: str | os.PathLike) -> list[str]:
    """Remove the previous run's :data:`RUN_FILES` (``--overwrite``), so the folder never mixes
    two runs (an old ``checkpoint_best.pth`` next to a new ``model.json``); returns their names."""
    removed = run_files(directory)
    for name in removed:
        (Path(directory) / name).unlink()
    return removed


# ------------------------------------------------------------------------------------ lock


class RunFolderLock:
    """An exclusive ``flock`` on ``<directory>/.drnet.lock`` that keeps a second writer out: a
    training, or a predict command (``owner`` names which, e.g. ``"segment predict"``).

    :meth:`acquire` raises :class:`DrnetError` ("<dir> is in use by another drnet training
    (pid N)", naming what the holder is) when another process holds it. The lock file holds the
    owner's pid and kind for that message and is never deleted (deleting it would let two
    processes lock two different files). The OS drops the lock when the process ends, however
    it ends, so no stale lock is left behind. Without ``fcntl`` (Windows) locking is skipped.
    """

    def __init__(self, directory: str | os.PathLike, owner: str = "training") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.owner = owner
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (the folder must exist); no-op when already held."""
        if self._fd is not None:
            return
        if fcntl is None:
            logger.debug("no fcntl on this platform: %s is not locked", self.directory)
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid, owner = _read_owner(fd)
            os.close(fd)
            raise DrnetError(
                f"{self.directory} is in use by another drnet {owner} (pid {pid}); wait for "
                "it to end or choose another --output-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.owner}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_owner(fd: int) -> tuple[str, str]:
    """The pid and kind ("training", "segment predict") another process wrote into the lock
    file (pid "unknown" while it is being written; an older drnet, which wrote the pid alone,
    locked only for training)."""
    try:
        text = os.pread(fd, 128, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, owner = text.partition(" ")
    return (pid if pid.isdigit() else "unknown"), (owner.strip() or "training")


def claim_run_folder(
    directory: str | os.PathLike,
    *,
    resume: str | None,
    overwrite: bool,
    lock: RunFolderLock,
    write_files: Callable[[Path], None] | None = None,
) -> Path:
    """Make ``directory`` this training's: create it, take ``lock``, check again under the lock
    that it holds no other run (:func:`check_run_folder`), clear the old run on ``overwrite``
    (without ``resume``), then call ``write_files(directory)``. Returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    check_run_folder(directory, resume=resume, overwrite=overwrite)
    if overwrite and not resume:
        removed = clear_run(directory)
        if removed:
            logger.info("--overwrite: removed the earlier run's %s in %s", ", ".join(removed),
                        directory)  # fmt: skip
    if write_files is not None:
        write_files(directory)
    return directory
