"""Winograd F(4x4, 3x3): the same convolution as torch's (dilated too), only for the layers it
fits, and a fast-path candidate whose labels and scores agree with eager."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import drnet
from drnet.speed.inference import _candidate_names, build_candidate
from drnet.speed.winograd import (
    WinogradConv2d,
    apply_winograd,
    eligible,
    transform_weight,
    winograd_conv3x3,
)

DEMO_WIDTHS = (16, 16, 32, 64, 64, 64, 64, 64)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("dilation", [1, 2, 4])
@pytest.mark.parametrize(("height", "width"), [(16, 24), (13, 30), (7, 7)])
def test_matches_the_direct_convolution(dilation, height, width):
    torch.manual_seed(dilation * 100 + height)
    x = torch.randn(2, 24, height, width)
    weight = torch.randn(40, 24, 3, 3)
    bias = torch.randn(40)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=dilation,
                         dilation=dilation)  # fmt: skip
    for layout in (torch.contiguous_format, torch.channels_last):
        out = winograd_conv3x3(x.contiguous(memory_format=layout), transform_weight(weight),
                               bias, dilation)  # fmt: skip
        assert out.shape == reference.shape
        assert relative_error(out, reference) < 3e-5
    no_bias = winograd_conv3x3(x, transform_weight(weight), None, dilation)
    reference = F.conv2d(x.double(), weight.double(), None, padding=dilation, dilation=dilation)
    assert relative_error(no_bias, reference) < 3e-5


def test_a_wrong_transform_is_caught():
    # the check above can fail: a weight transform of another kernel gives another result
    x = torch.randn(1, 8, 12, 12)
    weight = torch.randn(8, 8, 3, 3)
    out = winograd_conv3x3(x, transform_weight(weight.flip(-1)), None, 1)
    assert relative_error(out, F.conv2d(x, weight, padding=1)) > 0.1


def test_only_wide_same_padded_3x3_stride_1_convs_are_replaced():
    assert eligible(nn.Conv2d(64, 64, 3, padding=2, dilation=2))
    assert not eligible(nn.Conv2d(32, 64, 3, padding=1))  # narrow: the transforms cost more
    assert eligible(nn.Conv2d(32, 64, 3, padding=1), min_channels=32)
    assert not eligible(nn.Conv2d(64, 64, 3, stride=2, padding=1))
    assert not eligible(nn.Conv2d(64, 64, 1))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1, groups=2))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=0))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1).to(torch.bfloat16))
    with pytest.raises(ValueError, match="3x3 stride-1"):
        WinogradConv2d(nn.Conv2d(64, 64, 3, stride=2, padding=1))
    model = nn.Sequential(nn.Conv2d(3, 64, 7, padding=3), nn.Conv2d(64, 64, 3, padding=1),
                          nn.Sequential(nn.Conv2d(64, 128, 3, padding=4, dilation=4)))  # fmt: skip
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        expected = model(x)
        assert apply_winograd(model) == 2
        assert isinstance(model[1], WinogradConv2d) and isinstance(model[2][0], WinogradConv2d)
        assert relative_error(model(x), expected) < 3e-5
        with pytest.raises(TypeError, match="float32"):
            model[1](torch.randn(1, 64, 8, 8, dtype=torch.bfloat16))


def randomized(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # non-trivial BatchNorm, as trained weights have
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_the_candidate_agrees_with_eager():
    torch.manual_seed(0)
    segmenter = randomized(drnet.create_segmentation_model("drn_d_22", 5, channels=DEMO_WIDTHS))
    fast = build_candidate(segmenter, "winograd")
    assert fast.choice.winograd and fast.choice.fold_bn and fast.choice.channels_last
    assert "winograd" in fast.choice.name and fast.choice.candidate == "winograd"
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) > 0
    x = torch.randn(1, 3, 72, 88)
    with torch.inference_mode():
        expected = segmenter(x)["out"]
        assert relative_error(fast(x)["out"], expected) < 1e-4
        assert torch.equal(fast.labels(x), expected.argmax(1))

    classifier = randomized(drnet.create_model("drn_c_26", num_classes=10, channels=DEMO_WIDTHS))
    fast = build_candidate(classifier, "winograd")
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        expected = classifier(x)
        assert relative_error(fast(x), expected) < 1e-4
        assert torch.equal(fast(x).argmax(1), expected.argmax(1))
        assert relative_error(fast.forward_map(x), classifier.forward_map(x)) < 1e-4


def test_offered_for_float32_cpu_models_with_wide_convs_only():
    wide = drnet.create_segmentation_model("drn_d_22", 5, channels=DEMO_WIDTHS).eval()
    narrow = drnet.create_segmentation_model("drn_d_22", 5, channels=(8,) * 8).eval()
    assert "winograd" in _candidate_names(wide, "torch", torch.float32)
    assert "winograd" not in _candidate_names(wide, "torch", torch.bfloat16)
    assert "winograd" not in _candidate_names(narrow, "torch", torch.float32)


@pytest.mark.parametrize("dilation", [1, 2])
def test_bands_of_tile_rows_give_the_same_result(monkeypatch, dilation):
    from drnet.speed import winograd

    torch.manual_seed(1)
    x = torch.randn(1, 16, 37, 21)
    weight, bias = torch.randn(8, 16, 3, 3), torch.randn(8)
    whole = winograd_conv3x3(x, transform_weight(weight), bias, dilation)
    monkeypatch.setattr(winograd, "BAND_BYTES", 1)  # one tile row per band
    banded = winograd_conv3x3(x, transform_weight(weight), bias, dilation)
    assert torch.allclose(banded, whole, rtol=0, atol=1e-5)
    reference = F.conv2d(x, weight, bias, padding=dilation, dilation=dilation)
    assert relative_error(banded, reference) < 3e-5
