"""A failed or second training never damages a run folder (issue 13).

Each case of the issue is tried through the real CLI on a copy of a finished run: the command
fails with one ``drnet: error:`` line and a non-zero exit, every file of the run is unchanged
byte for byte, and the run still evaluates to the same numbers. ``--overwrite`` replaces a run on
request; a lock held by another process keeps a training out of the folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import CPU, TINY_ARG, make_imagefolder, make_list_dataset, one_error_line, truncate
from helpers import run_cli as cli

from drnet.cli import main
from drnet.engine import rundir
from drnet.engine.rundir import LOCK_FILE, RunFolderLock, atomic_write, atomic_write_text
from drnet.errors import DrnetError

pytestmark = pytest.mark.usefixtures("one_thread")


def cls_train(data, out, *extra) -> list:
    return ["classify", "train", data, "--channels", TINY_ARG, "--crop-size", "16",
            "--epochs", "1", "--max-iters", "2", "--batch-size", "2", "--workers", "0",
            "--output-dir", out, *CPU, *extra]  # fmt: skip


def seg_train(data, out, *extra) -> list:
    return ["segment", "train", "-d", data, "--channels", TINY_ARG, "-s", "32",
            "--epochs", "1", "--max-iters", "2", "--batch-size", "2", "-j", "0", "-o", out,
            *CPU, *extra]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (the lock file aside) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def evaluate(data: Path, run: Path, out: Path) -> dict:
    """``classify eval`` of ``run`` on the val split: its top-1 and loss."""
    argv = ["classify", "eval", data / "val", "--weights", run, "-o", out, "--workers", "0", *CPU]
    assert main([str(a) for a in argv]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    return {"top1": metrics["top1"], "loss": metrics["loss"]}


# -- fixtures: one finished classification run and one segmentation run --------------------------


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("cls") / "data")


@pytest.fixture(scope="module")
def cls_run(cls_data, tmp_path_factory):
    """A finished run, trained into a folder that held only unrelated files and the model.json
    of a start that failed (both fine: neither is a run)."""
    run = tmp_path_factory.mktemp("clsrun") / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine\n")
    (run / "model.json").write_text("{}\n")
    assert main([str(a) for a in cls_train(cls_data, run)]) == 0
    assert (run / "checkpoint_best.pth").is_file() and (run / "notes.txt").is_file()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # atomic writes
    return run


@pytest.fixture(scope="module")
def cls_reference(cls_data, cls_run, tmp_path_factory):
    """What the untouched run evaluates to."""
    return evaluate(cls_data, cls_run, tmp_path_factory.mktemp("eval"))


@pytest.fixture
def run(cls_run, tmp_path) -> Path:
    """A copy of the finished run that a test may try to damage."""
    return shutil.copytree(cls_run, tmp_path / "run")


def assert_intact(run: Path, cls_run: Path) -> None:
    """``run`` (a copy of ``cls_run``) holds the same files with the same bytes."""
    assert snapshot(run) == snapshot(cls_run)


# -- a failed start leaves the run as it was ------------------------------------------------------


def test_lr_nan_writes_nothing(cls_data, cls_run, run, capsys):
    """Even with --overwrite and another --model: the arguments are checked before anything is
    removed or written (model.json too)."""
    argv = cls_train(cls_data, run, "--lr", "nan", "--overwrite", "--model", "drn_c_26")
    rc, _, err = cli(capsys, *argv)
    one_error_line(rc, err, "--lr")
    assert_intact(run, cls_run)


def test_resume_with_another_model_writes_nothing(
    cls_data, cls_run, cls_reference, run, tmp_path, capsys
):
    """The checkpoint does not fit the model: refused before model.json or config.json change,
    and the run evaluates as before."""
    rc, _, err = cli(capsys, *cls_train(cls_data, run, "--resume", "auto", "--model", "drn_c_26"))
    one_error_line(rc, err, "checkpoint_last.pth")
    assert_intact(run, cls_run)
    assert evaluate(cls_data, run, tmp_path / "eval") == cls_reference


def test_data_too_small_writes_nothing(cls_data, cls_run, run, capsys):
    """The engine's own data check (fewer samples than one batch) comes before any write: even
    --overwrite with another --model leaves model.json and the checkpoints alone."""
    argv = cls_train(cls_data, run, "--overwrite", "--model", "drn_c_26", "--batch-size", "64")
    rc, _, err = cli(capsys, *argv)
    one_error_line(rc, err, "--batch-size")
    assert_intact(run, cls_run)


def test_bad_image_in_epoch_one_keeps_the_run(
    cls_data, cls_run, cls_reference, run, tmp_path, capsys
):
    """Continuing the run on data with a truncated image fails in epoch 1: the checkpoints,
    log.csv and model.json are untouched, the run evaluates as before, and the lock is free."""
    bad_data = shutil.copytree(cls_data, tmp_path / "data")
    for image in sorted((bad_data / "train").rglob("*.png")):
        truncate(image)
    rc, _, err = cli(capsys, *cls_train(bad_data, run, "--resume", "auto", "--epochs", "2"))
    one_error_line(rc, err, bad_data / "train")
    before, after = snapshot(cls_run), snapshot(run)
    del before["config.json"], after["config.json"]  # the continued run's settings
    assert after == before
    assert evaluate(cls_data, run, tmp_path / "eval") == cls_reference
    with RunFolderLock(run):  # released although the training failed in this process
        pass


def test_resume_writes_its_recipe_into_model_json_once_it_has_trained(cls_data, run, capsys):
    """The card of a resumed run names the continued recipe (--epochs 2), written at its end."""
    assert json.loads((run / "model.json").read_text())["training"]["epochs"] == 1
    rc, _, err = cli(capsys, *cls_train(cls_data, run, "--resume", "auto", "--epochs", "2"))
    assert rc == 0, err
    assert json.loads((run / "model.json").read_text())["training"]["epochs"] == 2


# -- a folder that holds a run -------------------------------------------------------------------


def test_training_again_into_a_run_is_refused(cls_data, cls_run, run, capsys):
    rc, _, err = cli(capsys, *cls_train(cls_data, run))
    line = one_error_line(rc, err, run, "--resume", "--overwrite")
    assert "already holds a training run" in line
    assert_intact(run, cls_run)


def test_overwrite_replaces_the_run(cls_data, cls_run, run, capsys):
    """--overwrite trains afresh: the earlier checkpoints and log.csv are replaced, the folder's
    other files stay."""
    rc, _, err = cli(capsys, *cls_train(cls_data, run, "--overwrite", "--seed", "1"))
    assert rc == 0, err
    new, old = snapshot(run), snapshot(cls_run)
    assert new["checkpoint_last.pth"] != old["checkpoint_last.pth"]
    assert json.loads(new["config.json"])["seed"] == 1
    assert new["notes.txt"] == old["notes.txt"]
    assert len((run / "log.csv").read_text().splitlines()) == 2  # header + this run's epoch


def test_overwrite_removes_the_old_best_checkpoint(cls_data, run, capsys):
    """A new run without validation must not leave the earlier run's checkpoint_best.pth."""
    no_val = shutil.copytree(cls_data / "train", run.parent / "no-val" / "train").parent
    rc, _, err = cli(capsys, *cls_train(no_val, run, "--overwrite"))
    assert rc == 0, err
    assert "removed the earlier run's checkpoint_last.pth, checkpoint_best.pth, log.csv" in err
    assert not (run / "checkpoint_best.pth").exists()


def test_output_dir_that_is_a_file(cls_data, tmp_path, capsys):
    (tmp_path / "run").write_text("a file\n")
    rc, _, err = cli(capsys, *cls_train(cls_data, tmp_path / "run"))
    one_error_line(rc, err, tmp_path / "run", "not a folder")


# -- two trainings at once -----------------------------------------------------------------------


def test_a_folder_in_use_is_refused(cls_data, cls_run, run, capsys):
    """Another process holds the lock (simulated from this process with its own file
    descriptor): the training fails naming the folder and the holder's pid, even with
    --overwrite, and removes nothing."""
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, b"4242\n")
        rc, _, err = cli(capsys, *cls_train(cls_data, run, "--overwrite"))
        line = one_error_line(rc, err, run, "pid 4242")
        assert "in use by another drnet training" in line
    finally:
        os.close(fd)
    assert_intact(run, cls_run)


def test_lock_is_exclusive_and_released(tmp_path):
    first = RunFolderLock(tmp_path)
    first.acquire()
    assert (tmp_path / LOCK_FILE).read_text().split() == [str(os.getpid()), "training"]
    in_use = f"{tmp_path} is in use by another drnet training \\(pid {os.getpid()}\\)"
    with pytest.raises(DrnetError, match=in_use):
        RunFolderLock(tmp_path).acquire()
    first.release()
    with RunFolderLock(tmp_path) as second:
        assert second.held
    assert not second.held


def test_no_fcntl_skips_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "fcntl", None)
    lock = RunFolderLock(tmp_path)
    lock.acquire()
    assert not lock.held and not (tmp_path / LOCK_FILE).exists()
    lock.release()


# -- segmentation -------------------------------------------------------------------------------


def test_segment_train_keeps_config_and_model_json(tmp_path, capsys):
    """``segment train`` into a run with other widths and --resume auto: refused before its
    config.json and model.json change; without --resume: refused as a run."""
    data = make_list_dataset(tmp_path / "data", n_train=4, n_val=1, size=32)
    run = tmp_path / "run"
    assert main([str(a) for a in seg_train(data, run)]) == 0
    before = snapshot(run)
    other = ",".join(["8"] * 8)
    argv = seg_train(data, run, "--resume", "auto")
    argv[argv.index("--channels") + 1] = other
    rc, _, err = cli(capsys, *argv)
    one_error_line(rc, err, "checkpoint_last.pth")
    assert snapshot(run) == before
    rc, _, err = cli(capsys, *seg_train(data, run, "--lr", "0.5"))
    one_error_line(rc, err, run, "--overwrite")
    assert snapshot(run) == before


# -- atomic writes ------------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = atomic_write_text(tmp_path / "config.json", "old\n")
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write("half")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary left
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not 0600
