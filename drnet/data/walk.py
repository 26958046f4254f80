"""Which files of a folder are images: one rule for every folder walk (predict inputs, image
folders, mask folders, ``data check``).

An image is a file with an image extension whose name does not start with ``.``: hidden files
are skipped, and with them the ``._x.png`` "AppleDouble" files macOS writes beside every file on
non-Apple disks (resource forks, not images, yet named like one). A folder named ``x.png`` is
not an image. A symbolic link counts as what it points to; one that points nowhere (dangling) or
at itself (a loop) is reported by :func:`broken_links`, since reading it would fail.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path


def is_image_name(name: str, extensions: Iterable[str]) -> bool:
    """Whether a file called ``name`` is taken for an image: an image extension (any case) and
    not hidden (``.x.png``, macOS's ``._x.png``)."""
    return not name.startswith(".") and name.lower().endswith(tuple(extensions))


def is_image_file(path: str | os.PathLike, extensions: Iterable[str]) -> bool:
    """:func:`is_image_name` and an existing file (a folder ``x.png`` is not one)."""
    path = Path(path)
    return is_image_name(path.name, extensions) and path.is_file()


def image_files(folder: str | os.PathLike, extensions: Iterable[str]) -> list[Path]:
    """The images under ``folder`` (recursive), sorted; see :func:`is_image_file`."""
    extensions = tuple(extensions)
    return sorted(p for p in Path(folder).rglob("*") if is_image_file(p, extensions))


def visible_files(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """The entries under ``folder`` (recursive) matching the glob ``pattern``
    (``"*_leftImg8bit.png"``, ``"*.xml"``) that are not hidden (no ``._x.xml``), sorted. Broken
    links stay in, so that reading them reports them."""
    return sorted(p for p in Path(folder).rglob(pattern) if not p.name.startswith("."))


def broken_links(folder: str | os.PathLike, extensions: Iterable[str]) -> list[tuple[Path, str]]:
    """``(path, reason)`` of every symbolic link under ``folder`` named like an image that
    cannot be read: its target does not exist (``"dangling"``) or it resolves to itself
    (``"a loop"``). Readers that list files by name (torchvision's ImageFolder, Cityscapes'
    glob) would include them and then stop on them."""
    extensions = tuple(extensions)
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if not (path.is_symlink() and is_image_name(path.name, extensions)):
            continue
        try:
            os.stat(path)
        except OSError as exc:
            reason = "a loop" if exc.errno == errno.ELOOP else "dangling"
            found.append((path, reason))
    return found


def broken_link_message(path: Path, reason: str) -> str:
    """The one line that names a :func:`broken_links` entry and what to do about it."""
    target = os.readlink(path)
    what = "loops (points to itself)" if reason == "a loop" else "points to a missing file"
    return (
        f"{path} is a symbolic link that {what} ({target}); training stops on it: fix it or "
        "delete it"
    )
