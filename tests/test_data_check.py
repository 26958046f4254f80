"""``drnet data check``: every problem of a dataset reported in one pass, for each layout."""

from __future__ import annotations

import json

import numpy as np
from helpers import make_imagefolder, make_list_dataset, run_cli, save_image, truncate

from drnet.data.check import check_dataset


def check(capsys, *argv):
    return run_cli(capsys, "data", "check", *argv, "--no-progress")


def test_clean_list_dataset_exits_0(tmp_path, capsys):
    root = make_list_dataset(tmp_path / "d", n_train=3, n_val=1, size=16)
    rc, out, _ = check(capsys, root)
    assert rc == 0
    assert "segmentation, list files; splits: train (3), val (1); 3 classes" in out
    assert "no problems found (8 files checked)" in out


def test_every_problem_of_a_list_dataset_in_one_pass(tmp_path, capsys):
    root = make_list_dataset(tmp_path / "d", n_train=6, n_val=2, size=16)
    (root / "images/train_0.png").unlink()  # listed file missing
    truncate(root / "images/train_1.png")  # truncated image
    save_image(root / "labels/train_2.png", np.zeros((16, 16, 3)))  # RGB label
    save_image(root / "labels/train_3.png", np.full((16, 16), 7))  # value >= classes
    save_image(root / "labels/train_4.png", np.zeros((16, 12)))  # size mismatch
    save_image(root / "labels/val_0.png", np.full((12, 16), 9))  # size mismatch and bad values
    (root / "test_images.txt").write_text("\n")  # empty list file
    rc, out, _ = check(capsys, root, "--json", tmp_path / "report.json")
    assert rc == 1
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    expected = [
        "images/train_0.png does not exist",
        "images/train_1.png: image file is truncated",
        "labels/train_2.png is an RGB image",
        r"labels/train_3.png has values [7] outside [0, 3)",
        "labels/train_4.png is 12x16 but image",
        "labels/val_0.png is 16x12 but image",
        r"labels/val_0.png has values [9] outside [0, 3)",
        "test_images.txt is empty",
    ]
    for text in expected:
        assert sum(text in line for line in errors) == 1, (text, errors)
    assert len(errors) == len(expected)
    assert "8 problem(s) in 7 file(s)" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["errors"] == 8 and report["files_with_errors"] == 7
    assert {p["severity"] for p in report["problems"]} == {"error"}
    rgb = next(p for p in report["problems"] if "RGB" in p["message"])
    assert rgb["file"] == str(root / "labels/train_2.png") and rgb["split"] == "train"


def test_small_images_are_info_not_errors(tmp_path, capsys):
    root = make_list_dataset(tmp_path / "d", n_train=2, n_val=1, size=16)
    rc, out, _ = check(capsys, root, "--crop-size", "24", "--max-infos", "1")
    assert rc == 0
    assert "info: image" in out and "is 16x16, smaller than --crop-size 24" in out
    assert "... 2 more" in out and "no problems found (6 files checked, 3 info)" in out


def test_classes_argument_and_split_selection(tmp_path, capsys):
    root = make_list_dataset(tmp_path / "d", n_train=2, n_val=1, size=16)
    save_image(root / "labels/val_0.png", np.full((16, 16), 2))
    rc, out, _ = check(capsys, root, "--classes", "2", "--splits", "val")
    assert rc == 1 and "splits: val (1); 2 classes" in out
    assert "val_0.png has values [2] outside [0, 2)" in out and "train_" not in out
    rc, out, _ = check(capsys, root, "--splits", "nope")
    assert rc == 1 and "split 'nope' not found" in out


def test_list_files_in_another_folder_and_missing_labels(tmp_path):
    root = make_list_dataset(tmp_path / "d", n_train=2, n_val=1, size=16)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train_images.txt").write_text("images/train_0.png\n")  # no train_labels.txt
    (lists / "test_images.txt").write_text("images/val_0.png\n")  # unlabeled test: fine
    report = check_dataset(root, list_dir=lists)
    assert report.splits == {"test": 1, "train": 0}
    (error,) = report.errors
    assert error.file == str(lists / "train_images.txt") and "train_labels.txt" in error.message
    (info,) = report.infos
    assert "test_labels.txt does not exist" in info.message


def test_cityscapes_missing_trainids_and_default_classes(tmp_path):
    root = tmp_path / "cs"
    for stem in ("a_1", "a_2"):
        save_image(root / f"leftImg8bit/train/a/{stem}_leftImg8bit.png", np.zeros((4, 6, 3)))
    save_image(root / "gtFine/train/a/a_1_gtFine_labelTrainIds.png", np.full((4, 6), 19))
    save_image(root / "gtFine/train/a/a_2_gtFine_labelIds.png", np.full((4, 6), 7))
    report = check_dataset(root)
    assert report.layout == "cityscapes" and report.num_classes == 19
    values, missing = sorted(report.errors, key=lambda p: p.file.endswith("leftImg8bit.png"))
    assert "a_1_gtFine_labelTrainIds.png has values [19] outside [0, 19)" in values.message
    assert "a_2_leftImg8bit.png has no label (looked for" in missing.message
    assert "; run: drnet data cityscapes-prepare --data-dir" in missing.message


def test_folder_layout_unpaired_images_and_unknown_classes(tmp_path):
    root = tmp_path / "f"
    for name in ("a", "b", "c"):
        save_image(root / f"images/train/{name}.jpg", np.full((6, 5, 3), 128))
    for name, value in (("a", 1), ("b", 4)):
        save_image(root / f"masks/train/{name}.png", np.full((6, 5), value))
    report = check_dataset(root)
    assert report.layout == "folder" and report.splits == {"train": 3}
    (error,) = report.errors
    assert error.file == str(root / "images/train/c.jpg") and "has no label" in error.message
    (info,) = report.infos
    assert "label values go up to 4; pass --num-classes N" in info.message
    report = check_dataset(root, num_classes=3)
    assert any("b.png has values [4]" in p.message for p in report.errors)


def test_imagefolder_and_boxes(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "cls", size=(12, 16))
    truncate(root / "train/cat/1.png")
    (root / "train/bird").mkdir()  # empty class folder, and val lacks it
    (root / "boxes_val.csv").write_text(
        "image,x1,y1,x2,y2,label\n"
        "val/cat/0.png,1,1,8,8,cat\n"  # fine
        "val/cat/9.png,1,1,8,8,cat\n"  # no such image
        "val/dog/0.png,1,1,17,8,dog\n"  # x2 beyond the 16 px width
        "val/dog/1.png,5,1,2,8,dog\n"  # empty box
    )
    xml = root / "boxes/val/dog/0.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>4</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    rc, out, _ = check(capsys, root)
    assert rc == 1
    assert "classification, ImageFolder; splits: train (4), val (4); 3 classes" in out
    for text in (
        "class folder " + str(root / "train/bird") + " has no images",
        "have different class folders (bird)",
        "train/cat/1.png: cannot read the image (image file is truncated)",
        "boxes_val.csv: line 3: image 'val/cat/9.png' not found",
        "boxes_val.csv: line 4: box (1, 1, 17, 8) lies outside image",
        "boxes_val.csv: line 5: box (x1=5, y1=1, x2=2, y2=8) is empty",
        "0.xml: <object> 1: box (0, 0, 4, 20) (0-based edges) lies outside the image (16x12)",
    ):
        assert text in out, text
    assert "7 problem(s)" in out


def test_nothing_to_check(tmp_path, capsys):
    rc, _, err = check(capsys, tmp_path / "missing")
    assert rc == 2 and "dataset folder" in err and "does not exist" in err
    (tmp_path / "stuff").mkdir()
    rc, _, err = check(capsys, tmp_path / "stuff")
    assert rc == 2 and "cannot tell what" in err and "Traceback" not in err
