"""The Hugging Face Hub layout both ways: a folder, a prepared offline cache, timm's hf-hub:."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import drnet
from drnet.errors import CheckpointError
from drnet.models.loading import ModelCard, load_model

pytest.importorskip("safetensors")
pytest.importorskip("huggingface_hub")
hf_constants = pytest.importorskip("huggingface_hub.constants")

TINY = (4, 8, 16, 16, 32, 48, 48, 48)
NAMES = ["cat", "dog", "emu"]


@pytest.fixture
def run(tmp_path):
    """A classification run: checkpoint, model.json with its own preprocessing, log.csv."""
    torch.manual_seed(0)
    model = drnet.create_model("drn_d_22", num_classes=3, channels=TINY).eval()
    folder = tmp_path / "run"
    folder.mkdir()
    card = ModelCard(
        "drn_d_22",
        3,
        class_names=NAMES,
        channels=list(TINY),
        mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.25, 0.3],
        crop_size=64,
        resize_size=72,
    )
    state = {"model": model.state_dict(), "best_metric": 0.75, "best_epoch": 2, "epoch": 3}
    state["task"] = {"name": "classification", **card.to_dict()}  # as the trainer writes it
    torch.save(state, folder / "checkpoint_best.pth")
    card.save(folder)
    (folder / "log.csv").write_text("epoch,train_loss,val_top1\n1,1.2,0.5\n2,0.9,0.75\n3,0.8,0.7\n")
    return folder


def offline_cache(monkeypatch, tmp_path, folder, repo="someone/drn-tiny"):
    """huggingface_hub's cache holding ``folder`` as ``repo``'s main snapshot, offline."""
    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return repo


def same_outputs(a, b, size=(2, 3, 40, 36)):
    x = torch.randn(*size)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    ya, yb = (ya["out"], yb["out"]) if isinstance(ya, dict) else (ya, yb)
    assert torch.equal(ya, yb)


def test_export_hub_cli_round_trips_a_run(run, tmp_path, capsys):
    from helpers import one_error_line, run_cli

    rc, _, err = run_cli(capsys, "export", "hub", run)
    one_error_line(rc, err, "-o/--output-dir")
    out = tmp_path / "hub"
    rc, stdout, err = run_cli(capsys, "export", "hub", run, "-o", out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "drn_d_22" and config["num_classes"] == 3
    assert config["model_args"] == {"channels": list(TINY)}
    assert config["label_names"] == NAMES
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.4, 0.3]
    readme = (out / "README.md").read_text()
    assert "centre crop 64 px" in readme and "| best_top1 | 0.7500 |" in readme
    assert "| val_top1 | 0.7500 |" in readme and "cat, dog, emu" in readme
    original, card = load_model(run)
    for source in (out, out / "model.safetensors"):  # the folder, and the file beside its config
        loaded, loaded_card = load_model(source)
        assert loaded_card == card
        same_outputs(loaded, original)
    assert drnet.from_pretrained(out).pretrained_cfg["input_size"] == (3, 64, 64)


def test_save_pretrained_segmentation_and_offline_cache(monkeypatch, tmp_path):
    torch.manual_seed(0)
    seg = drnet.create_segmentation_model("drn_d_22", num_classes=4, channels=TINY).eval()
    folder = seg.save_pretrained(tmp_path / "seg")
    assert json.loads((folder / "config.json").read_text())["drnet"]["card"]["task"] == (
        "segmentation"
    )
    same_outputs(drnet.from_pretrained(folder), seg)
    repo = offline_cache(monkeypatch, tmp_path, folder)
    same_outputs(drnet.from_pretrained(repo), seg)  # owner/name
    same_outputs(load_model(f"hf-hub:{repo}")[0], seg)
    with pytest.raises(CheckpointError, match="hf-hub:someone/missing: not in the Hugging Face"):
        load_model("hf-hub:someone/missing")


def test_timm_hf_hub_route_reads_the_export(run, monkeypatch, tmp_path):
    timm = pytest.importorskip("timm")
    original, _ = load_model(run)
    folder = original.save_pretrained(tmp_path / "cls")
    repo = offline_cache(monkeypatch, tmp_path, folder)
    model = timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    same_outputs(model, original)
    config = timm.data.resolve_data_config(model=model)
    assert config["input_size"] == (3, 64, 64)
    assert config["mean"] == pytest.approx((0.5, 0.4, 0.3))
    assert model.pretrained_cfg["label_names"] == NAMES
    # a new head keeps the backbone
    head = timm.create_model(f"hf-hub:{repo}", pretrained=True, num_classes=5).eval()
    assert head(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    torch.testing.assert_close(head.layer8[0].weight, original.layer8[0].weight)
