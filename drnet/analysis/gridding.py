"""Quantitative gridding: how much of an activation map is a dilation lattice.

Dilated convolutions with dilation ``d`` see the input on a lattice of spacing ``d``; when the
input has high-frequency content at that spacing the output can inherit a checkerboard-like
pattern of period ``d`` ("gridding", the artifact DRN-B and DRN-C remove). A pattern that repeats
every ``p`` pixels along both axes has all its spectral power at the frequencies
``(k / p, l / p)`` cycles per pixel, ``k, l = 0 .. p-1``: its *lattice frequencies* (the FFT bins
of :func:`lattice_mask`; on sizes not divisible by ``p`` the nearest bins, both when half-way).

Two measures, both over the periods ``dilations`` (default 2 and 4, the dilations of DRN levels
5 and 6), DC excluded, with the spectra of all maps (channels, samples) averaged before scoring,
so each map counts in proportion to its energy (power-weighted; dead channels count nothing):

:func:`gridding_score` (the gridding score) is the *excess* power at the lattice bins over what
the neighbouring non-lattice bins predict there, as a fraction of the total (non-DC) power:
``sum_lattice (P - baseline) / sum_nonDC P``. Its null is the map's own smooth spectrum:

1. each map has its mean removed, then each column's and each row's least-squares linear trend
   (ramps, whose wrap-around step would leak into every bin; line by line, not one plane, so that
   a separable map ``g(row) * h(col)`` stays separable). The trend takes a little of a lattice
   with it (on 8x8 a pure period-2 checkerboard scores 0.90, period 4 0.53; 16x16 and up: ~1);
2. the baseline at a lattice bin ``(i, j)`` uses the nearest non-lattice rows ``I`` (one above,
   one below) and columns ``J``: ``P[i, J].sum() * P[I, j].sum() / P[I, J].sum()``, exact for any
   separable spectrum ``u(row) * v(col)``: Gaussian blobs of any width at any position (also cut
   by the border), smoothed noise in expectation, and white noise (unbiased up to the ratio's
   noise); the baseline is clipped to the range of its four neighbours ``P[i, J]``, ``P[I, j]``
   so that a near-zero denominator cannot blow it up.

Reading it: about 0 for white noise, smooth maps (blobs, ramps, smoothed noise) and constant
maps; a planted period-2/4 lattice adds its power share (a pure lattice scores about 1), so the
score grows with the lattice amplitude ``a`` (about as ``a**2`` while the lattice is weak).
Negative values are noise (or a map whose spectrum is not smooth from bin to bin). Scale of
"about 0", measured: ``|score| < 0.03`` on 16x16 and 28x28 maps (single blobs of sigma 0.5-4 at
any position, ramps, sums, smoothed noise, white noise averaged over 32 channels). On 8x8 maps it
is weaker: single smooth blobs and ramps within 0.08, white noise averaged over 64 channels
within 0.02 on average, but one 8x8 map whose content is spread over the whole map (distant
blobs, a single noise map) is not smooth from bin to bin and can be off by 0.15 or more; and a
weak period-4 checkerboard on 8x8 may not register. Average many maps, and measure final maps of
16x16 or larger when the claim matters. It needs maps of at least 8x8.
The expected value under the null, :data:`GRIDDING_CHANCE`, is 0 for every map size.

:func:`lattice_power_share` (the earlier measure) is the plain share of the (plane-detrended)
power at the lattice bins, in ``[0, 1]``: a checkerboard scores 1, white noise
:func:`lattice_share_chance` (``15 / (H*W - 1)`` for periods (2, 4) on sizes divisible by 4:
0.24 on 8x8, 0.015 on 32x32), but smooth maps score below chance and off-centre blobs above it,
so it measures sharpness and position as much as gridding. Kept for comparison.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "GRIDDING_CHANCE",
    "MIN_GRIDDING_SIZE",
    "gridding_score",
    "gridding_scores",
    "lattice_mask",
    "lattice_power_share",
    "lattice_share_chance",
    "power_spectrum",
]

GRIDDING_CHANCE = 0.0  # expected gridding_score of white noise and smooth maps, any size
MIN_GRIDDING_SIZE = 8  # smaller maps have (almost) only lattice bins: no baseline to compare


def _bins(size: int, period: int) -> set[int]:
    bins = set()
    for k in range(period):
        twice = 2 * k * size  # 2 * period * (exact bin position), kept in integers
        low, rest = divmod(twice, 2 * period)
        if rest == period:  # exactly half-way between two bins: take both
            bins.update({low % size, (low + 1) % size})
        else:
            bins.add((low + (rest > period)) % size)
    return bins


def lattice_mask(height: int, width: int, dilations: Iterable[int] = (2, 4)) -> torch.Tensor:
    """Boolean ``[height, width]`` mask of the FFT bins at the lattice frequencies, DC excluded.

    For each period ``p`` in ``dilations`` the bins nearest ``(k * height / p, l * width / p)`` for
    ``k, l = 0 .. p-1`` (both neighbours when half-way) are set; the union is returned.
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    for period in dilations:
        if int(period) != period or period < 2:
            raise ValueError(f"dilations must be integers >= 2, got {period}")
        rows = sorted(_bins(height, int(period)))
        cols = sorted(_bins(width, int(period)))
        mask[np.ix_(rows, cols)] = True
    mask[0, 0] = False
    return mask


def _as_maps(activation: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(activation).detach()
    if x.dim() < 2 or x.dim() > 4:
        raise ValueError(f"activation must be [H, W], [C, H, W] or [N, C, H, W]; got {x.shape}")
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"activation maps must be at least 2x2; got {tuple(x.shape[-2:])}")
    return x.to(torch.float64).reshape(-1, x.shape[-2], x.shape[-1])


def _detrend(maps: torch.Tensor) -> torch.Tensor:
    """Subtract each map's least-squares plane (centred coordinates make the fit separable)."""
    height, width = maps.shape[-2:]
    rows = torch.arange(height, dtype=maps.dtype, device=maps.device) - (height - 1) / 2
    cols = torch.arange(width, dtype=maps.dtype, device=maps.device) - (width - 1) / 2
    rows, cols = rows[:, None].expand(height, width), cols[None, :].expand(height, width)
    mean = maps.mean(dim=(-2, -1), keepdim=True)
    b = (maps * rows).sum(dim=(-2, -1), keepdim=True) / rows.square().sum()
    c = (maps * cols).sum(dim=(-2, -1), keepdim=True) / cols.square().sum()
    return maps - mean - b * rows - c * cols


def _line_detrend(maps: torch.Tensor) -> torch.Tensor:
    """Remove each map's mean, then each column's and each row's least-squares linear trend.

    Line by line rather than one plane: ``g(row) * h(col)`` minus per-column trends
    ``row * b(col)``, with ``b`` proportional to ``h``, is still separable, as the baseline needs.
    """
    height, width = maps.shape[-2:]
    rows = torch.arange(height, dtype=maps.dtype, device=maps.device) - (height - 1) / 2
    cols = torch.arange(width, dtype=maps.dtype, device=maps.device) - (width - 1) / 2
    maps = maps - maps.mean(dim=(-2, -1), keepdim=True)
    maps = maps - rows[:, None] * (maps * rows[:, None]).sum(-2, keepdim=True) / rows.square().sum()
    return maps - cols * (maps * cols).sum(-1, keepdim=True) / cols.square().sum()


def power_spectrum(activation: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mean power spectrum ``[H, W]`` (unshifted: DC at ``[0, 0]``) of the plane-detrended maps
    of ``activation`` (``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]``), averaged over all maps.

    This is the spectrum :func:`lattice_power_share` reads."""
    maps = _detrend(_as_maps(activation))
    return torch.fft.fft2(maps).abs().square().mean(dim=0)


def lattice_power_share(
    activation: torch.Tensor | np.ndarray, dilations: Sequence[int] = (2, 4)
) -> float:
    """The earlier measure: share of the non-DC spectral power of ``activation`` at the lattice
    frequencies of ``dilations``, in ``[0, 1]`` (see the module docstring).

    A planted checkerboard scores 1, white noise :func:`lattice_share_chance`, a smooth map below
    chance, an off-centre blob possibly above: compare only maps of one size, against chance.

    Args:
        activation: ``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]`` (tensor or array, any device).
        dilations: the lattice periods in pixels of the map.

    Returns:
        The share; 0.0 for a constant map.
    """
    spectrum = power_spectrum(activation)
    total = spectrum.sum() - spectrum[0, 0]
    if total <= 0:
        return 0.0
    mask = lattice_mask(*spectrum.shape, dilations).to(spectrum.device)
    return float(spectrum[mask].sum() / total)


def lattice_share_chance(height: int, width: int, dilations: Sequence[int] = (2, 4)) -> float:
    """The expected :func:`lattice_power_share` of white noise on ``height x width`` maps."""
    return float(lattice_mask(height, width, dilations).sum()) / (height * width - 1)


def _nearest_free(index: int, size: int, taken: set[int]) -> list[int]:
    """The nearest index on each side of ``index`` (circularly) that is not in ``taken``."""
    found = []
    for step in (-1, 1):
        k = (index + step) % size
        while k in taken:
            k = (k + step) % size
        found.append(k)
    return found


def _lattice_excess(spectrum: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum over lattice bins of power minus its separable baseline (module docstring, step 2)."""
    height, width = spectrum.shape
    lattice_rows = set(mask.any(dim=1).nonzero().flatten().tolist()) | {0}
    lattice_cols = set(mask.any(dim=0).nonzero().flatten().tolist()) | {0}
    excess = 0.0
    for i, j in mask.nonzero().tolist():
        rows = _nearest_free(i, height, lattice_rows)
        cols = _nearest_free(j, width, lattice_cols)
        along_row, along_col = spectrum[i, cols], spectrum[rows, j]
        ring = torch.cat([along_row, along_col])
        corner = spectrum[rows][:, cols].sum()
        if corner > 0:
            baseline = along_row.sum() * along_col.sum() / corner
        else:  # nothing off the axis: the rank-1 model is undetermined, take the ring's top
            baseline = ring.max()
        excess += float(spectrum[i, j] - baseline.clamp(ring.min(), ring.max()))
    return excess


def gridding_score(
    activation: torch.Tensor | np.ndarray, dilations: Sequence[int] = (2, 4)
) -> float:
    """Excess spectral power of ``activation`` at the lattice frequencies of ``dilations`` over
    the baseline its neighbouring non-lattice frequencies predict, as a fraction of the total
    non-DC power (see the module docstring).

    About 0 (:data:`GRIDDING_CHANCE`) for white noise and smooth maps at any size; a planted
    lattice adds its share of the power (1 for a pure lattice). Spectra of all channels and
    samples are averaged first (power-weighted).

    Args:
        activation: ``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]`` (tensor or array, any device),
            maps of at least 8x8.
        dilations: the lattice periods in pixels of the map.

    Returns:
        The score; 0.0 for a constant (or purely linear) map.

    Raises:
        ValueError: maps smaller than 8x8, or a bad shape or dilation.
    """
    maps = _as_maps(activation)
    height, width = maps.shape[-2:]
    if min(height, width) < MIN_GRIDDING_SIZE:
        raise ValueError(
            f"gridding_score needs maps of at least {MIN_GRIDDING_SIZE}x{MIN_GRIDDING_SIZE}; "
            f"got {height}x{width}"
        )
    spectrum = torch.fft.fft2(_line_detrend(maps)).abs().square().mean(dim=0).cpu()
    total = float(spectrum.sum() - spectrum[0, 0])
    # rounding leaves ~1e-30 of a linear map's power: treat it as no power at all
    if total <= 1e-24 * float(maps.square().sum().cpu()) or total == 0.0:
        return 0.0
    return _lattice_excess(spectrum, lattice_mask(height, width, dilations)) / total


def gridding_scores(
    features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    dilations: Sequence[int] = (2, 4),
) -> dict[str, dict[str, float | int | None]]:
    """Score each named (or numbered) feature map with both measures.

    Returns:
        ``{name: {"score", "chance", "lattice_share", "lattice_share_chance", "height",
        "width"}}`` in input order: ``score`` is :func:`gridding_score` and ``chance`` its null
        value (0.0); both are None for maps smaller than 8x8. ``lattice_share`` is
        :func:`lattice_power_share` and ``lattice_share_chance`` its white-noise level (None for
        maps smaller than 2x2).
    """
    items = features.items() if isinstance(features, Mapping) else enumerate(features)
    result = {}
    for name, activation in items:
        height, width = (int(n) for n in activation.shape[-2:])
        big_enough = min(height, width) >= MIN_GRIDDING_SIZE
        has_spectrum = min(height, width) >= 2  # an 8x8 image has 1x1 maps at stride 8
        result[str(name)] = {
            "score": gridding_score(activation, dilations) if big_enough else None,
            "chance": GRIDDING_CHANCE if big_enough else None,
            "lattice_share": lattice_power_share(activation, dilations) if has_spectrum else None,
            "lattice_share_chance": (
                lattice_share_chance(height, width, dilations) if has_spectrum else None
            ),
            "height": height,
            "width": width,
        }
    return result
