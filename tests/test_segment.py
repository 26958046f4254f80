"""Segmentation end to end on a tiny generated list-file dataset: train, eval, predict, resume."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from helpers import TINY_CHANNELS, make_list_dataset
from PIL import Image

import drnet
from drnet.cli import main
from drnet.data.palettes import get_palette
from drnet.engine import TrainConfig, TrainingInterrupted, load_checkpoint
from drnet.errors import CheckpointError, DrnetError
from drnet.models.loading import load_model
from drnet.tasks.segment import (
    SegmentationTask,
    SegmentOptions,
    run_evaluation,
    segmentation_loss,
    train_segmentation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_list_dataset(tmp_path_factory.mktemp("seg") / "data")


def options(data_dir, **kw) -> SegmentOptions:
    base = dict(
        data_dir=str(data_dir),
        model="drn_d_22",
        channels=TINY_CHANNELS,
        crop_size=32,
        random_scale=1.5,
        random_rotate=10,
    )
    base.update(kw)
    return SegmentOptions(**base)


def config(out, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(out),
        epochs=3,
        batch_size=4,
        lr=0.05,
        workers=0,
        device="cpu",
        progress=False,
        seed=1,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train_segmentation(options(data_dir), config(out, epochs=8))


def test_training_loss_falls_and_files(trained):
    losses = [row["train_loss"] for row in trained["history"]]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.8 * losses[0], losses
    assert trained["best_metric"] is not None and 0 <= trained["best_metric"] <= 1
    state = load_checkpoint(trained["checkpoint_last"])
    assert state["task"]["model"] == "drn_d_22" and state["task"]["num_classes"] == 3
    assert state["config"]["task"]["mean"] == [0.4, 0.3, 0.35]


def test_eval_json_matches_confusion_from_saved_predictions(trained, data_dir, tmp_path):
    result = run_evaluation(
        trained["checkpoint_last"],
        data_dir,
        "val",
        tmp_path / "eval",
        device="cpu",
        save_predictions=True,
        progress=False,
        print_table=False,
    )
    saved = json.load(open(tmp_path / "eval/metrics.json"))
    hist = np.zeros((3, 3), dtype=np.int64)
    for i in range(2):
        label = np.asarray(Image.open(data_dir / f"labels/val_{i}.png")).astype(np.int64)
        pred = np.asarray(Image.open(tmp_path / f"eval/predictions/labels/images/val_{i}.png"))
        keep = label != 255
        hist += np.bincount(3 * label[keep] + pred[keep], minlength=9).reshape(3, 3)
    assert saved["confusion_matrix"] == hist.tolist()
    with np.errstate(invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    assert saved["miou"] == pytest.approx(np.nanmean(iou))
    assert saved["pixel_accuracy"] == pytest.approx(np.trace(hist) / hist.sum())
    assert [c["iou"] for c in saved["per_class"]] == pytest.approx(list(iou))
    assert result["miou"] == saved["miou"] and saved["num_images"] == 2


def test_load_official_and_old_checkpoint_layouts(trained, tmp_path):
    model, card = load_model(trained["checkpoint_last"])
    assert card.task == "segmentation" and card.num_classes == 3
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        ref = model(x)["out"]
    bare = tmp_path / "drn_d_22_cityscapes_like.pth"
    torch.save(model.state_dict(), bare)  # official DRNSeg files are bare state dicts
    old = tmp_path / "old.pth.tar"
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "arch": "drn_d_22", "state_dict": sd, "best_prec1": 1.0}, old)
    for path in (bare, old):
        with pytest.raises(DrnetError, match="--model"):
            load_model(path)
        other, card = load_model(path, model="drn_d_22", channels=TINY_CHANNELS)
        assert card.num_classes == 3 and card.task == "segmentation"
        with torch.no_grad():
            assert torch.equal(other(x)["out"], ref)
    with pytest.raises(CheckpointError, match="3 classes but --num-classes is 5"):
        load_model(bare, model="drn_d_22", num_classes=5, channels=TINY_CHANNELS)
    with pytest.raises(CheckpointError):  # a bigger architecture does not fit
        load_model(bare, model="drn_d_22")
    with pytest.raises(CheckpointError, match="is a segmentation model, not a classification"):
        load_model(bare, model="drn_d_22", channels=TINY_CHANNELS, task="classification")


def test_train_starts_from_weights(trained, data_dir, tmp_path):
    task = SegmentationTask.from_options(options(data_dir, weights=trained["checkpoint_last"]))
    model = task.build_model()
    ref, _ = load_model(trained["checkpoint_last"])
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_all_ignored_batch_has_zero_loss():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss({"out": logits}, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    official = (logits.log_softmax(1), None)
    target = torch.randint(0, 3, (2, 4, 4))
    assert torch.allclose(
        segmentation_loss(official, target), segmentation_loss({"out": logits}, target)
    )


def test_resume_after_kill_equals_uninterrupted(data_dir, tmp_path):
    """Training is killed after the epoch-1 checkpoint (a crash inside epoch 2), resumed."""
    ref = train_segmentation(options(data_dir), config(tmp_path / "a"))

    class Crashing(SegmentationTask):
        calls = 0

        def loss(self, output, target):
            Crashing.calls += 1
            if Crashing.calls == 3:  # 2 iterations per epoch -> inside epoch 2
                raise SystemExit("killed")
            return super().loss(output, target)

    from drnet.engine import train

    with pytest.raises(SystemExit):
        train(Crashing.from_options(options(data_dir)), config(tmp_path / "b"))
    assert load_checkpoint(tmp_path / "b/checkpoint_last.pth")["epoch"] == 1
    out = train_segmentation(options(data_dir), config(tmp_path / "b", resume="auto"))
    a, b = load_checkpoint(ref["checkpoint_last"]), load_checkpoint(out["checkpoint_last"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("best_metric", "epoch"):
        assert a[k] == b[k]


def test_sigterm_mid_epoch_resume_equals_uninterrupted(data_dir, tmp_path):
    ref = train_segmentation(options(data_dir), config(tmp_path / "a", epochs=2))

    class Terminated(SegmentationTask):
        calls = 0

        def loss(self, output, target):
            Terminated.calls += 1
            if Terminated.calls == 3:  # epoch 2, first iteration
                os.kill(os.getpid(), signal.SIGTERM)
            return super().loss(output, target)

    from drnet.engine import train

    with pytest.raises(TrainingInterrupted, match="epoch 2 iteration 1"):
        train(Terminated.from_options(options(data_dir)), config(tmp_path / "b", epochs=2))
    out = train_segmentation(options(data_dir), config(tmp_path / "b", epochs=2, resume="auto"))
    a, b = load_checkpoint(ref["checkpoint_last"]), load_checkpoint(out["checkpoint_last"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_cli_train_eval_predict(data_dir, tmp_path, capsys):
    common = ["-d", str(data_dir), "--channels", ",".join(map(str, TINY_CHANNELS))]
    run = tmp_path / "run"
    rc = main(
        ["segment", "train", *common, "-s", "32", "--epochs", "1", "--batch-size", "4",
         "-j", "0", "--random-scale", "2", "--random-rotate", "10", "--step", "5",
         "--lr-mode", "step", "--wd", "1e-4", "-o", str(run), "--device", "cpu",
         "--no-progress"]
    )  # fmt: skip
    assert rc == 0 and (run / "checkpoint_best.pth").is_file()
    cfg = json.load(open(run / "config.json"))
    assert cfg["lr_mode"] == "step" and cfg["lr_step"] == 5
    assert cfg["task"]["training"]["random_scale"] == 2
    rc = main(
        ["segment", "eval", "-d", str(data_dir), "--weights", str(run), "--ms", "--flip",
         "--window", "24", "-o", str(tmp_path / "ev"), "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    assert "mIoU" in capsys.readouterr().out
    metrics = json.load(open(tmp_path / "ev/metrics.json"))
    assert metrics["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and metrics["flip"]
    pred = tmp_path / "pred"
    image = data_dir / "images/val_0.png"
    rc = main(
        ["segment", "predict", str(image), str(data_dir / "images"), "--weights", str(run),
         "-o", str(pred), "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    label = np.asarray(Image.open(pred / "labels/val_0.png"))
    colour = np.asarray(Image.open(pred / "color/val_0.png"))
    over = np.asarray(Image.open(pred / "overlay/val_0.png"))
    assert label.shape == (40, 40) and label.max() < 3
    assert np.array_equal(colour, get_palette(3)[label])
    assert over.shape == (40, 40, 3)
    assert (pred / "labels/train_7.png").is_file()  # from the folder
    rc = main(
        ["segment", "predict", "-d", str(data_dir), "--phase", "val", "--weights",
         str(run / "checkpoint_last.pth"), "-o", str(tmp_path / "p2"), "--save", "labels",
         "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0 and (tmp_path / "p2/labels/images/val_1.png").is_file()
    assert not (tmp_path / "p2/color").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = main(["segment", "train", "-d", str(tmp_path / "missing"), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_create_segmentation_model_available():
    assert "drn_d_22" in drnet.list_models()


def test_eval_fast_path_gives_the_eager_numbers(trained, data_dir, tmp_path):
    """The inference fast path (default) and the plain eager model (--no-fast) agree."""
    results = [
        run_evaluation(
            trained["checkpoint_last"],
            data_dir,
            "val",
            tmp_path / f"eval_{fast}",
            device="cpu",
            progress=False,
            print_table=False,
            fast=fast,
        )
        for fast in (True, False)
    ]
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    assert results[0]["miou"] == pytest.approx(results[1]["miou"])


class _MixedSizes(torch.utils.data.Dataset):
    """Five random images: three 32 x 32, then two 24 x 40 (labels 0..2, some ignored)."""

    num_classes = 3

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        sizes = [(32, 32)] * 3 + [(24, 40)] * 2
        self.items = [
            (torch.randn(3, h, w, generator=gen), torch.randint(0, 4, (h, w), generator=gen))
            for h, w in sizes
        ]
        for _, label in self.items:
            label[label == 3] = 255

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def name(self, i: int) -> str:
        return f"image_{i}"


def test_eval_batches_consecutive_images_of_one_size():
    """``batch_size`` groups consecutive images of one size; the numbers are the one-by-one
    numbers."""
    from drnet.tasks.segment import evaluate_segmentation

    torch.manual_seed(0)
    model = drnet.create_segmentation_model("drn_d_22", num_classes=3, channels=TINY_CHANNELS)
    batches = []
    model.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[0].shape[0]))
    dataset = _MixedSizes()
    one = evaluate_segmentation(model, dataset, fast=False, batch_size=1)
    assert batches == [1, 1, 1, 1, 1]
    batches.clear()
    grouped = evaluate_segmentation(model, dataset, fast=False, batch_size=2)
    assert batches == [2, 1, 2]  # never two sizes in one batch
    assert grouped["confusion_matrix"] == one["confusion_matrix"]
    assert grouped["miou"] == pytest.approx(one["miou"]) and grouped["num_images"] == 5


def test_cli_eval_batch_size(data_dir, tmp_path, capsys):
    from helpers import TINY_ARG, run_cli, save_tiny_model

    weights = tmp_path / "tiny.pth"
    save_tiny_model(weights, 3, segmentation=True)
    common = ["--weights", weights, "--model", "drn_d_22", "--channels", TINY_ARG,
              "--device", "cpu", "--no-progress", "-j", "0"]  # fmt: skip
    matrices = []
    for flag in ([], ["-b", "2"], ["--batch", "2"]):  # --batch: the hidden old spelling
        out = tmp_path / f"eval{len(matrices)}"
        rc, stdout, err = run_cli(capsys, "segment", "eval", data_dir, *common, *flag, "-o", out)
        assert rc == 0 and "mIoU" in stdout, err
        matrices.append(json.loads((out / "metrics.json").read_text())["confusion_matrix"])
    assert matrices[0] == matrices[1] == matrices[2]
