"""The gridding score: planted lattices score high, smooth maps low, noise at chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drnet.analysis.gridding import (
    chance_score,
    gridding_score,
    gridding_scores,
    lattice_mask,
    power_spectrum,
)


def checkerboard(height: int, width: int, period: int) -> torch.Tensor:
    """+1/-1 squares of side period/2: repeats every ``period`` pixels along both axes."""
    rows = torch.arange(height)[:, None] // (period // 2)
    cols = torch.arange(width)[None, :] // (period // 2)
    return ((rows + cols) % 2).double() * 2 - 1


def blob(height: int, width: int, sigma: float) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.float64)[:, None] - height / 2
    cols = torch.arange(width, dtype=torch.float64)[None, :] - width / 2
    return torch.exp(-(rows**2 + cols**2) / (2 * sigma**2))


def ramp(height: int, width: int) -> torch.Tensor:
    return torch.arange(height)[:, None] + 0.5 * torch.arange(width)[None, :] + 3.0


@pytest.mark.parametrize("period", [2, 4])
@pytest.mark.parametrize("size", [(32, 32), (16, 24), (8, 8)])
def test_planted_checkerboard_scores_high(period, size):
    assert gridding_score(checkerboard(*size, period)) == pytest.approx(1.0)
    # planted on top of a smooth map, the lattice still dominates
    planted = blob(*size, sigma=size[0] / 5) + 0.3 * checkerboard(*size, period)
    assert gridding_score(planted) > 0.5


@pytest.mark.parametrize("size", [(32, 32), (28, 28), (16, 24)])
def test_smooth_maps_score_low(size):
    assert gridding_score(blob(*size, sigma=size[0] / 6)) < 0.05
    assert gridding_score(ramp(*size)) < 0.05
    assert gridding_score(blob(*size, sigma=size[0] / 6) + 0.1 * ramp(*size)) < 0.05


def test_noise_scores_near_chance():
    noise = torch.randn(4, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    chance = chance_score(32, 32)
    assert chance == pytest.approx(15 / 1023)  # (4x4 lattice bins - DC) / (non-DC bins)
    score = gridding_score(noise)
    assert 0.7 * chance < score < 1.3 * chance
    # noise sits between smooth and gridded maps
    assert gridding_score(blob(32, 32, 5)) < score < gridding_score(checkerboard(32, 32, 2))


def test_invariant_to_scale_offset_and_layout():
    x = blob(16, 16, 3) + 0.2 * checkerboard(16, 16, 4)
    score = gridding_score(x)
    assert gridding_score(1000.0 * x + 7.0) == pytest.approx(score)
    assert gridding_score(x.numpy()) == pytest.approx(score)
    assert gridding_score(x.float()[None, None]) == pytest.approx(score, rel=1e-5)
    # several channels: spectra are averaged, so identical channels change nothing
    assert gridding_score(x.expand(3, 16, 16)) == pytest.approx(score)


def test_channels_count_by_energy():
    grid, smooth = checkerboard(16, 16, 2), blob(16, 16, 3)
    assert gridding_score(torch.stack([grid, torch.zeros(16, 16)])) == pytest.approx(1.0)
    mixed = gridding_score(torch.stack([grid, smooth]))
    assert 0.0 < mixed < 1.0


@pytest.mark.parametrize("size", [(15, 15), (7, 9), (13, 20)])
def test_odd_sizes(size):
    for period in (2, 4):
        assert gridding_score(checkerboard(*size, period)) > 0.5
    assert gridding_score(blob(*size, sigma=min(size) / 5)) < 0.15
    assert gridding_score(ramp(*size)) < 1e-12
    mask = lattice_mask(*size)
    assert not mask[0, 0]
    # the bin set is symmetric, as the spectrum of a real map is
    flipped = torch.roll(torch.flip(mask, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
    assert torch.equal(mask, flipped)


def test_lattice_bins():
    mask = lattice_mask(8, 8, dilations=(2,))
    assert mask.nonzero().tolist() == [[0, 4], [4, 0], [4, 4]]
    assert lattice_mask(8, 8).sum() == 15
    # period 2 on an odd size lies half-way between two bins: both are counted
    assert lattice_mask(7, 7, dilations=(2,))[0].nonzero().flatten().tolist() == [3, 4]
    with pytest.raises(ValueError, match="dilations"):
        lattice_mask(8, 8, dilations=(1,))


def test_degenerate_inputs():
    assert gridding_score(torch.full((8, 8), 3.0)) == 0.0
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        gridding_score(torch.zeros(8))
    with pytest.raises(ValueError, match="at least 2x2"):
        gridding_score(torch.zeros(3, 1, 8))
    assert power_spectrum(np.zeros((2, 4, 4))).shape == (4, 4)


def test_gridding_scores_per_level():
    scores = gridding_scores({"level5": checkerboard(8, 8, 2)[None], "level6": blob(16, 16, 3)})
    assert list(scores) == ["level5", "level6"]
    assert scores["level5"]["score"] == pytest.approx(1.0)
    assert scores["level6"]["chance"] == pytest.approx(chance_score(16, 16))
    assert (scores["level6"]["height"], scores["level6"]["width"]) == (16, 16)
    assert list(gridding_scores([blob(8, 8, 2)])) == ["0"]
