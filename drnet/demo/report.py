"""The demo's ``report.html``: one self-contained file (inline CSS, PNGs as ``data:`` URIs, inline
SVG charts; no script, no external reference), readable offline in any browser.

:func:`write_report` takes the metrics that :func:`drnet.demo.run.run_demo` assembled plus the
arrays it kept for pictures; :func:`check_report` is the structural check the tests run (well
formed, every image embedded, nothing fetched from the network).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from drnet.data.palettes import colorize, get_palette, overlay
from drnet.rendering import (  # noqa: F401 - line_chart, nice_ticks, png_data_uri: old home
    BOX_STYLES,
    CHART_COLOURS,
    draw_box,
    line_chart,
    nice_ticks,
    png_data_uri,
)

COLOURS = CHART_COLOURS

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d232b; background: #f6f7f9; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; border-bottom: 1px solid #dde1e6; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 8px; }
p.meta { color: #5a6470; margin: 0 0 14px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
th, td { border: 1px solid #dde1e6; padding: 4px 9px; text-align: right; }
th { background: #eef1f4; } td.l, th.l { text-align: left; }
.pass { color: #116b2e; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; text-align: center; font-size: 12px; color: #36404a; }
figure img { display: block; margin: 0 auto 2px; }
img.px { image-rendering: pixelated; image-rendering: crisp-edges; }
.ok { color: #116b2e; } .bad { color: #b3261e; }
.swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px;
          vertical-align: -1px; border: 1px solid #888; }
.note { color: #5a6470; font-size: 13px; max-width: 900px; }
svg text { font: 11px system-ui, sans-serif; fill: #36404a; }
code { background: #eef1f4; padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
img, svg.chart { max-width: 100%; height: auto; }
.grid > * { min-width: 0; max-width: 100%; }
.scroll { overflow-x: auto; max-width: 100%; }
.bad { font-style: italic; }
ul.words { margin: 4px 0 12px; padding-left: 20px; }
@media (max-width: 640px) {
  main { padding: 14px 10px 40px; }
  th, td { padding: 3px 5px; }
  table.summary tr:first-child { display: none; }
  table.summary, table.summary tbody, table.summary tr, table.summary td { display: block; }
  table.summary tr { border: 1px solid #dde1e6; margin: 0 0 8px; padding: 4px 6px; }
  table.summary td { border: 0; text-align: left; padding: 1px 0; }
}
"""


# ----------------------------------------------------------------------------------- helpers


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _img(
    image: Image.Image | np.ndarray,
    width: int | None = None,
    alt: str = "",
    pixelated: bool = False,
) -> str:
    size = f' width="{width}"' if width else ""
    cls = ' class="px"' if pixelated else ""
    return f'<img src="{png_data_uri(image)}"{size}{cls} alt="{_e(alt)}">'


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mark(correct: bool) -> str:
    """A caption's verdict: a glyph and a word as well as a colour (readable without colour)."""
    return (
        '<span class="ok">&#10003; right</span>'
        if correct
        else ('<span class="bad">&#10007; wrong</span>')
    )


def _table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1, cls: str = ""
) -> str:
    head = "".join(
        f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    table_class = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{table_class}><tr>{head}</tr>{"".join(body)}</table></div>'


def _curve(history: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    points = []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)):
            points.append((float(row["epoch"]), float(value)))
    return points


# ----------------------------------------------------------------------------------- sections


def _summary(metrics: dict) -> str:
    floors = metrics["floors"]
    loc = metrics["localization"]
    prior = loc["centred_box_prior"]

    def verdict(ok: bool) -> str:
        return '<span class="pass">pass</span>' if ok else '<span class="fail">below</span>'

    c, s, lf = (
        floors["classification_top1"],
        floors["segmentation_miou"],
        floors["localization_top1_vs_prior"],
    )
    rows = [
        [
            "classification top-1 (val scenes, test items)",
            _pct(c["value"]) + _interval(c.get("ci95")),
            f"&ge; {_pct(c['floor'], 0)}",
            "",
            verdict(c["pass"]),
        ],
        [
            "top-1 localization accuracy (IoU &gt; 0.5, class right)",
            _pct(lf["value"]) + _interval(lf.get("ci95")),
            f"&ge; prior + {lf['margin'] * 100:.0f} pts = {_pct(lf['floor'])}",
            f"centred box: {_pct(lf['prior'])} (box alone: {_pct(lf['prior_box_only'])})",
            verdict(lf["pass"]),
        ],
        [
            "segmentation mIoU (val scenes)",
            _pct(s["value"]) + _interval(s.get("ci95")),
            f"&ge; {_pct(s['floor'], 0)}",
            f"all background: {_pct(s['background_baseline'])}",
            verdict(s["pass"]),
        ],
    ]
    quick = (
        '<p class="note"><b>Quick run:</b> tiny networks and a few hundred scenes; the numbers '
        "only show that the pipeline works. Run <code>drnet demo</code> for real ones.</p>"
        if metrics.get("quick")
        else ""
    )
    head = ["", "result", "floor", "baseline", ""]
    table = _table(head, rows, cls="summary")
    extra = (
        f'<p class="note">Top-5 accuracy {_pct(metrics["classification"]["top5"])}; top-1 '
        f"localization error {_pct(loc['top1_error'])} (top-5 {_pct(loc['top5_error'])}, "
        f"ground-truth class known {_pct(loc['gt_known_error'])}); box threshold "
        f"t = {loc['threshold']:.2f} chosen on the holdout scenes; centred-box prior of "
        f"{prior['box_size'][0]:.2f} x {prior['box_size'][1]:.2f} of the image.</p>"
    )
    why = "".join(
        f'<p class="note why"><b>Why below:</b> {_e(m["why"])}. <b>Fix:</b> '
        f"<code>{_e(m['fix'])}</code></p>"
        for m in metrics.get("floors_missed", [])
    )
    intervals = '<p class="note">[brackets]: 95% intervals (Wilson for accuracies, bootstrap '
    intervals += "over images for mIoU).</p>"
    return f"<h2>Summary: {_e(metrics['main_model'])}</h2>{quick}{table}{why}{intervals}{extra}"


def _interval(interval: list[float] | None) -> str:
    if not interval:
        return ""
    return f" <small>[{_pct(interval[0])}, {_pct(interval[1])}]</small>"


def _comparison(metrics: dict) -> str:
    rows = []
    for row in metrics["comparison"]:
        share, chance = row.get("gridding_lattice_share"), row.get("gridding_share_chance")
        grid = (
            f"{_num(row['gridding_score'])} <small>(lattice share {_num(share)}, white noise "
            f"{_num(chance)})</small>"
            if row.get("gridding_score") is not None
            else "n/a"
        )
        grid += f" <small>{_e(row['gridding_level'])} {_e(row['gridding_map'])}</small>"
        seen = (
            f"{row.get('classification_images_seen') or 0:,} / "
            f"{row.get('segmentation_images_seen') or 0:,}"
            + (" <small>(stopped early)</small>" if row.get("stopped_early") else "")
        )
        rows.append(
            [
                _e(row["model"]),
                _e(",".join(map(str, row["channels"]))),
                seen,
                _pct(row["classification_error"]) + _interval(row.get("classification_error_ci95")),
                _pct(row["top1_localization_error"])
                + _interval(row.get("top1_localization_error_ci95")),
                _pct(row["centred_box_prior_error"]),
                _pct(row["miou"]) + _interval(row.get("miou_ci95")),
                grid,
            ]
        )
    table = _table(
        [
            "model",
            "widths",
            "scenes seen (cls / seg)",
            "top-1 cls error",
            "top-1 loc error",
            "prior loc error",
            "mIoU",
            "gridding of the final features",
        ],
        rows,
        left=2,
    )
    note = (
        '<p class="note">Every model: the same scenes and the same recipe; the scenes each one '
        "actually saw are in the table (a model stopped early by the time budget saw fewer). "
        "Brackets: 95% intervals (Wilson for errors over val scenes, bootstrap over val scenes "
        "for mIoU): differences inside them are not findings. Paper (ImageNet / Cityscapes, "
        "full width): classification and localization error fall from ResNet-18 to DRN-A-18 "
        "to DRN-C-26, and DRN-C has the least gridding. These are small networks trained for "
        "minutes; the table reports what came out, whether or not it follows the paper's "
        "ordering.</p>"
    )
    return f"<h2>The paper's comparison in miniature</h2>{table}{note}"


def _curves(per_model: dict, recipe: dict) -> str:
    rounds = recipe.get("scene_rounds")
    scenes_note = (
        "Every epoch renders fresh training scenes (flipped at random)."
        if rounds is None
        else "Each epoch draws from the same training scenes"
        + (f" ({rounds} sets)" if rounds > 1 else "")
        + ", rendered once and flipped at random."
    )

    def collect(kind: str, key: str) -> dict:
        return {m: _curve(e[kind].get("history", []), key) for m, e in per_model.items()}

    charts = [
        line_chart(
            collect("classification", "train_loss"),
            "classification: training loss",
            "epoch",
            "cross entropy",
        ),
        line_chart(
            collect("classification", "val_top1"),
            "classification: top-1 on monitor scenes",
            "epoch",
            "top-1",
            y_range=(0, 1),
        ),
        line_chart(
            collect("segmentation", "train_loss"),
            "segmentation: training loss",
            "epoch",
            "cross entropy",
        ),
        line_chart(
            collect("segmentation", "val_miou"),
            "segmentation: mIoU on monitor scenes",
            "epoch",
            "mIoU",
            y_range=(0, 1),
        ),
    ]
    note = (
        '<p class="note">From the engine\'s <code>log.csv</code>. '
        f"{_e(scenes_note)} The monitor scenes are the first val scenes, scored after each "
        "epoch (the final numbers use all val scenes).</p>"
    )
    return "<h2>Training curves</h2>" + note + '<div class="grid">' + "".join(charts) + "</div>"


def _classification(model: str, entry: dict, root: Path, data) -> str:
    cls = entry["classification"]
    parts = [f"<h2>Classification: {_e(model)}</h2>"]
    parts.append(
        f"<p>Top-1 {_pct(cls['top1'])}, top-5 {_pct(cls['top5'])} on {cls['num_images']} val "
        f"scenes (Fashion-MNIST test items on textures); {cls.get('epochs', '?')} epochs, "
        f"{cls.get('training_seconds', 0):.0f} s of training.</p>"
    )
    samples = []
    for s in cls.get("samples", []):
        scene = data.cls_val.scenes.render(s["index"])
        samples.append(
            f"<figure>{_img(scene.image, 96, _alt(s), True)}"
            f"{_mark(s['correct'])}: {_e(s['predicted'])} {s['probability']:.2f}<br>"
            f"<small>true: {_e(s['true'])}</small></figure>"
        )
    parts.append('<h3>Sample predictions</h3><div class="grid">' + "".join(samples) + "</div>")
    png = root / "confusion_matrix.png"
    per_class = cls.get("per_class_accuracy", {})
    table = _table(["class", "accuracy"], [[_e(k), _pct(v)] for k, v in per_class.items()])
    confusion = (
        f"<figure>{_img(Image.open(png), 520, 'confusion matrix')}</figure>"
        if png.is_file()
        else ""
    )
    parts.append(
        '<h3>Confusion matrix and per-class accuracy</h3><div class="grid">'
        f"{confusion}<div>{table}</div></div>"
    )
    parts.append(_confusions_in_words(cls))
    parts.append(_worst_mistakes(root.parent / "localization" / "boxes.json"))
    return "".join(parts)


def _alt(sample: Mapping[str, Any]) -> str:
    return f"val scene: a {sample['true']}, predicted {sample['predicted']}"


def top_confusions(
    confusion: Sequence[Sequence[int]], names: Sequence[str], count: int = 3
) -> list[dict]:
    """The ``count`` largest off-diagonal cells of a confusion matrix (rows = true class):
    ``{"true", "predicted", "count", "share"}`` with ``share`` the fraction of the true class's
    images taken for the other class."""
    cells = []
    for i, row in enumerate(confusion):
        total = sum(row)
        for j, n in enumerate(row):
            if i != j and n:
                cells.append(
                    {"true": names[i], "predicted": names[j], "count": int(n),
                     "share": n / total if total else 0.0}
                )  # fmt: skip
    cells.sort(key=lambda c: (-c["count"], -c["share"], c["true"], c["predicted"]))
    return cells[:count]


def _confusions_in_words(cls: Mapping[str, Any]) -> str:
    matrix = cls.get("confusion_matrix")
    names = list(cls.get("per_class_accuracy", {}))
    if not matrix or len(names) != len(matrix):
        return ""
    items = "".join(
        f"<li>{c['count']} {_e(c['true'])} scenes ({_pct(c['share'])} of them) were taken for "
        f"{_e(c['predicted'])}</li>"
        for c in top_confusions(matrix, names)
    )
    return f'<h3>Top confusions</h3><ul class="words">{items or "<li>none</li>"}</ul>'


def worst_mistakes(records: Sequence[Mapping[str, Any]], count: int = 6) -> list[Mapping]:
    """The ``count`` highest-confidence errors among localization records (``boxes.json``):
    images whose top-1 class is wrong, the most confident first."""
    wrong = [r for r in records if r["predictions"] and r["predictions"][0]["class"] != r["label"]]
    wrong.sort(key=lambda r: -float(r["predictions"][0]["probability"]))
    return wrong[:count]


def _worst_mistakes(boxes_file: Path, count: int = 6) -> str:
    if not boxes_file.is_file():
        return ""
    records = json.loads(boxes_file.read_text(encoding="utf-8"))
    figures = []
    for record in worst_mistakes(records, count):
        top = record["predictions"][0]
        path = Path(record["path"])
        if not path.is_file():  # a run folder moved since: the scene under its data/val
            path = boxes_file.parents[3] / "data" / "val" / record["image"]
        if not path.is_file():
            continue
        picture = Image.open(path).convert("RGB")
        scale = max(1, 128 // max(picture.size))
        picture = picture.resize((picture.width * scale, picture.height * scale))
        for box in record.get("gt_boxes", []):
            draw_box(picture, [v * scale for v in box], "truth")
        draw_box(picture, [v * scale for v in top["box"]], "predicted")
        alt = f"a {record['label']} taken for a {top['class']} at {top['probability']:.2f}"
        figures.append(
            f"<figure>{_img(picture, 128, alt)}{_mark(False)}: {_e(top['class'])} "
            f"{top['probability']:.2f}<br><small>true: {_e(record['label'])}</small></figure>"
        )
    if not figures:
        return ""
    return (
        "<h3>Worst mistakes</h3>"
        '<p class="note">The val scenes the classifier got wrong with the highest confidence: '
        f"its box {_e(BOX_STYLES['predicted']['words'])}, the true box "
        f"{_e(BOX_STYLES['truth']['words'])}.</p>"
        f'<div class="grid">{"".join(figures)}</div>'
    )


def per_class_localization(records: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per true class: images scored and top-1 localization accuracy (class right and IoU
    above the threshold), from localization records (``boxes.json``)."""
    result: dict[str, dict] = {}
    for record in records:
        entry = result.setdefault(record["label"], {"images": 0, "correct": 0})
        entry["images"] += 1
        entry["correct"] += bool(record.get("top1_loc_correct"))
    for entry in result.values():
        entry["top1_accuracy"] = entry["correct"] / entry["images"]
    return dict(sorted(result.items()))


def _localization(model: str, entry: dict, root: Path) -> str:
    loc = entry["localization"]
    prior = loc["centred_box_prior"]
    rows = [
        ["top-1 localization accuracy", _pct(loc["top1_accuracy"]), _pct(prior["top1_accuracy"])],
        ["top-1 localization error", _pct(loc["top1_error"]), _pct(prior["top1_loc_err"])],
        ["top-5 localization error", _pct(loc["top5_error"]), _pct(prior["top5_loc_err"])],
        [
            "ground-truth class known, error",
            _pct(loc["gt_known_error"]),
            _pct(prior["gt_known_loc_err"]),
        ],
    ]
    table = _table(["", "DRN class map", "centred box (prior)"], rows)
    resolutions = loc.get("by_box_resolution") or {}
    resolution_rows = [
        [
            _e(name) + (" (used above)" if name == loc.get("box_resolution") else ""),
            _pct(r["top1_accuracy"]),
            _pct(r["held_out_top1_accuracy"]),
            f"{r['threshold']:.2f}",
            (
                f"({r['box_centre_offset']['x']:+.1f}, {r['box_centre_offset']['y']:+.1f}) px"
                if r.get("box_centre_offset") and r["box_centre_offset"].get("x") is not None
                else "n/a"
            ),
        ]
        for name, r in resolutions.items()
    ]
    resolution_table = (
        "<h3>Cell and pixel boxes on the same model</h3>"
        + _table(
            ["boxes", "top-1 loc. accuracy (val)", "best on holdout", "t", "box-centre offset"],
            resolution_rows,
        )
        + '<p class="note">Cell boxes apply the rule to the stride-8 cells; pixel boxes to the '
        "class map up-sampled to the image (bilinear, the cell's value at its middle). Each "
        "chooses its own t on the holdout scenes. The offset is the mean of predicted minus true "
        "box centre over val scenes whose class is right.</p>"
        if resolution_rows
        else ""
    )
    curve = {
        "holdout (chooses t)": [
            (r["threshold"], r["top1_loc_err"]) for r in loc.get("held_out_curve") or []
        ],
        "val (reported)": [(r["threshold"], r["top1_loc_err"]) for r in loc["curve"]],
    }
    chart = line_chart(
        curve,
        "top-1 localization error against the threshold t",
        "t (fraction of the class map's range)",
        "top-1 loc. error",
        y_range=(0, 1),
        hlines=[(prior["top1_loc_err"], "centred-box prior")],
        vlines=[(loc["threshold"], f"chosen t = {loc['threshold']:.2f}")],
    )
    figures = []
    for example in loc.get("examples", []):
        picture = root / example["picture"]
        if not picture.is_file():
            continue
        alt = f"{example['image']}: heatmap of {example['predicted']} with its box"
        figures.append(
            f"<figure>{_img(Image.open(picture), 128, alt)}"
            f"{_mark(example['correct'])}: {_e(example['predicted'])}, IoU "
            f"{example['iou']:.2f}<br><small>true: {_e(example['true'])}</small></figure>"
        )
    note = (
        '<p class="note">The paper\'s protocol: the classifier without global pooling gives a '
        "class map at stride 8; the box encloses the cells (or, for pixel boxes, the pixels of the "
        "up-sampled map) where the predicted class dominates and its response exceeds t (min-max "
        "scaled). Correct when the class is right and IoU "
        "&gt; 0.5. t is chosen on the holdout scenes (reserved training items) and only then "
        "applied to the val scenes. The prior is a centred box of the mean ground-truth size, "
        "scored the same way with the same class predictions. Pictures: the predicted class's "
        "heatmap (jet colours: blue low, red high), its box as a "
        f"{_e(BOX_STYLES['predicted']['words'])}, the ground truth as a "
        f"{_e(BOX_STYLES['truth']['words'])}.</p>"
    )
    per_class = ""
    boxes_file = root / "boxes.json"
    if boxes_file.is_file():
        rows = [
            [_e(name), str(v["images"]), _pct(v["top1_accuracy"])]
            for name, v in per_class_localization(
                json.loads(boxes_file.read_text(encoding="utf-8"))
            ).items()
        ]
        per_class = "<h3>Per-class localization</h3>" + _table(
            ["class", "val scenes", "top-1 loc. accuracy"], rows
        )
    return (
        f"<h2>Weakly-supervised localization: {_e(model)}</h2>{note}"
        f'<div class="grid"><div>{table}<p>Threshold t = {loc["threshold"]:.2f} '
        f"({_e(loc['threshold_source'])}); {loc['num_images_scored']} val scenes.</p></div>"
        f"{chart}</div>{per_class}{resolution_table}"
        f'<h3>Heatmaps and boxes</h3><div class="grid">{"".join(figures)}</div>'
    )


def _segmentation(model: str, entry: dict, names: Sequence[str]) -> str:
    seg = entry["segmentation"]
    palette = get_palette(len(names))
    legend = "".join(
        f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>{_e(n)}'
        for n, (r, g, b) in zip(names, palette.tolist(), strict=True)
    )
    rows = [[_e(n), _pct(v)] for n, v in seg["per_class_iou"].items()]
    table = _table(["class", "IoU"], rows)
    examples = []
    for i, s in enumerate(seg.get("_samples", [])):
        label, pred = colorize(s["label"], palette), colorize(s["pred"], palette)
        cells = [
            (s["image"], "input"),
            (label, "ground truth"),
            (pred, "prediction"),
            (overlay(s["image"], pred, 0.5), "overlay"),
        ]
        figs = "".join(
            f"<figure>{_img(a, 144, f'{t} {i}', True)}{_e(t)}</figure>" for a, t in cells
        )
        examples.append(f'<div class="grid" style="margin-bottom:8px">{figs}</div>')
    summary = (
        f"<p>mIoU {_pct(seg['miou'])} against {_pct(seg['background_baseline_miou'])} for "
        f"predicting background everywhere; pixel accuracy {_pct(seg['pixel_accuracy'])} "
        f"(all background: {_pct(seg['background_baseline_pixel_accuracy'])}); "
        f"{seg['num_images']} val scenes; {seg.get('epochs', '?')} epochs, "
        f"{seg.get('training_seconds', 0):.0f} s of training"
        f"{', backbone started from the classifier' if seg.get('backbone_from_classifier') else ''}"
        ".</p>"
    )
    return (
        f"<h2>Segmentation: {_e(model)}</h2>{summary}"
        f'<div class="grid"><div>{"".join(examples)}<p>{legend}</p></div><div>{table}</div></div>'
    )


def _activations(per_model: dict, activations: dict, data, figures: Path) -> str:
    from drnet.analysis import STATISTIC_LABELS, render_activation_grid
    from drnet.demo.recipes import GRIDDING_FIGURE_MODELS

    image = data.activation_probe.scenes.render(0).image
    parts = ["<h2>Activation maps and gridding</h2>"]
    parts.append(
        '<p class="note">Each level for one probe scene (val items on a canvas twice the '
        "training size, so that the final maps are 16x16): the mean |activation| over channels, "
        "and (second row) the most active channel, the statistic of the paper's figure. The "
        "tiles of a row share one colour scale, from 0 to the row's largest value (the colour "
        "bar under each row), so that a flat level looks flat. The gridding score is the "
        "excess power at the period-2 "
        "and period-4 lattice frequencies (the dilations of levels 5-6) over what the "
        "neighbouring frequencies predict there, as a share of the map's power, over the channels "
        "of several val scenes: 0 means no gridding, whatever the map's smoothness or size; it is "
        "weak on 8x8 maps. The lattice share (the earlier measure: the share of power at those "
        "frequencies, against white noise) is shown beside it.</p>"
    )
    figure_models = [m for m in GRIDDING_FIGURE_MODELS if m in activations]
    if len(figure_models) >= 2:
        grid = render_activation_grid(
            {m: activations[m] for m in figure_models},
            figures / "activations_abc.png",
            image=image,
            tile=96,
            scale="row",
            colour_bar=True,
        )
        parts.append(
            "<h3>The paper's figure: DRN-A vs DRN-B vs DRN-C</h3>"
            f"<figure>{_img(grid, None, 'activation maps A B C', True)}</figure>"
        )
    for model, acts in activations.items():
        scores = per_model[model].get("gridding", {})
        titles = {
            name: (f"grid {s['score']:.2f}" if s.get("score") is not None else "grid n/a")
            for name, s in scores.items()
        }
        figures_html = ""
        for statistic, label in (("mean", "mean |act|"), ("max_channel", "top channel")):
            grid = render_activation_grid(
                {label: acts},
                figures / f"activations_{model}_{statistic}.png",
                image=image,
                tile=80,
                titles=titles,
                statistic=statistic,
                scale="row",
                colour_bar=True,
            )
            words = STATISTIC_LABELS[statistic]
            figures_html += _img(grid, None, f"activation maps of {model} per level: {words}", True)
        rows = [
            [
                _e(n),
                f"{s['height']}x{s['width']}",
                _num(s.get("score")),
                _num(s.get("lattice_share")),
                _num(s.get("lattice_share_chance")),
            ]
            for n, s in scores.items()
        ]
        headers = ["level", "map", "gridding score", "lattice share", "white-noise share"]
        parts.append(f"<h3>{_e(model)}</h3><figure>{figures_html}</figure>{_table(headers, rows)}")
    return "".join(parts)


def _run_info(metrics: dict) -> str:
    plan = metrics["plan"]
    timings = metrics.get("timings", {})
    rows = [[_e(k.replace("_", " ")), f"{v:.1f} s"] for k, v in timings.items()]
    device = metrics["device"]
    gpu = f", {device['gpu']}" if device.get("gpu") else ""
    load = metrics.get("load_average", {})
    versions = ", ".join(f"{k} {v}" for k, v in metrics["versions"].items())
    recipe = metrics["recipe"]
    command = "drnet demo" + (" --paper" if recipe["name"].startswith("paper") else "")
    command += " --quick" if metrics.get("quick") else ""
    command += f" --seed {metrics['seed']} --cls-images {plan['classification_images']}"
    command += f" --seg-images {plan['segmentation_images']} --threads {plan.get('threads', 1)}"
    precision = metrics.get("precision", {})
    if precision.get("requested", "auto") != "auto":
        command += f" --dtype {precision['requested']}"
    computed = (
        f" Training in {_e(precision.get('training'))}, evaluation in "
        f"{_e(precision.get('evaluation'))} "
        f"(<code>--dtype {_e(precision.get('requested'))}</code>)."
        if precision
        else ""
    )
    return (
        "<h2>Run</h2>"
        f"<p>Device {_e(device['name'])}{_e(gpu)} ({device['torch_threads']} threads, "
        f"{device['cpu_count']} CPUs); load average at start {_e(load.get('start'))}, at end "
        f"{_e(load.get('end'))}. Budget {metrics['budget_seconds'] / 60:.0f} min; estimated "
        f"{metrics['estimate_seconds']:.0f} s up front; wall time "
        f"{metrics.get('wall_seconds', 0):.0f} s. Items: {_e(metrics['data']['item_source'])}."
        f"{computed}</p>"
        f"<p>Plan: {plan['classification_images']:,} classification and "
        f"{plan['segmentation_images']:,} segmentation training scenes per model. Same plan and "
        f"seed, same result: <code>{_e(command)}</code></p>"
        f"{_table(['stage', 'wall time'], rows)}"
        f'<p class="note">{_e(versions)}</p>'
        f"<details><summary>Recipe</summary><pre>{_e(json.dumps(recipe, indent=1))}</pre></details>"
    )


# ----------------------------------------------------------------------------------- the report


def write_report(
    out: Path, metrics: dict, per_model: dict, activations: dict, data, figures: Path
) -> Path:
    """Write ``out/report.html`` (and the activation PNGs into ``figures``); returns its path."""
    out = Path(out)
    figures.mkdir(parents=True, exist_ok=True)
    main = metrics["main_model"]
    root = out / "models" / main
    sections = [_summary(metrics)]
    if len(per_model) > 1:
        sections.append(_comparison(metrics))
    sections.append(_curves(per_model, metrics["recipe"]))
    sections.append(_classification(main, per_model[main], root / "classification", data))
    sections.append(_localization(main, per_model[main], root / "localization"))
    sections.append(_segmentation(main, per_model[main], list(data.seg_val.class_names)))
    sections.append(_activations(per_model, activations, data, figures))
    sections.append(_run_info(metrics))
    title = "drnet demo" + (" --paper" if len(per_model) > 1 else "")
    body = "".join(sections)
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}: report</title><style>{CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1>"
        '<p class="meta">Dilated Residual Networks (Yu, Koltun, Funkhouser, CVPR 2017) in '
        "miniature: classification, weakly-supervised localization and segmentation on scenes of "
        f"Fashion-MNIST items; {_e(metrics['created'])}.</p>"
        f"{body}</main></body></html>\n"
    )
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------- checking

_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
    "circle",
    "line",
    "rect",
    "polyline",
    "path",
}


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images += 1
            if not str(values.get("src", "")).startswith("data:image/"):
                self.problems.append(f"img without a data: URI: {str(values.get('src'))[:60]}")
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.problems.append(f"<{tag}> element")
        for name, value in attrs:
            if name not in ("src", "href", "xlink:href", "action", "data", "poster") or not value:
                continue
            value = value.strip().lower()
            if not value.startswith(("data:", "#")) and ("://" in value or value.startswith("//")):
                self.problems.append(f"external reference {name}={value[:60]}")
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else '-'}>")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()


def check_report(path: str | Path) -> dict:
    """Structural check of a report: tags balanced, every ``<img>`` a ``data:`` URI, no script and
    no ``http(s)`` reference anywhere. Returns ``{"images": n, "problems": [...]}``."""
    text = Path(path).read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(text)
    checker.close()
    problems = list(checker.problems)
    if checker.stack:
        problems.append(f"unclosed tags: {checker.stack}")
    lowered = text.lower()
    for needle in ("http://", "https://", "url(", "@import"):
        if needle in lowered:
            problems.append(f"found {needle!r} in the document")
    if not text.startswith("<!DOCTYPE html>"):
        problems.append("no <!DOCTYPE html>")
    return {"images": checker.images, "problems": problems}
