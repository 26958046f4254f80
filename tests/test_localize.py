"""Localization scoring, threshold selection, outputs and errors, with a hand-made "model".

``ColourNet`` responds to class ``c`` with the mean of colour channel ``c`` over each 8x8 cell,
so on a tree of red/green/blue rectangles it localizes exactly where the boxes are: the scoring
and bookkeeping can be checked without training anything.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import SHAPE_COLOURS, make_shape_tree
from PIL import Image
from torch import nn

from drnet.errors import DataError, DrnetError
from drnet.models.loading import ModelCard
from drnet.tasks.localize import (
    LocalizationSettings,
    choose_threshold,
    colorize,
    default_thresholds,
    evaluate_localization,
    parse_thresholds,
    predict_localization,
    read_threshold,
    upsample_heatmap,
)


class ColourNet(nn.Module):
    """Class ``c`` responds with channel ``c`` (blue, green, red order = sorted class names)."""

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x[:, [2, 1, 0]], 8, ceil_mode=True) * 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).mean(dim=(2, 3))


CELL = LocalizationSettings(box_resolution="cell")  # ColourNet's boxes are exact at cell level


def colour_card() -> ModelCard:
    return ModelCard(
        model="colournet",
        num_classes=3,
        class_names=sorted(SHAPE_COLOURS),
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
        crop_size=32,
        resize_size=0,  # native size: boxes need no rescaling
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_shape_tree(tmp_path_factory.mktemp("shapes"), aligned=True)


def test_auto_threshold_is_chosen_on_the_held_out_split(tree: Path, tmp_path: Path):
    metrics = evaluate_localization(
        ColourNet(),
        colour_card(),
        tree / "val",
        tree / "boxes.csv",
        tmp_path,
        val_dir=tree / "holdout",
        progress=False,
        save_images=2,
        settings=CELL,
    )
    # The colour model classifies perfectly and, on grid-aligned rectangles, boxes exactly.
    assert metrics["top1_cls_err"] == 0 and metrics["top5_cls_err"] == 0
    assert metrics["threshold_source"].startswith("auto")
    held_out = metrics["held_out_curve"]
    assert metrics["threshold"] == choose_threshold(held_out)["threshold"]
    assert metrics["top1_loc_err"] == 0.0 and metrics["top5_loc_err"] == 0.0
    assert [row["threshold"] for row in metrics["curve"]] == default_thresholds()
    assert metrics["num_images"] == 9 and metrics["num_images_scored"] == 9
    prior = metrics["centred_box_prior"]
    assert set(prior) == {
        "top1_loc_err",
        "top5_loc_err",
        "gt_known_loc_err",
        "box_size",
        "box_size_from",
    }
    assert prior["box_size_from"] == "held_out" and 0 < prior["box_size"][0] < 1
    assert prior["top1_loc_err"] > metrics["top1_loc_err"]

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["threshold"] == metrics["threshold"]
    with (tmp_path / "threshold_curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["split"] for r in rows} == {"held_out", "evaluation"}
    assert len(rows) == 2 * len(default_thresholds())
    boxes = json.loads((tmp_path / "boxes.json").read_text())
    assert len(boxes) == 9
    first = boxes[0]
    assert first["predictions"][0]["class"] == first["label"]
    assert first["predictions"][0]["iou"] > 0.5 and first["top1_loc_correct"]
    assert len(first["predictions"]) == 3  # top-5 capped at the 3 classes
    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(overlays) == 2 and boxes[0]["overlay"].startswith("overlays/")
    with Image.open(overlays[0]) as overlay:
        assert overlay.size == (first["width"], first["height"])


def test_a_box_of_the_right_class_but_wrong_place_is_an_error(tree: Path, tmp_path: Path):
    # Shift every ground-truth box far away: classification stays right, localization fails.
    shifted = tmp_path / "shifted.csv"
    with (tree / "boxes.csv").open() as src, shifted.open("w", newline="") as dst:
        rows = list(csv.DictReader(src))
        writer = csv.DictWriter(dst, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            row["image"] = str(tree / row["image"])  # absolute paths work too
            row["x1"], row["y1"], row["x2"], row["y2"] = 0, 0, 2, 2
            writer.writerow(row)
    metrics = evaluate_localization(
        ColourNet(),
        colour_card(),
        tree / "val",
        shifted,
        tmp_path / "out",
        threshold=0.5,
        settings=CELL,
    )
    assert metrics["threshold_source"] == "fixed" and metrics["threshold"] == 0.5
    assert metrics["top1_cls_err"] == 0
    assert metrics["top1_loc_err"] == 1.0 and metrics["gt_known_loc_err"] == 1.0
    assert metrics["held_out_curve"] is None
    assert metrics["centred_box_prior"]["box_size_from"] == "evaluation"


def test_wrong_class_is_a_localization_error_even_with_a_good_box(tree: Path, tmp_path: Path):
    card = colour_card()
    card.class_names = ["blue", "red", "green"]  # green and red swapped: every red/green is wrong
    metrics = evaluate_localization(
        ColourNet(), card, tree / "val", tree / "boxes.csv", tmp_path, threshold=0.2, settings=CELL
    )
    assert metrics["top1_cls_err"] == pytest.approx(2 / 3)
    assert metrics["top1_loc_err"] == pytest.approx(2 / 3)
    records = json.loads((tmp_path / "boxes.json").read_text())
    red = next(r for r in records if r["label"] == "red")
    assert red["predictions"][0]["class"] == "green"  # wrong class ...
    assert red["predictions"][0]["iou"] == 1.0  # ... with a perfect box
    assert not red["top1_loc_correct"]


def test_threshold_choice_and_parsing():
    curve = [
        {"threshold": 0.1, "top1_loc_err": 0.3, "top5_loc_err": 0.2},
        {"threshold": 0.2, "top1_loc_err": 0.2, "top5_loc_err": 0.2},
        {"threshold": 0.3, "top1_loc_err": 0.2, "top5_loc_err": 0.1},
        {"threshold": 0.4, "top1_loc_err": 0.2, "top5_loc_err": 0.1},
    ]
    assert choose_threshold(curve)["threshold"] == 0.3
    assert parse_thresholds("0:0.3:0.1") == [0.0, 0.1, 0.2]
    assert parse_thresholds("0.5,0.1") == [0.1, 0.5]
    with pytest.raises(DrnetError, match="thresholds"):
        parse_thresholds("a,b")
    assert default_thresholds()[:3] == [0.0, 0.05, 0.1] and len(default_thresholds()) == 20


def test_read_threshold_from_a_metrics_file(tmp_path: Path):
    assert read_threshold("0.35") == (0.35, None)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"threshold": 0.4, "threshold_mode": "minmax"}))
    assert read_threshold(str(path)) == (0.4, "minmax")
    with pytest.raises(DrnetError, match="threshold"):
        read_threshold(str(tmp_path / "missing.json"))


def test_auto_needs_a_held_out_split_that_is_not_the_evaluation_split(tree: Path, tmp_path):
    args = (ColourNet(), colour_card(), tree / "val", tree / "boxes.csv", tmp_path)
    with pytest.raises(DrnetError, match="--val-dir"):
        evaluate_localization(*args)
    with pytest.raises(DrnetError, match="evaluation split"):
        evaluate_localization(*args, val_dir=tree / "val", settings=CELL)
    with pytest.raises(DrnetError, match="raw"):
        evaluate_localization(
            *args,
            val_dir=tree / "holdout",
            settings=LocalizationSettings(threshold_mode="raw", box_resolution="cell"),
        )


def test_box_file_errors(tree: Path, tmp_path: Path):
    missing = tmp_path / "missing.csv"
    missing.write_text("image,x1,y1,x2,y2,label\nval/red/999.png,0,0,4,4,red\n")
    with pytest.raises(DataError, match="999.png"):
        evaluate_localization(
            ColourNet(),
            colour_card(),
            tree / "val",
            missing,
            tmp_path,
            threshold=0.2,
            settings=CELL,
        )
    other = tmp_path / "other.csv"  # boxes only for another split: nothing to score
    other.write_text("image,x1,y1,x2,y2,label\n" + f"{tree}/train/red/000.png,0,0,4,4,red\n")
    with pytest.raises(DataError, match="no image"):
        evaluate_localization(
            ColourNet(), colour_card(), tree / "val", other, tmp_path, threshold=0.2, settings=CELL
        )


def test_images_without_boxes_are_counted_not_scored(tree: Path, tmp_path: Path):
    partial = tree / "partial.csv"  # beside the tree: its image paths are relative to it
    with (tree / "boxes.csv").open() as handle:
        lines = handle.read().splitlines()
    partial.write_text("\n".join(lines[:1] + [l for l in lines[1:] if "/red/" not in l]) + "\n")
    metrics = evaluate_localization(
        ColourNet(), colour_card(), tree / "val", partial, tmp_path, threshold=0.2, settings=CELL
    )
    assert metrics["num_images"] == 9 and metrics["num_images_scored"] == 6
    assert metrics["num_images_without_boxes"] == 3


def test_predict_writes_boxes_overlays_and_heatmaps(tree: Path, tmp_path: Path):
    paths = sorted((tree / "val" / "red").glob("*.png"))[:2]
    entries = predict_localization(
        ColourNet(),
        colour_card(),
        paths,
        tmp_path,
        threshold=0.2,
        settings=LocalizationSettings(top_k=2, box_resolution="cell"),
        save_heatmaps=True,
        progress=False,
    )
    assert len(entries) == 2
    entry = entries[0]
    assert entry["predictions"][0]["class"] == "red" and len(entry["predictions"]) == 2
    x1, y1, x2, y2 = entry["predictions"][0]["box"]
    assert 0 <= x1 < x2 <= entry["width"] and 0 <= y1 < y2 <= entry["height"]
    assert (tmp_path / entry["overlay"]).is_file()
    for prediction in entry["predictions"]:
        with Image.open(tmp_path / prediction["heatmap"]) as heatmap:
            assert heatmap.size == (entry["width"], entry["height"])
    assert json.loads((tmp_path / "boxes.json").read_text()) == entries


def test_heatmap_helpers():
    cmap = colorize(torch.tensor([[0.0, 0.5, 1.0]]))
    assert cmap.dtype == torch.uint8 and cmap.shape == (3, 1, 3)
    assert cmap[:, 0, 0].tolist() == [0, 0, 128] and cmap[:, 0, 2].tolist() == [128, 0, 0]
    heat = upsample_heatmap(torch.tensor([[0.0, 1.0]]), (8, 13), (16, 26))
    assert heat.shape == (16, 26) and heat.min() >= 0 and heat.max() <= 1
    assert heat[:, :4].max() < heat[:, -4:].min()


class ShiftedColourNet(ColourNet):
    """ColourNet whose map is moved one cell right: every box lands 8 px right of the truth."""

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        cells = super().forward_map(x)
        return torch.cat([cells[..., :1], cells[..., :-1]], dim=-1)


def mean_record_offset(records: list[dict]) -> tuple[float, float]:
    """The mean (dx, dy) of the top-1 box centre from its ground-truth box, from boxes.json."""
    right = [r for r in records if r["predictions"][0]["class"] == r["label"]]
    dx = dy = 0.0
    for record in right:
        (x1, y1, x2, y2), (g1, h1, g2, h2) = record["predictions"][0]["box"], record["gt_boxes"][0]
        dx += (x1 + x2 - g1 - g2) / 2 / len(right)
        dy += (y1 + y2 - h1 - h2) / 2 / len(right)
    return dx, dy


@pytest.mark.parametrize("resolution", ["cell", "pixel"])
def test_box_centre_offset_is_reported(tree: Path, tmp_path: Path, resolution: str):
    settings = LocalizationSettings(box_resolution=resolution)
    args = (colour_card(), tree / "val", tree / "boxes.csv")
    metrics = evaluate_localization(
        ColourNet(), *args, tmp_path / "exact", threshold=0.5, settings=settings, progress=False
    )
    # ColourNet's cells are exactly the 8-px blocks and the boxes are on the grid: no offset,
    # for pixel boxes too (half-way between two cells is the cell edge).
    assert metrics["box_resolution"] == resolution and metrics["top1_loc_err"] == 0
    assert metrics["box_centre_offset"] == {"x": 0.0, "y": 0.0, "images": 9}

    shifted = evaluate_localization(
        ShiftedColourNet(), *args, tmp_path / "shifted", threshold=0.5, settings=settings
    )
    offset = shifted["box_centre_offset"]
    assert offset["images"] == 9 and offset["y"] == 0 and 2 < offset["x"] <= 8
    records = json.loads((tmp_path / "shifted" / "boxes.json").read_text())
    assert (offset["x"], offset["y"]) == pytest.approx(mean_record_offset(records), abs=1e-3)
    on_disk = json.loads((tmp_path / "shifted" / "metrics.json").read_text())
    assert on_disk["box_centre_offset"] == offset


def test_the_offset_counts_only_images_whose_top1_class_is_right(tree: Path, tmp_path: Path):
    card = colour_card()
    card.class_names = ["blue", "red", "green"]  # every red and green image is misclassified
    metrics = evaluate_localization(
        ColourNet(), card, tree / "val", tree / "boxes.csv", tmp_path, threshold=0.5, settings=CELL
    )
    assert metrics["box_centre_offset"] == {"x": 0.0, "y": 0.0, "images": 3}


def test_box_resolution_setting_and_pixel_predictions(tree: Path, tmp_path: Path):
    with pytest.raises(DrnetError, match="box_resolution"):
        LocalizationSettings(box_resolution="subpixel")
    assert LocalizationSettings().box_resolution == "pixel"  # chosen on the demo's held-out split
    paths = sorted((tree / "val" / "green").glob("*.png"))
    boxes = {}
    for resolution in ("cell", "pixel"):
        entries = predict_localization(
            ColourNet(),
            colour_card(),
            paths,
            tmp_path / resolution,
            threshold=0.1,
            settings=LocalizationSettings(top_k=1, box_resolution=resolution),
            save_overlays=False,
            progress=False,
        )
        boxes[resolution] = torch.tensor([e["predictions"][0]["box"] for e in entries])
    # At a low t the bilinear spread reaches past the rectangle, by at most half a cell.
    difference = boxes["pixel"] - boxes["cell"]
    assert difference.abs().max() <= 4 and (difference != 0).any()
