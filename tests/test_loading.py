"""drnet.models.loading: the model card's layouts, published names, and files that are not
checkpoints (the rest is exercised through every command's tests)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import drnet
from drnet.errors import CheckpointError, DrnetError
from drnet.models.loading import ModelCard, load_model, logits_of, read_run

TINY = (4, 8, 16, 16, 32, 32, 32, 32)


def test_cards_written_before_the_shared_card_still_read():
    old_cls = {"name": "classification", "pretrained": False, "model": "drn_d_22",
               "num_classes": 2, "classes": ["x", "y"], "crop_size": 64, "resize_size": 64}
    old_seg = {"name": "segment", "arch": "drn_d_22", "num_classes": 3, "crop_size": 896,
               "class_names": ["a", "b", "c"], "data_dir": "somewhere"}  # fmt: skip
    cls = ModelCard.from_dict(old_cls)
    assert (cls.task, cls.class_names, cls.crop_size) == ("classification", ["x", "y"], 64)
    seg = ModelCard.from_dict(old_seg)
    assert (seg.task, seg.model, seg.num_classes) == ("segmentation", "drn_d_22", 3)
    assert seg.crop_size is None and seg.resize_size is None  # a training crop is no eval size
    assert ModelCard.from_dict(seg.to_dict()) == seg
    with pytest.raises(DrnetError, match="unknown task"):
        ModelCard(model="drn_d_22", num_classes=2, task="detection")


def test_eval_size_override_keeps_the_card():
    card = ModelCard("drn_d_22", 3, crop_size=64, resize_size=64)
    wider = card.with_eval_size(crop_size=224)
    assert (wider.crop_size, wider.resize_size) == (224, 256) and card.crop_size == 64
    assert card.with_eval_size(resize_size=80).resize_size == 80


def test_text_file_is_not_called_a_code_running_pickle(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        load_model(text, model="drn_d_22")


def test_the_tensors_decide_the_task_and_the_card_must_agree(tmp_path):
    model = drnet.create_model("drn_d_22", num_classes=3, channels=TINY)
    path = tmp_path / "cls.pth"
    torch.save(model.state_dict(), path)
    run = read_run(path, model="drn_d_22", channels=TINY)
    assert run.card.task == "classification" and run.card.num_classes == 3
    with pytest.raises(CheckpointError, match="not a segmentation one"):
        load_model(path, model="drn_d_22", channels=TINY, task="segmentation")
    with pytest.raises(CheckpointError, match="holds a drn_d_22, not a drn_c_26"):
        ModelCard("drn_d_22", 3).save(tmp_path)
        load_model(path, model="drn_c_26")
    with pytest.raises(DrnetError, match="not both"):
        load_model(path, model="drn_d_22", pretrained=True)


def test_published_names_are_looked_up_offline(tmp_path, monkeypatch):
    """``drn_d_22`` and ``NAME.TAG`` mean the registered weights, read from the weights folder."""
    monkeypatch.setenv("DRNET_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("DRNET_WEIGHTS_MIRROR", raising=False)
    with pytest.raises(CheckpointError, match="drn_d_22_cityscapes.pth not found"):
        load_model("drn_d_22.cityscapes")
    with pytest.raises(CheckpointError, match="drn_d_22-4bd2f8ea.pth not found"):
        load_model("drn_d_22")


def test_logits_of_every_output_convention():
    logits = torch.randn(2, 3, 4, 4)
    assert logits_of({"out": logits}) is logits
    assert logits_of((logits.log_softmax(1), None)).argmax(1).equal(logits.argmax(1))
    assert logits_of(logits) is logits


def test_commands_refuse_a_checkpoint_of_the_other_task(tmp_path, capsys):
    """`segment predict`/`segment eval` with a classifier (once predicted with an untrained head,
    or blamed the labels) and `classify eval` with a segmenter: one line naming the file."""
    from helpers import TINY_ARG, make_list_dataset, run_cli, save_tiny_model

    data = make_list_dataset(tmp_path / "data")
    classifier, segmenter = tmp_path / "cls.pth", tmp_path / "seg.pth"
    save_tiny_model(classifier, 3)
    save_tiny_model(segmenter, 3, segmentation=True)
    common = ["--model", "drn_d_22", "--channels", TINY_ARG, "--no-progress"]
    for argv in (
        ["segment", "predict", data / "images", "--weights", classifier, *common],
        ["segment", "eval", data, "--weights", classifier, *common],
    ):
        rc, _, err = run_cli(capsys, *argv, "-o", tmp_path / "out")
        assert rc == 2 and "Traceback" not in err
        assert f"{classifier} is a classification model, not a segmentation one" in err
    assert not (tmp_path / "out").exists()  # nothing written
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "imgs" / "a" / "0.png")
    rc, _, err = run_cli(
        capsys, "classify", "eval", tmp_path / "imgs", "--weights", segmenter, *common
    )
    assert rc == 2 and "is a segmentation model, not a classification one" in err
