"""The shared training engine on a toy task: loss falls, files, resume == uninterrupted."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from drnet.engine import Task, TrainConfig, TrainingInterrupted, load_checkpoint, train
from drnet.engine.checkpoint import save_checkpoint
from drnet.engine.data import SeededDataset, ShardedSampler
from drnet.engine.schedule import LRFactor
from drnet.errors import CheckpointError, DrnetError

pytestmark = pytest.mark.usefixtures("one_thread")


class NoisyPoints(Dataset):
    """Two Gaussian blobs; each item gets fresh random noise (an 'augmentation')."""

    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(123)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 8, generator=g) + 2.0 * self.y[:, None].float()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i] + 0.3 * torch.randn(8), self.y[i]


class ToyTask(Task):
    name = "toy"
    main_metric = "accuracy"

    def __init__(self, hook=None) -> None:
        self.hook = hook  # called with the number of loss() calls so far
        self.calls = 0

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))

    def train_dataset(self) -> Dataset:
        return NoisyPoints()

    def val_dataset(self) -> Dataset:
        return NoisyPoints(16)

    def loss(self, output, target):
        self.calls += 1
        if self.hook:
            self.hook(self.calls)
        return nn.functional.cross_entropy(output, target)

    def evaluate(self, model, dataset, config, device):
        with torch.no_grad():
            x = torch.stack([dataset[i][0] for i in range(len(dataset))])
            pred = model(x).argmax(1)
        return {"accuracy": (pred == dataset.y).float().mean().item()}


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"),
        epochs=3,
        batch_size=8,
        lr=0.05,
        workers=0,
        device="cpu",
        progress=False,
        seed=7,
    )
    base.update(kw)
    return TrainConfig(**base)


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_writes_files_and_loss_falls(tmp_path):
    summary = train(ToyTask(), config(tmp_path, epochs=4))
    run = tmp_path / "run"
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert {"lr", "time_s", "img_per_s", "val_accuracy"} <= rows[0].keys()
    cfg = json.load(open(run / "config.json"))
    assert cfg["lr"] == 0.05 and cfg["world_size"] == 1 and cfg["iters_per_epoch"] == 6
    state = load_checkpoint(run / "checkpoint_last.pth")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "iteration", "config", "rng"} <= (
        state.keys()
    )
    assert state["epoch"] == 4 and state["iteration"] == 0
    assert summary["best_metric"] == state["best_metric"]
    assert summary["checkpoint_best"] == str(run / "checkpoint_best.pth")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    ref = train(ToyTask(), config(tmp_path / "a"))

    def crash_in_epoch_3(calls):  # 6 iterations per epoch
        if calls == 14:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(ToyTask(crash_in_epoch_3), config(tmp_path / "b"))
    assert load_checkpoint(tmp_path / "b/run/checkpoint_last.pth")["epoch"] == 2
    out = train(ToyTask(), config(tmp_path / "b", resume="auto"))
    assert_same(weights(ref["checkpoint_last"]), weights(out["checkpoint_last"]))
    rows = list(csv.DictReader(open(tmp_path / "b/run/log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    ref = train(ToyTask(), config(tmp_path / "a"))

    def sigterm(calls):
        if calls == 9:  # epoch 2, iteration 3
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at epoch 2 iteration 3"):
        train(ToyTask(sigterm), config(tmp_path / "b"))
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    state = load_checkpoint(tmp_path / "b/run/checkpoint_last.pth")
    assert (state["epoch"], state["iteration"]) == (1, 3)
    out = train(ToyTask(), config(tmp_path / "b", resume="auto"))
    assert_same(weights(ref["checkpoint_last"]), weights(out["checkpoint_last"]))


def test_nonfinite_loss_stops_with_error(tmp_path):
    class Bad(ToyTask):
        def loss(self, output, target):
            loss = super().loss(output, target)
            return loss * float("nan") if self.calls == 8 else loss

    with pytest.raises(DrnetError, match="epoch 2 batch 2"):
        train(Bad(), config(tmp_path))
    assert load_checkpoint(tmp_path / "run/checkpoint_last.pth")["epoch"] == 1


@pytest.mark.slow
def test_worker_count_does_not_change_result(tmp_path):
    a = train(ToyTask(), config(tmp_path / "a", epochs=1, workers=0))
    b = train(ToyTask(), config(tmp_path / "b", epochs=1, workers=2))
    assert_same(weights(a["checkpoint_last"]), weights(b["checkpoint_last"]))


def test_sampler_shards_cover_epoch_and_skip():
    shards = [ShardedSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    got = [i for s in shards for i in s]
    assert len(got) == 12 and set(got) == set(range(10))
    s = ShardedSampler(10, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(3)
    assert list(s) != full


def test_seeded_dataset_is_deterministic_and_keeps_global_rng():
    ds = SeededDataset(NoisyPoints(), seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[5][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(ds[5][0], a)
    ds.epoch = 1
    assert not torch.equal(ds[5][0], a)


def test_lr_schedules():
    poly = LRFactor("poly", iters_per_epoch=10, epochs=2)
    assert poly(0) == 1.0 and poly(20) == 0.0 and abs(poly(10) - 0.5**0.9) < 1e-12
    step = LRFactor("step", iters_per_epoch=10, epochs=100, step=30)
    assert step(299) == 1.0 and abs(step(300) - 0.1) < 1e-12
    cos = LRFactor("cosine", iters_per_epoch=10, epochs=2)
    assert abs(cos(10) - 0.5) < 1e-12


def test_bad_resume_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        train(ToyTask(), config(tmp_path, resume=str(bad)))
    save_checkpoint({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a drnet training checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_resume_with_more_epochs_follows_the_new_schedule(tmp_path):
    train(ToyTask(), config(tmp_path, epochs=2))
    train(ToyTask(), config(tmp_path, epochs=4, resume="auto"))
    rows = list(csv.DictReader(open(tmp_path / "run/log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    # 6 iterations per epoch: epoch 3 starts at iteration 12 of 24
    assert float(rows[2]["lr"]) == pytest.approx(0.05 * 0.5**0.9, rel=1e-5)


class ImageTask(ToyTask):
    """4x4 images through a conv net; ``narrow`` puts a 1x1 stride-2 conv on 8 channels."""

    def __init__(self, narrow: bool) -> None:
        super().__init__()
        self.narrow = narrow

    def build_model(self) -> nn.Module:
        width = 8 if self.narrow else 16
        return nn.Sequential(
            nn.Conv2d(2, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 4, 1, stride=2),
            nn.Flatten(), nn.Linear(16, 2),
        )  # fmt: skip

    def loss(self, output, target):
        return nn.functional.cross_entropy(output, target)

    def train_dataset(self) -> Dataset:
        return _Images()

    def val_dataset(self) -> Dataset | None:
        return None


class _Images(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randn(2, 4, 4, generator=g), i % 2


@pytest.mark.parametrize("narrow", [True, False])
def test_channels_last_is_refused_where_torch_cpu_backward_corrupts_memory(
    tmp_path, caplog, narrow
):
    """The guard the demo used to apply by itself is the engine's: a 1x1 stride-2 conv on fewer
    than 16 channels trains in NCHW (with a note) instead of crashing the process."""
    import json

    from drnet.engine.trainer import channels_last_is_safe

    assert channels_last_is_safe(ImageTask(narrow).build_model()) is not narrow
    with caplog.at_level("WARNING", logger="drnet"):
        train(ImageTask(narrow), config(tmp_path, epochs=1, channels_last=True))
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["channels_last"] is (not narrow)
    assert ("--channels-last ignored" in caplog.text) is narrow
