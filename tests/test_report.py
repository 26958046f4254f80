"""The demo report's building blocks: the SVG chart, image embedding and the structural check."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from drnet.demo.report import check_report, line_chart, png_data_uri


def test_png_data_uri_round_trips() -> None:
    array = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    uri = png_data_uri(array)
    assert uri.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert np.array_equal(np.asarray(decoded), array)


def test_line_chart_draws_every_series_and_reference_lines() -> None:
    svg = line_chart(
        {"a": [(1, 0.5), (2, 0.25)], "b": [(1, 0.1), (2, None), (3, 0.3)]},
        "title <x>",
        "epoch",
        "loss",
        hlines=[(0.2, "prior")],
        vlines=[(2, "t")],
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2
    assert svg.count("<circle") == 4  # None values are skipped
    assert "title &lt;x&gt;" in svg and "prior" in svg
    assert "http" not in svg  # inline SVG in HTML needs no namespace URL


def test_line_chart_without_data_says_so() -> None:
    assert "no data" in line_chart({"a": []}, "empty", "x", "y")


def _write(tmp_path, body: str) -> str:
    path = tmp_path / "r.html"
    path.write_text(
        f"<!DOCTYPE html>\n<html><head><title>t</title></head><body>{body}</body></html>"
    )
    return path


def test_check_report_accepts_a_self_contained_page(tmp_path) -> None:
    image = png_data_uri(np.zeros((2, 2, 3), dtype=np.uint8))
    body = f'<main><p>ok<br></p><img src="{image}" alt=""><svg><line x1="0"/></svg></main>'
    result = check_report(_write(tmp_path, body))
    assert result == {"images": 1, "problems": []}


def test_check_report_finds_external_and_broken_content(tmp_path) -> None:
    body = (
        '<img src="https://example.org/a.png"><script>alert(1)</script>'
        '<div><p>unclosed</div><a href="http://x">x</a>'
    )
    problems = check_report(_write(tmp_path, body))["problems"]
    text = " ".join(problems)
    assert "img without a data: URI" in text
    assert "<script> element" in text
    assert "external reference" in text
    assert "closes" in text


# ----------------------------------------------------------------------------- figures


def test_segmentation_palette_classes_are_distinguishable() -> None:
    """Every pair of classes of the demo's palette (background + 10 items) and of smaller and
    larger ones is far apart in CIELAB (Delta E 1976 > 25; the old VOC scheme had pairs at 12)."""
    from drnet.data.palettes import (
        generated_palette,
        get_palette,
        min_colour_distance,
        srgb_to_lab,
    )

    assert srgb_to_lab(np.array([255, 255, 255])) == pytest.approx([100, 0, 0], abs=0.05)
    assert min_colour_distance(np.array([[0, 0, 0], [255, 255, 255]])) == pytest.approx(100, 0.01)
    for classes in (2, 4, 11, 21, 30):
        palette = get_palette(classes)
        assert palette.shape == (classes, 3) and palette[0].tolist() == [0, 0, 0]
        assert min_colour_distance(palette) > 25, classes
    assert min_colour_distance(generated_palette(11)) < 15  # what the report used to show


def test_chart_reference_labels_stay_out_of_the_plot() -> None:
    """Reference-line labels are legend entries above the plot (with the line's dash), never
    text inside the plot area where the data runs."""
    svg = line_chart(
        {"holdout": [(0.0, 0.9), (0.5, 0.4), (1.0, 0.8)], "val": [(0.0, 0.95), (1.0, 0.7)]},
        "error against t",
        "t",
        "error",
        y_range=(0, 1),
        hlines=[(0.75, "centred-box prior")],
        vlines=[(0.65, "chosen t = 0.65")],
    )
    import re

    texts = re.findall(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>([^<]*)</text>', svg)
    plot_top = min(
        float(y) for y1, y in re.findall(r'y1="([\d.]+)" y2="([\d.]+)" stroke="#888"', svg)
    )
    labels = {t: float(y) for _, y, t in texts}
    assert labels["centred-box prior (0.75)"] < plot_top
    assert labels["chosen t = 0.65"] < plot_top
    assert svg.count("stroke-dasharray") == 4  # two lines, two legend swatches


def test_colour_bar_and_shared_row_scale() -> None:
    """A colour bar prints its scale's ends; on a shared row scale a flat map stays dark while
    the map beside it is bright (each tile's own range would make both look alike)."""
    import torch

    from drnet.analysis import render_activation_grid
    from drnet.rendering import colorize_values, colour_bar

    bar = colour_bar(0, 2.5, "mean |activation|")
    assert bar.width == 202 and bar.height > 30
    strong = torch.zeros(1, 8, 8)
    strong[0, 2:6, 2:6] = 4.0
    flat = torch.full((1, 8, 8), 0.1)
    flat[0, 0, 0] = 0.2
    maps = {"strong": strong, "flat": flat}
    picture = np.zeros((8, 8, 3), np.uint8)  # an input tile first, as the report draws
    own = np.asarray(render_activation_grid(maps, tile=16, image=picture))
    shared = np.asarray(
        render_activation_grid(maps, tile=16, image=picture, scale="row", colour_bar=True)
    )
    assert shared.shape[0] > own.shape[0]  # room for the bar
    flat_tile = (slice(2, 18), slice(42, 58))
    assert own[flat_tile].max() > 200  # own range: the flat map's one bright pixel is yellow
    assert shared[flat_tile].max() < 150  # shared: it stays near the dark end
    coloured = colorize_values(np.array([[0.0, 1.0, 2.0]]), "viridis", 0, 2)
    assert coloured[0, 0].tolist() == [68, 1, 84] and coloured[0, 2].tolist() == [253, 231, 37]


def test_boxes_differ_by_more_than_hue() -> None:
    """The predicted box is solid white with a black edge, the truth dashed yellow: a row along
    the predicted top edge is white throughout, along the true one it alternates."""
    import torch

    from drnet.rendering import render_overlay

    image = Image.new("RGB", (100, 100), (200, 30, 30))  # the jet map's red end
    picture = np.asarray(
        render_overlay(
            image, None, torch.tensor([[10.0, 10, 60, 60]]), torch.tensor([[30.0, 40, 90, 95]])
        )
    )
    top = picture[10, 14:56]
    assert (top == 255).all()
    truth = picture[40, 34:86]
    yellow = (truth == [255, 212, 0]).all(axis=1)
    assert 0.3 < yellow.mean() < 0.7
    assert (picture[9, 20] == 0).all()  # the black edge


# ----------------------------------------------------------------------------- the summary


def _metrics(top1: float, floor_pass: bool) -> dict:
    floors = {
        "classification_top1": {"value": top1, "ci95": [top1 - 0.03, top1 + 0.03],
                                "floor": 0.7, "pass": floor_pass},
        "localization_top1_vs_prior": {"value": 0.41, "ci95": [0.38, 0.44], "floor": 0.3,
                                       "margin": 0.05, "prior": 0.25, "prior_box_only": 0.3,
                                       "pass": True},
        "segmentation_miou": {"value": 0.223, "ci95": [0.209, 0.236], "floor": 0.2,
                              "background_baseline": 0.08, "pass": True},
    }  # fmt: skip
    missed = [] if floor_pass else [
        {"floor": "classification_top1",
         "why": "4,800 training scenes seen at 14 images/s on a 2-core CPU",
         "fix": "drnet demo --budget-min 15"}
    ]  # fmt: skip
    return {
        "floors": floors, "floors_missed": missed, "main_model": "drn_d_22", "quick": False,
        "classification": {"top5": 0.93},
        "localization": {"top1_error": 0.59, "top5_error": 0.5, "gt_known_error": 0.45,
                         "threshold": 0.65, "centred_box_prior": {"box_size": [0.4, 0.4]}},
    }  # fmt: skip


def test_summary_has_intervals_beside_headlines_and_explains_a_missed_floor() -> None:
    import re

    from drnet.demo.report import _summary

    page = _summary(_metrics(0.596, False))
    rows = re.findall(r"<tr>(.*?)</tr>", page)[1:]
    assert len(rows) == 3
    for row, interval in zip(rows, ("56.6%, 62.6%", "38.0%, 44.0%", "20.9%, 23.6%"), strict=True):
        value_cell = re.findall(r"<td>(.*?)</td>", row)[0]  # the result column
        assert f"[{interval}]" in value_cell
    assert "below" in rows[0]
    why = page.index("Why below")
    assert page.index("</table>") < why  # under the table it explains
    assert "14 images/s" in page[why:] and "drnet demo --budget-min 15" in page[why:]
    assert "Why below" not in _summary(_metrics(0.75, True))


def test_confusions_worst_mistakes_and_per_class_localization() -> None:
    from drnet.demo.report import per_class_localization, top_confusions, worst_mistakes

    confusion = [[8, 2, 0], [5, 5, 0], [0, 1, 9]]
    top = top_confusions(confusion, ["shirt", "t-shirt", "bag"], count=2)
    assert [(c["true"], c["predicted"], c["count"]) for c in top] == [
        ("t-shirt", "shirt", 5),
        ("shirt", "t-shirt", 2),
    ]
    assert top[0]["share"] == pytest.approx(0.5)

    def record(label: str, predicted: str, p: float, ok: bool) -> dict:
        return {"label": label, "top1_loc_correct": ok,
                "predictions": [{"class": predicted, "probability": p}]}  # fmt: skip

    records = [
        record("bag", "bag", 0.99, True),
        record("bag", "shirt", 0.6, False),
        record("shirt", "bag", 0.9, False),
        record("shirt", "shirt", 0.8, False),
    ]
    assert [r["predictions"][0]["probability"] for r in worst_mistakes(records)] == [0.9, 0.6]
    per_class = per_class_localization(records)
    assert per_class["bag"] == {"images": 2, "correct": 1, "top1_accuracy": 0.5}
    assert per_class["shirt"]["top1_accuracy"] == 0.0
