"""Checkpoint files in the official layouts load through the public API; bad ones are refused."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import warnings

import pytest
import torch
from helpers import TINY_CHANNELS

import drnet
from drnet.errors import CheckpointError, DrnetError
from drnet.models import registry
from drnet.models.loading import load_state_dict_file


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN statistics and weights, so a wrong load cannot go unnoticed."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5
                    if "var" in name
                    else torch.randn_like(tensor) * 0.1
                )
    return model.eval()


def official_state_dict(model: torch.nn.Module) -> dict:
    """As saved in 2017: no ``num_batches_tracked`` buffers."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_outputs(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


@pytest.fixture
def source():
    return randomised(drnet.create_model("drn_d_22", channels=TINY_CHANNELS, num_classes=10))


def test_bare_state_dict_without_num_batches_tracked(tmp_path, source):
    path = tmp_path / "bare.pth"
    torch.save(official_state_dict(source), path)
    model = drnet.create_model(
        "drn_d_22", channels=TINY_CHANNELS, num_classes=10, checkpoint_path=path
    )
    same_outputs(source, model.eval(), torch.randn(2, 3, 40, 40))


def test_legacy_training_checkpoint_with_module_prefix(tmp_path, source):
    path = tmp_path / "checkpoint_latest.pth.tar"
    wrapped = {f"module.{k}": v for k, v in official_state_dict(source).items()}
    torch.save({"epoch": 90, "arch": "drn_d_22", "state_dict": wrapped, "best_prec1": 71.2}, path)
    model = drnet.create_model(
        "drn_d_22", channels=TINY_CHANNELS, num_classes=10, checkpoint_path=path
    )
    same_outputs(source, model.eval(), torch.randn(1, 3, 32, 48))


def test_drnet_training_checkpoint(tmp_path, source):
    path = tmp_path / "checkpoint_last.pth"
    torch.save({"model": source.state_dict(), "epoch": 3, "optimizer": {"state": {}}}, path)
    model = drnet.create_model(
        "drn_d_22", channels=TINY_CHANNELS, num_classes=10, checkpoint_path=path
    )
    same_outputs(source, model.eval(), torch.randn(1, 3, 24, 24))


def test_file_url_with_correct_hash_prefix(tmp_path, source):
    staging = tmp_path / "staging.pth"
    torch.save(official_state_dict(source), staging)
    path = tmp_path / f"drn_d_22-{sha256(staging)[:8]}.pth"
    staging.rename(path)
    model = drnet.create_model(
        "drn_d_22", channels=TINY_CHANNELS, num_classes=10, checkpoint_path=path.as_uri()
    )
    same_outputs(source, model.eval(), torch.randn(1, 3, 32, 32))


def test_file_url_with_wrong_hash_prefix_is_refused(tmp_path, source):
    path = tmp_path / "drn_d_22-0123abcd.pth"
    torch.save(official_state_dict(source), path)
    with pytest.raises(CheckpointError, match=r"hash mismatch .*0123abcd"):
        drnet.create_model(
            "drn_d_22", channels=TINY_CHANNELS, num_classes=10, checkpoint_path=path.as_uri()
        )
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load_state_dict_file(tmp_path / "drn_d_22-0123abcd.pth", hash_prefix="ffff")


def test_mismatching_keys_are_listed(tmp_path, source):
    state = official_state_dict(source)
    state["layer9.0.weight"] = torch.zeros(1)
    del state["layer3.0.conv1.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        drnet.create_model("drn_d_22", channels=TINY_CHANNELS, num_classes=10, checkpoint_path=path)
    message = str(info.value)
    assert "missing keys (1): layer3.0.conv1.weight" in message
    assert "unexpected keys (1): layer9.0.weight" in message
    assert str(path) in message


def test_wrong_architecture_reports_shapes(tmp_path, source):
    path = tmp_path / "d22.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        drnet.create_model("drn_d_22", num_classes=10, checkpoint_path=path)


def test_other_num_classes_keeps_backbone_and_warns(tmp_path, source):
    path = tmp_path / "ten.pth"
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match="10 classes, model has 3"):
        model = drnet.create_model(
            "drn_d_22", channels=TINY_CHANNELS, num_classes=3, checkpoint_path=path
        )
    torch.testing.assert_close(model.layer5[0].conv1.weight, source.layer5[0].conv1.weight)
    assert model.fc.weight.shape[0] == 3


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_state_dict_file(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_state_dict_file(raw)
    assert not marker.exists()


def test_truncated_and_missing_files(tmp_path, source):
    path = tmp_path / "whole.pth"
    torch.save(source.state_dict(), path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict_file(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "absent.pth")


@pytest.fixture
def local_registry(monkeypatch, tmp_path, source):
    """A weights entry whose file the test made, as if published."""
    path = tmp_path / "weights" / "drn_d_22-tiny.pth"
    path.parent.mkdir()
    torch.save(official_state_dict(source), path)
    entry = dataclasses.replace(
        registry.WEIGHTS[("drn_d_22", "imagenet")],
        file_name=path.name,
        url="http://invalid.invalid/" + path.name,
        hash_prefix=sha256(path)[:10],
        num_classes=10,
    )
    monkeypatch.setitem(registry.WEIGHTS, ("drn_d_22", "imagenet"), entry)
    monkeypatch.setattr(
        registry, "_spec_for", lambda *a: registry.SPECS["drn_d_22"].with_channels(TINY_CHANNELS)
    )
    monkeypatch.delenv("DRNET_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("DRNET_WEIGHTS_MIRROR", raising=False)
    return path


def test_pretrained_from_local_directory(monkeypatch, local_registry, source):
    monkeypatch.setenv("DRNET_WEIGHTS_DIR", str(local_registry.parent))
    model = drnet.create_model("drn_d_22", pretrained=True, num_classes=10)
    same_outputs(source, model.eval(), torch.randn(1, 3, 32, 32))
    assert model.pretrained_cfg["tag"] == "imagenet"


def test_pretrained_from_mirror_url_argument(local_registry, source, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = drnet.create_model(
        "drn_d_22", pretrained=True, num_classes=10, weights_mirror=local_registry.parent.as_uri()
    )
    same_outputs(source, model.eval(), torch.randn(1, 3, 32, 32))


def test_pretrained_with_corrupted_local_file_is_refused(monkeypatch, local_registry):
    local_registry.write_bytes(local_registry.read_bytes()[:-1] + b"x")
    monkeypatch.setenv("DRNET_WEIGHTS_DIR", str(local_registry.parent))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        drnet.create_model("drn_d_22", pretrained=True, num_classes=10)


def test_pretrained_new_classes_reinitialise_classifier(monkeypatch, local_registry, source):
    monkeypatch.setenv("DRNET_WEIGHTS_DIR", str(local_registry.parent))
    with pytest.warns(UserWarning, match="freshly initialised"):
        model = drnet.create_model("drn_d_22", pretrained=True, num_classes=4)
    torch.testing.assert_close(model.layer8[0].weight, source.layer8[0].weight)


def test_pretrained_missing_from_directory_says_where(monkeypatch, local_registry, tmp_path):
    monkeypatch.setenv("DRNET_WEIGHTS_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(CheckpointError, match="not found in weights directory"):
        drnet.create_model("drn_d_22", pretrained=True, num_classes=10)


def test_no_weights_for_variant():
    with pytest.raises(DrnetError, match="no 'imagenet' weights for drn_d_24"):
        drnet.create_model("drn_d_24", pretrained=True)


def test_weights_metadata_and_transforms():
    weights = registry.get_weights("drn_d_22")
    assert weights.hash_prefix == "4bd2f8ea" and weights.num_classes == 1000
    assert weights.url.endswith("drn_d_22-4bd2f8ea.pth")
    assert registry.get_weights("drn_a_50").file_name == "resnet50-19c8e357.pth"
    from PIL import Image

    image = Image.new("RGB", (320, 300), (124, 116, 104))
    tensor = weights.transforms()(image)
    assert tensor.shape == (3, 224, 224)
    assert tensor.abs().max() < 0.05  # ImageNet mean colour normalises to ~0
    seg = registry.get_weights("drn_d_22", "cityscapes")
    assert seg.num_classes == 19 and seg.mean[0] == pytest.approx(0.290101)


# -- segmentation checkpoints ---------------------------------------------------------------------


def test_official_segmentation_layout_loads_strictly(tmp_path):
    source = randomised(drnet.create_segmentation_model("drn_d_22", 19, channels=TINY_CHANNELS))
    path = tmp_path / "drn_d_22_cityscapes.pth"
    torch.save(official_state_dict(source), path)
    model = drnet.create_segmentation_model(
        "drn_d_22", 19, channels=TINY_CHANNELS, checkpoint_path=path
    )
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(source(x)["out"], model.eval()(x)["out"])


def test_segmentation_from_classification_checkpoint_initialises_backbone(tmp_path, source):
    path = tmp_path / "cls.pth"
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match="classification checkpoint"):
        model = drnet.create_segmentation_model(
            "drn_d_22", 5, channels=TINY_CHANNELS, checkpoint_path=path
        )
    torch.testing.assert_close(model.base[5][0].conv1.weight, source.layer5[0].conv1.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = drnet.create_segmentation_model(
            "drn_d_22", 5, channels=TINY_CHANNELS, backbone_checkpoint=path
        )
    torch.testing.assert_close(backbone.base[8][0].weight, source.layer8[0].weight)


def test_segmentation_checkpoint_into_classifier_gets_a_hint(tmp_path):
    seg = drnet.create_segmentation_model("drn_d_22", 5, channels=TINY_CHANNELS)
    path = tmp_path / "seg.pth"
    torch.save(seg.state_dict(), path)
    with pytest.raises(CheckpointError, match="create_segmentation_model"):
        drnet.create_model("drn_d_22", channels=TINY_CHANNELS, checkpoint_path=path)


def test_torch_hub_local(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(
        str(repo), "drn_d_22", source="local", channels=TINY_CHANNELS, num_classes=3
    )
    assert isinstance(model, drnet.models.DRN) and model.num_classes == 3
    seg = torch.hub.load(
        str(repo),
        "drn_seg",
        source="local",
        backbone="drn_c_26",
        num_classes=4,
        channels=TINY_CHANNELS,
    )
    assert seg.num_classes == 4
