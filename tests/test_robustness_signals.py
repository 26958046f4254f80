"""Interrupted training resumes to the same weights; malicious checkpoints are refused unrun.

* A real ``python -m drnet segment train`` process gets SIGTERM mid-epoch, writes a resumable
  checkpoint, exits non-zero, and ``--resume auto`` ends with weights bit-identical to an
  uninterrupted run with the same seed (CPU, one thread, no data workers).
* Ctrl-C (SIGINT) during ``drnet classify train`` does the same (in-process, deterministic).
* A checkpoint whose unpickling would run code is refused by every command that reads one.
"""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CPU,
    TINY_ARG,
    drnet_process,
    make_imagefolder,
    make_list_dataset,
    save_image,
    save_tiny_model,
    wait_for_file,
)

from drnet.cli import main
from drnet.engine import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.slow
def test_entry_point_error_from_a_dataloader_worker_is_one_line(tmp_path):
    """``python -m drnet``: exit 2 and the original one-line message, although the error was
    raised in a DataLoader worker process (whose traceback torch packs into the message)."""
    noise = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    for cls in ("cat", "dog"):
        save_image(tmp_path / "val" / cls / "0.png", noise)
    bad = tmp_path / "val/dog/0.png"
    bad.write_bytes(bad.read_bytes()[:400])  # truncated
    save_tiny_model(tmp_path / "model.pth", num_classes=2)
    argv = ["classify", "eval", tmp_path / "val", "--weights", tmp_path / "model.pth",
            "--model", "drn_d_22", "--channels", TINY_ARG, "--crop-size", "16", "--workers", "1",
            "--output-dir", tmp_path / "ev", *CPU]  # fmt: skip
    proc = drnet_process(argv, tmp_path / "log")
    assert proc.wait(timeout=120) == 2
    text = (tmp_path / "log").read_text()
    assert "Traceback" not in text and "DataLoader worker" not in text
    assert text.strip().splitlines()[-1].startswith(f"drnet: error: {bad}: cannot read the image")


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_gives_the_same_weights(tmp_path):
    data = make_list_dataset(tmp_path / "data", n_train=8, n_val=1, size=32)
    for name in ("train_images.txt", "train_labels.txt"):  # 40 samples: 20 iterations an epoch
        (data / name).write_text((data / name).read_text() * 5)
    argv = ["segment", "train", "-d", data, "--channels", TINY_ARG, "-s", "24", "--epochs", "2",
            "--batch-size", "2", "-j", "0", "--random-scale", "1.5", "--random-rotate", "10",
            "--lr", "0.01", "--seed", "3", *CPU]  # fmt: skip
    reference = drnet_process([*argv, "-o", tmp_path / "ref"], tmp_path / "ref.log")
    run = tmp_path / "run"
    victim = drnet_process([*argv, "-o", run], tmp_path / "run.log")
    # written at the end of epoch 1
    wait_for_file(run / "checkpoint_last.pth", victim, tmp_path / "run.log")
    victim.send_signal(signal.SIGTERM)  # lands inside epoch 2 (20 iterations)
    assert victim.wait(timeout=300) == 2
    log = (tmp_path / "run.log").read_text()
    assert "stopped by SIGTERM at epoch 2 iteration" in log and "--resume auto" in log
    assert "Traceback" not in log
    state = load_checkpoint(run / "checkpoint_last.pth")
    assert state["epoch"] == 1 and 0 < state["iteration"] < 20, state["iteration"]
    assert not [p for p in run.iterdir() if p.suffix == ".tmp"]  # nothing half-written

    resumed = drnet_process([*argv, "-o", run, "--resume", "auto"], tmp_path / "resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()
    assert f"iteration {state['iteration']}" in (tmp_path / "resume.log").read_text()
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()
    assert_same_weights(tmp_path / "ref/checkpoint_last.pth", run / "checkpoint_last.pth")
    final = load_checkpoint(run / "checkpoint_last.pth")
    assert final["epoch"] == 2 and final["iteration"] == 0
    assert (
        final["best_metric"] == load_checkpoint(tmp_path / "ref/checkpoint_last.pth")["best_metric"]
    )


def test_ctrl_c_writes_a_resumable_checkpoint(tmp_path, capsys, monkeypatch):
    from drnet.tasks.classify import ClassificationTask

    data = make_imagefolder(tmp_path / "cls", n_train=6, n_val=1, seed=1)
    argv = ["classify", "train", data, "--channels", TINY_ARG, "--crop-size", "16", "--epochs",
            "2", "--batch-size", "2", "--workers", "0", "--lr", "0.05", "--seed", "5",
            *CPU]  # fmt: skip
    argv = [str(a) for a in argv]
    assert main([*argv, "--output-dir", str(tmp_path / "ref")]) == 0

    loss, calls = ClassificationTask.loss, []

    def ctrl_c_in_epoch_2(self, output, target):  # 6 iterations per epoch
        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, output, target)

    monkeypatch.setattr(ClassificationTask, "loss", ctrl_c_in_epoch_2)
    capsys.readouterr()
    assert main([*argv, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "stopped by SIGINT at epoch 2 iteration 2" in err and "Traceback" not in err
    monkeypatch.setattr(ClassificationTask, "loss", loss)
    assert main([*argv, "--output-dir", str(tmp_path / "run"), "--resume", "auto"]) == 0
    assert_same_weights(tmp_path / "ref/checkpoint_last.pth", tmp_path / "run/checkpoint_last.pth")


class Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(params=["zip", "pickle"])
def evil(request, tmp_path) -> tuple[Path, Path]:
    """A malicious checkpoint (torch's zip format or a bare pickle) and its marker file."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if request.param == "zip":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    return path, marker


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    return make_list_dataset(tmp_path_factory.mktemp("seg") / "data", n_train=2, n_val=1, size=16)


def test_malicious_checkpoint_is_refused_without_running(evil, seg_data, tmp_path, capsys):
    path, marker = evil
    seg_train = ["segment", "train", "-d", seg_data, "--channels", TINY_ARG, "-s", "16",
                 "--epochs", "1", "--batch-size", "2", "-j", "0", "-o", tmp_path / "run",
                 *CPU]  # fmt: skip
    commands = [
        ["segment", "eval", "-d", seg_data, "--weights", path, "--arch", "drn_d_22",
         "-o", tmp_path / "ev", *CPU],
        ["segment", "predict", seg_data / "images", "--weights", path, "--arch", "drn_d_22",
         "-o", tmp_path / "pr", *CPU],
        [*seg_train, "--weights", path],
        [*seg_train, "--resume", path],
        ["classify", "predict", seg_data / "images", "--weights", path, "--model", "drn_d_22",
         "--output-dir", tmp_path / "cp", *CPU],
        ["localize", "predict", seg_data / "images", "--weights", path, "--model", "drn_d_22",
         "--output-dir", tmp_path / "lp", *CPU],
    ]  # fmt: skip
    for argv in commands:
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert f"refusing to load {path}" in err and "would run code" in err, (argv, err)
        assert "Traceback" not in err
        assert not marker.exists(), argv
