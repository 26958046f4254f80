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
  :func:`atomic_write_text`, :func:`atomic_write`.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from drnet.errors import DrnetError

try:  # POSIX only; Windows trains without the lock
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".drnet.lock"
# a folder holding one of these holds a run (model.json alone is left by a start that failed)
RUN_FILES = ("checkpoint_last.pth", "checkpoint_best.pth", "checkpoint_ema.pth", "log.csv")


def _file_mode() -> int:
    """The mode :func:`open` gives a new file (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


# ---------------------------------------------------------------------------- atomic writes


#: Write failures that are the disk's, not the program's: reported in one line naming the file.
_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "input/output error",
}


class WriteError(DrnetError, OSError):
    """A file could not be written (disk full, quota, read-only folder): one line naming the
    file and saying what was kept. Also an ``OSError`` (its ``errno``), for callers that test
    for one."""


def _disk_error(exc: BaseException) -> OSError | None:
    """The disk's ``OSError`` behind ``exc``: itself, or the one torch's zip writer hides in a
    ``RuntimeError`` ("unexpected pos ...") when a ``write`` fails."""
    for candidate in (exc, exc.__context__, exc.__cause__):
        if isinstance(candidate, OSError) and candidate.errno in _DISK_ERRNOS:
            return candidate
    return None


def _write_error(path: Path, exc: OSError) -> WriteError:
    kept = (
        f"the earlier {path.name} is kept as it was"
        if path.exists()
        else "nothing was written there"
    )
    error = WriteError(
        f"cannot write {path}: {_DISK_ERRNOS[exc.errno]}; {kept}, and files written before it "
        "are whole"
    )
    error.errno = exc.errno
    return error


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", *, sync: bool = True, **open_kwargs: Any
) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on a clean exit it is flushed (to
    disk with ``sync``) and renamed over ``path`` (:func:`os.replace`), on an error, Ctrl-C
    included, it is removed and ``path`` is left as it was. ``mode`` is ``"w"`` or ``"wb"``;
    ``open_kwargs`` go to :func:`open`. A full disk, a quota or a read-only folder raises
    :class:`WriteError` (one line naming ``path``)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if _disk_error(exc) is None:
            raise
        raise _write_error(path, exc) from exc
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would hide the run from the user's group
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        disk = _disk_error(exc)
        if disk is not None and not isinstance(exc, WriteError):
            raise _write_error(path, disk) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def atomic_save_image(image: Any, path: str | os.PathLike, **save_kwargs: Any) -> Path:
    """Save a PIL image (or a uint8 array) at ``path`` atomically: an interrupted run never
    leaves a truncated PNG. Not synced to disk (thousands of outputs; a crash of the machine,
    not of the process, may lose the last ones, never leave them half-written)."""
    from PIL import Image

    path = Path(path)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    kind = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_write(path, "wb", sync=False) as handle:
        image.save(handle, format=save_kwargs.pop("format", kind), **save_kwargs)
    return path


def atomic_csv(path: str | os.PathLike) -> Any:
    """:func:`atomic_write` for a CSV file: UTF-8, and a file name that is not valid UTF-8
    (bytes a file system allows) written as its own bytes instead of failing half-way."""
    return atomic_write(
        path, "w", sync=False, newline="", encoding="utf-8", errors="surrogateescape"
    )


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (a good file never becomes truncated JSON)."""
    import json

    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


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
