"""The one folder walk behind every folder drnet reads: predict inputs, ImageFolder classes,
mask and image folders, Cityscapes' ``*_leftImg8bit.png`` and ``gtFine`` files, box XML folders
and ``drnet data check``.

:class:`FolderWalk` reads a folder tree once:

- links to folders are followed (data is often linked in), but never into a folder already read
  (a link to ``.`` multiplied every image, two such links never ended);
- hidden entries are skipped: ``.ipynb_checkpoints``, ``.DS_Store`` and the ``._x.png``
  "AppleDouble" files macOS writes beside every file on non-Apple disks (resource forks, not
  images, yet named like one);
- a folder named ``x.png`` is a folder, never an image;
- a link named like a wanted file that cannot be read (it points nowhere, or at itself) is kept
  in :attr:`FolderWalk.files`, so that reading it names it, and listed in
  :attr:`FolderWalk.broken` for ``data check`` to report;
- the files come in torchvision's ImageFolder order (by folder, then name).
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path


class FolderWalk:
    """The files under ``root`` whose names end in one of ``extensions`` (any case) and match
    the glob ``pattern`` (e.g. ``"*_leftImg8bit.png"``; each optional), walked once as the
    module docstring says. ``files`` is what a reader should read; ``loops`` (links to a folder
    already read), ``hidden`` (hidden entries) and ``broken`` (``(link, reason)``, reason
    ``"dangling"`` or ``"a loop"``) say what was skipped or cannot be read."""

    def __init__(
        self,
        root: str | os.PathLike,
        extensions: Sequence[str] | None = None,
        pattern: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.files: list[Path] = []
        self.loops: list[Path] = []
        self.hidden: list[Path] = []
        self.broken: list[tuple[Path, str]] = []
        self._suffixes = tuple(e.lower() for e in extensions) if extensions else None
        self._pattern = pattern
        seen = {os.path.realpath(self.root)}
        pending = [self.root]
        while pending:
            folder = pending.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                self._visit(entry, seen, pending)
        self.files.sort(key=lambda p: (str(p.parent), p.name))  # torchvision's ImageFolder order
        self.broken.sort(key=lambda item: (str(item[0].parent), item[0].name))

    def _wanted(self, name: str) -> bool:
        if self._suffixes is not None and not name.lower().endswith(self._suffixes):
            return False
        return self._pattern is None or fnmatch.fnmatchcase(name, self._pattern)

    def _visit(self, entry: os.DirEntry, seen: set[str], pending: list[Path]) -> None:
        path = Path(entry.path)
        if entry.name.startswith("."):
            self.hidden.append(path)
            return
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError:  # a link that resolves to itself
            is_dir = is_file = False
        if is_dir:
            real = os.path.realpath(path)
            if real in seen:
                self.loops.append(path)
            else:
                seen.add(real)
                pending.append(path)
        elif self._wanted(entry.name):
            if not is_file:
                reason = _broken_reason(path) if entry.is_symlink() else None
                if reason is None:
                    return  # a socket, a fifo: nothing to read
                self.broken.append((path, reason))
            self.files.append(path)

    def notes(self) -> list[str]:
        """One line each for the links and hidden folders that were skipped (none: empty);
        :func:`broken_link_message` says what :attr:`broken` cannot be read."""
        notes = []
        if self.loops:
            shown = ", ".join(str(p) for p in self.loops[:3])
            notes.append(
                f"{len(self.loops)} link(s) to a folder already read were not followed: {shown}"
            )
        hidden = [p for p in self.hidden if p.is_dir()]
        if hidden:
            shown = ", ".join(str(p) for p in hidden[:3])
            notes.append(f"{len(hidden)} hidden folder(s) were skipped: {shown}")
        return notes


def _broken_reason(path: Path) -> str | None:
    """``"a loop"`` or ``"dangling"`` for a link that cannot be followed, else None."""
    try:
        os.stat(path)
    except OSError as exc:
        return "a loop" if exc.errno == errno.ELOOP else "dangling"
    return None


def broken_link_message(path: Path, reason: str) -> str:
    """The one line that names a :attr:`FolderWalk.broken` link and what to do about it."""
    target = os.readlink(path)
    what = "loops (points to itself)" if reason == "a loop" else "points to a missing file"
    return (
        f"{path} is a symbolic link that {what} ({target}); training stops on it: fix it or "
        "delete it"
    )
