"""``metrics.json``: its schema, the floors a run is held to, and what ``drnet demo`` prints.

:func:`assemble_metrics` builds the dict (the main model's sections at the top level, every
model in ``models``, the paper table in ``comparison``, the floors and why any was missed);
:func:`write_metrics` writes it as strict JSON (NaN as ``null``; keys starting with ``_`` hold
what only the report uses and are left out); :func:`summary_lines` is the closing summary.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drnet.atomic import atomic_write_json
from drnet.data.fashion_mnist import CLASS_TITLES
from drnet.demo.budget import Plan, Rates
from drnet.demo.config import METRICS_FILE, REPORT_FILE, DemoConfig
from drnet.demo.data import SceneData
from drnet.demo.recipes import Recipe
from drnet.machine import cpu_signature, device_info, versions
from drnet.timing import StageClock

#: What the main model must reach: top-1, mIoU, and the margin over the centred-box prior.
FLOORS = {"classification_top1": 0.70, "segmentation_miou": 0.20, "localization_margin": 0.05}


def floor_checks(cls: dict, loc: dict, seg: dict) -> dict:
    """``metrics.json``'s ``floors``: each floor's value, interval, bar and whether it passed."""
    prior = loc["centred_box_prior"]
    margin = FLOORS["localization_margin"]
    return {
        "classification_top1": {
            "value": cls["top1"],
            "ci95": cls.get("top1_ci95"),
            "floor": FLOORS["classification_top1"],
            "pass": cls["top1"] >= FLOORS["classification_top1"],
        },
        "segmentation_miou": {
            "value": seg["miou"],
            "ci95": seg.get("miou_ci95"),
            "floor": FLOORS["segmentation_miou"],
            "background_baseline": seg["background_baseline_miou"],
            "pass": seg["miou"] >= FLOORS["segmentation_miou"],
        },
        "localization_top1_vs_prior": {
            "value": loc["top1_accuracy"],
            "ci95": loc.get("top1_accuracy_ci95"),
            "prior": prior["top1_accuracy"],
            "prior_box_only": prior["gt_known_accuracy"],
            "margin": margin,
            "floor": prior["top1_accuracy"] + margin,
            "pass": loc["top1_accuracy"] >= prior["top1_accuracy"] + margin,
        },
    }


def comparison_row(model: str, entry: dict) -> dict:
    """One row of ``comparison`` (the paper table): a model's errors, mIoU and the gridding
    score of its last level."""
    levels = entry.get("gridding", {})
    final = list(levels)[-1] if levels else None
    score = levels[final] if final else {}
    cls, loc, seg = entry["classification"], entry["localization"], entry["segmentation"]
    return {
        "model": model,
        "channels": entry["channels"],
        "classification_images_seen": cls.get("images_seen"),
        "segmentation_images_seen": seg.get("images_seen"),
        "stopped_early": bool(cls.get("stopped_early") or seg.get("stopped_early")),
        "classification_error": 1 - cls["top1"],
        "classification_error_ci95": error_interval(cls.get("top1_ci95")),
        "top5_error": 1 - cls["top5"],
        "top1_localization_error": loc["top1_error"],
        "top1_localization_error_ci95": error_interval(loc.get("top1_accuracy_ci95")),
        "centred_box_prior_error": loc["centred_box_prior"]["top1_loc_err"],
        "miou": seg["miou"],
        "miou_ci95": seg.get("miou_ci95"),
        "gridding_level": final,
        "gridding_map": f"{score['height']}x{score['width']}" if score else None,
        "gridding_score": score.get("score"),
        "gridding_chance": score.get("chance"),
        "gridding_lattice_share": score.get("lattice_share"),
        "gridding_share_chance": score.get("lattice_share_chance"),
    }


def data_section(recipe: Recipe, data: SceneData) -> dict:
    """``metrics.json``'s ``data``: the scenes' settings and normalisation statistics."""
    return {
        "item_source": data.item_source,
        "classification": {
            "canvas": recipe.cls_canvas,
            "scale": list(recipe.cls_scale),
            "val_scenes": recipe.cls_val,
            "holdout_scenes": recipe.cls_holdout,
            "mean": data.cls_mean,
            "std": data.cls_std,
            "scenes_dir": str(data.loc_dir),
        },
        "segmentation": {
            "canvas": recipe.seg_canvas,
            "items": list(recipe.seg_items),
            "scale": list(recipe.seg_scale),
            "val_scenes": recipe.seg_val,
            "mean": data.seg_mean,
            "std": data.seg_std,
        },
        "class_titles": list(CLASS_TITLES),
    }


def assemble_metrics(
    *,
    config: DemoConfig,
    recipe: Recipe,
    plan: Plan,
    rates: dict[str, Rates],
    per_model: dict[str, dict],
    data: SceneData,
    device: torch.device,
    clock: StageClock,
    load_start: list[float] | None,
) -> dict:
    """``metrics.json``: the main model's sections at the top level, every model in ``models``,
    the paper table in ``comparison``."""
    main = recipe.models[-1] if "drn_d_22" not in recipe.models else "drn_d_22"
    public = {m: {k: v for k, v in entry.items()} for m, entry in per_model.items()}
    for entry in public.values():
        if "segmentation" in entry:
            entry["segmentation"] = {
                k: v for k, v in entry["segmentation"].items() if not k.startswith("_")
            }
    top = public[main]
    cls, loc, seg = top["classification"], top["localization"], top["segmentation"]
    floors = floor_checks(cls, loc, seg)
    comparison = [comparison_row(m, entry) for m, entry in public.items()]
    return {
        "drnet_demo": recipe.name,
        "main_model": main,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seed": config.seed,
        "quick": recipe.name.endswith("quick"),
        "budget_seconds": clock.budget_s,
        "estimate_seconds": round(plan.estimate_s, 1),
        "device": device_info(device),
        "versions": versions(),
        "load_average": {"start": load_start, "end": None},
        "recipe": recipe.to_dict(),
        "plan": {
            "classification_images": plan.cls_images,
            "classification_per_epoch": plan.cls_per_epoch,
            "segmentation_images": plan.seg_images,
            "segmentation_per_epoch": plan.seg_per_epoch,
            "threads": torch.get_num_threads(),
            "stages_seconds": plan.stages_s,
            "rates_seconds_per_image": {m: asdict(r) for m, r in rates.items()},
        },
        "data": data_section(recipe, data),
        "classification": cls,
        "localization": loc,
        "segmentation": seg,
        "gridding": top.get("gridding", {}),
        "floors": floors,
        "floors_missed": missed_floors(floors, cls, seg, config, clock.budget_s, load_start),
        "comparison": comparison,
        "models": public,
        "timings": dict(clock.stages),
    }


_FLOOR_WORDS = {
    "classification_top1": ("classification top-1", "classification"),
    "localization_top1_vs_prior": ("top-1 localization accuracy", "classification"),
    "segmentation_miou": ("segmentation mIoU", "segmentation"),
}


def missed_floors(
    floors: dict, cls: dict, seg: dict, config: DemoConfig, budget_s: float, load: list | None
) -> list[dict[str, str]]:
    """For each floor the run missed: one sentence saying why (the training scenes seen, their
    rate, the machine and its load) and the command that gives the model more training."""
    missed = []
    machine = f"{torch.get_num_threads()} torch thread(s) of {cpu_signature()}"
    if load:
        machine += f", load {load[0]:.1f} at the start"
    minutes = max(2 * budget_s / 60, 1.0)
    command = f"drnet demo --budget-minutes {minutes:.0f}"
    if config.seed:
        command += f" --seed {config.seed}"
    for key, (label, stage) in _FLOOR_WORDS.items():
        entry = floors[key]
        if entry["pass"]:
            continue
        run = cls if stage == "classification" else seg
        seen, rate = run.get("images_seen") or 0, run.get("images_per_s") or 0.0
        missed.append(
            {
                "floor": key,
                "why": (
                    f"{label} {entry['value']:.3f} is below its floor {entry['floor']:.3f}: the "
                    f"{stage} model saw {seen:,} training scenes at {rate:.0f} scenes/s on "
                    f"{machine}, too few for this budget ({budget_s / 60:.0f} min) on this machine"
                ),
                "fix": command,
            }
        )
    return missed


def error_interval(accuracy_interval: list[float] | None) -> list[float] | None:
    """The error's interval from the accuracy's (``1 - high``, ``1 - low``)."""
    if not accuracy_interval:
        return None
    low, high = accuracy_interval
    return [1 - high, 1 - low]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def _clean(obj: Any) -> Any:
    """NaN -> None (strict JSON), recursively; private (``_``) keys left out."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def to_json(metrics: dict) -> dict:
    """``metrics`` as ``metrics.json`` holds it: plain JSON types (paths, NumPy numbers and
    tensors converted), NaN as None, private keys left out."""
    return _clean(json.loads(json.dumps(metrics, default=_json_default)))


def write_metrics(path: Path, metrics: dict) -> Path:
    """Write ``metrics`` (see :func:`to_json`) to ``path`` atomically."""
    return atomic_write_json(path, to_json(metrics))


def summary_lines(metrics: dict, output_dir: str | os.PathLike) -> list[str]:
    """What ``drnet demo`` prints at the end: the floors, the paper table, the files."""
    floors = metrics["floors"]
    c, s, lf = (
        floors["classification_top1"],
        floors["segmentation_miou"],
        floors["localization_top1_vs_prior"],
    )

    def mark(ok: bool) -> str:
        return "ok" if ok else "BELOW FLOOR"

    def value(entry: dict) -> str:
        interval = entry.get("ci95")
        shown = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "[no interval]"
        return f"{entry['value']:.3f} {shown}"

    lines = [
        f"drnet demo ({metrics['drnet_demo']}): {metrics['main_model']}, "
        f"{metrics['wall_seconds']:.0f} s (budget {metrics['budget_seconds']:.0f} s)",
        f"  classification top-1        {value(c)}   floor {c['floor']:.2f}   {mark(c['pass'])}",
        f"  top-1 localization accuracy {value(lf)}   centred-box prior {lf['prior']:.3f}"
        f" (+{lf['margin']:.2f} needed)   {mark(lf['pass'])}",
        f"  segmentation mIoU           {value(s)}   floor {s['floor']:.2f}   "
        f"all-background {s['background_baseline']:.3f}   {mark(s['pass'])}",
    ]
    lines += [f"  why: {m['why']}; fix: {m['fix']}" for m in metrics.get("floors_missed", [])]
    if len(metrics["comparison"]) > 1:
        lines.append("")
        lines.append(
            f"  {'model':<10} {'cls err':>8} {'loc err':>8} {'prior':>8} {'mIoU':>7} "
            f"{'gridding':>9}"
        )
        for row in metrics["comparison"]:
            grid = row["gridding_score"]
            lines.append(
                f"  {row['model']:<10} {row['classification_error']:>8.3f} "
                f"{row['top1_localization_error']:>8.3f} {row['centred_box_prior_error']:>8.3f} "
                f"{row['miou']:>7.3f} {'n/a' if grid is None else f'{grid:.3f}':>9}"
            )
    out = Path(output_dir)
    lines.append(f"report: {out / REPORT_FILE}   metrics: {out / METRICS_FILE}")
    return lines
