"""Int8 post-training static quantization (PT2E): runs, keeps the output conventions, close."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_ARG, TINY_CHANNELS, relative_error, save_tiny_model

import drnet
from drnet.errors import DrnetError

pytest.importorskip("torchao")

from drnet.speed.quantize import quantize_int8  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", ["drn_d_22", "drn_c_26"])
def test_int8_reference_graph_close_to_float(name: str) -> None:
    torch.manual_seed(0)
    model = drnet.create_segmentation_model(name, 5, channels=TINY_CHANNELS).eval()
    calibration = [torch.randn(2, 3, 64, 64) for _ in range(3)]
    quantized = quantize_int8(model, calibration, compile=False)
    for size in [(64, 64), (48, 80)]:  # dynamic spatial size
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            reference = model(x)["out"]
            out = quantized(x)["out"]
            labels = quantized.predict_labels(x)
        assert out.shape == reference.shape
        assert relative_error(out, reference) < 0.15
        assert float((labels == reference.argmax(1)).float().mean()) > 0.9


def test_int8_classifier_and_errors() -> None:
    torch.manual_seed(0)
    model = drnet.create_model("drn_d_22", num_classes=4, channels=TINY_CHANNELS).eval()
    quantized = quantize_int8(model, torch.randn(2, 3, 32, 32), compile=False)
    with torch.no_grad():
        assert quantized(torch.randn(3, 3, 32, 32)).shape == (3, 4)
    with pytest.raises(DrnetError, match="at least one"):
        quantize_int8(model, [])


@pytest.mark.slow
def test_int8_compiled_runs() -> None:
    torch.manual_seed(0)
    model = drnet.create_segmentation_model("drn_d_22", 3, channels=TINY_CHANNELS).eval()
    quantized = quantize_int8(model, [torch.randn(1, 3, 32, 32)])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)["out"]
        out = quantized(x)["out"]
    assert relative_error(out, reference) < 0.2


@pytest.mark.slow
def test_quantize_cli_on_scenes(tmp_path, capsys) -> None:
    import json

    from drnet.cli import main
    from drnet.data.scenes import make_segmentation_scenes

    data = tmp_path / "scenes"
    make_segmentation_scenes(data, 4, 3, canvas=32, scale=(0.5, 1.0))
    torch.manual_seed(0)
    save_tiny_model(tmp_path / "w.pth", 11, segmentation=True)
    code = main(
        ["quantize", "--checkpoint", str(tmp_path / "w.pth"), "--data", str(data),
         "--channels", TINY_ARG, "--calibration", "2", "--no-compile",
         "--json"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["val_images"] == 3 and report["classes"] == 11
    assert 0.0 <= report["miou_int8"] <= 1.0 and report["labels_unchanged"] > 0.5
    # the bf16 fast path is judged beside int8 (accuracy on any CPU; time only where native)
    assert report["labels_unchanged_bf16"] > 0.9 and 0.0 <= report["miou_bf16"] <= 1.0
    assert isinstance(report["bf16_native"], bool)
