"""The bf16 inference path: agreement with float32 (labels, top-1), the dtype choice for
``--dtype``, and the fallback where the device has no native bf16 (the capability check is
mocked, so both paths run on any CPU; on CPUs without oneDNN's bf16 kernels the fused modules take
the plain bf16 ops, which is slow but the same math)."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import relative_error
from test_speed import randomize_batchnorm, tiny_channels

import drnet
import drnet.engine.precision as precision
import drnet.speed.inference as inference
from drnet.speed import optimize_for_inference, predict_labels
from drnet.speed.fused import ConvAct
from drnet.speed.inference import FastOnFirstCall, InferenceModel, fast_inference

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cpu_flags(monkeypatch):
    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(inference, "_NOTED", set())

    return set_flags


def _classifier(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = drnet.create_model(name, num_classes=10, channels=tiny_channels(name)).eval()
    return randomize_batchnorm(model, seed)


def _separated(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Indices of inputs whose float32 top-1 leads the runner-up by a margin bf16 rounding cannot
    close (random nets have near-ties that any rounding flips)."""
    with torch.inference_mode():
        top2 = model(x).topk(2, dim=1).values
    return torch.nonzero(top2[:, 0] - top2[:, 1] > 0.05 * top2[:, 0].abs().clamp(min=1)).flatten()


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("drn_d_22", (64, 64)),
        ("drn_c_26", (56, 72)),
        ("drn_a_18", (64, 48)),
        ("drn_b_26", (48, 48)),
    ],
)
def test_bf16_classifier_agrees_with_float32(name: str, size: tuple[int, int]) -> None:
    model = _classifier(name)
    x = torch.randn(16, 3, *size)
    with torch.inference_mode():
        reference = model(x)
        fast = optimize_for_inference(model, channels_last=True, dtype=torch.bfloat16)
        out = fast(x)
        dense = fast.forward_map(x)
    assert fast.choice.dtype is torch.bfloat16 and fast.choice.name.endswith("+bf16")
    assert out.dtype is torch.float32 and dense.dtype is torch.float32  # outputs in float32
    assert all(p.dtype is torch.bfloat16 for p in fast.model.parameters())
    assert relative_error(out, reference) < 0.03  # bf16 keeps 8 bits of mantissa
    clear = _separated(model, x)
    assert len(clear) >= 4
    assert torch.equal(out.argmax(1)[clear], reference.argmax(1)[clear])
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.8


@pytest.mark.parametrize(("name", "size"), [("drn_d_22", (64, 96)), ("drn_c_26", (57, 75))])
def test_bf16_segmentation_labels_agree(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(1)
    model = drnet.create_segmentation_model(name, num_classes=6, channels=tiny_channels(name))
    randomize_batchnorm(model.eval(), 1)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        reference = model(x)["out"].argmax(1)
        fast = optimize_for_inference(model, x, dtype=torch.bfloat16)
        labels = predict_labels(fast, x)
        scores = fast(x)["out"]
    assert fast.choice.dtype is torch.bfloat16
    assert model.up.weight.dtype is torch.float32  # the up-sampling stays float32
    assert scores.dtype is torch.float32 and labels.shape == reference.shape
    assert (labels == reference).float().mean() >= 0.99
    assert (scores.argmax(1) == labels).float().mean() >= 0.999  # same labels both ways


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="bfloat16"):
        optimize_for_inference(_classifier("drn_d_22"), dtype=torch.float16)
    with pytest.raises(ValueError, match="auto, float32, bfloat16"):
        precision.inference_dtype("half", "cpu")


def test_dtype_choice_follows_the_hardware(cpu_flags) -> None:
    cpu_flags("avx2")
    assert precision.inference_dtype("float32", "cpu") == (torch.float32, None)
    assert precision.inference_dtype(None, "cpu") == (torch.float32, None)
    assert precision.inference_dtype("auto", "cpu") == (torch.float32, None)  # silently
    dtype, note = precision.inference_dtype("bfloat16", "cpu")
    assert dtype is torch.float32
    assert note.startswith("--dtype bfloat16 ignored") and "no native bfloat16" in note
    cpu_flags("avx512_bf16")
    assert precision.inference_dtype("bfloat16", "cpu") == (torch.bfloat16, None)
    assert precision.inference_dtype("auto", "cpu") == (torch.bfloat16, None)
    assert precision.inference_dtype(torch.bfloat16, "cpu") == (torch.bfloat16, None)


def test_fast_inference_uses_bf16_only_where_native(cpu_flags, caplog) -> None:
    model = _classifier("drn_d_22")
    x = torch.randn(2, 3, 32, 32)
    cpu_flags("avx2")
    with caplog.at_level(logging.WARNING, logger="drnet"):
        plain = fast_inference(model, True, dtype="bfloat16")
        fast_inference(model, True, dtype="bfloat16")
    notes = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(notes) == 1  # once per process, not per call
    assert isinstance(plain, FastOnFirstCall) and plain.dtype is torch.float32
    cpu_flags("avx512_bf16")
    with torch.inference_mode():
        native = fast_inference(model, True, dtype="bfloat16")
        out = native(x)
        assert native.fast.choice.dtype is torch.bfloat16 and out.dtype is torch.float32
        eager = fast_inference(model, False, dtype="bfloat16")  # --no-fast --dtype bfloat16
        assert isinstance(eager, InferenceModel) and eager.choice.name == "eager+bf16"
        assert relative_error(eager(x), model(x)) < 0.03
        assert fast_inference(model, False, dtype="auto") is not None
    assert fast_inference(model, False, dtype="float32") is model  # float32 off switch unchanged


def test_fused_conv_takes_plain_ops_for_other_dtypes() -> None:
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    fused = ConvAct(conv, relu=True)
    x = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        reference = torch.relu(conv(x))
        assert relative_error(fused(x), reference) < 1e-5
        fused.to(torch.bfloat16)
        out = fused(x.to(torch.bfloat16))  # oneDNN's bf16 kernel or the plain op: both work
    assert out.dtype is torch.bfloat16
    assert relative_error(out.float(), reference) < 0.02
