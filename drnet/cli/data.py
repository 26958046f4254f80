"""``drnet data ...``: dataset tools. Each tool lives in its own ``data_*`` module."""

from __future__ import annotations

import argparse
import importlib

DATA_COMMAND_MODULES = ("data_scenes", "data_cityscapes", "data_check")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate, prepare and check datasets")
    data_subparsers = parser.add_subparsers(dest="data_command", metavar="TOOL")
    for name in DATA_COMMAND_MODULES:
        try:
            module = importlib.import_module(f"drnet.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"drnet.cli.{name}":
                continue
            raise
        module.register(data_subparsers)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
