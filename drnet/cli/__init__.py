"""The ``drnet`` command line.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed namespace). The modules only parse
arguments and call library functions; no logic lives only here. Every command spells its options
with the helpers of :mod:`drnet.cli.vocab`, so one flag means one thing everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import time
import traceback

from torch.distributed import DistError
from torch.distributed.elastic.multiprocessing.errors import get_error_handler, record

from drnet.errors import DrnetError

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
        return record(_main)(argv)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
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
        get_error_handler().record_exception(exc)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not getattr(args, "func", None):
        parser.print_help()
        return 2 if args.command is None else 0
    try:
        result = args.func(args)
    except (DrnetError, OSError) as exc:  # OSError: unwritable output folder, full disk...
        if args.debug:
            traceback.print_exc()
        _record_for_torchrun(exc)
        print(f"drnet: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except DistError as exc:
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
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
