"""MkDocs hooks (``mkdocs.yml``): the CLI reference page is rendered from the parser at build
time, so it always matches ``drnet --help``."""

from __future__ import annotations

MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from drnet.cli.reference import render_markdown

    return markdown.replace(MARKER, render_markdown())
