"""The ``drnet`` command line.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed namespace). The modules only parse
arguments and call library functions; no logic lives only here. Every command spells its options
with the helpers of :mod:`drnet.cli.vocab`, so one flag means one thing everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from drnet.errors import DrnetError, SettingsError

# Order is the order shown by ``drnet --help``.
COMMAND_MODULES = (
    "demo",
    "models",
    "classify",
    "localize",
    "segment",
    "data",
    "benchmark",
    "export",
    "quantize",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``drnet`` parser with every sub-command (a :class:`drnet.cli.vocab.Parser`)."""
    from drnet import __version__
    from drnet.cli.vocab import Parser

    parser = Parser(
        prog="drnet",
        description="Dilated Residual Networks: models, classification, weakly-supervised "
        "localization and semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"drnet {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "--quiet", action="store_true", help="log warnings and errors only (no progress notes)"
    )
    verbosity.add_argument(
        "--debug",
        action="store_true",
        help="log debug messages and show full tracebacks instead of one-line errors",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"drnet.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"drnet.cli.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def int_at_least(lowest: int):
    """An argparse ``type``: an integer >= ``lowest``, else a usage error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def int_in(lowest: int, highest: int, zero: bool = False) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[lowest, highest]`` (``zero``: 0 too, where 0 means
    "off", e.g. no crop)."""
    at_least = int_at_least(lowest)

    def parse(text: str) -> int:
        if zero and text.strip() == "0":
            return 0
        try:
            value = at_least(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}{' (or 0)' if zero else ''}") from None
        if value > highest:
            raise argparse.ArgumentTypeError(f"must be at most {highest}, got {value}")
        return value

    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def float_in(
    lowest: float = -math.inf,
    highest: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in the range from ``lowest`` to ``highest``
    (``low_open`` / ``high_open``: that end excluded), else a usage error naming the option."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    shown = f"in {left}{lowest:g}, {highest:g}{right}"

    def parse(text: str) -> float:
        value = _finite(text)
        below = value <= lowest if low_open else value < lowest
        above = value >= highest if high_open else value > highest
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {shown}, got {text}")
        return value

    return parse


finite_float = float_in()


def list_of(item: Callable[[str], object], count: int | None = None) -> Callable[[str], tuple]:
    """An argparse ``type``: comma-separated values, each checked by ``item`` (one of the types
    above); ``count``: exactly that many values."""

    def parse(text: str) -> tuple:
        parts = [v for v in text.replace(" ", "").split(",") if v]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        if count is not None and len(parts) != count:
            raise argparse.ArgumentTypeError(f"expected {count} values, got {len(parts)}")
        values = []
        for part in parts:
            try:
                values.append(item(part))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"{part!r}: {exc}") from None
        return tuple(values)

    return parse


def ensure_writable(directory: str | os.PathLike, option: str = "-o/--output-dir") -> Path:
    """Check, before any work, that ``directory`` can be created and written (a
    :class:`DrnetError` naming ``option`` otherwise, so a long evaluation is never lost). Leaves
    no trace: folders it had to create are removed again."""
    path = Path(directory)
    created = [p for p in (path, *path.parents) if not p.exists()]
    probe = path / f".drnet-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DrnetError(f"{option} {directory}: cannot write there ({reason})") from exc
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
    return path


#: How every predict command treats bad inputs (said in each one's --help).
BAD_INPUTS_HELP = (
    "Bad inputs (unreadable, or past --max-pixels): the other images are still predicted and "
    "written, the bad ones are listed at the end, and the exit status is 1."
)

log = logging.getLogger("drnet.cli")


def report_failures(failed: list[tuple[str, str]], done: int, output_dir: str) -> int:
    """Log the bad inputs of a predict command (one line each) and return its exit status."""
    if not failed:
        return 0
    log.error("%d of %d input(s) could not be predicted:", len(failed), len(failed) + done)
    for path, message in failed:
        log.error("  %s", message if path in message else f"{path}: {message}")
    log.error("the other %d image(s) were written to %s", done, output_dir)
    return 1


def best_epoch_text(summary: dict) -> str:
    """"epoch N" of a training summary's best metric; an older checkpoint that was resumed may
    not record it (never "epoch None")."""
    epoch = summary.get("best_epoch")
    if epoch is None:
        return "epoch unknown: the resumed checkpoint does not record it"
    return f"epoch {epoch}"


def print_skips(summary: dict) -> None:
    """The ``--skip-bad-samples`` line of a training summary: the skips and, where the summary
    has it (``skipped_files``), the distinct bad files (a bad file is skipped in every epoch)."""
    skips = summary.get("skipped_samples")
    if not skips:
        return
    files = summary.get("skipped_files")
    if files:
        print(f"skipped {skips} bad sample(s) of {files} file(s) (--skip-bad-samples)")
    else:
        print(
            f"skipped {skips} bad sample(s) (--skip-bad-samples; a bad file is skipped "
            "again in every epoch, the warnings name each one)"
        )


_OS_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a part of the path is a file, expected a folder",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_line(exc: OSError) -> str:
    """An ``OSError`` a user can cause as one plain line naming the file ("x.pth: permission
    denied") instead of Python's "[Errno 13] Permission denied: 'x.pth'"."""
    reason = _OS_ERRORS.get(exc.errno or -1)
    if reason is None or exc.filename is None:
        return one_line(exc)
    where = str(exc.filename)
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    return f"{where}: {reason}"


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on a single line.

    An error raised inside a DataLoader worker reaches the main process re-raised with the
    worker's whole traceback in its message ("Caught DataError in DataLoader worker process 0.
    Original Traceback ..."): keep only the original message.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        start = text.rfind(marker)
        text = text[start + len(marker) :] if start >= 0 else text.splitlines()[-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time of each record (so it
    follows redirections, e.g. pytest's ``capsys``)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; we always use sys.stderr
        pass


def configure_logging(level: int = logging.INFO) -> logging.Handler:
    """Give the ``drnet`` logger one stderr handler printing the bare message at ``level``.

    Called by :func:`main` for the length of a run (a library user's own logging set-up is left
    as it was afterwards); a second call replaces the handler it installed.
    """
    logger = logging.getLogger("drnet")
    for handler in list(logger.handlers):
        if isinstance(handler, _StderrHandler):
            logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def main(argv: list[str] | None = None) -> int:
    """Run ``drnet ARGV``; returns the exit status (2 for a usage or input error).

    Under ``torchrun`` errors are recorded in its error file (``@record``: its summary names the
    process that failed first) and only rank 0 writes to stdout (one summary, not one per
    process).
    """
    if os.environ.get(_UNDER_TORCHRUN):  # record() also turns on faulthandler: only there
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \xNN
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = logging.getLogger("drnet")
    level = logger.level
    handler = configure_logging(
        logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    )
    try:
        with _stdout_on_rank_0():
            return _run(parser, args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def _stdout_on_rank_0():
    if int(os.environ.get("RANK", "0") or 0) == 0:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


_UNDER_TORCHRUN = "TORCHELASTIC_ERROR_FILE"  # set by torchrun's agent for its workers
COLLATERAL_DELAY_S = 2.0  # see _run


def _record_for_torchrun(exc: BaseException) -> None:
    """Write ``exc`` to torchrun's error file (caught errors too: that names the failing rank)."""
    if os.environ.get(_UNDER_TORCHRUN):
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(exc)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not getattr(args, "func", None):
        parser.print_help()
        return 2 if args.command is None else 0
    # The library is imported only here, once a command runs: building the parser and --help
    # never import torch (tests/test_cli_startup.py)
    from PIL import Image

    from drnet.data import images

    budget = images.MAX_PIXELS
    try:
        if getattr(args, "max_pixels", None):
            images.set_max_pixels(args.max_pixels)
        result = args.func(args)
    except (DrnetError, OSError, Image.DecompressionBombError) as exc:
        # OSError: unwritable output folder, full disk...; DecompressionBombError: PIL's own
        # guard, for images far past the pixel budget
        if args.debug:
            traceback.print_exc()
        _record_for_torchrun(exc)
        print(f"drnet: error: {_error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        line = memory_error_line(exc) if isinstance(exc, RuntimeError) else None
        if line is not None:  # torch.OutOfMemoryError is a RuntimeError too
            if args.debug:
                traceback.print_exc()
            _record_for_torchrun(exc)
            print(f"drnet: error: {line}", file=sys.stderr)
            return 2
        if not _lost_other_processes(exc):
            raise
        # Another process of the torchrun job failed (or hung) and this one lost it. torchrun
        # blames the first process it sees exit, so this one waits: the real failure comes first.
        if args.debug:
            traceback.print_exc()
        print(f"drnet: error: lost the other processes: {one_line(exc)}", file=sys.stderr)
        if os.environ.get(_UNDER_TORCHRUN):
            time.sleep(COLLATERAL_DELAY_S)
        return 1
    except KeyboardInterrupt:
        print("drnet: interrupted", file=sys.stderr)
        return 130
    finally:
        images.set_max_pixels(budget)
    return int(result or 0)


def _lost_other_processes(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.distributed's ``DistError`` (only possible once a command has
    imported torch.distributed, so an argument error never imports it)."""
    distributed = sys.modules.get("torch.distributed")
    return distributed is not None and isinstance(exc, distributed.DistError)


_ALLOCATION = re.compile(r"(?:tried to allocate|Tried to allocate)\s+([\d.]+)\s*(bytes|[KMGT]i?B)")
_OUT_OF_MEMORY = ("out of memory", "not enough memory", "DefaultCPUAllocator", "OutOfMemory")


def memory_error_line(exc: BaseException) -> str | None:
    """One line for an allocation that does not fit (torch's ``OutOfMemoryError`` on a GPU, the
    CPU allocator's "not enough memory" ``RuntimeError``) naming the size asked for, or None
    for any other error."""
    import torch

    text = str(exc)
    if not isinstance(exc, torch.OutOfMemoryError) and not any(m in text for m in _OUT_OF_MEMORY):
        return None
    where = "GPU" if isinstance(exc, torch.OutOfMemoryError) or "CUDA" in text else "CPU"
    match = _ALLOCATION.search(text)
    size = ""
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        if unit == "bytes":
            amount, unit = amount / 2**30, "GiB"
        size = f" ({amount:,.2f} {unit} asked for)"
    return (
        f"out of {where} memory{size}: use a smaller -b/--batch-size, narrower --channels, "
        "smaller images or crops (--crop-size, --window), or another --device"
    )


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, SettingsError):  # the task's field names, as the options that set them
        return " ".join(exc.as_flags().split())
    if isinstance(exc, OSError):
        return os_error_line(exc)
    if type(exc).__name__ == "DecompressionBombError":
        from drnet.data.images import BUDGET_HINT

        return f"{one_line(exc)} ({BUDGET_HINT})"
    return one_line(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
