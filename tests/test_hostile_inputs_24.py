"""Issue 24 through the real CLI: predicts that lock their folder and never mix results, resumes
that say what they do or refuse, ``data check`` finding what training trips on, macOS ``._*``
files, an empty ``--save``, ``--help`` defaults the parser takes back, ``quantize`` units and
its classifier message, and ``data scenes --overwrite`` naming a user's files before deleting
anything. Every refusal is one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CPU,
    TINY_ARG,
    TINY_SEG_ARGS,
    make_imagefolder,
    make_list_dataset,
    one_error_line,
    save_image,
    save_tiny_pair,
)
from helpers import run_cli as cli
from PIL import Image

from drnet.engine.rundir import RunFolderLock

pytestmark = pytest.mark.usefixtures("one_thread")

SEG = TINY_SEG_ARGS


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_pair(tmp_path_factory.mktemp("models"), cls2=2, cls10=10)


def noise(path: Path, size=(24, 24), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    return save_image(path, rng.integers(0, 255, (*size, 3)))


PREDICTS = {
    "segment": lambda m, *a: ["segment", "predict", *a, "--weights", m["seg"], *SEG, *CPU],
    "classify": lambda m, *a: ["classify", "predict", *a, "--weights", m["cls"], *SEG, *CPU],
    "localize": lambda m, *a: ["localize", "predict", *a, "--weights", m["cls"], *SEG, *CPU],
}


# -- 1. predicts lock their folder and never mix results -----------------------------------------


@pytest.mark.parametrize("command", sorted(PREDICTS))
def test_predict_into_a_folder_in_use_is_one_line_naming_it_and_the_pid(
    command, models, tmp_path, capsys
):
    image, out = noise(tmp_path / "a.png"), tmp_path / "out"
    out.mkdir()
    with RunFolderLock(out, owner="segment predict"):  # another process, as flock sees it
        rc, _, err = cli(capsys, *PREDICTS[command](models, image, "-o", out))
    line = one_error_line(rc, err, out, f"pid {os.getpid()}", "another drnet segment predict")
    assert "wait for it to end" in line
    assert not (out / "predict.json").exists() and sorted(p.name for p in out.iterdir()) == [
        ".drnet.lock"
    ]


def test_predict_refuses_to_mix_results_unless_overwrite(models, tmp_path, capsys):
    a, b, out = noise(tmp_path / "in/a.png"), noise(tmp_path / "in/b.png", seed=1), tmp_path / "o"
    seg = PREDICTS["segment"]
    assert cli(capsys, *seg(models, a, "-o", out))[0] == 0
    marker = json.loads((out / "predict.json").read_text())
    assert marker["command"] == "segment predict" and marker["complete"] is True
    assert marker["inputs"] == [str(a)] and "labels/a.png" in marker["outputs"]
    before = (out / "labels/a.png").read_bytes()

    # other inputs, or another command: refused, nothing changed
    rc, _, err = cli(capsys, *seg(models, b, "-o", out))
    one_error_line(rc, err, out, "another drnet segment predict", "predict.json", "--overwrite")
    rc, _, err = cli(capsys, *PREDICTS["classify"](models, a, "-o", out))
    one_error_line(rc, err, out, "segment predict", "--overwrite")
    assert not (out / "labels/b.png").exists() and not (out / "predictions.json").exists()
    assert (out / "labels/a.png").read_bytes() == before

    # the same command on the same inputs completes or redoes them, no flag needed
    assert cli(capsys, *seg(models, a, "-o", out))[0] == 0

    # --overwrite deletes the earlier predict's files first: no mix of a and b
    rc, _, err = cli(capsys, *seg(models, b, "-o", out, "--overwrite"))
    assert rc == 0, err
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["b.png"]
    marker = json.loads((out / "predict.json").read_text())
    assert marker["inputs"] == [str(b)] and marker["complete"] is True


# -- 2. resume edge cases ------------------------------------------------------------------------


def cls_train(data, out, *extra) -> list:
    return ["classify", "train", data, "--channels", TINY_ARG, "--crop-size", "16",
            "--max-iters", "2", "--batch-size", "2", "--workers", "0",
            "--output-dir", out, *CPU, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("cls") / "data")


@pytest.fixture(scope="module")
def cls_run(cls_data, tmp_path_factory) -> Path:
    """A finished one-epoch run (2 iterations per epoch)."""
    from drnet.cli import main

    run = tmp_path_factory.mktemp("clsrun") / "run"
    assert main([str(a) for a in cls_train(cls_data, run, "--epochs", "1")]) == 0
    return run


@pytest.fixture
def run(cls_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(cls_run, copy)
    return copy


def edit_checkpoint(run: Path, **changes) -> Path:
    """``checkpoint_last.pth`` of ``run`` with ``changes`` (None deletes a key), saved beside."""
    state = torch.load(run / "checkpoint_last.pth", weights_only=True)
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    path = run.parent / "edited.pth"
    torch.save(state, path)
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_resume_past_epochs_refuses_with_the_epoch_and_how_to_train_longer(cls_data, run, capsys):
    before = files_of(run)
    rc, out, err = cli(capsys, *cls_train(cls_data, run, "--epochs", "1", "--resume", "auto"))
    one_error_line(rc, err, "after 1 epoch(s)", "--epochs 1", "--epochs 2", "--resume")
    assert "trained" not in out and files_of(run) == before


def test_resume_of_a_checkpoint_without_epoch_is_one_line(cls_data, run, capsys):
    edited = edit_checkpoint(run, epoch=None)
    rc, _, err = cli(capsys, *cls_train(cls_data, run, "--epochs", "2", "--resume", edited))
    one_error_line(rc, err, edited, "records no epoch", f"--weights {edited}")


def test_resume_of_a_checkpoint_without_best_epoch_never_says_epoch_none(cls_data, run, capsys):
    # an older checkpoint: a best metric, no best_epoch (2.0: no top-1 of epoch 2 beats it)
    edited = edit_checkpoint(run, best_epoch=None, best_metric=2.0)
    rc, out, err = cli(capsys, *cls_train(cls_data, run, "--epochs", "2", "--resume", edited))
    assert rc == 0, err
    assert "best top-1 2.0000 (epoch unknown" in out and "None" not in out, out


def test_resume_past_the_end_of_its_epoch_says_what_it_does(cls_data, run, capsys):
    # saved mid-epoch 2 at iteration 7 (say with --batch-size 1); an epoch now has 2 iterations
    sums = {"first_lr": 0.1, "samples": 7.0, "loss_sum": 7.0, "seconds": 1.0}
    edited = edit_checkpoint(run, epoch=1, iteration=7, epoch_sums=sums)
    rc, _, err = cli(capsys, *cls_train(cls_data, run, "--epochs", "3", "--resume", edited))
    assert rc == 0, err
    assert "stopped at iteration 7 of epoch 2, but an epoch now has 2 iteration(s)" in err, err
    assert "epoch 2 is taken as done" in err and "goes on with epoch 3" in err
    rows = (run / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert torch.load(run / "checkpoint_last.pth", weights_only=True)["epoch"] == 3


def test_nan_best_metric_does_not_stop_checkpoint_best(cls_data, run, capsys):
    edited = edit_checkpoint(run, best_metric=float("nan"))
    (run / "checkpoint_best.pth").unlink()
    rc, _, err = cli(capsys, *cls_train(cls_data, run, "--epochs", "2", "--resume", edited))
    assert rc == 0, err
    best = torch.load(run / "checkpoint_best.pth", weights_only=True)
    assert best["best_epoch"] == 2 and best["best_metric"] == best["best_metric"]  # not nan


# -- 3. lossy JPEG masks, and the option is --num-classes ----------------------------------------


def test_data_check_flags_jpeg_labels_within_the_class_count(tmp_path, capsys):
    root = make_list_dataset(tmp_path / "seg", n_train=2, n_val=1)
    Image.fromarray(np.ones((40, 40), np.uint8)).save(root / "labels/train_0.jpg", quality=95)
    # a uniform mask keeps its values (all 1 < 3 classes): only the format betrays it
    assert np.asarray(Image.open(root / "labels/train_0.jpg")).max() < 3
    lines = (root / "train_labels.txt").read_text().replace("train_0.png", "train_0.jpg")
    (root / "train_labels.txt").write_text(lines)
    rc, out, _ = cli(capsys, "data", "check", root, "--no-progress")
    assert rc == 1, out
    (error,) = [line for line in out.splitlines() if line.startswith("error:")]
    assert "train_0.jpg is a JPEG file" in error and "save labels as PNG" in error


def test_data_check_messages_name_num_classes(tmp_path, capsys):
    root = make_list_dataset(tmp_path / "seg", n_train=2, n_val=1)
    info = json.loads((root / "info.json").read_text())
    del info["classes"]
    (root / "info.json").write_text(json.dumps(info))
    rc, out, _ = cli(capsys, "data", "check", root, "--no-progress")
    assert "pass --num-classes N to check them" in out and " --classes" not in out, out
    rc, out, _ = cli(capsys, "data", "check", root, "--num-classes", "2", "--no-progress")
    assert rc == 1 and "check --num-classes or the label files" in out, out
    assert " --classes" not in out


# -- 4. data check finds what training stops on --------------------------------------------------


def test_data_check_finds_dangling_and_looping_links(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "data")
    (root / "train/cat/gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "train/dog/loop.png").symlink_to("loop.png")
    rc, out, _ = cli(capsys, "data", "check", root, "--no-progress")
    assert rc == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, out
    assert "gone.png is a symbolic link that points to a missing file" in errors[0]
    assert "loop.png is a symbolic link that loops" in errors[1]
    # training would stop on them: that is why they are errors
    rc, _, err = cli(capsys, *cls_train(root, tmp_path / "run", "--epochs", "1"))
    assert rc != 0 and "gone.png" in err


def test_data_check_unknown_split_is_said_once_without_box_errors(tmp_path, capsys):
    root = tmp_path / "scenes"  # ImageFolder splits with boxes/ XML and boxes_*.csv
    argv = ["data", "scenes", "classification", root, "--train", "10", "--test", "2",
            "--canvas", "48", "--no-progress"]  # fmt: skip
    assert cli(capsys, *argv)[0] == 0
    (root / "boxes/train/._000000.xml").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # no XML
    for splits in ("foo", "val"):
        rc, out, _ = cli(capsys, "data", "check", root, "--splits", splits, "--no-progress")
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        if splits == "foo":
            assert rc == 1 and len(errors) == 1 and "split 'foo' not found" in errors[0], out
        else:  # the boxes of train and holdout name images that exist
            assert rc == 0 and not errors, out


def test_data_check_names_a_missing_city_folder_of_gtfine(tmp_path, capsys):
    root = tmp_path / "cs"
    for city in ("a", "b"):
        save_image(root / f"leftImg8bit/train/{city}/{city}_1_leftImg8bit.png", np.zeros((4, 6, 3)))
    save_image(root / "gtFine/train/a/a_1_gtFine_labelTrainIds.png", np.zeros((4, 6)))
    rc, out, _ = cli(capsys, "data", "check", root, "--no-progress")
    (error,) = [line for line in out.splitlines() if line.startswith("error:")]
    assert rc == 1 and f"the folder {root / 'gtFine/train/b'} does not exist" in error, out
    assert "cityscapes-prepare" not in error


# -- 5. macOS ._ files and folders named like images ---------------------------------------------


@pytest.mark.parametrize("command", sorted(PREDICTS))
def test_predict_skips_resource_forks_and_folders_named_like_images(
    command, models, tmp_path, capsys
):
    folder = tmp_path / "in"
    noise(folder / "x.png")
    (folder / "._x.png").write_bytes(b"\x00\x05\x16\x07Mac OS X        ")  # AppleDouble
    (folder / "album.png").mkdir()  # a folder, not an image
    rc, out, err = cli(capsys, *PREDICTS[command](models, folder, "-o", tmp_path / "out"))
    assert rc == 0, err
    assert "._x" not in out + err and "album" not in out + err
    marker = json.loads((tmp_path / "out/predict.json").read_text())
    assert marker["inputs"] == [str(folder / "x.png")]


def test_image_folders_skip_resource_forks(models, tmp_path, capsys):
    root = make_imagefolder(tmp_path / "data", n_train=1)
    (root / "val/cat/._0.png").write_bytes(b"\x00\x05\x16\x07Mac OS X        ")
    rc, out, _ = cli(capsys, "data", "check", root, "--no-progress")
    assert rc == 0 and "no problems found (4 files checked)" in out, out
    argv = ["classify", "eval", root / "val", "--weights", models["cls2"], *SEG[:4], *CPU,
            "-o", tmp_path / "eval", "--workers", "0"]  # fmt: skip
    rc, _, err = cli(capsys, *argv)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["num_images"] == 2, metrics  # the ._ file is no image


def test_the_one_folder_walk_has_every_rule(tmp_path):
    from drnet.data.walk import FolderWalk

    root = tmp_path / "in"
    for name in ("b/1.PNG", "a/2.png", "a/sub/3.png", ".hidden/4.png", "x_leftImg8bit.png"):
        noise(root / name, size=(4, 4))
    (root / "a/._2.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (root / "album.png").mkdir()
    (root / "a/up").symlink_to("..")  # a loop of folders
    (root / "b/gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "b/self.png").symlink_to("self.png")
    walk = FolderWalk(root, (".png",))
    names = [p.relative_to(root).as_posix() for p in walk.files]
    assert names == ["x_leftImg8bit.png", "a/2.png", "a/sub/3.png", "b/1.PNG", "b/gone.png",
                     "b/self.png"]  # fmt: skip
    assert [(p.name, why) for p, why in walk.broken] == [("gone.png", "dangling"),
                                                          ("self.png", "a loop")]  # fmt: skip
    assert walk.loops == [root / "a/up"]
    assert {p.name for p in walk.hidden} == {".hidden", "._2.png"}
    assert FolderWalk(root, pattern="*_leftImg8bit.png").files == [root / "x_leftImg8bit.png"]


# -- 6. an empty --save --------------------------------------------------------------------------


def test_segment_predict_with_an_empty_save_is_refused(models, tmp_path, capsys):
    image, out = noise(tmp_path / "a.png"), tmp_path / "out"
    rc, stdout, err = cli(capsys, *PREDICTS["segment"](models, image, "--save", "", "-o", out))
    one_error_line(rc, err, "--save is empty", "labels, color, overlay")
    assert "wrote" not in stdout and not out.exists()


# -- 7. --help shows defaults the parser takes back ----------------------------------------------


def _options(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ("drnet",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*prefix, name))
        else:
            yield prefix, action


def test_every_default_shown_in_help_parses_back():
    from drnet.cli import build_parser
    from drnet.cli.vocab import shown_default

    checked, bad = 0, []
    for prefix, action in _options(build_parser()):
        shown = shown_default(action)
        if shown is None or (action.type is None and action.choices is None):
            continue
        several = isinstance(action.nargs, int) or action.nargs in ("+", "*")
        try:
            values = [action.type(v) if action.type else v for v in shown.split(" ")] if several \
                else [action.type(shown) if action.type else shown]  # fmt: skip
            assert action.choices is None or all(v in action.choices for v in values)
        except (argparse.ArgumentTypeError, ValueError, TypeError, AssertionError) as exc:
            bad.append((" ".join(prefix), action.option_strings, shown, str(exc)))
        checked += 1
    assert checked > 50 and not bad, bad


def test_export_size_default_as_help_shows_it(capsys):
    from drnet.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["export"]
    onnx = help_text._subparsers._group_actions[0].choices["onnx"]
    assert "(default: 512,1024)" in onnx.format_help()
    assert onnx.parse_args(["m.onnx", "--size", "512,1024"]).size == (512, 1024)


# -- 8. quantize: units and the classifier message -----------------------------------------------


def test_quantize_given_a_classifier_says_so(models, tmp_path, capsys):
    data = make_list_dataset(tmp_path / "seg", n_train=2, n_val=1)
    rc, _, err = cli(capsys, "quantize", "--weights", models["cls10"], data, "--no-compile")
    line = one_error_line(rc, err, "is a classification model, not a segmentation one")
    assert "--num-classes" not in line


def test_quantize_prints_miou_in_points(monkeypatch, capsys):
    import drnet.speed.quantize_eval as quantize_eval

    report = {"miou_fp32": 0.4321, "miou_int8": 0.42, "labels_unchanged": 0.99, "ms_fp32": 10.0,
              "ms_int8": 5.0, "speedup": 2.0, "val_images": 3, "miou_bf16": 0.43,
              "labels_unchanged_bf16": 1.0, "ms_bf16": 20.0, "speedup_bf16": 0.5,
              "bf16_native": True}  # fmt: skip
    monkeypatch.setattr(quantize_eval, "evaluate_int8", lambda *a, **k: report)
    rc, out, _ = cli(capsys, "quantize", "--weights", "w.pth", "data")
    assert rc == 0
    assert "mIoU float32 43.21, int8 42.00 (change -1.21 points)" in out, out
    assert "bf16: mIoU 43.00 (change -0.21 points)" in out, out


# -- 9. data scenes --overwrite names a user's files ---------------------------------------------


def test_scenes_overwrite_refuses_to_delete_a_users_file_unnamed(tmp_path, capsys):
    out = tmp_path / "scenes"
    argv = ["data", "scenes", "classification", out, "--train", "10", "--test", "2",
            "--canvas", "48", "--no-progress"]  # fmt: skip
    assert cli(capsys, *argv)[0] == 0
    class_dir = sorted((out / "train").iterdir())[0]
    mine = class_dir / "my-photo.png"
    mine.write_bytes(b"a user's own file")
    rc, _, err = cli(capsys, *argv, "--overwrite")
    rel = mine.relative_to(out).as_posix()
    one_error_line(rc, err, out, "1 file(s) that drnet data scenes did not write", rel)
    assert mine.read_bytes() == b"a user's own file"
    mine.unlink()
    assert cli(capsys, *argv, "--overwrite")[0] == 0  # only scene files: replaced
