"""The engine's recipe options: warm-up, label smoothing, EMA, optimizers, MixUp/CutMix, the
measured layout and syncing at the log interval; resume with all of them bit-identical."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import CPU, make_imagefolder, run_cli, run_torchrun
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from drnet.engine import Task, TrainConfig, load_checkpoint, train
from drnet.engine import layout as layout_module
from drnet.engine.ema import EmaAverage, create_ema
from drnet.engine.mixing import BatchMixer
from drnet.engine.optim import build_optimizer
from drnet.engine.schedule import LRFactor, build_scheduler
from drnet.errors import DrnetError
from drnet.models.loading import ModelCard
from drnet.tasks.classify import ClassificationTask
from drnet.tasks.segment import segmentation_loss

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ a conv toy task
class Blobs(Dataset):
    """3-class 8x8 images: a bright square in one of three places, plus noise per draw."""

    def __init__(self, n: int = 48) -> None:
        self.y = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = 0.3 * torch.randn(3, 8, 8)
        c = int(self.y[i])
        x[:, 2 * c : 2 * c + 3, 2 * c : 2 * c + 3] += 1.0
        return x, self.y[i]


class ConvTask(Task):
    name = "conv-toy"
    main_metric = "accuracy"

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
        )  # fmt: skip

    def train_dataset(self) -> Dataset:
        return Blobs()

    def val_dataset(self) -> Dataset:
        return Blobs(12)

    def loss(self, output, target, label_smoothing: float = 0.0):
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)

    def mixing_classes(self) -> int:
        return 3

    def evaluate(self, model, dataset, config, device):
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            x = torch.stack([dataset[i][0] for i in range(len(dataset))])
            x = x + 0.0 * torch.randn(x.shape, generator=g)
            pred = model(x).argmax(1)
        return {"accuracy": (pred == dataset.y).float().mean().item()}


RECIPE = dict(
    lr_warmup_epochs=1.5,
    label_smoothing=0.1,
    model_ema=True,
    model_ema_decay=0.9,
    mixup_alpha=0.4,
    cutmix_alpha=1.0,
    opt="adamw",
    lr=0.01,
    weight_decay=0.05,
    log_interval=3,
)


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"), epochs=3, batch_size=8, lr=0.05, workers=0,
        device="cpu", progress=False, seed=5, channels_last=False,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def state_of(path) -> dict:
    state = load_checkpoint(path)
    return {"model": state["model"], "ema": state.get("model_ema"), "opt": state["optimizer"]}


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


# ------------------------------------------------------------------------------------ warm-up
def test_linear_warmup_then_cosine_values():
    f = LRFactor("cosine", iters_per_epoch=10, epochs=2, warmup_iters=5, warmup_decay=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(2) == pytest.approx(0.1 + 0.9 * 2 / 5)
    assert f(4) == pytest.approx(0.1 + 0.9 * 4 / 5)
    assert f(5) == pytest.approx(1.0)  # the main schedule starts after the warm-up ...
    assert f(5 + 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 15)))  # ... over 15 its
    assert f(20) == pytest.approx(0.0, abs=1e-12)


def test_constant_warmup_then_poly_values():
    f = LRFactor("poly", 4, 3, warmup_iters=4, warmup_method="constant", warmup_decay=0.25)
    assert [f(i) for i in range(4)] == [0.25] * 4
    assert f(4) == 1.0
    assert f(8) == pytest.approx((1 - 4 / 8) ** 0.9)


def test_engine_warmup_in_epochs_sets_the_lr_per_iteration(tmp_path):
    seen = []

    class Record(ConvTask):
        def loss(self, output, target, label_smoothing: float = 0.0):
            return super().loss(output, target)

    task = Record()
    cfg = config(tmp_path, epochs=2, lr_warmup_epochs=0.5, lr_mode="cosine", lr=0.1)
    optimizer_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return optimizer_step(self, *a, **k)

    torch.optim.SGD.step = spy
    try:
        summary = train(task, cfg)
    finally:
        torch.optim.SGD.step = optimizer_step
    # 48 samples / 8 = 6 iterations per epoch; half an epoch = 3 warm-up iterations
    expected = [0.1 * LRFactor("cosine", 6, 2, warmup_iters=3)(i) for i in range(12)]
    assert seen == pytest.approx(expected)
    assert json.loads(open(summary["config_json"]).read())["lr_warmup_iters_resolved"] == 3


def test_scheduler_refuses_bad_warmup(tmp_path):
    sgd = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(DrnetError, match="--lr-warmup-method"):
        build_scheduler(sgd, "poly", 4, 2, warmup_iters=2, warmup_method="exp")
    with pytest.raises(DrnetError, match="--lr-warmup-epochs must be >= 0"):
        train(ConvTask(), config(tmp_path, lr_warmup_epochs=-1))


# ---------------------------------------------------------------------------- label smoothing
def test_label_smoothed_loss_matches_its_formula():
    torch.manual_seed(0)
    logits, target, eps = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2]), 0.2
    log_p = logits.log_softmax(1)
    nll = -log_p[torch.arange(5), target]
    expected = ((1 - eps) * nll - eps * log_p.mean(1)).mean()
    card = ModelCard(model="drn_d_22", num_classes=4)
    task = ClassificationTask(card, Blobs())
    assert task.loss(logits, target, label_smoothing=eps) == pytest.approx(float(expected))
    assert task.loss(logits, target) == pytest.approx(float(nll.mean()))


def test_label_smoothed_segmentation_loss_ignores_255():
    torch.manual_seed(1)
    logits, eps = torch.randn(1, 3, 2, 2), 0.1
    target = torch.tensor([[[0, 2], [255, 1]]])
    log_p = logits.log_softmax(1).permute(0, 2, 3, 1).reshape(-1, 3)
    keep = target.reshape(-1) != 255
    t = target.reshape(-1)[keep]
    lp = log_p[keep]
    expected = ((1 - eps) * -lp[torch.arange(len(t)), t] - eps * lp.mean(1)).mean()
    got = segmentation_loss({"out": logits}, target, label_smoothing=eps)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_label_smoothing_refused_for_a_task_whose_loss_cannot(tmp_path):
    class Plain(ConvTask):
        def loss(self, output, target):
            return F.cross_entropy(output, target)

    with pytest.raises(DrnetError, match="--label-smoothing.*conv-toy"):
        train(Plain(), config(tmp_path, label_smoothing=0.1))
    assert not (tmp_path / "run").exists()  # refused before anything is written


# ------------------------------------------------------------------------------------------ EMA
def test_one_ema_update_matches_its_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = create_ema(model, decay=0.9)
    model(torch.randn(2, 3, 8, 8))
    ema.update_parameters(model)  # the first update copies
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    model(torch.randn(2, 3, 8, 8))  # BN statistics move, num_batches_tracked counts
    ema.update_parameters(model)
    decay = min(0.9, (1 + 1) / (10 + 1))  # timm's warm-up after one update
    now = model.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, decay * before[k] + (1 - decay) * now[k])
        else:
            assert torch.equal(v, now[k])
    assert int(ema.n_averaged) == 2
    assert EmaAverage(0.999, warmup=False).decay_at(0) == 0.999
    assert EmaAverage(0.999).decay_at(100_000) == pytest.approx(0.999)
    assert EmaAverage(0.999).decay_at(90) == pytest.approx(91 / 100)


def test_ema_is_evaluated_saved_and_selectable_as_best(tmp_path):
    summary = train(ConvTask(), config(tmp_path, model_ema=True, model_ema_best=True))
    rows = summary["history"]
    assert all("val_ema_accuracy" in r and "val_accuracy" in r for r in rows)
    ema_ckpt = load_checkpoint(summary["checkpoint_ema"])
    last = load_checkpoint(summary["checkpoint_last"])
    assert ema_ckpt["ema"] is True
    for k, v in last["model_ema"].items():  # checkpoint_ema's model is the average
        if k != "n_averaged":
            assert torch.equal(ema_ckpt["model"][k.removeprefix("module.")], v)
    best = load_checkpoint(summary["checkpoint_best"])
    assert best.get("ema") is True  # --model-ema-best: the best is the EMA
    assert summary["best_metric"] == max(r["val_ema_accuracy"] for r in rows)


# ---------------------------------------------------------------------------------- optimizers
def test_adamw_decays_kernels_only_and_sgd_takes_nesterov():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    adamw = build_optimizer(model.parameters(), "adamw", 1e-3, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW)
    decays = {p.ndim: g["weight_decay"] for g in adamw.param_groups for p in g["params"]}
    assert decays == {4: 0.05, 1: 0.0}
    sgd = build_optimizer(model.parameters(), "sgd", 0.1, nesterov=True)
    assert sgd.param_groups[0]["nesterov"] is True
    with pytest.raises(DrnetError, match="--nesterov"):
        build_optimizer(model.parameters(), "adamw", 1e-3, nesterov=True)
    with pytest.raises(DrnetError, match="--opt 'lamb'"):
        build_optimizer(model.parameters(), "lamb", 1e-3)


# ------------------------------------------------------------------------------- MixUp/CutMix
def test_mixup_mixes_images_and_labels_with_one_lambda():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, soft = BatchMixer(3, mixup_alpha=0.4)(x, y, seed=1, epoch=0, iteration=3)
    assert mixed.shape == x.shape and soft.shape == (6, 3)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    lam = float(soft[0, 0])  # sample 0 (class 0) mixed with sample 5 (class 2)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))
    expected = lam * F.one_hot(y, 3) + (1 - lam) * F.one_hot(y.roll(1, 0), 3)
    torch.testing.assert_close(soft, expected.float())
    again, _ = BatchMixer(3, mixup_alpha=0.4)(x, y, seed=1, epoch=0, iteration=3)
    assert torch.equal(again, mixed)  # a pure function of (seed, epoch, iteration)


def test_cutmix_pastes_a_box_and_weighs_labels_by_its_area():
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    y = torch.tensor([0, 1, 2, 0])
    mixed, soft = BatchMixer(3, cutmix_alpha=1.0)(x, y, seed=2, epoch=1, iteration=0)
    assert mixed.shape == x.shape and soft.shape == (4, 3)
    for i in range(4):
        own = (mixed[i] == i).float().mean()
        other = (mixed[i] == (i - 1) % 4).float().mean()
        assert own + other == 1.0  # every pixel from itself or its partner
        label_own = soft[i, y[i]] if y[i] != y[(i - 1) % 4] else own
        assert float(label_own) == pytest.approx(float(own), abs=1e-6)


def test_mixing_is_refused_for_a_task_that_cannot_mix(tmp_path):
    class NoMix(ConvTask):
        def mixing_classes(self):
            return None

    with pytest.raises(DrnetError, match="--mixup-alpha/--cutmix-alpha.*classification only"):
        train(NoMix(), config(tmp_path, mixup_alpha=0.2))


# --------------------------------------------------------------------- resume: bit-identical
def test_resume_with_every_option_equals_uninterrupted(tmp_path):
    whole = train(ConvTask(), config(tmp_path / "a", **RECIPE))
    calls = {"n": 0}

    def stop_after_8() -> bool:
        calls["n"] += 1
        return calls["n"] >= 8  # mid-epoch 2, between two syncs

    cut = train(ConvTask(), config(tmp_path / "b", **RECIPE), should_stop=stop_after_8)
    assert cut["stopped_early"] and cut["partial_epoch"]["iterations"] == 2
    resumed = train(ConvTask(), config(tmp_path / "b", resume="auto", **RECIPE))
    assert_same(state_of(whole["checkpoint_last"]), state_of(resumed["checkpoint_last"]))
    assert_same(
        load_checkpoint(whole["checkpoint_ema"])["model"],
        load_checkpoint(resumed["checkpoint_ema"])["model"],
    )
    assert [r["train_loss"] for r in whole["history"]] == pytest.approx(  # log.csv: 6 digits
        [float(r["train_loss"]) for r in resumed["history"]], rel=1e-5
    )


TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    import torch
    from test_engine_recipes import ConvTask, RECIPE
    from drnet.engine import TrainConfig, train
    out, mode = sys.argv[1], sys.argv[2]
    calls = {"n": 0}
    def stop():  # asked at the syncs only (every 3 iterations under torchrun)
        calls["n"] += 1
        return calls["n"] >= 1
    cfg = TrainConfig(output_dir=out, epochs=3, batch_size=8, workers=0, device="cpu",
                      progress=False, seed=5, channels_last=False,
                      resume="auto" if mode == "resume" else None, **RECIPE)
    train(ConvTask(), cfg, should_stop=stop if mode == "cut" else None)
    """
)


@pytest.mark.slow
def test_resume_with_every_option_under_torchrun_equals_uninterrupted(tmp_path):
    script = tmp_path / "recipe_ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    tests_dir = os.path.dirname(__file__)
    run_torchrun(str(script), [str(tmp_path / "a"), "whole", tests_dir])
    run_torchrun(str(script), [str(tmp_path / "b"), "cut", tests_dir])
    cut = load_checkpoint(tmp_path / "b/checkpoint_last.pth")
    assert (cut["epoch"], cut["iteration"]) == (0, 3)  # stopped at the first sync (interval 3)
    run_torchrun(str(script), [str(tmp_path / "b"), "resume", tests_dir])
    assert_same(
        state_of(tmp_path / "a/checkpoint_last.pth"), state_of(tmp_path / "b/checkpoint_last.pth")
    )


# ------------------------------------------------------------------- syncs at the log interval
def test_host_syncs_only_at_the_log_interval(tmp_path, monkeypatch):
    from drnet.engine import trainer

    syncs = []
    real = trainer._sync

    def counting(run, pending, *args):
        syncs.append(len(pending.losses))
        return real(run, pending, *args)

    monkeypatch.setattr(trainer, "_sync", counting)
    train(ConvTask(), config(tmp_path, epochs=2, log_interval=4))
    # 6 iterations per epoch: a sync after 4, then at the epoch's end after 2 more
    assert syncs == [4, 2, 4, 2]


def test_nonfinite_loss_named_exactly_between_syncs(tmp_path):
    class Bad(ConvTask):
        calls = 0

        def loss(self, output, target, label_smoothing: float = 0.0):
            self.calls += 1
            loss = super().loss(output, target)
            return loss * float("nan") if self.calls == 9 else loss

    with pytest.raises(DrnetError, match="epoch 2 batch 3"):
        train(Bad(), config(tmp_path, log_interval=5))


# ---------------------------------------------------------------------------- measured layout
def test_layout_choice_follows_the_measurement_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DRNET_CACHE_DIR", str(tmp_path / "cache"))
    model = ConvTask().build_model()
    x = torch.randn(4, 3, 8, 8)
    timings = {False: 1.0, True: 0.5}
    monkeypatch.setattr(layout_module, "measure_layouts", lambda *a, **k: dict(timings))
    step = lambda m, inp: m(inp).sum()  # noqa: E731
    chosen, record = layout_module.choose_channels_last(model, step, x, torch.device("cpu"))
    assert chosen is True and record["cached"] is False
    timings.update({False: 0.1, True: 5.0})  # the cache answers: no new measurement
    chosen, record = layout_module.choose_channels_last(model, step, x, torch.device("cpu"))
    assert chosen is True and record["cached"] is True
    other = torch.randn(4, 3, 16, 16)  # another input size is another key
    chosen, record = layout_module.choose_channels_last(model, step, other, torch.device("cpu"))
    assert chosen is False and record["cached"] is False
    timings.update({False: 1.0, True: 0.99})  # within the margin: NCHW stays
    chosen, _ = layout_module.choose_channels_last(
        model, step, torch.randn(2, 3, 8, 8), torch.device("cpu")
    )
    assert chosen is False


def test_layouts_are_timed_interleaved_on_copies():
    model = ConvTask().build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def step(m, x):
        calls.append(x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1)
        return m(x).sum()

    timed = layout_module.measure_layouts(
        model, step, torch.randn(4, 3, 8, 8), torch.device("cpu"), steps=2
    )
    assert set(timed) == {False, True} and all(t > 0 for t in timed.values())
    assert calls == [False, True] * 3  # one untimed step each, then alternating
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_auto_layout_is_recorded_and_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("DRNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(layout_module, "measure_layouts", lambda *a, **k: {False: 1.0, True: 0.5})
    summary = train(ConvTask(), config(tmp_path, epochs=1, channels_last="auto"))
    resolved = json.loads(open(summary["config_json"]).read())
    assert resolved["channels_last"] is True and resolved["layout"]["measured"] is True


# ---------------------------------------------------------------------- the CLI and the card
def test_cli_records_the_recipe_in_config_and_model_card(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "data", n_train=6, classes=("a", "b", "c"), size=(24, 24))
    out = tmp_path / "run"
    rc, _, err = run_cli(
        capsys, "classify", "train", data, "--model", "drn_d_22", "--channels",
        "4,4,8,8,8,8,8,8", "--crop-size", "16", "--epochs", "2", "-b", "6", "-j", "0",
        "-o", out, *CPU, "--lr-warmup-epochs", "1", "--label-smoothing", "0.1", "--model-ema",
        "--model-ema-decay", "0.9", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--opt",
        "adamw", "--lr", "0.001", "--auto-augment", "ta_wide", "--log-interval", "2",
    )  # fmt: skip
    assert rc == 0, err
    resolved = json.loads((out / "config.json").read_text())
    for key, value in {
        "lr_warmup_epochs": 1.0, "label_smoothing": 0.1, "model_ema": True, "opt": "adamw",
        "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "log_interval": 2,
    }.items():  # fmt: skip
        assert resolved[key] == value, key
    assert resolved["task"]["augmentation"]["auto_augment"] == "ta_wide"
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["label_smoothing"] == 0.1
    assert card["training"]["model_ema"] is True and card["training"]["opt"] == "adamw"
    assert (out / "checkpoint_ema.pth").is_file()
    assert "val_ema_top1" in (out / "log.csv").read_text().splitlines()[0]
    ema_weights = out / "checkpoint_ema.pth"
    rc, _, err = run_cli(
        capsys, "classify", "eval", data / "val", "--weights", ema_weights, "-o", tmp_path / "e",
        *CPU,
    )  # fmt: skip
    assert rc == 0, err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--lr-warmup-decay", "0"], "--lr-warmup-decay"),
        (["--opt", "lamb"], "--opt"),
        (["--mixup-alpha", "-1"], "--mixup-alpha"),
        (["--auto-augment", "magic"], "--auto-augment"),
    ],
)
def test_cli_refuses_bad_recipe_values(tmp_path, capsys, flags, message):
    from helpers import usage_error_line

    argv = ["classify", "train", str(tmp_path), *flags]
    assert message in usage_error_line(argv, capsys)


def test_demo_training_benchmark_runs_and_prints_its_ratios(capsys, monkeypatch):
    """benchmarks/demo_training.py (the issue's throughput ratio) still runs on today's engine."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_training.py"
    spec = importlib.util.spec_from_file_location("demo_training_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        assert module.main(["--threads", "1", "--rounds", "1", "--steps", "1", "-b", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["before", "engine", "demo"]
    assert rows[0].rstrip().endswith("1.00x |")
