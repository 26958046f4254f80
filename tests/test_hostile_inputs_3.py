"""Issue 23, the third wave of hostile-but-ordinary inputs, through the CLI and the viewer's HTTP
API: outputs never written over inputs, the download cache never giving the wrong model, full
disks and interrupted runs, folders that loop or hide, silent wrong numbers, text encodings,
odd file names, memory, ports, and the viewer's request handling. Every refusal is one line."""

from __future__ import annotations

import errno
import http.server
import io
import json
import os
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CPU,
    TINY_ARG,
    TINY_CHANNELS,
    TINY_SEG_ARGS,
    make_imagefolder,
    make_list_dataset,
    one_error_line,
    save_image,
    save_tiny_model,
    usage_error_line,
)
from helpers import run_cli as cli
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")

SEG = TINY_SEG_ARGS


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_tiny_model(root / "seg.pth", 3, segmentation=True)
    save_tiny_model(root / "cls.pth", 3)
    torch.manual_seed(1)
    save_tiny_model(root / "cls2.pth", 3)
    from drnet.models.loading import ModelCard

    save_tiny_model(root / "run/checkpoint_best.pth", 3)  # a run folder, for drnet serve
    ModelCard(model="drn_d_22", num_classes=3, channels=list(TINY_CHANNELS)).save(root / "run")
    return {
        "seg": root / "seg.pth",
        "cls": root / "cls.pth",
        "cls2": root / "cls2.pth",
        "run": root / "run",
    }


def noise(path: Path, size=(24, 24), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    return save_image(path, rng.integers(0, 255, (*size, 3)))


def seg_predict(models, *argv) -> list:
    return ["segment", "predict", *argv, "--weights", models["seg"], *SEG, *CPU]


def snapshot(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


# -- 1. outputs only under -o ---------------------------------------------------------------------


def test_list_with_absolute_and_dotdot_entries_writes_only_under_output(models, tmp_path, capsys):
    inputs = tmp_path / "in"
    noise(inputs / "data/imgs/a.png", seed=1)
    noise(inputs / "other/b.png", seed=2)
    absolute = noise(inputs / "abs/c.png", seed=3)
    listing = inputs / "data/list.txt"
    listing.write_text(f"imgs/a.png\n../other/b.png\n{absolute}\n")
    before = snapshot(inputs)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, *seg_predict(models, listing, "-o", out))
    assert rc == 0, err
    assert snapshot(inputs) == before  # not one byte of an input changed, nothing added there
    for kind in ("labels", "color", "overlay"):
        names = sorted(p.relative_to(out / kind).as_posix() for p in (out / kind).rglob("*.png"))
        assert names == ["abs/c.png", "data/imgs/a.png", "other/b.png"], (kind, names)
    labels = np.asarray(Image.open(out / "labels/other/b.png"))
    assert labels.ndim == 2 and labels.max() < 3  # class indices, not colours written over them


def test_split_list_with_absolute_paths_keeps_the_dataset(models, tmp_path, capsys):
    data = make_list_dataset(tmp_path / "d", n_train=1, n_val=2, size=16)
    lines = (data / "val_images.txt").read_text().split()
    (data / "val_images.txt").write_text("".join(f"{data / line}\n" for line in lines))
    before = snapshot(data)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, *seg_predict(models, "--data-dir", data, "--split", "val", "-o", out))
    assert rc == 0, err
    rc, _, err = cli(capsys, "segment", "eval", data, "--split", "val", "--weights", models["seg"],
                     *SEG, "--save-predictions", "-j", "0", "-o", out / "eval", *CPU)  # fmt: skip
    assert rc == 0, err
    assert snapshot(data) == before
    assert sorted(p.name for p in (out / "labels").rglob("*.png")) == ["val_0.png", "val_1.png"]
    saved = sorted(p.name for p in (out / "eval/predictions/labels").rglob("*.png"))
    assert saved == ["val_0.png", "val_1.png"]


# -- 2. the download cache ------------------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        kind = "text/html" if body.lstrip().startswith(b"<") else "application/octet-stream"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web(tmp_path, monkeypatch):
    """A local HTTP server of ``files`` (path -> bytes) and a fresh torch.hub cache."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    handler = type("Files", (_Files,), {"files": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.files = handler.files
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def classify(models, capsys, image: Path, weights: str, out: Path) -> tuple[int, str, list]:
    rc, _, err = cli(capsys, "classify", "predict", image, "--weights", weights, *SEG,
                     "-o", out, *CPU)  # fmt: skip
    found = json.loads((out / "predictions.json").read_text()) if rc == 0 else []
    return rc, err, [e["top_k"] for e in found]


def test_same_named_urls_give_their_own_models(models, web, tmp_path, capsys):
    web.files["/a/checkpoint_best.pth"] = models["cls"].read_bytes()
    web.files["/b/checkpoint_best.pth"] = models["cls2"].read_bytes()
    image = noise(tmp_path / "x.png")
    got = {}
    for name in ("a", "b"):
        rc, err, got[name] = classify(
            models, capsys, image, f"{web.base}/{name}/checkpoint_best.pth", tmp_path / name
        )
        assert rc == 0, err
    for name, key in (("a", "cls"), ("b", "cls2")):
        rc, err, local = classify(models, capsys, image, models[key], tmp_path / f"{name}-local")
        assert rc == 0 and got[name] == local, (name, err)
    assert got["a"] != got["b"]


def test_html_answer_is_not_cached(models, web, tmp_path, capsys):
    url = f"{web.base}/model.pth"
    web.files["/model.pth"] = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    image = noise(tmp_path / "x.png")
    rc, err, _ = classify(models, capsys, image, url, tmp_path / "o1")
    one_error_line(rc, err, url, "HTML page", "nothing was cached")
    web.files["/model.pth"] = models["cls"].read_bytes()  # the login is sorted out
    rc, err, _ = classify(models, capsys, image, url, tmp_path / "o2")
    assert rc == 0, err


def test_url_without_a_file_name(models, web, tmp_path, capsys):
    web.files["/"] = models["cls"].read_bytes()
    web.files["/x/model.pth"] = models["cls2"].read_bytes()
    image = noise(tmp_path / "x.png")
    for url in (f"{web.base}/", f"{web.base}/", f"{web.base}/x/model.pth"):  # cached, then others
        rc, err, _ = classify(models, capsys, image, url, tmp_path / "o")
        assert rc == 0 and "Is a directory" not in err, (url, err)
    leftovers = [p.name for p in (tmp_path / "hub").rglob("*") if p.name.endswith(".partial")]
    assert leftovers == []


# -- 3. full disks --------------------------------------------------------------------------------


def test_full_disk_during_training_is_one_line_and_keeps_the_earlier_checkpoint(
    tmp_path, capsys, monkeypatch
):
    data = make_imagefolder(tmp_path / "d", n_train=2, classes=("a", "b"), size=(16, 16))
    run = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:  # the disk fills in epoch 2
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    rc, _, err = cli(capsys, "classify", "train", data, "--channels", TINY_ARG, "--crop-size", "16",
                     "--epochs", "2", "-b", "2", "-j", "0", "-o", run, *CPU)  # fmt: skip
    line = one_error_line(rc, err, "checkpoint_", "no space left on the device", "kept")
    assert str(run) in line
    monkeypatch.undo()
    from drnet.engine.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoint_last.pth")["epoch"] == 1  # whole, from epoch 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def _fail_writes_to(name: str, monkeypatch) -> None:
    """Make every write to a file called ``name*`` fail with ENOSPC after a few bytes."""
    real_fdopen = os.fdopen

    class Full(io.RawIOBase):
        pass

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}")
        if Path(target).name.lstrip(".").startswith(name):
            real_write = handle.write

            def write(data):
                real_write(data[:10])
                raise OSError(errno.ENOSPC, "No space left on device")

            handle.write = write
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_full_disk_in_predict_keeps_the_good_predictions_json(models, tmp_path, capsys,
                                                              monkeypatch):  # fmt: skip
    image = noise(tmp_path / "x.png")
    out = tmp_path / "out"
    rc, err, first = classify(models, capsys, image, str(models["cls"]), out)
    assert rc == 0, err
    good = (out / "predictions.json").read_bytes()
    _fail_writes_to("predictions.json", monkeypatch)
    rc, _, err = cli(capsys, "classify", "predict", image, "--weights", models["cls2"], *SEG,
                     "-o", out, *CPU)  # fmt: skip
    monkeypatch.undo()
    one_error_line(rc, err, out / "predictions.json", "no space left", "kept as it was")
    assert (out / "predictions.json").read_bytes() == good  # never truncated JSON


def test_full_tmpfs_is_one_line(models, tmp_path, capsys):
    """A real full disk where the test may mount a small tmpfs (root on Linux)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=256k tmpfs {mount} 2>/dev/null"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mount / "out"
        image = noise(tmp_path / "x.png")
        rc, err, _ = classify(models, capsys, image, str(models["cls"]), out)
        assert rc == 0, err
        good = (out / "predictions.json").read_bytes()
        filler = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last byte
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        rc, _, err = cli(capsys, "classify", "predict", image, "--weights", models["cls2"], *SEG,
                         "-o", out, *CPU)  # fmt: skip
        one_error_line(rc, err, "no space left on the device")
        assert (out / "predictions.json").read_bytes() == good
    finally:
        os.system(f"umount {mount}")


# -- 4. interrupted work --------------------------------------------------------------------------


def test_ctrl_c_in_segment_predict_leaves_whole_pngs_and_a_marker(models, tmp_path, capsys,
                                                                  monkeypatch):  # fmt: skip
    inputs = tmp_path / "in"
    for i in range(4):
        noise(inputs / f"{i}.png", seed=i)
    out = tmp_path / "out"
    real_save = Image.Image.save
    calls = []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 5:  # Ctrl-C in the middle of the second image's colour PNG
            fp.write(b"\x89PNG\r\n\x1a\n half")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    rc, _, err = cli(capsys, *seg_predict(models, inputs, "-o", out))
    monkeypatch.undo()
    assert rc == 130 and "Traceback" not in err, err
    assert "INCOMPLETE.txt" in err and "again" in err
    assert (out / "INCOMPLETE.txt").is_file()
    assert json.loads((out / "predict.json").read_text())["complete"] is False
    bookkeeping = ("INCOMPLETE.txt", "predict.json", ".drnet.lock")  # marker, record, lock
    files = [p for p in out.rglob("*") if p.is_file() and p.name not in bookkeeping]
    assert len(files) == 4 and not [p for p in files if p.suffix != ".png"]  # image 0 + labels
    for path in files:
        with Image.open(path) as image:
            image.load()  # every PNG left is whole
    rc, _, err = cli(capsys, *seg_predict(models, inputs, "-o", out))  # the re-run completes it
    assert rc == 0, err
    assert not (out / "INCOMPLETE.txt").exists()
    assert len(list(out.rglob("*.png"))) == 12
    marker = json.loads((out / "predict.json").read_text())
    assert marker["complete"] is True and len(marker["outputs"]) == 12


def test_ctrl_c_in_data_scenes_then_overwrite(tmp_path, capsys, monkeypatch):
    import drnet.data.scenes as scenes

    out = tmp_path / "seg"
    argv = ["data", "scenes", "segmentation", out, "--train", "4", "--test", "2",
            "--canvas", "40", "--scale", "0.8", "1.2", "--fashion-mnist", "packaged",
            "--no-progress"]  # fmt: skip
    real = scenes._save_png
    calls = []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(scenes, "_save_png", interrupted)
    assert cli(capsys, *argv)[0] == 130
    monkeypatch.undo()
    assert json.loads((out / "scenes.json").read_text())["complete"] is False
    rc, _, err = cli(capsys, *argv)
    one_error_line(rc, err, "interrupted run", "--overwrite")
    rc, _, err = cli(capsys, *argv, "--overwrite")
    assert rc == 0, err
    assert json.loads((out / "scenes.json").read_text())["complete"] is True
    assert len((out / "train_images.txt").read_text().split()) == 4


# -- 5. folders that loop or hide -----------------------------------------------------------------


def test_link_loops_and_hidden_folders(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", n_train=2, classes=("a", "b"), size=(16, 16))
    for split in ("train", "val"):
        os.symlink(".", data / split / "a" / "loop1")
        os.symlink(".", data / split / "a" / "loop2")  # two: torchvision's walk never ended
        noise(data / split / ".ipynb_checkpoints" / "0-checkpoint.png", size=(16, 16))
    rc, out, _ = cli(capsys, "data", "check", data, "--no-progress")
    assert rc == 0, out
    assert "2 link(s) to a folder already read were not followed" in out
    assert "hidden folder(s) skipped, not classes: .ipynb_checkpoints" in out
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "classify", "train", data, "--channels", TINY_ARG, "--crop-size", "16",
                     "--epochs", "1", "-b", "2", "-j", "0", "-o", run, *CPU)  # fmt: skip
    assert rc == 0, err
    assert json.loads((run / "model.json").read_text())["class_names"] == ["a", "b"]
    rc, _, err = cli(capsys, "classify", "eval", data / "val", "--weights", run, "-j", "0",
                     "-o", tmp_path / "e", *CPU)  # fmt: skip
    assert rc == 0, err
    metrics = json.loads((tmp_path / "e/metrics.json").read_text())
    assert metrics["num_images"] == 4, metrics  # 2 per class, each once


def test_folder_walk_keeps_torchvisions_order(tmp_path):
    from torchvision import datasets

    from drnet.data.classification import ImageFolder

    for name in ("a/z.png", "a/sub/x.png", "a/b-c/y.png", "a/b/y.png", "b/0.png", "b/A.png"):
        noise(tmp_path / name, size=(8, 8))
    ours, theirs = ImageFolder(str(tmp_path)), datasets.ImageFolder(str(tmp_path))
    assert ours.samples == theirs.samples and ours.classes == theirs.classes


# -- 6. silent wrong numbers ----------------------------------------------------------------------


def test_stride_larger_than_window_is_refused(models, tmp_path, capsys):
    image = noise(tmp_path / "x.png", size=(40, 40))
    rc, _, err = cli(capsys, *seg_predict(models, image, "--window", "16", "--stride", "24",
                                          "-o", tmp_path / "o"))  # fmt: skip
    one_error_line(rc, err, "--stride 24", "--window 16")
    assert not (tmp_path / "o").exists()
    data = make_list_dataset(tmp_path / "d", n_train=1, n_val=1, size=16)
    rc, _, err = cli(capsys, "segment", "eval", data, "--weights", models["seg"], *SEG,
                     "--window", "8", "--stride", "9", "-o", tmp_path / "e", *CPU)  # fmt: skip
    one_error_line(rc, err, "--stride 9", "--window 8")


def test_labels_all_ignored_are_flagged_and_refused(tmp_path, capsys):
    data = make_list_dataset(tmp_path / "d", n_train=2, n_val=1, size=16)
    for path in (data / "labels").glob("train_*.png"):
        save_image(path, np.full((16, 16), 255))
    rc, out, _ = cli(capsys, "data", "check", data, "--no-progress")
    assert rc == 1 and "split 'train': every label pixel is 255" in out, out
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "segment", "train", data, "--channels", TINY_ARG, "--crop-size", "16",
                     "--epochs", "1", "-b", "2", "-j", "0", "-o", run, *CPU)  # fmt: skip
    one_error_line(rc, err, "split 'train'", "255 (ignored)")
    assert not (run / "checkpoint_last.pth").exists()


# -- 7. text inputs, odd names, memory, ports, Cityscapes ids -------------------------------------


@pytest.mark.parametrize(
    "encoding, words",
    [("utf-16", "is UTF-16"), ("latin-1", "is not UTF-8 (byte 0xe9 on line 2)")],
)
def test_list_file_in_another_encoding_is_one_line(encoding, words, models, tmp_path, capsys):
    noise(tmp_path / "a.png")
    noise(tmp_path / "café.png", seed=1)
    listing = tmp_path / "list.txt"
    listing.write_bytes("a.png\ncafé.png\n".encode(encoding))
    rc, _, err = cli(capsys, *seg_predict(models, listing, "-o", tmp_path / "o"))
    one_error_line(rc, err, listing, words, "UTF-8")


def test_list_file_with_a_bom_works(models, tmp_path, capsys):
    noise(tmp_path / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_bytes("a.png\n".encode("utf-8-sig"))
    rc, _, err = cli(capsys, *seg_predict(models, listing, "-o", tmp_path / "o"))
    assert rc == 0, err
    assert (tmp_path / "o/labels/a.png").is_file()


def test_latin1_info_json_is_one_line(models, tmp_path, capsys):
    data = make_list_dataset(tmp_path / "d", n_train=1, n_val=1, size=16)
    info = json.loads((data / "info.json").read_text()) | {"class_names": ["fond", "vélo", "x"]}
    (data / "info.json").write_bytes(json.dumps(info, ensure_ascii=False).encode("latin-1"))
    rc, _, err = cli(capsys, "segment", "eval", data, "--weights", models["seg"], *SEG,
                     "-o", tmp_path / "e", *CPU)  # fmt: skip
    one_error_line(rc, err, data / "info.json", "not UTF-8")


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("names.txt", "chat\nchien\nvélo\n".encode("latin-1"), "not UTF-8"),
        ("names.json", b'["a", "b",', "is not valid JSON"),
        ("names.json", '\ufeff["a", "b", "c"]'.encode(), None),  # a BOM is fine
    ],
)
def test_class_names_files(name, content, words, models, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    rc, err, _ = classify(models, capsys, noise(tmp_path / "x.png"), models["cls"], tmp_path / "o")
    assert rc == 0, err
    rc, _, err = cli(capsys, "classify", "predict", tmp_path / "x.png", "--weights", models["cls"],
                     *SEG, "--class-names", path, "-o", tmp_path / "o", *CPU)  # fmt: skip
    if words is None:
        assert rc == 0, err
        top = json.loads((tmp_path / "o/predictions.json").read_text())[0]["top_k"]
        assert {t["class"] for t in top} <= {"a", "b", "c"}
    else:
        one_error_line(rc, err, path, words)


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system of bytes")
def test_file_names_that_are_not_utf8(models, tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", n_train=1, classes=("a", "b", "c"), size=(16, 16))
    odd = os.fsencode(data / "val" / "a") + b"/caf\xe9.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(odd.decode("utf-8", "surrogateescape"))
    out = tmp_path / "p"
    rc, _, err = cli(capsys, "classify", "predict", data / "val", "--weights", models["cls"], *SEG,
                     "-o", out, *CPU)  # fmt: skip
    assert rc == 0, err
    rows = (out / "predictions.csv").read_bytes().splitlines()
    assert len(rows) == 1 + 4 * 3 and any(b"caf\xe9.png" in r for r in rows)  # not header-only
    entries = json.loads((out / "predictions.json").read_text())
    assert any(os.fsencode(e["image"]).endswith(b"caf\xe9.png") for e in entries)
    rc, _, err = cli(capsys, "classify", "eval", data / "val", "--weights", models["cls"], *SEG,
                     "-j", "0", "-o", tmp_path / "e", *CPU)  # fmt: skip
    assert rc == 0, err


@pytest.mark.parametrize(
    "exc, words",
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                "memory: you tried to allocate 1099511627776 bytes."
            ),
            "out of CPU memory (1,024.00 GiB asked for)",
        ),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "GPU memory"),
    ],
    ids=["cpu", "gpu"],
)
def test_memory_exhaustion_is_one_line(exc, words, models, tmp_path, capsys, monkeypatch):
    import drnet.cli.classify as classify_cli

    def too_large(*args, **kwargs):
        raise exc

    monkeypatch.setattr(classify_cli, "load_from_args", too_large)
    rc, _, err = cli(capsys, "classify", "predict", noise(tmp_path / "x.png"), "--weights",
                     models["cls"], *SEG, "-o", tmp_path / "o", *CPU)  # fmt: skip
    one_error_line(rc, err, words, "--batch-size", "--channels")


def test_other_runtime_errors_still_raise(capsys, monkeypatch):
    import drnet.cli.segment as segment

    def bug(args):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(segment, "run_eval", bug)
    with pytest.raises(RuntimeError, match="a real bug"):
        cli(capsys, "segment", "eval", "-d", "d", "--weights", "w", "-o", "-")


@pytest.fixture
def no_serving(monkeypatch):
    """``drnet serve`` must fail before serving: fail the test (not hang) if it ever serves."""
    import drnet.serve.app as app

    def serve_forever(server):
        server.server_close()
        raise AssertionError(f"drnet serve started on {server.url}")

    monkeypatch.setattr(app, "serve_forever", serve_forever)


def test_serve_on_a_busy_port_is_one_line(models, capsys, no_serving):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, err = cli(capsys, "serve", "--weights", models["run"], "--port", port,
                         "--device", "cpu", "--no-fast")  # fmt: skip
    one_error_line(rc, err, f"127.0.0.1:{port}", "the port is in use", "--port 0")
    assert "During handling" not in err


def test_serve_on_an_address_the_machine_lacks_is_one_line(models, capsys, no_serving):
    rc, _, err = cli(capsys, "serve", "--weights", models["run"], "--host", "192.0.2.1",
                     "--port", "0", "--device", "cpu", "--no-fast")  # fmt: skip
    one_error_line(rc, err, "192.0.2.1", "no such address")


def test_serve_on_an_invalid_port(capsys):
    line = usage_error_line(["serve", "--port", "70000"], capsys)
    assert "argument --port" in line and "65535" in line


def test_cityscapes_label_ids_out_of_range(tmp_path, capsys):
    path = tmp_path / "gtFine/train/city/x_gtFine_labelIds.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 300, np.uint16)).save(path)  # a 16-bit label image
    rc, _, err = cli(capsys, "data", "cityscapes-prepare", tmp_path, "--no-progress")
    one_error_line(rc, err, path, "[300]", "outside 0..255")


# -- 8. the viewer --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer(models):
    from drnet.models.loading import load_model
    from drnet.serve import app
    from drnet.serve.api import ServedModel

    model, card = load_model(models["cls"], model="drn_d_22", num_classes=3,
                             channels=TINY_CHANNELS)  # fmt: skip
    served = ServedModel.create(model, card, "cls", id="m1", fast=False, dtype="float32")
    model, card = load_model(models["seg"], model="drn_d_22", num_classes=3, task="segmentation",
                             channels=TINY_CHANNELS)  # fmt: skip
    seg = ServedModel.create(model, card, "seg", id="m2", fast=False, dtype="float32")
    server = app.make_server([served, seg], port=0)
    app.serve_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


def exchange(server, request: bytes) -> bytes:
    """Send raw bytes, read everything until the server closes the connection."""
    with socket.create_connection(server.server_address[:2], timeout=60) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "host, status",
    [
        ("evil.example", 421),
        ("evil.example:8000", 421),
        ("127.0.0.1.nip.io", 421),
        ("localhost:{port}", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
    ],
)
def test_host_header_is_checked(viewer, host, status):
    host = host.format(port=viewer.server_address[1])
    answer = exchange(viewer, f"GET /api/models HTTP/1.1\r\nHost: {host}\r\nConnection: close"
                              "\r\n\r\n".encode())  # fmt: skip
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    if status != 200:
        assert b"is not an address of this server" in answer and b"Traceback" not in answer


def test_invalid_content_length_is_400_and_the_body_is_never_a_request(viewer):
    port = viewer.server_address[1]
    smuggled = f"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    answer = exchange(viewer, f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                              f"Content-Length: 12abc\r\n\r\n{smuggled}".encode())  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Content-Length" in answer, answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, then the connection was closed
    assert b'"models"' not in answer


def test_an_8x8_image_is_answered(viewer):
    import urllib.request

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(
        buffer, format="PNG"
    )
    request = urllib.request.Request(f"{viewer.url}api/predict", data=buffer.getvalue(),
                                     headers={"Content-Type": "image/png"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as answer:
        body = json.loads(answer.read())
    assert answer.status == 200
    assert [r["task"] for r in body["results"]] == ["classification", "segmentation"]
