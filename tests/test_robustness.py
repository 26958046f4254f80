"""Every bad input of issue 7 fed through the real CLI: a non-zero exit, one line on stderr that
names the offending file or argument, and no traceback (unless ``--debug``).

Signals, resume and malicious checkpoints are in ``test_robustness_signals.py``.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from helpers import (
    CPU,
    TINY_ARG,
    make_imagefolder,
    make_list_dataset,
    one_error_line,
    save_image,
    truncate,
    usage_error_line,
)
from helpers import run_cli as cli
from PIL import Image

from drnet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


# -- fixtures: a tiny segmentation dataset, trained runs -----------------------------------------


@pytest.fixture(scope="module")
def seg_source(tmp_path_factory):
    return make_list_dataset(tmp_path_factory.mktemp("seg") / "data", n_train=4, n_val=1, size=32)


@pytest.fixture
def seg(seg_source, tmp_path):
    """A fresh copy of the dataset that a test may break."""
    return shutil.copytree(seg_source, tmp_path / "data")


def seg_train(data, out, *extra) -> list:
    return ["segment", "train", "-d", data, "--channels", TINY_ARG, "-s", "32", "--epochs", "1",
            "--batch-size", "2", "-j", "0", "-o", out, *CPU, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def seg_run(seg_source, tmp_path_factory):
    run = tmp_path_factory.mktemp("segrun") / "run"
    assert main([str(a) for a in seg_train(seg_source, run)]) == 0
    return run


@pytest.fixture(scope="module")
def cls_source(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("cls") / "data")


@pytest.fixture
def cls_data(cls_source, tmp_path):
    return shutil.copytree(cls_source, tmp_path / "cls")


def cls_train(data, out, *extra) -> list:
    return ["classify", "train", data, "--channels", TINY_ARG, "--crop-size", "16",
            "--epochs", "1", "--batch-size", "2", "--workers", "0", "--output-dir", out,
            *CPU, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def cls_run(cls_source, tmp_path_factory):
    run = tmp_path_factory.mktemp("clsrun") / "run"
    assert main([str(a) for a in cls_train(cls_source, run)]) == 0
    return run


# -- list files and listed files -----------------------------------------------------------------


def test_missing_list_file(seg, tmp_path, capsys):
    (seg / "train_images.txt").unlink()
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "run"))
    one_error_line(rc, err, seg / "train_images.txt", "does not exist")


def test_empty_list_file(seg, tmp_path, capsys):
    (seg / "val_labels.txt").write_text("\n\n")
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "run"))
    one_error_line(rc, err, seg / "val_labels.txt", "is empty")


def test_listed_image_does_not_exist(seg, tmp_path, capsys):
    (seg / "images/train_2.png").unlink()
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "run"))
    one_error_line(rc, err, seg / "images/train_2.png", "does not exist")


def test_predict_input_does_not_exist(seg_run, tmp_path, capsys):
    rc, _, err = cli(capsys, "segment", "predict", tmp_path / "nope.png", "--weights", seg_run,
                     "-o", tmp_path / "out", *CPU)  # fmt: skip
    one_error_line(rc, err, tmp_path / "nope.png", "does not exist")


# -- images and labels ---------------------------------------------------------------------------


def test_truncated_image(seg, tmp_path, capsys):
    truncate(seg / "images/train_1.png")
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "run"))
    one_error_line(rc, err, seg / "images/train_1.png", "truncated")


def test_unreadable_image_in_eval(seg, seg_run, tmp_path, capsys):
    (seg / "images/val_0.png").write_bytes(b"this is not a PNG")
    rc, _, err = cli(capsys, "segment", "eval", "-d", seg, "--weights", seg_run,
                     "-o", tmp_path / "ev", *CPU)  # fmt: skip
    one_error_line(rc, err, seg / "images/val_0.png", "cannot read image")


def test_rgb_label(seg, tmp_path, capsys):
    path = seg / "labels/train_0.png"
    Image.open(path).convert("RGB").save(path)
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "run"))
    one_error_line(rc, err, path, "RGB image", "single-channel")


def test_label_values_beyond_classes(seg, tmp_path, capsys):
    path = seg / "labels/train_3.png"
    label = np.asarray(Image.open(path)).copy()
    label[3, 3] = 254
    label[4, 4] = 255  # ignore: fine
    save_image(path, label)
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "run"))
    one_error_line(rc, err, path, "[254] outside [0, 3)")


def test_label_and_image_sizes_differ(seg, tmp_path, capsys):
    path = seg / "labels/train_1.png"
    save_image(path, np.zeros((32, 30)))
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "run"))
    one_error_line(rc, err, path, "is 30x32 but image", seg / "images/train_1.png")


def test_images_smaller_than_the_crop_are_padded(seg, tmp_path, capsys):
    rc, out, err = cli(capsys, *seg_train(seg, tmp_path / "run", "--crop-size", "48"))
    assert rc == 0, err
    assert (tmp_path / "run/checkpoint_last.pth").is_file()


def test_bad_info_json(seg, tmp_path, capsys):
    (seg / "info.json").write_text('{"mean": [0.5, 0.5, 0.5], "std": [0.2, 0, 0.2], "classes": 3}')
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "run"))
    one_error_line(rc, err, seg / "info.json", "'std' must be positive")


# -- models and checkpoints ----------------------------------------------------------------------


def test_wrong_classes_versus_checkpoint(seg_source, seg_run, tmp_path, capsys):
    rc, _, err = cli(capsys, "segment", "eval", "-d", seg_source, "--weights", seg_run, "-c", "5",
                     "-o", tmp_path / "ev", *CPU)  # fmt: skip
    one_error_line(rc, err, seg_run / "checkpoint_best.pth", "has 3 classes", "--num-classes is 5")
    rc, _, err = cli(
        capsys, *seg_train(seg_source, tmp_path / "r", "--weights", seg_run, "-c", "5")
    )
    one_error_line(rc, err, seg_run / "checkpoint_best.pth", "has 3 classes", "model has 5")


def test_wrong_class_names_versus_checkpoint(cls_source, cls_run, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    rc, _, err = cli(capsys, "classify", "eval", cls_source / "val", "--weights", cls_run,
                     "--classes", names, "--output-dir", tmp_path / "ev", *CPU)  # fmt: skip
    one_error_line(rc, err, "--class-names lists 3 names", "model has 2 classes")


@pytest.mark.parametrize(
    "command, typo, suggestion",
    [("segment", "drn_d_222", "drn_d_22"), ("classify", "resnet_18", "resnet18")],
)
def test_unknown_architecture_suggests_names(
    command, typo, suggestion, seg_source, cls_run, tmp_path, capsys
):
    if command == "segment":
        argv = seg_train(seg_source, tmp_path / "run", "--arch", typo)
    else:  # into an existing run: its model.json must survive the typo
        argv = cls_train(cls_run.parent / "none", cls_run, "--model", typo)
    rc, _, err = cli(capsys, *argv)
    one_error_line(rc, err, repr(typo), f"did you mean {suggestion}")
    if command == "classify":
        assert '"model": "drn_d_22"' in (cls_run / "model.json").read_text()
    else:
        assert not (tmp_path / "run").exists()


def test_checkpoint_with_missing_and_unexpected_keys(seg_source, seg_run, tmp_path, capsys):
    state = torch.load(seg_run / "checkpoint_last.pth", weights_only=True)["model"]
    state = {f"module.{k}": v for k, v in state.items() if k != "seg.bias"}  # DataParallel prefix
    state["module.extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    rc, _, err = cli(capsys, "segment", "eval", "-d", seg_source, "--weights", path, "--arch",
                     "drn_d_22", "--channels", TINY_ARG, "-o", tmp_path / "ev", *CPU)  # fmt: skip
    one_error_line(rc, err, path, "missing keys (1): seg.bias", "unexpected keys (1): extra.weight")


def test_hash_mismatch(seg_source, seg_run, tmp_path, capsys):
    path = tmp_path / "drn_d_22-deadbeef.pth"  # torch.hub naming: sha256 prefix in the name
    shutil.copy(seg_run / "checkpoint_last.pth", path)
    rc, _, err = cli(capsys, "segment", "eval", "-d", seg_source, "--weights", path.as_uri(),
                     "-o", tmp_path / "ev", *CPU)  # fmt: skip
    one_error_line(rc, err, path, "hash mismatch", "deadbeef")


def test_hash_mismatch_of_pretrained_file(cls_source, tmp_path, capsys, monkeypatch):
    (tmp_path / "w").mkdir()
    (tmp_path / "w/drn_d_22-4bd2f8ea.pth").write_bytes(b"not the published file")
    monkeypatch.setenv("DRNET_WEIGHTS_DIR", str(tmp_path / "w"))
    rc, _, err = cli(capsys, "classify", "predict", cls_source / "val", "--model", "drn_d_22",
                     "--pretrained", "--output-dir", tmp_path / "p", *CPU)  # fmt: skip
    one_error_line(rc, err, tmp_path / "w/drn_d_22-4bd2f8ea.pth", "hash mismatch", "4bd2f8ea")


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_unreadable_checkpoint(damage, seg_source, seg_run, tmp_path, capsys):
    path = tmp_path / "model.pth"
    if damage == "truncated":
        path.write_bytes((seg_run / "checkpoint_last.pth").read_bytes()[:2000])
    rc, _, err = cli(capsys, "segment", "eval", "-d", seg_source, "--weights", path,
                     "-o", tmp_path / "ev", *CPU)  # fmt: skip
    one_error_line(rc, err, path, "truncated" if damage == "truncated" else "does not exist")


def test_resume_from_a_checkpoint_of_another_model(seg_source, seg_run, tmp_path, capsys):
    run = shutil.copytree(seg_run, tmp_path / "run")
    wider = TINY_ARG.rsplit(",", 1)[0] + ",64"
    argv = seg_train(seg_source, run, "--resume", "auto", "--epochs", "2", "--channels", wider)
    rc, _, err = cli(capsys, *argv)
    one_error_line(rc, err, f"--resume {run / 'checkpoint_last.pth'}", "shape mismatches")
    rc, _, err = cli(capsys, *seg_train(seg_source, run, "--resume", tmp_path / "nope.pth"))
    one_error_line(rc, err, tmp_path / "nope.pth", "does not exist")


# -- training: non-finite loss, bad samples ------------------------------------------------------


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(seg_source, seg_run, tmp_path,
                                                                  capsys):  # fmt: skip
    run = shutil.copytree(seg_run, tmp_path / "run")
    good = (run / "checkpoint_last.pth").read_bytes()
    rc, _, err = cli(capsys, *seg_train(seg_source, run, "--resume", "auto", "--epochs", "2",
                                        "--lr", "1e30"))  # fmt: skip
    line = one_error_line(rc, err, run / "checkpoint_last.pth", "at epoch 2 batch", "--lr")
    assert "loss is nan" in line or "loss is inf" in line
    assert (run / "checkpoint_last.pth").read_bytes() == good


@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "train", "-d", "data", "--batch-size", "0"],
        ["segment", "train", "-d", "data", "--workers", "-1"],
        ["segment", "eval", "-d", "data", "--weights", "w.pth", "--window", "0"],
        ["classify", "predict", "x.png", "--weights", "w.pth", "--top-k", "0"],
        ["localize", "eval", "val", "--boxes", "b.csv", "--workers", "-2"],
        ["data", "check", "data", "--classes", "0"],
    ],
)
def test_impossible_numbers_are_usage_errors(argv, capsys):
    last = usage_error_line(argv, capsys)
    option, value = argv[-2:]
    assert f"/{option}: must be at least" in last or f"argument {option}: must be" in last
    assert last.endswith(f"got {value}")


def test_impossible_settings_from_python():
    from drnet.engine import Task, TrainConfig, train
    from drnet.errors import DrnetError

    with pytest.raises(DrnetError, match="--batch-size must be at least 1, got 0"):
        train(Task(), TrainConfig(batch_size=0, device="cpu"))


def test_bad_sample_fails_the_run_or_is_skipped_and_counted(seg, tmp_path, capsys):
    truncate(seg / "images/train_2.png")
    rc, _, err = cli(capsys, *seg_train(seg, tmp_path / "a", "--epochs", "2"))
    one_error_line(rc, err, seg / "images/train_2.png")
    rc, out, err = cli(capsys, *seg_train(seg, tmp_path / "b", "--epochs", "2",
                                          "--skip-bad-samples"))  # fmt: skip
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "skipping bad sample" in line]
    assert len(warnings) == 2 and all(str(seg / "images/train_2.png") in w for w in warnings)
    rows = list(csv.DictReader(open(tmp_path / "b/log.csv")))
    assert [row["skipped_samples"] for row in rows] == ["1", "1"]
    assert "skipped_samples 1" in err and "skipped 2 bad sample(s) of 1 file(s) in total" in err
    assert "skipped 2 bad sample(s) of 1 file(s)" in out  # one bad file, skipped every epoch


def test_classify_skip_bad_samples(cls_data, tmp_path, capsys):
    (cls_data / "train/cat/0.png").write_bytes(b"garbage")
    rc, out, err = cli(capsys, *cls_train(cls_data, tmp_path / "run", "--skip-bad-samples"))
    assert rc == 0, err
    assert str(cls_data / "train/cat/0.png") in err and "skipped 1 bad sample(s)" in out


# -- classification and localization inputs ------------------------------------------------------


def test_missing_classification_split(tmp_path, capsys):
    rc, _, err = cli(capsys, *cls_train(tmp_path / "nowhere", tmp_path / "run"))
    one_error_line(rc, err, tmp_path / "nowhere/train", "not found")


def test_empty_class_folder(cls_data, tmp_path, capsys):
    (cls_data / "train/bird").mkdir()
    rc, _, err = cli(capsys, *cls_train(cls_data, tmp_path / "run"))
    one_error_line(rc, err, cls_data / "train", "class folder(s) without images: bird")


def test_box_file_names_a_missing_image(cls_source, cls_run, tmp_path, capsys):
    boxes = cls_source / "boxes_bad.csv"
    boxes.write_text("image,x1,y1,x2,y2,label\nval/cat/0.png,1,1,9,9,cat\nval/cat/7.png,1,1,9,9,\n")
    rc, _, err = cli(capsys, "localize", "eval", cls_source / "val", "--boxes", boxes, "--weights",
                     cls_run, "--threshold", "0.5", "--output-dir", tmp_path / "loc",
                     "--workers", "0", *CPU)  # fmt: skip
    one_error_line(rc, err, boxes, "line 3", "val/cat/7.png", "not found")
    rc, _, err = cli(capsys, "localize", "eval", cls_source / "val", "--boxes", tmp_path / "no.csv",
                     "--weights", cls_run, "--threshold", "0.5", "--output-dir", tmp_path / "loc",
                     *CPU)  # fmt: skip
    one_error_line(rc, err, tmp_path / "no.csv", "not found")


# -- the report: data check, --debug, unwritable output ------------------------------------------


def test_data_check_reports_all_and_exits_1(seg, capsys):
    truncate(seg / "images/train_0.png")
    save_image(seg / "labels/val_0.png", np.zeros((32, 32, 3)))
    rc, out, _ = cli(capsys, "data", "check", seg, "--no-progress")
    assert rc == 1
    assert str(seg / "images/train_0.png") in out and str(seg / "labels/val_0.png") in out
    assert "2 problem(s) in 2 file(s)" in out


def test_debug_shows_the_traceback(seg, tmp_path, capsys):
    (seg / "train_images.txt").unlink()
    rc, _, err = cli(capsys, "--debug", *seg_train(seg, tmp_path / "run"))
    assert rc == 2 and "Traceback" in err and "DataError" in err
    assert err.rstrip().splitlines()[-1].startswith("drnet: error:")


def test_unwritable_output_is_one_line(seg_source, seg_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    rc, _, err = cli(capsys, "segment", "eval", "-d", seg_source, "--weights", seg_run,
                     "-o", blocker / "ev", *CPU)  # fmt: skip
    one_error_line(rc, err, blocker)
