"""The command-line reference: every command's ``--help`` as Markdown (``docs/cli.md``).

``python -m drnet.cli.reference`` prints it; the documentation build puts it into the CLI
reference page (``scripts/docs_hooks.py``), so the page is the parser's own text and never goes
stale.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from drnet.cli import build_parser

#: The help is wrapped at this width, whatever the terminal (the page must not depend on it).
WIDTH = 100


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(command path, parser)`` of ``parser`` and of every sub-command below it, in the order
    ``--help`` lists them (aliases once, under their first name)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from commands(sub, (*path, name))


def render_markdown() -> str:
    """Every ``drnet ... --help`` under a heading of its own (``##`` commands, ``###`` their
    sub-commands), each in a text block."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH + 2)  # argparse wraps at COLUMNS - 2
    try:
        parts = []
        for path, parser in commands(build_parser()):
            level = "##" if len(path) <= 1 else "###"
            title = " ".join(("drnet", *path))
            parts.append(f"{level} `{title}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
        return "\n".join(parts)
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(), end="")
