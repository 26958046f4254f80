"""Text inputs (list files, ``info.json``, ``--class-names`` files, JSON): read as UTF-8, a
byte-order mark tolerated (Notepad writes one), any other encoding refused in one line naming
the file, so that a UTF-16 list or a Latin-1 ``info.json`` is never misread (a BOM glued to the
first path made a file that exists "not exist")."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from drnet.errors import DataError

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of ``path`` (UTF-8, BOM stripped); :class:`DataError` naming ``what`` and the
    file when it cannot be read or is not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataError(f"cannot read {what} {path}: {reason}") from None
    if data.startswith(_UTF16_BOMS) or (len(data) > 1 and b"\x00" in data[:200]):
        raise DataError(f"{what} {path} is UTF-16 (or binary); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{what} {path} is not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); save it "
            "as UTF-8"
        ) from None


def read_lines(path: str | os.PathLike, what: str = "list file") -> list[str]:
    """The non-empty lines of ``path``, stripped (see :func:`read_text`)."""
    return [line.strip() for line in read_text(path, what).splitlines() if line.strip()]


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The JSON value in ``path`` (see :func:`read_text`); malformed JSON is one line naming the
    file, the line and the column."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
