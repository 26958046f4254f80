"""``drnet demo --seeds N``: the whole demo N times with seeds ``seed .. seed + N - 1``, each in
its own folder with its own report and a share ``1/N`` of the budget, then one table of the mean
and the spread over the runs.

One run's differences between models can be noise: the spread over seeds (new scenes, new
initialisations, new data order) says how much a number moves when nothing but chance changes.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import time
from pathlib import Path
from typing import Any

from drnet.demo.recipes import get_recipe

#: The comparison columns aggregated over seeds (lower is better for errors, higher for mIoU).
COLUMNS = (
    "classification_error",
    "top1_localization_error",
    "centred_box_prior_error",
    "miou",
    "gridding_score",
)
SEEDS_FILE = "seeds.json"


def seed_dir(output_dir: str | Path, seed: int) -> Path:
    return Path(output_dir) / f"seed-{seed}"


def run_seeds(config: Any, run_one) -> dict:
    """Run ``run_one(config_for_seed)`` for each seed and write ``metrics.json`` (the summary),
    ``seeds.json`` and ``report.html`` (the table, linking each run's report) into
    ``config.output_dir``; returns the summary."""
    out = Path(config.output_dir)
    recipe = config.recipe or get_recipe(config.paper, config.quick)
    budget = config.budget_minutes or recipe.budget_minutes
    runs = []
    for k in range(config.seeds):
        seed = config.seed + k
        single = dataclasses.replace(
            config,
            seeds=1,
            seed=seed,
            output_dir=str(seed_dir(out, seed)),
            budget_minutes=budget / config.seeds,
            started=config.started if k == 0 else time.monotonic(),
        )
        runs.append(run_one(single))
    summary = summarise(runs, [config.seed + k for k in range(config.seeds)])
    summary["budget_minutes"] = budget
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2, default=str) + "\n"
    (out / SEEDS_FILE).write_text(text)
    (out / "metrics.json").write_text(text)
    (out / "report.html").write_text(render(summary))
    return summary


def _stats(values: list[float]) -> dict[str, float | int | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "runs": 0}
    mean = sum(values) / len(values)
    spread = (
        math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        if len(values) > 1
        else None
    )
    return {"mean": mean, "std": spread, "min": min(values), "max": max(values),
            "runs": len(values)}  # fmt: skip


def summarise(runs: list[dict], seeds: list[int]) -> dict:
    """Per model and column: mean, standard deviation (n - 1), min and max over the runs, and
    every run's row."""
    models = [row["model"] for row in runs[0]["comparison"]]
    table = []
    for model in models:
        rows = [next(r for r in run["comparison"] if r["model"] == model) for run in runs]
        entry: dict[str, Any] = {"model": model}
        for column in COLUMNS:
            entry[column] = _stats([row.get(column) for row in rows])
        entry["stopped_early"] = any(row.get("stopped_early") for row in rows)
        entry["classification_images_seen"] = [
            row.get("classification_images_seen") for row in rows
        ]
        table.append(entry)
    return {
        "drnet_demo": runs[0].get("drnet_demo"),
        "seeds": seeds,
        "comparison": table,
        "runs": [
            {"seed": seed, "folder": seed_dir("", seed).name, "comparison": run["comparison"]}
            for seed, run in zip(seeds, runs, strict=True)
        ],
    }


def _cell(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    spread = "" if stats["std"] is None else f" ± {stats['std']:.3f}"
    return f"{stats['mean']:.3f}{spread} <small>[{stats['min']:.3f}, {stats['max']:.3f}]</small>"


def render(summary: dict) -> str:
    """A small self-contained page: the mean ± standard deviation [min, max] table and links to
    each run's report."""
    heads = ["model", *(c.replace("_", " ") for c in COLUMNS), "stopped early"]
    rows = "".join(
        "<tr><td>"
        + "</td><td>".join(
            [
                html.escape(e["model"]),
                *(_cell(e[c]) for c in COLUMNS),
                "yes" if e["stopped_early"] else "no",
            ]  # fmt: skip
        )
        + "</td></tr>"
        for e in summary["comparison"]
    )
    links = "".join(
        f'<li><a href="{html.escape(r["folder"])}/report.html">seed {r["seed"]}</a></li>'
        for r in summary["runs"]
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>drnet demo over seeds</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;border-bottom:1px "
        "solid #ddd;text-align:right}td:first-child{text-align:left}</style></head><body>"
        f"<h1>drnet demo over {len(summary['seeds'])} seeds</h1>"
        "<p>Mean ± standard deviation over the runs [min, max]. A difference between models "
        "smaller than the spread is not a finding.</p>"
        f"<table><tr><th>{'</th><th>'.join(heads)}</th></tr>{rows}</table>"
        f"<h2>Each run</h2><ul>{links}</ul></body></html>\n"
    )


def summary_lines(summary: dict, output_dir: str | Path) -> list[str]:
    """What ``drnet demo --seeds N`` prints at the end."""
    lines = [f"drnet demo over seeds {', '.join(map(str, summary['seeds']))}: mean ± std"]
    lines.append(f"  {'model':<15} {'cls err':>15} {'loc err':>15} {'mIoU':>15}")
    for e in summary["comparison"]:
        cells = []
        for column in ("classification_error", "top1_localization_error", "miou"):
            s = e[column]
            std = f"±{s['std']:.3f}" if s["std"] is not None else ""
            cells.append(f"{s['mean']:.3f}{std}" if s["mean"] is not None else "n/a")
        lines.append(f"  {e['model']:<15} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15}")
    lines.append(f"report: {Path(output_dir) / 'report.html'}")
    return lines
