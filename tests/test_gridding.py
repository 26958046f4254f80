"""Gridding measures.

The gridding score (excess lattice power over the map's own smooth spectrum): about 0 for noise and
smooth maps at every size, rising with a planted lattice's amplitude. The earlier lattice power
share: planted lattices 1, smooth maps low, noise at chance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drnet.analysis.gridding import (
    GRIDDING_CHANCE,
    gridding_score,
    gridding_scores,
    lattice_mask,
    lattice_power_share,
    lattice_share_chance,
    power_spectrum,
)


def checkerboard(height: int, width: int, period: int) -> torch.Tensor:
    """+1/-1 squares of side period/2: repeats every ``period`` pixels along both axes."""
    rows = torch.arange(height)[:, None] // (period // 2)
    cols = torch.arange(width)[None, :] // (period // 2)
    return ((rows + cols) % 2).double() * 2 - 1


def blob(height: int, width: int, sigma: float, centre=None) -> torch.Tensor:
    row, col = centre if centre is not None else (height / 2, width / 2)
    rows = torch.arange(height, dtype=torch.float64)[:, None] - row
    cols = torch.arange(width, dtype=torch.float64)[None, :] - col
    return torch.exp(-(rows**2 + cols**2) / (2 * sigma**2))


def ramp(height: int, width: int) -> torch.Tensor:
    return torch.arange(height)[:, None] + 0.5 * torch.arange(width)[None, :] + 3.0


def dots(size: int, period: int) -> torch.Tensor:
    """1 where row and column are both multiples of ``period``: the dilated-conv lattice."""
    index = torch.arange(size)
    return ((index[:, None] % period == 0) & (index[None, :] % period == 0)).double()


def smoothed_noise(channels: int, size: int, sigma: float, seed: int) -> torch.Tensor:
    noise = torch.randn(channels, size, size, generator=torch.Generator().manual_seed(seed))
    freq = torch.fft.fftfreq(size, dtype=torch.float64)
    gain = torch.exp(-2 * torch.pi**2 * sigma**2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(noise.double()) * gain).real


SIZES = [8, 16, 28]
AMPLITUDES = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]


def positions(size: int) -> list[tuple[float, float]]:
    return [(size / 2, size / 2), (size / 2 - 0.5, size / 2 - 0.5), (1, 1), (0, size / 3),
            (size / 4, 3 * size / 4 + 0.3), (size - 1, size - 1)]


# ---------------------------------------------------------------- the gridding score (excess)


@pytest.mark.parametrize("size", SIZES)
def test_white_noise_scores_zero(size):
    scores = [
        gridding_score(torch.randn(64, size, size, generator=torch.Generator().manual_seed(seed)))
        for seed in range(5)
    ]
    assert abs(np.mean(scores)) < 0.02
    assert max(abs(s) for s in scores) < 0.05
    assert GRIDDING_CHANCE == 0.0


@pytest.mark.parametrize("size", SIZES)
def test_single_smooth_maps_score_zero(size):
    # 8x8 is the weak case (docs/design.md, "The gridding score"): a wider band there
    bound = 0.08 if size == 8 else 0.03
    for sigma in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0):
        for centre in positions(size):
            score = gridding_score(blob(size, size, sigma, centre))
            assert abs(score) < bound, (sigma, centre, score)
    assert abs(gridding_score(ramp(size, size))) < 1e-9
    mixed = 0.1 * ramp(size, size) + blob(size, size, 1.5, (2, size / 2))
    assert abs(gridding_score(mixed)) < bound
    assert abs(gridding_score(mixed + 0.5 * blob(size, size, 3, (size - 2, 1)))) < 0.1


@pytest.mark.parametrize("size", [16, 28])
def test_sums_and_smoothed_noise_score_zero(size):
    two = blob(size, size, 1, (1, 2)) + blob(size, size, 3, (size - 2, size / 2))
    assert abs(gridding_score(two + 0.5 * blob(size, size, 0.7, (size / 2, size / 2)))) < 0.03
    for sigma in (1.0, 2.0):
        assert abs(gridding_score(smoothed_noise(1, size, sigma, seed=0))) < 0.03
        assert abs(gridding_score(smoothed_noise(32, size, sigma, seed=1))) < 0.03
        activation_like = smoothed_noise(32, size, sigma, seed=2).clamp_min(0)  # after a ReLU
        assert abs(gridding_score(activation_like)) < 0.03


def test_smoothed_noise_8x8_averaged_over_channels():
    for sigma in (1.0, 1.5):
        assert abs(gridding_score(smoothed_noise(64, 8, sigma, seed=3))) < 0.06


def test_old_measure_misreads_smooth_maps_new_one_does_not():
    off_centre = blob(8, 8, 1, (2, 5))
    assert lattice_power_share(off_centre) > lattice_share_chance(8, 8)  # "above chance"
    assert lattice_power_share(blob(8, 8, 1.5)) < 0.05  # "far below chance"
    assert abs(gridding_score(off_centre)) < 0.08 and abs(gridding_score(blob(8, 8, 1.5))) < 0.01


def _rises(values):
    return all(b > a for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("lattice", ["checker2", "dots2", "checker4", "dots4"])
def test_planted_lattice_rises_with_amplitude(size, lattice):
    period = int(lattice[-1])
    pattern = checkerboard(size, size, period) if "checker" in lattice else dots(size, period)
    bases = {
        "blob+ramp": blob(size, size, 1.5, (size / 3, size / 2)) + 0.05 * ramp(size, size),
        "smoothed noise": smoothed_noise(32, size, 1.5, seed=3),
    }
    for name, base in bases.items():
        scores = [gridding_score(base + a * pattern) for a in AMPLITUDES]
        if size == 8 and lattice == "checker4":
            # too few bins to see a weak period-4 checkerboard on 8x8: only strong ones register
            scores = scores[AMPLITUDES.index(0.5) - 1 :]
        assert _rises(scores), (name, [round(s, 4) for s in scores])
        assert abs(gridding_score(base)) < (0.06 if size == 8 else 0.03)
        assert scores[-1] > 0.4
    # a pure lattice is almost all excess
    assert gridding_score(pattern) > (0.5 if size == 8 else 0.9)


def test_gridding_score_constant_and_degenerate_maps():
    assert gridding_score(torch.full((8, 8), 3.0)) == 0.0
    assert gridding_score(torch.zeros(2, 16, 16)) == 0.0
    assert gridding_score(np.ones((4, 3, 8, 8))) == 0.0
    assert not np.isnan(gridding_score(torch.full((8, 8), 1e-30)))
    with pytest.raises(ValueError, match="at least 8x8"):
        gridding_score(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        gridding_score(torch.zeros(8))


def test_gridding_score_scale_layout_and_channel_weighting():
    x = blob(16, 16, 3) + 0.2 * checkerboard(16, 16, 4)
    score = gridding_score(x)
    assert score > 0.05
    assert gridding_score(1000.0 * x + 7.0) == pytest.approx(score)
    assert gridding_score(x.numpy()) == pytest.approx(score)
    assert gridding_score(x.float()[None, None]) == pytest.approx(score, rel=1e-4)
    assert gridding_score(x.expand(3, 16, 16)) == pytest.approx(score)
    # spectra are averaged (power-weighted): a dead channel changes nothing, a smooth one dilutes
    assert gridding_score(torch.stack([x, torch.zeros(16, 16)])) == pytest.approx(score)
    assert 0 < gridding_score(torch.stack([x, 3 * blob(16, 16, 2, (3, 4))])) < score


@pytest.mark.parametrize("size", [(15, 15), (9, 13), (20, 12)])
def test_gridding_score_odd_and_mixed_sizes(size):
    assert abs(gridding_score(blob(*size, sigma=min(size) / 5, centre=(2, 3)))) < 0.05
    assert gridding_score(blob(*size, 1.5) + 0.5 * checkerboard(*size, 2)) > 0.3


# ------------------------------------------------------- the earlier measure: lattice power share


@pytest.mark.parametrize("period", [2, 4])
@pytest.mark.parametrize("size", [(32, 32), (16, 24), (8, 8)])
def test_share_planted_checkerboard_scores_high(period, size):
    assert lattice_power_share(checkerboard(*size, period)) == pytest.approx(1.0)
    # planted on top of a smooth map, the lattice still dominates
    planted = blob(*size, sigma=size[0] / 5) + 0.3 * checkerboard(*size, period)
    assert lattice_power_share(planted) > 0.5


@pytest.mark.parametrize("size", [(32, 32), (28, 28), (16, 24)])
def test_share_smooth_maps_score_low(size):
    assert lattice_power_share(blob(*size, sigma=size[0] / 6)) < 0.05
    assert lattice_power_share(ramp(*size)) < 0.05
    assert lattice_power_share(blob(*size, sigma=size[0] / 6) + 0.1 * ramp(*size)) < 0.05


def test_share_noise_scores_near_chance():
    noise = torch.randn(4, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    chance = lattice_share_chance(32, 32)
    assert chance == pytest.approx(15 / 1023)  # (4x4 lattice bins - DC) / (non-DC bins)
    score = lattice_power_share(noise)
    assert 0.7 * chance < score < 1.3 * chance
    # noise sits between smooth and gridded maps
    smooth, grid = blob(32, 32, 5), checkerboard(32, 32, 2)
    assert lattice_power_share(smooth) < score < lattice_power_share(grid)


def test_share_invariant_to_scale_offset_and_layout():
    x = blob(16, 16, 3) + 0.2 * checkerboard(16, 16, 4)
    score = lattice_power_share(x)
    assert lattice_power_share(1000.0 * x + 7.0) == pytest.approx(score)
    assert lattice_power_share(x.numpy()) == pytest.approx(score)
    assert lattice_power_share(x.float()[None, None]) == pytest.approx(score, rel=1e-5)
    # several channels: spectra are averaged, so identical channels change nothing
    assert lattice_power_share(x.expand(3, 16, 16)) == pytest.approx(score)


def test_share_channels_count_by_energy():
    grid, smooth = checkerboard(16, 16, 2), blob(16, 16, 3)
    assert lattice_power_share(torch.stack([grid, torch.zeros(16, 16)])) == pytest.approx(1.0)
    mixed = lattice_power_share(torch.stack([grid, smooth]))
    assert 0.0 < mixed < 1.0


@pytest.mark.parametrize("size", [(15, 15), (7, 9), (13, 20)])
def test_share_odd_sizes(size):
    for period in (2, 4):
        assert lattice_power_share(checkerboard(*size, period)) > 0.5
    assert lattice_power_share(blob(*size, sigma=min(size) / 5)) < 0.15
    assert lattice_power_share(ramp(*size)) < 1e-12
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


def test_share_degenerate_inputs():
    assert lattice_power_share(torch.full((8, 8), 3.0)) == 0.0
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        lattice_power_share(torch.zeros(8))
    with pytest.raises(ValueError, match="at least 2x2"):
        lattice_power_share(torch.zeros(3, 1, 8))
    assert power_spectrum(np.zeros((2, 4, 4))).shape == (4, 4)




def test_gridding_scores_per_level():
    maps = {"level5": checkerboard(16, 16, 2)[None], "level6": blob(16, 16, 3), "l8": blob(4, 4, 1)}
    scores = gridding_scores(maps)
    assert list(scores) == ["level5", "level6", "l8"]
    assert scores["level5"]["score"] > 0.9 and scores["level5"]["lattice_share"] == 1.0
    assert abs(scores["level6"]["score"]) < 0.01 and scores["level6"]["chance"] == 0.0
    assert scores["level6"]["lattice_share_chance"] == pytest.approx(lattice_share_chance(16, 16))
    assert (scores["level6"]["height"], scores["level6"]["width"]) == (16, 16)
    # below 8x8 there is no baseline: the new score is None, the old share is still there
    assert scores["l8"]["score"] is None and scores["l8"]["chance"] is None
    assert scores["l8"]["lattice_share"] is not None
    assert list(gridding_scores([blob(8, 8, 2)])) == ["0"]
