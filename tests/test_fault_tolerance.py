"""Distributed training under faults (CPU, gloo, torchrun on 127.0.0.1).

* ``kill -9`` of rank 1, three times in one ``torchrun --max-restarts 3`` job, without
  ``--resume``: the job resumes by itself from ``--save-every`` checkpoints and ends with the
  weights (and ``log.csv`` losses) of an uninterrupted run.
* SIGTERM to the whole process group of ``drnet classify train -j 2``: the loader workers
  survive it, a checkpoint is written, and ``--resume auto`` ends bit-identically.
* Two launchers as two "nodes" (c10d rendezvous) train to the single-node weights.
* A resume checkpoint only rank 0 can read (node-local folders) fails in one clear line.
* Units: effective_resume, the worker signal set-up, log rows across a mid-epoch resume.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    CPU,
    TINY_ARG,
    _child_env,
    drnet_process,
    free_port,
    make_imagefolder,
    wait_for_file,
)

from drnet.engine import TrainConfig, load_checkpoint, save_checkpoint, train
from drnet.engine import distributed as D
from drnet.engine.data import stop_signals_held, worker_init
from drnet.engine.stop import SignalFlag
from drnet.engine.trainer import _read_resume_point, _resolve_resume

pytestmark = pytest.mark.usefixtures("one_thread")

# A toy task through the engine's train(); argv: OUTPUT_DIR [CRASHES]. CRASHES "3,4,3": at
# restart count c, rank 1 kills itself (SIGKILL) in its CRASHES[c]-th training step.
SCRIPT = textwrap.dedent(
    """
    import logging, os, signal, sys
    import torch
    from torch import nn
    from torch.utils.data import Dataset
    from drnet.engine import Task, TrainConfig, train

    class Points(Dataset):
        def __init__(self, n=32):
            g = torch.Generator().manual_seed(1)
            self.y = torch.arange(n) % 2
            self.x = torch.randn(n, 8, generator=g) + 2.0 * self.y[:, None].float()
        def __len__(self):
            return len(self.y)
        def __getitem__(self, i):
            return self.x[i] + 0.3 * torch.randn(8), self.y[i]

    RANK = int(os.environ.get("RANK", "0"))
    RESTART = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    CRASHES = [int(c) for c in sys.argv[2].split(",")] if len(sys.argv) > 2 else []
    steps = []

    class Toy(Task):
        name = "toy"
        def build_model(self):
            return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        def train_dataset(self):
            return Points()
        def loss(self, output, target):
            steps.append(1)
            if RANK == 1 and RESTART < len(CRASHES) and len(steps) == CRASHES[RESTART]:
                os.kill(os.getpid(), signal.SIGKILL)
            return nn.functional.cross_entropy(output, target)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = TrainConfig(output_dir=sys.argv[1], epochs=3, batch_size=8, lr=0.1, workers=0,
                      device="cpu", progress=False, seed=3, save_every=2)
    train(Toy(), cfg)
    """
)


def torchrun(tmp: Path, script_args: list[str], *launcher: str, timeout: int = 240):
    """``torchrun LAUNCHER SCRIPT ARGS`` (2 processes on 127.0.0.1 unless LAUNCHER says)."""
    script = tmp / "toy.py"
    if not script.exists():
        script.write_text(SCRIPT)
    launcher = launcher or ("--nproc-per-node=2", "--nnodes=1", "--master-addr=127.0.0.1",
                            f"--master-port={free_port()}")  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, str(script), *script_args]
    env = _child_env(OMP_NUM_THREADS="1")
    return subprocess.Popen(
        cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, timeout: int = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint_last.pth")["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted two-process run of the toy script."""
    tmp = tmp_path_factory.mktemp("reference")
    finish(torchrun(tmp, [str(tmp / "ref")]))
    return tmp / "ref"


# ------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_three_kills_under_max_restarts_resume_by_themselves_bit_identically(tmp_path, reference):
    proc = torchrun(
        tmp_path, [str(tmp_path / "run"), "3,4,3"], "--nproc-per-node=2", "--nnodes=1",
        "--max-restarts=3", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
    )  # fmt: skip
    out = finish(proc, timeout=400)
    assert out.count("resumed from") == 3, out[-4000:]  # from rank 0, once per restart
    assert "Connection refused" not in out
    assert_same_weights(reference, tmp_path / "run")
    rows, ref_rows = log_rows(tmp_path / "run"), log_rows(reference)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # each epoch's row covers the whole epoch, though two of them were resumed mid-way
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref_rows]
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref_rows]


@pytest.mark.slow
def test_two_launchers_as_two_nodes_train_to_the_single_node_weights(tmp_path, reference):
    port = free_port()
    nodes = [
        torchrun(
            tmp_path,
            [str(tmp_path / "run")],
            "--nproc-per-node=1",
            "--nnodes=2",
            f"--node-rank={rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=drnet-test",
        )  # fmt: skip
        for rank in (0, 1)
    ]
    for node in nodes:
        finish(node)
    assert_same_weights(reference, tmp_path / "run")


@pytest.mark.slow
def test_resume_checkpoint_only_rank_0_can_read_fails_clearly(tmp_path, reference):
    """Node-local folders, simulated: each rank works in its own folder ``nodeR`` with the
    relative output folder ``run``; only node 0's holds a checkpoint. The group was "restarted"
    (TORCHELASTIC_RESTART_COUNT=1), so it resumes by itself."""
    (tmp_path / "toy.py").write_text(SCRIPT)
    script = tmp_path / "local.py"
    script.write_text(
        "import os, runpy, sys\n"
        "os.environ['TORCHELASTIC_RESTART_COUNT'] = '1'\n"
        "os.chdir(f\"node{os.environ['RANK']}\")\n"
        f"sys.argv = [{str(tmp_path / 'toy.py')!r}, 'run']\n"
        f"runpy.run_path({str(tmp_path / 'toy.py')!r}, run_name='__main__')\n"
    )
    (tmp_path / "node0/run").mkdir(parents=True)
    (tmp_path / "node1").mkdir()
    state = load_checkpoint(reference / "checkpoint_last.pth")
    state["epoch"] = 1
    torch.save(state, tmp_path / "node0/run/checkpoint_last.pth")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script)]  # fmt: skip
    env = _child_env(OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "rank 1 cannot read run/checkpoint_last.pth (" in out, out[-4000:]
    assert "): multi-node training needs an output folder shared by every node" in out
    assert not (tmp_path / "node1/run/checkpoint_last.pth").exists()  # nothing trained
    assert load_checkpoint(tmp_path / "node0/run/checkpoint_last.pth")["epoch"] == 1


# ------------------------------------------------------------------- SIGTERM, data workers


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_data_workers_checkpoints_and_resumes(tmp_path):
    data = make_imagefolder(tmp_path / "cls", n_train=20, n_val=1, size=(16, 16), seed=2)
    argv = ["classify", "train", data, "--channels", TINY_ARG, "--crop-size", "16", "--epochs",
            "2", "--batch-size", "2", "-j", "2", "--lr", "0.02", "--seed", "4", *CPU]  # fmt: skip
    reference = drnet_process([*argv, "-o", tmp_path / "ref"], tmp_path / "ref.log")
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()
    run = tmp_path / "run"
    victim = _own_group([*argv, "-o", run], tmp_path / "run.log")
    # written at the end of epoch 1
    wait_for_file(run / "checkpoint_last.pth", victim, tmp_path / "run.log")
    os.killpg(victim.pid, signal.SIGTERM)  # main process and its 2 loader workers: 20 its
    time.sleep(0.05)
    victim.send_signal(signal.SIGTERM)  # as torchrun's agent forwards the group's signal
    assert victim.wait(timeout=300) == 2, (tmp_path / "run.log").read_text()
    log = (tmp_path / "run.log").read_text()
    assert "stopped by SIGTERM at epoch 2 iteration" in log, log
    assert "killed by signal" not in log and "Traceback" not in log
    state = load_checkpoint(run / "checkpoint_last.pth")
    assert state["epoch"] == 1 and 0 < state["iteration"] < 20, state["iteration"]
    resumed = drnet_process([*argv, "-o", run, "--resume", "auto"], tmp_path / "resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()
    assert_same_weights(tmp_path / "ref", run)
    assert [r["train_loss"] for r in log_rows(run)] == [
        r["train_loss"] for r in log_rows(tmp_path / "ref")
    ]


def _own_group(argv: list[object], log: Path) -> subprocess.Popen:
    """``python -m drnet ARGV`` as the leader of a new process group (like a batch job)."""
    env = _child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "drnet", *map(str, argv)], stdout=handle,
            stderr=subprocess.STDOUT, env=env, cwd=log.parent, start_new_session=True,
        )  # fmt: skip


# ---------------------------------------------------------------------------------- units


def test_effective_resume_turns_a_restart_into_auto(monkeypatch):
    assert D.effective_resume(None, 0) is None
    assert D.effective_resume(None, 1) == "auto"
    assert D.effective_resume("", 2) == "auto"
    assert D.effective_resume("auto", 0) == "auto"
    assert D.effective_resume("some.pth", 3) == "some.pth"  # kept; the run's own wins later
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert D.restart_count() == 2 and D.effective_resume(None) == "auto"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert D.effective_resume(None) is None
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert D.restart_count() == 0


def test_after_a_restart_the_runs_own_checkpoint_beats_an_explicit_path(tmp_path):
    config = TrainConfig(output_dir=str(tmp_path), resume="elsewhere.pth")
    assert _resolve_resume(config, restarts=1) == Path("elsewhere.pth")  # nothing written yet
    (tmp_path / "checkpoint_last.pth").write_bytes(b"")
    assert _resolve_resume(config, restarts=0) == Path("elsewhere.pth")
    assert _resolve_resume(config, restarts=1) == tmp_path / "checkpoint_last.pth"


def test_rank_that_reads_another_position_fails_clearly(tmp_path):
    state = {"model": {}, "optimizer": {}, "epoch": 3, "iteration": 0}
    path = save_checkpoint(state, tmp_path / "checkpoint_last.pth")
    state, problem = _read_resume_point(path, (3, 0), rank=1)
    assert problem is None and state["epoch"] == 3
    state, problem = _read_resume_point(path, (1, 2), rank=1)
    assert state is None
    assert problem == (
        f"rank 1 reads {path} at epoch 3 iteration 0, rank 0 at epoch 1 iteration 2: "
        "multi-node training needs an output folder shared by every node"
    )
    state, problem = _read_resume_point(tmp_path / "none.pth", (1, 2), rank=2)
    assert state is None and problem.startswith(f"rank 2 cannot read {tmp_path / 'none.pth'}")


def _signal_state_in_a_worker(queue) -> None:
    worker_init(0)
    queue.put(
        (
            signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
            signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []),
        )
    )


def test_worker_init_ignores_stop_signals_and_lets_held_ones_go():
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with stop_signals_held():  # as while the loader forks its workers
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        worker = context.Process(target=_signal_state_in_a_worker, args=(queue,))
        worker.start()
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert queue.get(timeout=60) == (True, True, False)
    worker.join(timeout=60)


def test_loader_workers_of_the_engine_survive_sigterm(tmp_path):
    """SIGTERM to this process and its 2 loader workers (as to a process group): the run writes
    a mid-epoch checkpoint and raises TrainingInterrupted; no worker died of the signal."""
    import multiprocessing

    from test_engine import ToyTask, config

    from drnet.engine import TrainingInterrupted

    ignored: list[set[int]] = []
    alive: list[bool] = []

    def sigterm_everyone(calls: int) -> None:
        if calls == 8:  # epoch 2, iteration 2
            workers = multiprocessing.active_children()
            ignored.extend(_ignored_signals(worker.pid) for worker in workers)
            for worker in workers:
                os.kill(worker.pid, signal.SIGTERM)
            time.sleep(0.5)  # a worker that does not ignore it is dead by now
            alive.extend(worker.is_alive() for worker in workers)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at epoch 2 iteration 2"):
        train(ToyTask(hook=sigterm_everyone), config(tmp_path, workers=2))
    assert alive == [True, True]
    # ignored, not merely caught by a handler inherited through fork (spawned workers, as with
    # Python 3.14's forkserver default, inherit no handler)
    assert ignored == [{signal.SIGTERM, signal.SIGINT}] * 2
    state = load_checkpoint(tmp_path / "run/checkpoint_last.pth")
    assert (state["epoch"], state["iteration"]) == (1, 2)


def _ignored_signals(pid: int) -> set[int]:
    """The stop signals that process ``pid`` ignores (Linux: ``SigIgn`` in /proc)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("needs /proc")
    mask = int(next(ln for ln in status.read_text().splitlines() if ln.startswith("SigIgn:"))
               .split()[1], 16)  # fmt: skip
    return {sig for sig in (signal.SIGTERM, signal.SIGINT) if mask >> (sig - 1) & 1}


def test_an_echoed_signal_is_not_a_second_one(monkeypatch):
    flag = SignalFlag()
    flag._handle(signal.SIGTERM, None)
    flag._handle(signal.SIGTERM, None)  # the agent forwards the group's SIGTERM: same stop
    assert flag.signum == signal.SIGTERM
    monkeypatch.setattr(SignalFlag, "ECHO_S", 0.0)
    time.sleep(0.01)
    with pytest.raises(KeyboardInterrupt):
        flag._handle(signal.SIGINT, None)


def test_save_every_checkpoints_mid_epoch_and_rows_cover_the_whole_epoch(tmp_path):
    """A crash (here an exception) after --save-every's checkpoint: resuming continues from it
    bit-identically, and the resumed epoch's log.csv row is the uninterrupted run's."""
    from test_engine import ToyTask, assert_same, config
    from test_engine import weights as weights_at

    reference = train(ToyTask(), config(tmp_path / "ref"))

    def crash(calls: int) -> None:
        if calls == 10:  # epoch 2, iteration 4 (6 an epoch); checkpoints after 4 and 8 steps
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        train(ToyTask(hook=crash), config(tmp_path, save_every=4))
    state = load_checkpoint(tmp_path / "run/checkpoint_last.pth")
    assert (state["epoch"], state["iteration"]) == (1, 2)  # after step 8 of the run
    assert state["epoch_sums"]["samples"] == 2 * 8
    resumed = train(ToyTask(), config(tmp_path, resume="auto", save_every=4))
    assert resumed["iterations"] == 3 * 6 - 8
    assert_same(weights_at(reference["checkpoint_last"]), weights_at(resumed["checkpoint_last"]))
    rows, ref_rows = log_rows(tmp_path / "run"), log_rows(tmp_path / "ref/run")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # epoch 1's row survived the resume
    for row, ref in zip(rows, ref_rows, strict=True):
        assert (row["train_loss"], row["lr"]) == (ref["train_loss"], ref["lr"])
    assert float(rows[1]["time_s"]) > 0


def test_save_every_and_dist_timeout_options_are_range_checked(capsys):
    from helpers import run_cli

    for option, value in (("--save-every", "0"), ("--dist-timeout", "0"),
                          ("--dist-timeout", "nan"), ("--dist-timeout", "inf")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            run_cli(capsys, "classify", "train", "data", option, value)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert option in err and "Traceback" not in err


# ------------------------------------------------------------------ the CLI under torchrun


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")  # capsys has no fileno
def test_cli_under_torchrun_records_errors_and_prints_on_rank_0_only(tmp_path, capsys, monkeypatch):
    import json

    from helpers import run_cli

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "1")
    rc, out, err = run_cli(capsys, "classify", "train", tmp_path / "missing", *CPU)
    assert rc == 2 and out == "" and err.startswith("drnet: error: ")
    recorded = json.loads(error_file.read_text())["message"]["message"]
    assert str(tmp_path / "missing") in recorded  # torchrun's summary shows this rank's error
    from drnet.cli import _stdout_on_rank_0

    with _stdout_on_rank_0():  # what main() runs a command in
        print("summary")
    assert capsys.readouterr().out == ""  # rank 1: nothing on stdout
    monkeypatch.setenv("RANK", "0")
    with _stdout_on_rank_0():
        print("summary")
    assert capsys.readouterr().out == "summary\n"


def test_cli_lost_contact_is_one_line_and_not_recorded_as_the_cause(tmp_path, capsys, monkeypatch):
    """A process that lost the others (their failure caused it) exits 1 with one line, late and
    without an error file, so torchrun names the process that failed first."""
    import argparse

    from torch.distributed import DistBackendError

    import drnet.cli as cli

    def collateral(args):
        raise DistBackendError("Connection closed by peer [127.0.0.1]:1234")

    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    monkeypatch.setattr(cli, "COLLATERAL_DELAY_S", 0.2)
    args = argparse.Namespace(func=collateral, debug=False, command="classify")
    started = time.monotonic()
    assert cli._run(cli.build_parser(), args) == 1
    assert time.monotonic() - started >= 0.2
    err = capsys.readouterr().err
    assert err == (
        "drnet: error: lost the other processes: Connection closed by peer [127.0.0.1]:1234\n"
    )
    assert not (tmp_path / "error.json").exists()


def test_library_refuses_bad_fault_options(tmp_path):
    from test_engine import ToyTask, config

    from drnet.errors import DrnetError

    with pytest.raises(DrnetError, match="--save-every must be at least 1, got 0"):
        train(ToyTask(), config(tmp_path, save_every=0))
    with pytest.raises(DrnetError, match="--dist-timeout must be a number of seconds > 0"):
        train(ToyTask(), config(tmp_path, dist_timeout=float("nan")))
    assert not (tmp_path / "run").exists()
