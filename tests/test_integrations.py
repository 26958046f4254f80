"""drnet inside the libraries its users already use: timm, segmentation_models_pytorch,
Lightning-style checkpoints, torch.export (docs/integrations.md). Tiny widths, small inputs."""

from __future__ import annotations

import pytest
import torch

import drnet
from drnet.models.loading import ModelCard, load_model

# Levels 5 and 6 change width, so output_stride 16/32 (which restores their strides) keeps
# every state_dict key (a strided level always has a projection shortcut).
TINY = (4, 8, 16, 16, 32, 48, 48, 48)


def tiny_run(tmp_path, num_classes=3, **card):
    """A classification run folder (checkpoint + model.json with its own preprocessing)."""
    torch.manual_seed(0)
    model = drnet.create_model("drn_d_22", num_classes=num_classes, channels=TINY).eval()
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict()}, run / "checkpoint_best.pth")
    fields = dict(crop_size=64, resize_size=72, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    ModelCard("drn_d_22", num_classes, channels=list(TINY), **{**fields, **card}).save(run)
    return run, model


# ------------------------------------------------------------------------------------- timm
def test_timm_protocol_without_timm():
    model = drnet.create_model("drn_d_22", num_classes=5, channels=TINY)
    cfg = model.pretrained_cfg
    assert isinstance(cfg, dict) and model.default_cfg is cfg
    assert cfg["architecture"] == "drn_d_22" and cfg["num_classes"] == 5
    assert (cfg["input_size"], cfg["first_conv"], cfg["classifier"]) == (
        (3, 224, 224),
        "layer0.0",
        "fc",
    )
    assert (model.in_chans, model.drop_rate, model.global_pool, model.num_features) == (
        3,
        0.0,
        "avg",
        48,
    )
    x = torch.randn(2, 3, 40, 40)
    model.eval()
    features = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(features), model(x))
    assert model.forward_head(features, pre_logits=True).shape == (2, 48)
    final, maps = model.forward_intermediates(x)
    torch.testing.assert_close(final, features)
    assert [m.shape[-1] for m in maps] == [20, 10, 5, 5, 5]
    only = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(only) == 2 and torch.equal(only[-1], maps[-1])
    assert model.get_classifier() is model.fc
    model.reset_classifier(0)
    assert model(x).shape == (2, 48) and isinstance(model.get_classifier(), torch.nn.Identity)
    model.reset_classifier(7, global_pool="max")
    assert model(x).shape == (2, 7) and model.pretrained_cfg["num_classes"] == 7


def test_output_stride_keeps_the_weights():
    base = drnet.create_model("drn_d_22", num_classes=3, channels=TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    for stride, side in ((16, 4), (32, 2)):
        coarse = drnet.create_model(
            "drn_d_22", num_classes=3, channels=TINY, output_stride=stride
        ).eval()
        coarse.load_state_dict(base.state_dict())  # strict: same keys and shapes
        assert coarse.output_stride == stride
        assert coarse.forward_features(x).shape[-1] == side
        assert coarse.feature_info.reduction() == [2, 4, 8, 16, 32][:3] + [
            min(16, stride),
            stride,
        ]
    with pytest.raises(ValueError, match="output_stride 4 is not available"):
        drnet.create_model("drn_d_22", channels=TINY, output_stride=4)


def test_timm_creates_drnet_models_and_keeps_its_own():
    timm = pytest.importorskip("timm")
    assert "drn_d_22" in timm.list_models("drn_*")
    assert "drn_d_22.imagenet" in timm.list_models("drn_d_22*", pretrained=True)
    assert type(timm.create_model("resnet18")).__module__.startswith("timm.")
    model = timm.create_model("drn_d_22", pretrained=False, num_classes=4, channels=TINY)
    assert isinstance(model, drnet.models.DRN) and model.num_classes == 4
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    features = timm.create_model(
        "drn_d_22", features_only=True, out_indices=(1, 2, 3, 4), output_stride=16, channels=TINY
    )
    maps = features(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 4]
    assert features.feature_info.channels() == [16, 16, 32, 48]
    assert features.feature_info.reduction() == [4, 8, 16, 16]
    model.reset_classifier(2)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_timm_data_config_is_the_run_cards(tmp_path):
    timm = pytest.importorskip("timm")
    run, _ = tiny_run(tmp_path)
    model, card = load_model(run)
    config = timm.data.resolve_data_config(model=model)
    assert config["input_size"] == (3, 64, 64)
    assert config["mean"] == pytest.approx((0.5, 0.4, 0.3))
    assert config["std"] == pytest.approx((0.2, 0.25, 0.3))
    assert config["crop_pct"] == pytest.approx(64 / 72)
    assert config["interpolation"] == "bilinear"
    # the published weights' values too (no file needed to read the config)
    registered = timm.models.get_pretrained_cfg("drn_d_22.imagenet")
    assert registered.url.endswith("drn_d_22-4bd2f8ea.pth") and registered.num_classes == 1000


def test_drnet_works_without_the_optional_libraries():
    # None of them is imported by drnet itself (timm alone adds seconds to every command), and
    # with them absent (an import of None fails) drnet builds, loads and runs as before.
    code = (
        "import sys\n"
        "for name in ('timm', 'segmentation_models_pytorch', 'huggingface_hub', 'safetensors'):\n"
        "    sys.modules[name] = None\n"
        "import drnet, torch\n"
        "m = drnet.create_model('drn_d_22', num_classes=2, channels=(4,) * 8)\n"
        "assert m(torch.zeros(1, 3, 16, 16)).shape == (1, 2)\n"
        "assert m.pretrained_cfg['architecture'] == 'drn_d_22'\n"
    )
    import subprocess
    import sys

    from helpers import _child_env

    done = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


# ------------------------------------------------------------------------------ torch.export
def test_torch_export_dynamic_height_and_width():
    from torch.export import Dim

    torch.manual_seed(0)
    model = drnet.create_segmentation_model("drn_d_22", num_classes=3, channels=TINY).eval()
    h, w = Dim("h", min=16, max=512), Dim("w", min=16, max=512)
    program = torch.export.export(
        model, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {2: h, 3: w}}
    )
    exported = program.module()
    for size in ((90, 70), (64, 64), (33, 47)):  # not multiples of 8, and one that is
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            got, expected = exported(x)["out"], model(x)["out"]
        assert got.shape == (2, 3, *size)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- checkpoints of other libraries
def _same(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_lightning_timm_and_ddp_checkpoints_load(tmp_path):
    from drnet.errors import CheckpointError

    torch.manual_seed(0)
    seg = drnet.create_segmentation_model("drn_d_22", num_classes=3, channels=TINY).eval()
    state = seg.state_dict()
    x = torch.randn(1, 3, 32, 32)
    lightning = {
        "epoch": 3,
        "global_step": 30,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "hyper_parameters": {"lr": 0.01},
    }
    path = tmp_path / "last.ckpt"
    torch.save(lightning, path)
    loaded, card = load_model(path, model="drn_d_22", channels=TINY)
    assert card.task == "segmentation"
    _same(loaded, seg, x)
    # a LightningModule that also holds a loss with a buffer: the keys under model. are taken
    lightning["state_dict"]["criterion.weight"] = torch.ones(3)
    torch.save(lightning, path)
    _same(load_model(path, model="drn_d_22", channels=TINY)[0], seg, x)
    # DDP inside Lightning, and timm's train.py layout with EMA weights
    cls = drnet.create_model("drn_d_22", num_classes=4, channels=TINY).eval()
    ema = drnet.create_model("drn_d_22", num_classes=4, channels=TINY).eval()
    timm_ckpt = {
        "epoch": 9,
        "arch": "drn_d_22",
        "state_dict": {f"module.{k}": v for k, v in cls.state_dict().items()},
        "state_dict_ema": ema.state_dict(),
        "version": 2,
    }
    torch.save(timm_ckpt, tmp_path / "timm.pth.tar")
    _same(load_model(tmp_path / "timm.pth.tar", model="drn_d_22", channels=TINY)[0], cls, x)
    _same(
        load_model(tmp_path / "timm.pth.tar", model="drn_d_22", channels=TINY, ema=True)[0], ema, x
    )
    torch.save({"state_dict": cls.state_dict()}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        load_model(tmp_path / "plain.pth", model="drn_d_22", channels=TINY, ema=True)


def test_keys_that_still_do_not_fit_name_their_prefix(tmp_path):
    from drnet.errors import CheckpointError

    state = drnet.create_model("drn_d_22", num_classes=4, channels=TINY).state_dict()
    mixed = {
        **{f"student.{k}": v for k, v in state.items()},
        **{f"teacher.{k}": v for k, v in state.items()},
    }
    torch.save({"state_dict": mixed}, tmp_path / "two.ckpt")
    with pytest.raises(CheckpointError, match=r"prefix 'student\.', 'teacher\.'"):
        load_model(tmp_path / "two.ckpt", model="drn_d_22", channels=TINY, num_classes=4)
    # stripped, but then another architecture's keys: the error says what was stripped
    other = drnet.create_model("drn_c_26", num_classes=4, channels=TINY).state_dict()
    torch.save({"state_dict": {f"net.{k}": v for k, v in other.items()}}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match=r"'net\.' was stripped"):
        load_model(tmp_path / "c.ckpt", model="drn_d_22", channels=TINY, num_classes=4)


# -------------------------------------------------------------- segmentation_models_pytorch
@pytest.fixture
def tiny_encoder():
    smp = pytest.importorskip("segmentation_models_pytorch")
    from drnet.integrations.smp_encoders import _registered, register_smp_encoder

    name = register_smp_encoder("drn_d_22_tiny_test", "drn_d_22", channels=TINY)
    yield smp, name
    smp.encoders.encoders.pop(name, None)
    _registered.remove(name)


def test_smp_knows_every_drn_and_keeps_its_own():
    smp = pytest.importorskip("segmentation_models_pytorch")
    names = smp.encoders.get_encoder_names()
    assert {"drn_d_22", "drn_c_26", "drn_a_50"} <= set(names)
    assert smp.encoders.encoders["resnet18"]["encoder"].__module__.startswith("segmentation")
    encoder = smp.encoders.get_encoder("drn_d_22", depth=5, output_stride=8)
    assert encoder.out_channels == [3, 32, 64, 128, 256, 512] and encoder.output_stride == 8
    with pytest.raises(ValueError, match="output_stride 4 is not available"):
        smp.encoders.get_encoder("drn_d_22", output_stride=4)


@pytest.mark.parametrize(
    "decoder, kwargs, stride",
    [
        ("Unet", {}, 32),
        ("DeepLabV3Plus", {"encoder_output_stride": 8}, 8),
        ("DeepLabV3", {}, 8),
    ],
)
def test_smp_decoders_train_on_drn_weights(
    tiny_encoder, monkeypatch, tmp_path, decoder, kwargs, stride
):
    smp, name = tiny_encoder
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    from drnet.integrations.smp_encoders import cache_encoder_weights

    torch.manual_seed(0)
    backbone = drnet.create_model("drn_d_22", num_classes=10, channels=TINY)
    torch.save(backbone.state_dict(), tmp_path / "tiny.pth")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # nothing may download
    cache_encoder_weights(name, "imagenet", path=tmp_path / "tiny.pth")
    model = getattr(smp, decoder)(name, encoder_weights="imagenet", classes=3, **kwargs)
    assert model.encoder.output_stride == stride
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    got = model.encoder.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    out.mean().backward()
    assert model.encoder.layer0[0].weight.grad is not None
    assert smp.encoders.get_preprocessing_params(name)["mean"] == [0.485, 0.456, 0.406]


def test_extras_install_what_the_integrations_import():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert "onnxscript" in extras["onnx"]  # what `drnet export onnx --dynamo` needs
    assert extras["timm"] == ["timm"] and extras["smp"] == ["segmentation-models-pytorch"]
    assert set(extras["hub"]) == {"huggingface_hub", "safetensors"}
    wanted = {*extras["onnx"], *extras["timm"], *extras["smp"], *extras["hub"], "torchmetrics"}
    assert wanted <= set(extras["test"])
