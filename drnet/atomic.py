"""Atomic file writes, torch-free: a reader, a crash or Ctrl-C never sees a half-written file.

Every writer puts its bytes in a temporary file in the target's folder and renames it over the
target (:func:`os.replace`): :func:`atomic_write` (a file handle), :func:`atomic_write_text`,
:func:`atomic_csv`, :func:`atomic_save_image` and the one JSON writer, :func:`atomic_write_json`,
which writes strict JSON (NaN and infinities become ``null``; never invalid JSON). A full disk, a
quota or a read-only folder raises :class:`WriteError`, one line naming the file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from drnet.errors import DrnetError

__all__ = [
    "WriteError",
    "atomic_csv",
    "atomic_save_image",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "json_text",
    "strict_json",
]


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


def strict_json(data: Any) -> Any:
    """``data`` made of what strict JSON holds: NaN and +-inf become ``None``; tuples (and
    sets) become lists; paths, and keys that are not strings, become strings; tensors and numpy
    values become their Python values (``tolist``/``item``); anything else raises ``TypeError``."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if data is None or isinstance(data, (str, bool, int)):
        return data
    if isinstance(data, Mapping):
        return {k if isinstance(k, str) else str(k): strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple, set, frozenset)):
        return [strict_json(v) for v in data]
    if isinstance(data, os.PathLike):
        return os.fspath(data)
    for method in ("tolist", "item"):  # torch tensors, numpy arrays and scalars
        if callable(getattr(data, method, None)):
            return strict_json(getattr(data, method)())
    raise TypeError(f"cannot write a {type(data).__name__} as JSON: {data!r:.80}")


def json_text(data: Any, indent: int | None = 2) -> str:
    """``data`` as strict JSON text (see :func:`strict_json`), ending in a newline."""
    return json.dumps(strict_json(data), indent=indent, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as strict JSON to ``path`` atomically: NaN and infinities are written as
    ``null`` (:func:`strict_json`), and a good file never becomes truncated JSON."""
    return atomic_write_text(path, json_text(data, indent))
