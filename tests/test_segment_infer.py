"""Multi-scale / flip fusion and sliding-window inference against the plain forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_CHANNELS
from torch import nn

import drnet
from drnet.tasks.segment_infer import model_scores, predict_probs, sliding_window_probs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = drnet.create_segmentation_model("drn_d_22", num_classes=4, channels=TINY_CHANNELS)
    return m.eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 37, 52, generator=torch.Generator().manual_seed(1))


def plain(model, x):
    with torch.no_grad():
        return model(x)["out"].softmax(1)


@torch.no_grad()
def test_scale_one_without_flip_is_the_plain_forward(model, image):
    assert torch.equal(predict_probs(model, image), plain(model, image))
    assert torch.equal(predict_probs(model, image, scales=(1.0, 1.0)), plain(model, image))


@torch.no_grad()
def test_window_larger_than_image_is_the_plain_forward(model, image):
    assert torch.equal(sliding_window_probs(model, image, 64), plain(model, image))
    assert torch.equal(predict_probs(model, image, window=(37, 52)), plain(model, image))


@torch.no_grad()
def test_flip_fusion_averages_the_flipped_pass(model, image):
    expected = (plain(model, image) + plain(model, image.flip(-1)).flip(-1)) / 2
    assert torch.allclose(predict_probs(model, image, flip=True), expected, atol=1e-6)


@torch.no_grad()
def test_multiscale_averages_resized_passes(model, image):
    half = F.interpolate(image, size=(18, 26), mode="bilinear", align_corners=False)
    back = F.interpolate(plain(model, half), size=(37, 52), mode="bilinear", align_corners=False)
    expected = (plain(model, image) + back) / 2
    got = predict_probs(model, image, scales=(1.0, 0.5))
    assert got.shape == (1, 4, 37, 52)
    assert torch.allclose(got, expected, atol=1e-6)
    probs = predict_probs(model, image, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True)
    assert torch.allclose(probs.sum(1), torch.ones(1, 37, 52), atol=1e-5)


@torch.no_grad()
def test_sliding_window_equals_plain_for_a_pointwise_model(image):
    """A 1x1-conv model sees no context, so tiling cannot change its output."""
    pointwise = nn.Conv2d(3, 5, 1).eval()
    windowed = sliding_window_probs(pointwise, image, window=16, stride=10)
    assert torch.allclose(windowed, pointwise(image).softmax(1), atol=1e-6)
    windowed = sliding_window_probs(pointwise, image, window=(40, 20))  # taller than the image
    assert torch.allclose(windowed, pointwise(image).softmax(1), atol=1e-6)


@torch.no_grad()
def test_sliding_window_covers_every_pixel_with_dilated_model(model, image):
    probs = sliding_window_probs(model, image, window=24, stride=16)
    assert probs.shape == (1, 4, 37, 52)
    assert torch.allclose(probs.sum(1), torch.ones(1, 37, 52), atol=1e-5)


@torch.no_grad()
def test_official_output_convention_is_understood(image):
    torch.manual_seed(0)
    m = drnet.create_segmentation_model(
        "drn_d_22", num_classes=4, channels=TINY_CHANNELS, output="official"
    ).eval()
    torch.manual_seed(0)
    d = drnet.create_segmentation_model("drn_d_22", num_classes=4, channels=TINY_CHANNELS).eval()
    assert torch.allclose(model_scores(m, image).softmax(1), plain(d, image), atol=1e-6)
