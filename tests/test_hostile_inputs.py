"""Issue 13, part C, through the real CLI: argument ranges, the pixel budget, predict outputs that
never overwrite each other, bad inputs in predict, unwritable output folders, bounded memory on
large images, and the remaining messages. Every refusal is one line and a non-zero exit, never a
traceback."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CPU,
    TINY_ARG,
    TINY_SEG_ARGS,
    _child_env,
    make_imagefolder,
    one_error_line,
    save_image,
    save_tiny_model,
    save_tiny_pair,
    usage_error_line,
)
from helpers import run_cli as cli

pytestmark = pytest.mark.usefixtures("one_thread")

SEG = TINY_SEG_ARGS


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_pair(tmp_path_factory.mktemp("models"))


def seg_predict(models, *argv) -> list:
    return ["segment", "predict", *argv, "--weights", models["seg"], *SEG, *CPU]


def loc_predict(models, *argv) -> list:
    return ["localize", "predict", *argv, "--weights", models["cls"], *SEG, *CPU]


def cls_predict(models, *argv) -> list:
    return ["classify", "predict", *argv, "--weights", models["cls"], *SEG, *CPU]


def noise(path: Path, size=(24, 24), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    return save_image(path, rng.integers(0, 255, (*size, 3)))


def huge_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` grey pixels, with a token IDAT: a
    few hundred bytes that PIL opens as a gigantic image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1) * 2)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


# -- argument ranges -----------------------------------------------------------------------------

SEG_EVAL = ["segment", "eval", "-d", "data", "--weights", "w.pth"]
LOC_EVAL = ["localize", "eval", "val", "--boxes", "b.csv", "--weights", "w.pth"]
LOC_PREDICT = ["localize", "predict", "x.png", "--weights", "w.pth"]
SEG_TRAIN = ["segment", "train", "-d", "data"]
CLS_TRAIN = ["classify", "train", "data"]


@pytest.mark.parametrize(
    "argv",
    [
        [*SEG_EVAL, "--scales", "nan"],
        [*SEG_EVAL, "--scales", "inf"],
        [*SEG_EVAL, "--scales", "10000"],
        [*SEG_EVAL, "--scales", "0"],
        [*SEG_EVAL, "--scales", "0.5,-1"],
        [*SEG_EVAL, "--window", "4"],
        [*SEG_EVAL, "--max-pixels", "0"],
        [*LOC_EVAL, "--threshold", "nan"],
        [*LOC_EVAL, "--xml-origin", "2"],
        [*LOC_EVAL, "--resize-size", "7"],
        [*LOC_PREDICT, "--threshold", "inf"],
        [*SEG_TRAIN, "-s", "100000"],
        [*SEG_TRAIN, "--crop-size", "7"],
        [*SEG_TRAIN, "--random-rotate", "-5"],
        [*SEG_TRAIN, "--random-scale", "nan"],
        [*CLS_TRAIN, "--crop-size", "100000"],
        [*CLS_TRAIN, "--crop-size", "7"],
        [*CLS_TRAIN, "--crop-scale", "0"],
        [*CLS_TRAIN, "--device", "mps"],
        [*SEG_EVAL, "--device", "cuda:x"],
        [*CLS_TRAIN, "--channels", "0,0,0,0,0,0,0,0"],
        [*CLS_TRAIN, "--channels", "8,8,16"],
        ["segment", "predict", "x.png", "--weights", "w.pth", "--alpha", "5"],
    ],
    ids=lambda argv: " ".join(argv[:2] + argv[-2:]),
)
def test_out_of_range_arguments_are_one_usage_line(argv, capsys):
    last = usage_error_line(argv, capsys)
    option, value = argv[-2:]
    assert last.startswith("drnet ") and "error: argument" in last, last
    assert f"argument {option}" in last and "got" in last, last
    assert value.split(",")[-1] in last or "values" in last, last


@pytest.mark.parametrize("value", ["2", "-1"])
def test_minmax_threshold_outside_0_1(value, models, tmp_path, capsys):
    image = noise(tmp_path / "a.png")
    argv = loc_predict(models, image, "--threshold", value, "-o", tmp_path / "o")
    one_error_line(*cli(capsys, *argv)[::2], "--threshold", "0..1")
    rc, _, err = cli(capsys, *argv, "--threshold-mode", "raw")
    assert rc == 0, err  # raw thresholds compare with the logit: any finite number


def test_valid_values_still_parse():
    from drnet.cli import build_parser

    args = build_parser().parse_args(
        [*SEG_EVAL, "--scales", "0.5,1,8", "--device", "cuda:1", "--channels", TINY_ARG]
    )
    assert args.scales == (0.5, 1.0, 8.0) and args.device == "cuda:1"
    assert args.channels == tuple(int(v) for v in TINY_ARG.split(","))
    assert build_parser().parse_args([*SEG_TRAIN, "-s", "0"]).crop_size == 0  # 0: no crop


# -- output folders ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["segment", "eval", "-d", "data", "--weights", "w.pth"],
        ["segment", "predict", "x.png", "--weights", "w.pth"],
        ["classify", "eval", "val", "--weights", "w.pth"],
        ["classify", "predict", "x.png", "--weights", "w.pth"],
        ["localize", "eval", "val", "--boxes", "b.csv", "--threshold", "0.2", "--weights", "w"],
        ["localize", "predict", "x.png", "--weights", "w.pth"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_unwritable_output_folder_is_refused_before_running(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    noise(tmp_path / "x.png")
    (tmp_path / "blocker").write_text("a file where the output folder would go")
    rc, _, err = cli(capsys, *command, "-o", "blocker/out", *CPU)
    one_error_line(rc, err, "-o/--output-dir", "blocker/out", "cannot write there")


# -- names of predict outputs, bad inputs --------------------------------------------------------


@pytest.fixture
def same_names(tmp_path) -> Path:
    """``d1/x.jpg``, ``d1/x.png``, ``d2/x.png``: three inputs with one stem."""
    root = tmp_path / "in"
    noise(root / "d1/x.jpg", seed=1)
    noise(root / "d1/x.png", seed=2)
    noise(root / "d2/x.png", seed=3)
    return root


def test_segment_predict_never_overwrites_its_outputs(same_names, models, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = cli(capsys, *seg_predict(models, same_names / "d1", same_names / "d2",
                                               "-o", out))  # fmt: skip
    assert rc == 0, err
    assert "wrote predictions of 3 image(s)" in stdout
    labels = sorted(p.relative_to(out / "labels").as_posix() for p in out.rglob("labels/**/*.png"))
    assert labels == ["d1/x-2.png", "d1/x.png", "d2/x.png"]
    assert len(list((out / "overlay").rglob("*.png"))) == 3


def test_localize_predict_never_overwrites_its_outputs(same_names, models, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = cli(capsys, *loc_predict(models, same_names, "--save-heatmaps", "-o", out))
    assert rc == 0, err
    entries = json.loads((out / "boxes.json").read_text())
    overlays = sorted(e["overlay"] for e in entries)
    assert overlays == ["overlays/d1/x-2.png", "overlays/d1/x.png", "overlays/d2/x.png"]
    assert all((out / e["overlay"]).is_file() for e in entries)
    heatmaps = {p["heatmap"] for e in entries for p in e["predictions"]}
    assert len(heatmaps) == 3 and all((out / h).is_file() for h in heatmaps)


@pytest.fixture
def one_bad(tmp_path) -> Path:
    root = tmp_path / "in"
    noise(root / "a.png", seed=1)
    (root / "b.png").write_bytes(b"not an image")
    noise(root / "c.png", seed=2)
    return root


@pytest.mark.parametrize("command", ["segment", "localize", "classify"])
def test_predict_finishes_the_good_inputs_and_lists_the_bad(command, one_bad, models, tmp_path,
                                                            capsys):  # fmt: skip
    out = tmp_path / "out"
    build = {"segment": seg_predict, "localize": loc_predict, "classify": cls_predict}[command]
    rc, _, err = cli(capsys, *build(models, one_bad, "-o", out))
    assert rc == 1 and "Traceback" not in err, err
    assert "1 of 3 input(s) could not be predicted" in err and str(one_bad / "b.png") in err
    if command == "segment":
        assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.png", "c.png"]
    elif command == "localize":
        entries = json.loads((out / "boxes.json").read_text())
        assert [Path(e["image"]).name for e in entries] == ["a.png", "c.png"]
    else:
        entries = json.loads((out / "predictions.json").read_text())
        assert [Path(e["image"]).name for e in entries] == ["a.png", "c.png"]


# -- the pixel budget ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["segment", "localize", "classify"])
def test_image_past_the_pixel_budget(command, models, tmp_path, capsys):
    build = {"segment": seg_predict, "localize": loc_predict, "classify": cls_predict}[command]
    image = noise(tmp_path / "big.png", size=(30, 40))
    rc, _, err = cli(capsys, *build(models, image, "--max-pixels", "1000", "-o", tmp_path / "o"))
    assert rc == 1 and "Traceback" not in err, err
    line = next(line for line in err.splitlines() if "big.png" in line)
    assert "40x30 = 1,200 pixels" in line and "--max-pixels" in line
    from drnet.data import images

    assert images.MAX_PIXELS == images.DEFAULT_MAX_PIXELS  # the option lasts one command


def test_budget_from_the_environment(monkeypatch, tmp_path):
    from drnet.data import images
    from drnet.data.classification import load_rgb
    from drnet.errors import DataError

    image = noise(tmp_path / "a.png", size=(30, 40))
    monkeypatch.setenv("DRNET_MAX_PIXELS", "1000")
    try:
        assert images.set_max_pixels(None) == 1000
        with pytest.raises(DataError, match="DRNET_MAX_PIXELS"):
            load_rgb(image)
    finally:
        monkeypatch.delenv("DRNET_MAX_PIXELS")
        images.set_max_pixels(None)
    assert load_rgb(image).size == (40, 30)


def test_decompression_bomb_is_one_line(models, tmp_path, capsys):
    bomb = huge_png(tmp_path / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 1000
    rc, _, err = cli(capsys, *seg_predict(models, bomb, "-o", tmp_path / "o"))
    assert rc == 1 and "Traceback" not in err, err
    assert "bomb.png" in err and "--max-pixels" in err
    data = make_imagefolder(tmp_path / "cls", n_train=1, classes=("a", "b", "c"))
    huge_png(data / "val/a/0.png", 20000, 20000)
    rc, _, err = cli(capsys, "classify", "eval", data / "val", "--weights", models["cls"], *SEG,
                     "-j", "0", "-o", tmp_path / "e", *CPU)  # fmt: skip
    one_error_line(rc, err, "--max-pixels")


MEMORY_SCRIPT = """
import resource, sys
from drnet.cli import main
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
model = ["--model", "drn_d_22", "--channels", sys.argv[1], "--num-classes", "32", "--no-fast",
         "--device", "cpu", "--no-progress"]
segment = ["segment", "predict", "--weights", "seg.pth", "--window", "256", "--stride", "256"]
# one -o per predict: a folder holding another predict's results is refused (predict.json)
assert main([*segment, "small.png", *model, "-o", "out-small"]) == 0
before = peak()
assert main([*segment, "tall.png", *model, "-o", "out-tall"]) == 0
after_segment = peak()
assert main(["localize", "predict", "thin.png", "--weights", "cls.pth", *model, "-o", "out"]) == 0
print(before, after_segment, peak())
"""


def test_large_images_are_predicted_in_bounded_memory(tmp_path):
    """A 4000 x 1000 image through segment predict --window (32 classes) and a 2 x 60000 one
    through localize predict: peak RSS grows by far less than unbounded inference takes."""
    save_tiny_model(tmp_path / "seg.pth", 32, segmentation=True)
    save_tiny_model(tmp_path / "cls.pth", 32)
    noise(tmp_path / "small.png", size=(32, 32))
    noise(tmp_path / "tall.png", size=(4000, 1000))
    save_image(tmp_path / "thin.png", np.zeros((2, 60000)))
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, TINY_ARG],
        cwd=tmp_path,
        env=_child_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    before, after_segment, after_localize = map(int, done.stdout.split()[-3:])
    # unbounded: 32 float32 probabilities per pixel, kept 3 times (sum, average, resized)
    unbounded_mb = 3 * 32 * 4 * 4000 * 1000 / 2**20
    assert after_segment - before < unbounded_mb / 3, (before, after_segment)
    # unbounded: a network input of 256 x 7.68 million pixels (7.3 GB as float32, 3 channels)
    assert after_localize - before < 1000, (before, after_localize)
    assert (tmp_path / "out-tall/labels/tall.png").is_file()
    boxes = json.loads((tmp_path / "out/boxes.json").read_text())
    assert boxes[0]["width"] == 60000 and boxes[0]["height"] == 2


# -- messages ------------------------------------------------------------------------------------


def test_data_check_on_a_file(tmp_path, capsys):
    rc, _, err = cli(capsys, "data", "check", noise(tmp_path / "x.png"))
    one_error_line(rc, err, "x.png", "is a file, expected a folder")


def test_data_check_checks_the_labels_of_a_split_with_mismatched_lists(tmp_path, capsys):
    from helpers import make_list_dataset

    data = make_list_dataset(tmp_path / "d", n_train=2, n_val=2, size=16)
    (data / "val_labels.txt").write_text("labels/val_0.png\n")  # one line short
    save_image(data / "labels/val_0.png", np.full((16, 16), 7))  # class 7 of 3
    rc, out, _ = cli(capsys, "data", "check", data, "--no-progress")
    assert rc == 1
    assert "val_labels.txt has 1 lines" in out and "val_0.png" in out and "7" in out


def test_one_class_training_folder_warns(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", n_train=2, classes=("only",), size=(16, 16))
    rc, _, err = cli(capsys, "classify", "train", data, "--channels", TINY_ARG, "--crop-size", "16",
                     "--epochs", "1", "-b", "2", "-j", "0", "-o", tmp_path / "r", *CPU)  # fmt: skip
    assert rc == 0, err
    assert "single class folder" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "exc, expected",
    [
        (PermissionError(13, "Permission denied", "/x/run.pth"), "/x/run.pth: permission denied"),
        (OSError(28, "No space left on device", "/x/a"), "/x/a: no space left on the device"),
        (IsADirectoryError(21, "Is a directory", "/x/d"), "/x/d: is a folder, expected a file"),
        (FileNotFoundError(2, "No such file", "/x/f"), "/x/f: no such file or folder"),
    ],
)
def test_os_errors_become_plain_lines(exc, expected, capsys, monkeypatch):
    import drnet.cli.segment as segment

    def fail(args):
        raise exc

    monkeypatch.setattr(segment, "run_eval", fail)
    rc, _, err = cli(capsys, "segment", "eval", "-d", "d", "--weights", "w", "-o", "-")
    line = one_error_line(rc, err, expected)
    assert "Errno" not in line
