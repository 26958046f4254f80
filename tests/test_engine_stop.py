"""The engine's stop condition (time_limit, should_stop), the summary's counters, the schedule
restoring itself through its state dict (old LambdaLR checkpoints too), and logging."""

from __future__ import annotations

import csv
import logging
import time

import pytest
import torch
from test_engine import ToyTask, assert_same, config, weights
from torch.optim.lr_scheduler import LambdaLR

from drnet.engine import load_checkpoint, train
from drnet.engine.checkpoint import save_checkpoint
from drnet.engine.schedule import IterationLR, LRFactor, build_scheduler
from drnet.engine.stop import StopCheck
from drnet.errors import DrnetError

pytestmark = pytest.mark.usefixtures("one_thread")

ITERS, BATCH = 6, 8  # ToyTask: 48 samples, batch 8 -> 6 iterations per epoch


def stop_after(n: int):
    """A should_stop() that says yes from its n-th call on; counts its calls."""

    def should_stop() -> bool:
        should_stop.calls += 1
        return should_stop.calls >= n

    should_stop.calls = 0
    return should_stop


def log_epochs(run) -> list[int]:
    return [int(r["epoch"]) for r in csv.DictReader(open(run / "log.csv"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run: its summary."""
    return train(ToyTask(), config(tmp_path_factory.mktemp("ref")))


def test_full_run_summary_counts_this_call(reference):
    assert reference["stopped_early"] is False and reference["stop_reason"] is None
    assert reference["partial_epoch"] is None
    assert reference["iterations"] == 3 * ITERS
    assert reference["samples_seen"] == 3 * ITERS * BATCH
    assert reference["train_seconds"] > 0
    assert reference["epochs"] == 3 and len(reference["history"]) == 3


def test_should_stop_stops_after_exactly_n_iterations(tmp_path):
    should_stop = stop_after(9)  # epoch 2, iteration 3
    summary = train(ToyTask(), config(tmp_path), should_stop=should_stop)
    assert should_stop.calls == 9 and summary["iterations"] == 9
    assert summary["stopped_early"] and summary["stop_reason"] == "should_stop"
    assert summary["samples_seen"] == 9 * BATCH
    partial = summary["partial_epoch"]
    assert partial.keys() == {"epoch", "iterations", "samples", "train_loss", "time_s"}
    assert (partial["epoch"], partial["iterations"], partial["samples"]) == (2, 3, 3 * BATCH)
    assert partial["train_loss"] > 0 and 0 < partial["time_s"] <= summary["train_seconds"]
    state = load_checkpoint(summary["checkpoint_last"])
    assert (state["epoch"], state["iteration"]) == (1, 3)
    assert [row["epoch"] for row in summary["history"]] == [1]  # the cut epoch is not logged
    assert log_epochs(tmp_path / "run") == [1]


def test_time_limit_stop_writes_checkpoint_and_resumes_bit_identically(tmp_path, reference):
    summary = train(ToyTask(), config(tmp_path, time_limit=0))  # due after the first iteration
    assert summary["stopped_early"] and summary["stop_reason"] == "time_limit"
    assert summary["iterations"] == 1 and summary["partial_epoch"]["epoch"] == 1
    assert {"best_metric", "history", "checkpoint_last", "log_csv"} <= summary.keys()
    state = load_checkpoint(tmp_path / "run/checkpoint_last.pth")
    assert (state["epoch"], state["iteration"]) == (0, 1)
    out = train(ToyTask(), config(tmp_path, resume="auto"))
    assert out["iterations"] == 3 * ITERS - 1 and not out["stopped_early"]
    assert_same(weights(reference["checkpoint_last"]), weights(out["checkpoint_last"]))
    assert log_epochs(tmp_path / "run") == [1, 2, 3]


def test_time_limit_counts_wall_time(tmp_path):
    slow = ToyTask(hook=lambda calls: time.sleep(0.1))  # 18 iterations: 1.8 s or more
    started = time.perf_counter()
    summary = train(slow, config(tmp_path, time_limit=1.0))
    assert time.perf_counter() - started >= 1.0
    assert summary["stop_reason"] == "time_limit" and summary["iterations"] < 3 * ITERS


def test_two_stops_then_resume_equal_uninterrupted(tmp_path, reference):
    first = train(ToyTask(), config(tmp_path), should_stop=stop_after(4))
    second = train(ToyTask(), config(tmp_path, resume="auto"), should_stop=stop_after(5))
    assert (first["iterations"], second["iterations"]) == (4, 5)
    assert second["partial_epoch"]["epoch"] == 2  # iterations 5..9 of the run
    last = train(ToyTask(), config(tmp_path, resume="auto"))
    assert_same(weights(reference["checkpoint_last"]), weights(last["checkpoint_last"]))
    assert last["history"][-1]["epoch"] == 3 and log_epochs(tmp_path / "run") == [1, 2, 3]


def test_stop_at_epoch_end_logs_that_epoch_then_stops(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="drnet")
    summary = train(ToyTask(), config(tmp_path), should_stop=stop_after(ITERS))
    assert summary["stopped_early"] and summary["iterations"] == ITERS
    assert summary["partial_epoch"] is None
    assert log_epochs(tmp_path / "run") == [1]
    assert "accuracy" in summary["last_metrics"] and summary["best_epoch"] == 1
    state = load_checkpoint(summary["checkpoint_last"])
    assert (state["epoch"], state["iteration"]) == (1, 0)
    assert "stopped as should_stop() asked after epoch 1" in caplog.text


def test_stop_on_the_last_iteration_is_a_normal_end(tmp_path):
    summary = train(ToyTask(), config(tmp_path), should_stop=stop_after(3 * ITERS))
    assert not summary["stopped_early"] and summary["stop_reason"] is None
    assert log_epochs(tmp_path / "run") == [1, 2, 3]


def test_messages_go_through_logging_not_stderr(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="drnet")
    train(ToyTask(), config(tmp_path, epochs=2))
    train(ToyTask(), config(tmp_path, epochs=3, resume="auto"))
    records = [r for r in caplog.records if r.name.startswith("drnet.engine")]
    messages = [r.getMessage() for r in records]
    assert any(m.startswith("epoch 1/2: train_loss") for m in messages)
    assert any(m.startswith("resumed from") and "epoch 2 iteration 0" in m for m in messages)
    assert all(r.levelno == logging.INFO for r in records)
    assert capsys.readouterr().err == ""


def test_bad_time_limit_is_refused(tmp_path):
    with pytest.raises(DrnetError, match="time_limit"):
        train(ToyTask(), config(tmp_path, time_limit=-1.0))


def test_stop_votes_and_precedence():
    class Flag:
        signum = None

    check = StopCheck(Flag(), time_limit=None, should_stop=stop_after(2))
    assert check.votes() == [0.0, 0.0, 0.0] and check.votes() == [0.0, 1.0, 0.0]
    assert StopCheck.agreed([0.0, 0.0, 0.0]) is None
    assert StopCheck.agreed([0.0, 1.0, 2.0]) == "should_stop"  # summed over 2 processes
    assert StopCheck.agreed([1.0, 1.0, 1.0]) == "signal"
    assert StopCheck.agreed([0.0, 0.0, 1.0]) == "time_limit"


# ------------------------------------------------------------------------------- schedule


def sgd(lr: float = 0.05) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def test_schedule_state_is_the_step_count_and_follows_the_current_config():
    old = build_scheduler(sgd(), "poly", iters_per_epoch=6, epochs=2)
    for _ in range(12):
        old.optimizer.step()
        old.step()
    assert old.state_dict() == {"last_epoch": 12} and old.get_last_lr() == [0.0]
    new = build_scheduler(sgd(0.1), "poly", iters_per_epoch=6, epochs=4)  # more epochs, new lr
    new.load_state_dict(old.state_dict())
    expected = 0.1 * LRFactor("poly", 6, 4)(12)
    assert new.optimizer.param_groups[0]["lr"] == expected == new.get_last_lr()[0]
    new.optimizer.step()
    new.step()
    assert new.optimizer.param_groups[0]["lr"] == 0.1 * LRFactor("poly", 6, 4)(13)


def test_resume_with_more_epochs_and_new_lr_continues_the_schedule(tmp_path):
    train(ToyTask(), config(tmp_path, epochs=2))
    out = train(
        ToyTask(), config(tmp_path, epochs=4, lr=0.1, resume="auto"), should_stop=stop_after(2)
    )
    state = load_checkpoint(out["checkpoint_last"])
    assert state["scheduler"] == {"last_epoch": 2 * ITERS + 2}
    factor = LRFactor("poly", ITERS, 4)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.1 * factor(2 * ITERS + 2)
    out = train(ToyTask(), config(tmp_path, epochs=4, lr=0.1, resume="auto"))
    lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "run/log.csv"))]
    assert lrs[3] == pytest.approx(0.1 * factor(3 * ITERS), rel=1e-5)


def lambda_lr_state(step: int, epochs: int = 3) -> dict:
    """The scheduler state the engine saved before IterationLR: a LambdaLR over LRFactor."""
    optimizer = sgd()
    scheduler = LambdaLR(optimizer, LRFactor("poly", ITERS, epochs))
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    return scheduler.state_dict()


def test_old_lambdalr_state_loads():
    state = lambda_lr_state(9)
    assert "lr_lambdas" in state and state["last_epoch"] == 9
    scheduler = build_scheduler(sgd(), "poly", ITERS, 3)
    assert isinstance(scheduler, IterationLR)
    scheduler.load_state_dict(state)
    assert scheduler.last_epoch == 9
    assert scheduler.optimizer.param_groups[0]["lr"] == 0.05 * LRFactor("poly", ITERS, 3)(9)


def test_checkpoint_with_old_lambdalr_state_resumes_bit_identically(tmp_path, reference):
    train(ToyTask(), config(tmp_path), should_stop=stop_after(9))
    path = tmp_path / "run/checkpoint_last.pth"
    state = load_checkpoint(path)
    state["scheduler"] = lambda_lr_state(9)  # as the engine wrote it before
    save_checkpoint(state, path)
    out = train(ToyTask(), config(tmp_path, resume="auto"))
    assert_same(weights(reference["checkpoint_last"]), weights(out["checkpoint_last"]))
