"""A quantitative gridding score: how much of an activation map's variation is a dilation lattice.

Dilated convolutions with dilation ``d`` see the input on a lattice of spacing ``d``; when the
input has high-frequency content at that spacing the output can inherit a checkerboard-like
pattern of period ``d`` ("gridding", the artifact DRN-B and DRN-C remove). A pattern that repeats
every ``p`` pixels along both axes has all its spectral power at the frequencies
``(k / p, l / p)`` cycles per pixel, ``k, l = 0 .. p-1``: its *lattice frequencies*.

:func:`gridding_score` is the share of an activation's spectral power at the lattice frequencies
of the given periods (default 2 and 4: the dilations of DRN levels 5 and 6), DC excluded:

1. every map (each channel of each sample) has its least-squares plane ``a + b*row + c*col``
   subtracted: its mean, and any linear ramp, whose wrap-around step would otherwise leak power
   into every bin (a gradient is not gridding);
2. its power spectrum ``|FFT2(map)|^2`` is computed, and the spectra of all maps are averaged
   (so each map counts in proportion to its energy; dead channels count for nothing);
3. the score is the averaged power on the lattice bins over the averaged power on all bins but
   DC (bin (0, 0)).

On an ``H x W`` map, frequency ``k / p`` falls on bin ``k * H / p``; when that is not an integer
(``H`` not divisible by ``p``, e.g. odd sizes) the nearest bin is used, and both neighbours when it
lies half-way (period 2 on an odd size), so the bin set stays symmetric (real maps have symmetric
spectra) and most of the leaked power of an imperfect lattice is still counted.

Reading the score: a planted period-2 or period-4 checkerboard scores 1, a smooth map (a blob, a
ramp) close to 0, and white noise about :func:`chance_score`, the fraction of non-DC bins that are
lattice bins: ``15 / (H*W - 1)`` for periods (2, 4) on sizes divisible by 4, which is 0.24 on an
8x8 map but 0.015 on 32x32. Compare scores only between maps of the same size, and against the
chance level; the score is invariant to the scale, offset and linear trend of the map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["chance_score", "gridding_score", "gridding_scores", "lattice_mask", "power_spectrum"]


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


def power_spectrum(activation: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mean power spectrum ``[H, W]`` (unshifted: DC at ``[0, 0]``) of the detrended maps of
    ``activation`` (``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]``), averaged over all maps."""
    maps = _detrend(_as_maps(activation))
    return torch.fft.fft2(maps).abs().square().mean(dim=0)


def gridding_score(
    activation: torch.Tensor | np.ndarray, dilations: Sequence[int] = (2, 4)
) -> float:
    """Share of the non-DC spectral power of ``activation`` at the lattice frequencies of
    ``dilations`` (see the module docstring), in ``[0, 1]``.

    Args:
        activation: ``[H, W]``, ``[C, H, W]`` or ``[N, C, H, W]`` (tensor or array, any device).
        dilations: the lattice periods in pixels of the map.

    Returns:
        The score; 0.0 for a constant map.
    """
    spectrum = power_spectrum(activation)
    total = spectrum.sum() - spectrum[0, 0]
    if total <= 0:
        return 0.0
    mask = lattice_mask(*spectrum.shape, dilations).to(spectrum.device)
    return float(spectrum[mask].sum() / total)


def chance_score(height: int, width: int, dilations: Sequence[int] = (2, 4)) -> float:
    """The expected :func:`gridding_score` of white noise on ``height x width`` maps."""
    return float(lattice_mask(height, width, dilations).sum()) / (height * width - 1)


def gridding_scores(
    features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    dilations: Sequence[int] = (2, 4),
) -> dict[str, dict[str, float]]:
    """Score each named (or numbered) feature map.

    Returns:
        ``{name: {"score": s, "chance": c, "height": h, "width": w}}`` in input order.
    """
    items = features.items() if isinstance(features, Mapping) else enumerate(features)
    result = {}
    for name, activation in items:
        height, width = activation.shape[-2:]
        result[str(name)] = {
            "score": gridding_score(activation, dilations),
            "chance": chance_score(height, width, dilations),
            "height": int(height),
            "width": int(width),
        }
    return result
