"""Collecting per-level activations with hooks and rendering them as a PNG grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from drnet.analysis.activations import (
    activation_image,
    collect_activations,
    level_names,
    most_active_channel,
    render_activation_grid,
)


class TwoLevels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.layer2 = nn.Conv2d(4, 2, 3, stride=2, padding=1)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(x)))


def test_collect_activations_with_hooks():
    model = TwoLevels()
    x = torch.randn(2, 3, 16, 16)
    assert level_names(model) == ["layer1", "layer2"]
    acts = collect_activations(model, x)
    assert list(acts) == ["layer1", "layer2"]
    assert acts["layer1"].shape == (2, 4, 16, 16) and acts["layer2"].shape == (2, 2, 8, 8)
    # the in-place ReLU after layer1 must not alter the saved map
    assert (acts["layer1"] < 0).any()
    torch.testing.assert_close(acts["layer2"], model(x))
    assert not model.layer1._forward_hooks  # hooks are removed
    with pytest.raises(KeyError, match="layer9"):
        collect_activations(model, x, ["layer9"])


def test_collect_activations_of_a_drn():
    import drnet

    model = drnet.create_model("drn_d_22", num_classes=10).eval()
    acts = collect_activations(model, torch.randn(1, 3, 32, 32))
    assert list(acts) == [f"layer{i}" for i in range(9)]
    assert acts["layer8"].shape[-2:] == (4, 4)  # output stride 8


def test_activation_image():
    x = torch.zeros(2, 3, 4, 5)
    x[0, :, 1, 2] = -2.0  # |activation| is shown
    image = activation_image(x)
    assert image.shape == (4, 5) and image.max() == 1.0 and image[1, 2] == 1.0
    assert image.sum() == 1.0
    assert activation_image(torch.ones(4, 4)).max() == 0.0  # constant map: no division by zero
    with pytest.raises(ValueError):
        activation_image(torch.zeros(4))


def test_render_activation_grid(tmp_path):
    maps = {"layer5": torch.randn(8, 8, 8), "layer6": torch.randn(1, 8, 6, 6)}
    path = tmp_path / "out" / "grid.png"
    grid = render_activation_grid(maps, path, tile=32, titles={"layer5": "grid 0.10"})
    assert path.is_file() and Image.open(path).size == grid.size
    rows = {"A": maps, "C": maps}
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    two_rows = render_activation_grid(rows, tile=32, image=image)
    assert two_rows.height > grid.height and two_rows.width > grid.width
    with pytest.raises(ValueError):
        render_activation_grid({})


def test_most_active_channel():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 1] = 1.0  # image 0: channel 1 has the largest mean
    x[0, 2, 0, 0] = 5.0  # a larger peak but a smaller mean (5/16 < 1)
    x[1, 2] = 2.0
    x[1, 0] = -3.0  # large in magnitude, but negative: not "active"
    maps = most_active_channel(x)
    assert maps.shape == (2, 4, 4)
    assert torch.equal(maps[0], x[0, 1]) and torch.equal(maps[1], x[1, 2])
    assert torch.equal(most_active_channel(x[1]), x[1, 2])  # [C, H, W] -> [H, W]
    assert torch.equal(most_active_channel(x.numpy())[0], x[0, 1])
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        most_active_channel(torch.zeros(4, 4))


def test_activation_image_statistics():
    x = torch.zeros(3, 4, 4)
    x[0, 0, 0] = 8.0  # channel 0: one hot pixel (mean 0.5)
    x[1] = 1.0
    x[1, 3, 3] = 2.0  # channel 1: the most active (mean ~1.06), brightest at (3, 3)
    mean = activation_image(x, statistic="mean")
    top = activation_image(x, statistic="max_channel")
    assert mean[0, 0] == 1.0 and top[3, 3] == 1.0 and top[0, 0] == 0.0
    with pytest.raises(ValueError, match="statistic"):
        activation_image(x, statistic="median")


def test_render_both_statistics(tmp_path):
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 0, 0] = 50.0
    x[0, 1] = 1.0
    x[0, 1, 7, 7] = 2.0
    mean = render_activation_grid({"layer": x}, tmp_path / "mean.png", tile=16)
    top = render_activation_grid(
        {"layer": x}, tmp_path / "top.png", tile=16, statistic="max_channel"
    )
    assert mean.size == top.size and np.asarray(mean).tolist() != np.asarray(top).tolist()
    with pytest.raises(ValueError, match="statistic"):
        render_activation_grid({"layer": x}, statistic="max")
