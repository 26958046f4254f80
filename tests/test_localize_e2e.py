"""End to end through the ``drnet`` command line: train a tiny classifier on a generated tree of
coloured rectangles with boxes, then classify eval/predict and localize eval/predict, checking the
files and JSON fields docs/localization.md documents."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import make_shape_tree, save_tiny_model
from PIL import Image

from drnet.cli import main
from drnet.models.loading import ModelCard

TINY = "4,8,16,16,32,32,32,32"

CLASSIFY_FIELDS = {
    "top1",
    "top5",
    "loss",
    "num_images",
    "num_classes",
    "mean_class_accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "class_names",
    "files",
}
LOCALIZE_FIELDS = {
    "split",
    "held_out_split",
    "model",
    "num_images",
    "num_images_scored",
    "num_images_without_boxes",
    "threshold",
    "threshold_mode",
    "threshold_source",
    "fallback",
    "box_resolution",
    "iou_threshold",
    "resize_size",
    "top_k",
    "top1_loc_err",
    "top5_loc_err",
    "gt_known_loc_err",
    "fallback_rate",
    "top1_cls_err",
    "top5_cls_err",
    "box_centre_offset",
    "centred_box_prior",
    "curve",
    "held_out_curve",
    "held_out_num_images_scored",
    "files",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shape_tree(tmp_path_factory.mktemp("e2e") / "data")


def test_localize_cli_with_an_untrained_run_and_its_errors(data: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    channels = [int(c) for c in TINY.split(",")]
    save_tiny_model(run / "checkpoint_last.pth", 3, channels=channels)
    ModelCard(
        "drn_d_22", 3, class_names=["blue", "green", "red"], channels=channels, crop_size=32
    ).save(run)

    out = tmp_path / "fixed"
    argv = ["localize", "eval", str(data / "val"), "--boxes", str(data / "boxes.csv")]
    argv += ["--weights", str(run), "--no-progress", "--workers", "0"]
    assert main([*argv, "--threshold", "0.3", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"] == 0.3 and metrics["threshold_source"] == "fixed"
    assert metrics["resize_size"] == 256  # the card's eval resize
    assert metrics["box_resolution"] == "pixel"  # the default

    # pixel boxes: eval reports them and prints the box-centre offset; predict makes them too
    capsys.readouterr()
    pixel = tmp_path / "pixel"
    argv_pixel = [*argv, "--threshold", "0.3", "--box-resolution", "pixel"]
    assert main([*argv_pixel, "--save-images", "0", "--output-dir", str(pixel)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((pixel / "metrics.json").read_text())
    assert metrics["box_resolution"] == "pixel"
    offset = metrics["box_centre_offset"]
    assert set(offset) == {"x", "y", "images"}
    if offset["images"]:
        assert f"x {offset['x']:+.2f} px  y {offset['y']:+.2f} px" in printed
    image = data / "val" / "red" / "000.png"
    predicted = tmp_path / "predict-pixel"
    assert main(["localize", "predict", str(image), "--weights", str(run), "--box-resolution",
                 "pixel", "--no-overlays", "--no-progress", "--output-dir",
                 str(predicted)]) == 0  # fmt: skip
    (entry,) = json.loads((predicted / "boxes.json").read_text())
    x1, y1, x2, y2 = entry["predictions"][0]["box"]
    assert 0 <= x1 < x2 <= entry["width"] and 0 <= y1 < y2 <= entry["height"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects an unknown resolution
        main([*argv, "--box-resolution", "subpixel"])
    assert exit_info.value.code == 2 and "--box-resolution" in capsys.readouterr().err

    # --threshold auto without a held-out split is a one-line user error, exit code 2.
    capsys.readouterr()
    assert main([*argv, "--output-dir", str(tmp_path / "auto")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drnet: error:") and "--val-dir" in err and "\n" not in err
    assert main(["localize", "predict", str(tmp_path / "nothing.png"), "--weights", str(run)]) == 2
    assert "nothing.png" in capsys.readouterr().err


@pytest.mark.slow  # about 1 s on a quiet machine, 7 s measured under load
def test_train_eval_predict_localize(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    train = ["classify", "train", str(data), "--model", "drn_d_22", "--channels", TINY]
    train += ["--crop-size", "32", "--batch-size", "6", "--max-iters", "2", "--lr", "0.01"]
    train += ["--workers", "0", "--output-dir", str(run), "--no-progress"]
    assert main([*train, "--epochs", "1", "--lr-mode", "cosine"]) == 0
    # Resume the run for one more epoch.
    assert main([*train, "--epochs", "2", "--lr-mode", "cosine", "--resume", "auto"]) == 0
    for name in ("model.json", "config.json", "checkpoint_last.pth", "checkpoint_best.pth"):
        assert (run / name).is_file(), name
    with (run / "log.csv").open() as handle:
        log = list(csv.DictReader(handle))
    assert [row["epoch"] for row in log] == ["1", "2"] and "val_top1" in log[0]
    card = json.loads((run / "model.json").read_text())
    assert card["class_names"] == ["blue", "green", "red"] and card["crop_size"] == 32
    assert card["task"] == "classification"

    # classify eval
    evaluation = tmp_path / "classify-eval"
    assert main(["classify", "eval", str(data / "val"), "--weights", str(run), "--output-dir",
                 str(evaluation), "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert CLASSIFY_FIELDS <= set(metrics)
    assert metrics["num_images"] == 9 and 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert set(metrics["per_class_accuracy"]) == {"blue", "green", "red"}
    for name in ("per_class_accuracy.csv", "confusion_matrix.csv", "confusion_matrix.png"):
        assert (evaluation / name).is_file(), name

    # classify predict: a folder and a file
    predicted = tmp_path / "classify-predict"
    assert main(["classify", "predict", str(data / "val" / "red"), str(data / "val/blue/000.png"),
                 "--weights", str(run / "checkpoint_best.pth"), "--top-k", "2", "--output-dir",
                 str(predicted), "--no-progress"]) == 0  # fmt: skip
    predictions = json.loads((predicted / "predictions.json").read_text())
    assert len(predictions) == 4 and all(len(p["top_k"]) == 2 for p in predictions)
    assert {"class", "index", "probability"} == set(predictions[0]["top_k"][0])
    assert (predicted / "predictions.csv").is_file()

    # localize eval: t chosen on the held-out split
    located = tmp_path / "localize-eval"
    assert main(["localize", "eval", str(data / "val"), "--boxes", str(data / "boxes.csv"),
                 "--val-dir", str(data / "holdout"), "--weights", str(run), "--output-dir",
                 str(located), "--workers", "0", "--save-images", "4",
                 "--no-progress"]) == 0  # fmt: skip
    metrics = json.loads((located / "metrics.json").read_text())
    assert LOCALIZE_FIELDS <= set(metrics)
    assert metrics["threshold_source"].startswith("auto")
    assert len(metrics["curve"]) == len(metrics["held_out_curve"]) == 20
    assert metrics["threshold"] in [row["threshold"] for row in metrics["held_out_curve"]]
    assert {"top1_loc_err", "top5_loc_err", "gt_known_loc_err", "box_size"} <= set(
        metrics["centred_box_prior"]
    )
    for key in ("top1_loc_err", "top5_loc_err", "gt_known_loc_err", "top1_cls_err"):
        assert 0 <= metrics[key] <= 1
    assert metrics["top1_loc_err"] >= metrics["top1_cls_err"]  # a wrong class is a wrong box
    boxes = json.loads((located / "boxes.json").read_text())
    assert len(boxes) == 9
    assert {"image", "label", "gt_boxes", "predictions", "top1_loc_correct"} <= set(boxes[0])
    assert {"class", "probability", "box", "iou", "fallback"} <= set(boxes[0]["predictions"][0])
    assert len(list((located / "overlays").glob("*.png"))) == 4
    assert (located / "threshold_curve.csv").read_text().startswith("split,threshold,")

    # localize predict with the chosen t and class-activation heatmaps
    heat = tmp_path / "localize-predict"
    assert main(["localize", "predict", str(data / "val" / "green"), "--weights", str(run),
                 "--threshold", str(located / "metrics.json"), "--top-k", "2",
                 "--save-heatmaps", "--output-dir", str(heat), "--no-progress"]) == 0  # fmt: skip
    entries = json.loads((heat / "boxes.json").read_text())
    assert len(entries) == 3 and len(entries[0]["predictions"]) == 2
    first = entries[0]
    for prediction in first["predictions"]:
        x1, y1, x2, y2 = prediction["box"]
        assert 0 <= x1 < x2 <= first["width"] and 0 <= y1 < y2 <= first["height"]
        with Image.open(heat / prediction["heatmap"]) as image:
            assert image.size == (first["width"], first["height"])
    assert (heat / first["overlay"]).is_file()
