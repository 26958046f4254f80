"""``drnet demo``: classification, weakly-supervised localization and segmentation on the built-in
scenes within a time budget, with a self-contained HTML report (see :mod:`drnet.demo.run`)."""

from drnet.demo.recipes import Recipe, default_recipe, get_recipe, paper_recipe
from drnet.demo.report import check_report, write_report
from drnet.demo.run import DemoConfig, run_demo

__all__ = [
    "DemoConfig",
    "Recipe",
    "check_report",
    "default_recipe",
    "get_recipe",
    "paper_recipe",
    "run_demo",
    "write_report",
]
