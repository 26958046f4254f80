"""Classification metrics, reports, prediction, data helpers and model loading (fast tests)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import drnet
from drnet.data.classification import (
    eval_transform,
    image_folder,
    list_images,
    short_output_names,
    train_transform,
)
from drnet.errors import CheckpointError, DataError, DrnetError
from drnet.models.loading import ModelCard, load_model
from drnet.tasks.classify import (
    ClassificationResult,
    ClassificationTask,
    match_split_classes,
    predict_classes,
    save_confusion_matrix_png,
    topk_correct,
    write_classification_report,
    write_predictions,
)

TINY = (4, 8, 16, 16, 32, 32, 32, 32)


def test_topk_correct_by_hand():
    logits = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.0, 0.0, 0.0],  # target 0: top-1 hit
            [0.9, 0.5, 0.1, 0.0, 0.0, 0.0],  # target 2: top-3 hit
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # target 0: last, miss even at top-5
        ]
    )
    target = torch.tensor([0, 2, 0])
    assert topk_correct(logits, target, (1, 3, 5)) == {1: 1, 3: 2, 5: 2}
    # k is capped at the number of classes: with 2 classes top-5 is top-2 (always right).
    assert topk_correct(logits[:, :2], torch.tensor([0, 1, 1]), (1, 5)) == {1: 2, 5: 3}


def test_result_confusion_per_class_and_absent_classes():
    result = ClassificationResult.empty(["a", "b", "c"])
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    result.update(logits, torch.tensor([0, 1, 1, 0]))
    assert result.confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    metrics = result.metrics()
    assert metrics["top1"] == 0.5 and metrics["top5"] == 1.0
    assert metrics["per_class_accuracy"] == {"a": 0.5, "b": 0.5, "c": None}
    assert metrics["mean_class_accuracy"] == 0.5
    assert metrics["num_images"] == 4 and metrics["num_classes"] == 3
    assert metrics["loss"] > 0


def test_report_files(tmp_path: Path):
    result = ClassificationResult.empty(["cat", "dog"])
    result.update(torch.tensor([[2.0, 1.0], [2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1, 1]))
    metrics = write_classification_report(result, tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    for key in ("top1", "top5", "loss", "per_class_accuracy", "confusion_matrix", "files"):
        assert key in on_disk
    assert on_disk["confusion_matrix"] == [[1, 0], [1, 1]]
    assert on_disk["ten_crop"] is False  # a plain (centre-crop) result says so
    with (tmp_path / "per_class_accuracy.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["class"], r["images"], r["correct"]) for r in rows] == [
        ("cat", "1", "1"),
        ("dog", "2", "1"),
    ]
    with Image.open(tmp_path / "confusion_matrix.png") as image:
        assert image.width > 50 and image.height > 50
    assert (tmp_path / "confusion_matrix.csv").read_text().splitlines()[1] == "cat,1,0"


def test_no_confusion_image_beyond_30_classes(tmp_path: Path):
    assert (
        save_confusion_matrix_png(torch.eye(31), [str(i) for i in range(31)], tmp_path / "a.png")
        is None
    )
    assert save_confusion_matrix_png(torch.eye(30), [str(i) for i in range(30)], tmp_path / "b.png")


class MeanColour(nn.Module):
    """Logits = mean of each colour channel (3 classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 10


def write_image(path: Path, colour=(255, 0, 0), size=(20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_predict_top_k_for_files_and_folders(tmp_path: Path):
    write_image(tmp_path / "in" / "a" / "red.png", (255, 0, 0))
    write_image(tmp_path / "in" / "b" / "blue.jpg", (0, 0, 255))
    single = write_image(tmp_path / "green.png", (0, 255, 0))
    paths = list_images([tmp_path / "in", single])
    assert [p.name for p in paths] == ["red.png", "blue.jpg", "green.png"]
    predictions = predict_classes(
        MeanColour(), paths, ["r", "g", "b"], crop_size=16, top_k=2, progress=False
    )
    assert [p["top_k"][0]["class"] for p in predictions] == ["r", "b", "g"]
    top = predictions[0]["top_k"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    files = write_predictions(predictions, tmp_path / "out")
    assert json.loads(files["json"].read_text()) == predictions
    with files["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and rows[0]["rank"] == "1" and rows[0]["class"] == "r"


def test_input_and_folder_errors(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        list_images([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images([tmp_path / "empty"])
    with pytest.raises(DataError, match="not found"):
        image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no class folders"):
        image_folder(tmp_path / "empty")
    bad = tmp_path / "split" / "cat" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        image_folder(tmp_path / "split")[0]


def test_transforms_give_the_requested_size():
    image = Image.new("RGB", (50, 40), (10, 20, 30))
    assert train_transform(32)(image).shape == (3, 32, 32)
    out = eval_transform(32)(image)  # resize shorter side to 37, centre crop 32
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_short_output_names():
    names = short_output_names(["a/x.png", "b/x.png", "c/y.png", "a/x.jpg", "d/e f.png"])
    assert names == ["a_x", "b_x", "y", "a_x_1", "e_f"]
    with pytest.warns(DeprecationWarning, match="short_output_names"):
        from drnet.data.classification import unique_names  # the old name, for one release
    assert unique_names is short_output_names


def test_match_split_classes():
    card = ModelCard(model="m", num_classes=3, class_names=["a", "b", "c"])
    assert match_split_classes(["c", "a"], card, "val") == [2, 0]
    with pytest.raises(DataError, match="'?z'? are not classes|z are not classes"):
        match_split_classes(["z"], card, "val")
    nameless = ModelCard(model="m", num_classes=2)
    assert match_split_classes(["x", "y"], nameless, "val") == [0, 1]
    assert nameless.class_names == ["x", "y"]
    with pytest.raises(DataError, match="--class-names"):
        match_split_classes(["x"], ModelCard(model="m", num_classes=2), "val")


def test_load_model_from_a_run_directory(tmp_path: Path):
    model = drnet.create_model("drn_d_22", num_classes=3, channels=TINY)
    torch.save({"model": model.state_dict(), "epoch": 1}, tmp_path / "checkpoint_best.pth")
    ModelCard(
        "drn_d_22", 3, class_names=["a", "b", "c"], channels=list(TINY), crop_size=32,
        resize_size=37,
    ).save(tmp_path)  # fmt: skip
    loaded, card = load_model(tmp_path)
    assert card.names() == ["a", "b", "c"] and card.crop_size == 32
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x))
    # A bare state dict with no model.json: num_classes from fc, architecture from --model.
    bare = tmp_path / "elsewhere" / "bare.pth"
    bare.parent.mkdir()
    torch.save(model.state_dict(), bare)
    _, card = load_model(bare, model="drn_d_22", channels=TINY)
    assert card.num_classes == 3 and card.names() == ["0", "1", "2"]
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(bare, model="drn_d_22", channels=[2 * c for c in TINY])  # other widths
    with pytest.raises(DrnetError, match="--model"):
        load_model(bare)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pth", model="drn_d_22")


def test_task_checks_that_splits_share_classes(tmp_path: Path):
    for split, classes in (("train", "ab"), ("val", "ab"), ("other", "ac")):
        for name in classes:
            write_image(tmp_path / split / name / "0.png")
    task = ClassificationTask.from_dirs(
        "drn_d_22", tmp_path / "train", tmp_path / "val", crop_size=16
    )
    assert task.card.class_names == ["a", "b"] and task.card.resize_size == 18
    assert task.train_dataset()[0][0].shape == (3, 16, 16)
    assert task.describe()["class_names"] == ["a", "b"]
    assert ModelCard.from_dict(task.describe()) == task.card  # checkpoints rebuild the card
    with pytest.raises(DataError, match="same classes"):
        ClassificationTask.from_dirs("drn_d_22", tmp_path / "train", tmp_path / "other")
