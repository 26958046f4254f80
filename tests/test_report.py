"""The demo report's building blocks: the SVG chart, image embedding and the structural check."""

from __future__ import annotations

import base64
import io

import numpy as np
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
