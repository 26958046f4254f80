"""ONNX export: dynamic batch and size, onnxruntime output equal to eager."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_CHANNELS

import drnet
from drnet.cli import main

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from drnet.speed.onnx_export import export_onnx  # noqa: E402


@pytest.mark.parametrize("name", ["drn_d_22", "drn_c_26"])
def test_segmentation_onnx_matches_eager_on_two_sizes(tmp_path, name: str) -> None:
    torch.manual_seed(0)
    model = drnet.create_segmentation_model(name, 5, channels=TINY_CHANNELS).train()  # export evals
    report = export_onnx(
        model,
        tmp_path / "seg.onnx",
        input_size=(1, 3, 64, 64),
        check_sizes=[(1, 3, 64, 64), (2, 3, 45, 83)],
    )
    assert [c.input_shape for c in report.checks] == [(1, 3, 64, 64), (2, 3, 45, 83)]
    assert report.max_rel_diff < 1e-4
    assert all(c.labels_equal > 0.999 for c in report.checks)


def test_classifier_onnx_dynamic_batch(tmp_path) -> None:
    torch.manual_seed(0)
    model = drnet.create_model("drn_a_18", num_classes=7, channels=(8, 8, 16, 16))
    report = export_onnx(model, tmp_path / "cls.onnx", input_size=(2, 3, 48, 48))
    assert len(report.checks) == 2 and report.checks[1].input_shape[0] == 3
    assert report.max_rel_diff < 1e-4


def test_export_cli_prints_differences(tmp_path, capsys) -> None:
    out = tmp_path / "m.onnx"
    code = main(
        ["export", "onnx", str(out), "--model", "drn_d_22", "--num-classes", "3",
         "--size", "40x56", "--task", "classification"]
    )  # fmt: skip
    assert code == 0 and out.is_file()
    text = capsys.readouterr().out
    assert "max abs diff" in text and "onnxruntime vs eager" in text
