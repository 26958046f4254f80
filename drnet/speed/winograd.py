"""Winograd F(4x4, 3x3) for the wide 3x3 convolutions, dilated ones included.

A 3x3 convolution with stride 1 computes each 4x4 block of outputs from a 6x6 block of inputs.
Winograd's minimal filtering (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016) does it with 36 multiplications per input/output channel pair instead of 144:
the input tiles and the weights are transformed (``B^T d B``, ``G g G^T``), multiplied
element-wise, which over the channels is 36 independent matrix products, and transformed back
(``A^T m A``). The matrix products hold the work, a quarter of the direct convolution's, and
run in the BLAS at its peak; the transforms are additions over the tiles.

A convolution with dilation ``d`` (DRN's levels 5-8) is ``d * d`` undilated convolutions on the
interleaved sub-grids of its input (``x[i::d, j::d]``), so it takes the same path after a
space-to-batch reshuffle.

In float32 the result differs from the direct convolution by a few 1e-6 of its largest value
(the direct one by a few 1e-7); the transforms are computed in float64 and rounded once. It
pays for wide layers: measured on a 2-core AMD EPYC, 2 threads, a 512->512 layer on a 64x128
map took 0.6x the time of torch's oneDNN convolution, a 256->256 one 0.55x, while below 64
channels the transforms cost more than the product saves; :func:`apply_winograd` therefore
converts only layers with at least :data:`MIN_CHANNELS` input and output channels, and the
fast-path chooser keeps the result only where it measured faster
(:mod:`drnet.speed.chooser`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: input transform B^T (6x6), weight transform G (6x3), output transform A^T (4x6) of F(4x4, 3x3)
B_T = (
    (4.0, 0.0, -5.0, 0.0, 1.0, 0.0),
    (0.0, -4.0, -4.0, 1.0, 1.0, 0.0),
    (0.0, 4.0, -4.0, -1.0, 1.0, 0.0),
    (0.0, -2.0, -1.0, 2.0, 1.0, 0.0),
    (0.0, 2.0, -1.0, -2.0, 1.0, 0.0),
    (0.0, 4.0, 0.0, -5.0, 0.0, 1.0),
)
G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)
A_T = (
    (1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
    (0.0, 1.0, -1.0, 2.0, -2.0, 0.0),
    (0.0, 1.0, 1.0, 4.0, 4.0, 0.0),
    (0.0, 1.0, -1.0, 8.0, -8.0, 1.0),
)
TILE = 4  # outputs per tile side
MIN_CHANNELS = 64
#: transformed tiles per band of tile rows, in bytes (:func:`winograd_conv3x3`)
BAND_BYTES = 16 * 2**20


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of a ``[K, C, 3, 3]`` weight, as ``[36, C, K]`` float32 (computed in float64)."""
    g = torch.tensor(G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def _combine(terms: list[torch.Tensor], coefficients: tuple[float, ...], out: torch.Tensor) -> None:
    """``out = sum(c * t)`` over the non-zero coefficients, written into ``out``."""
    first = True
    for coefficient, term in zip(coefficients, terms, strict=True):
        if coefficient == 0.0:
            continue
        if first:
            if coefficient == 1.0:
                out.copy_(term)
            else:
                torch.mul(term, coefficient, out=out)
            first = False
        else:
            out.add_(term, alpha=coefficient)


def winograd_conv3x3(
    x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, dilation: int = 1
) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=dilation, dilation=dilation)`` for a 3x3 ``w`` given as
    ``weight_t = transform_weight(w)``; ``x`` is ``[N, C, H, W]`` float32 in any layout; the
    result is ``[N, K, H, W]`` in channels_last memory."""
    n, channels, height, width = x.shape
    outputs = weight_t.shape[2]
    d = dilation
    step = TILE * d
    padded_h, padded_w = -(-height // step) * step, -(-width // step) * step
    # N, H, W, C with the 'same' padding, rounded up to whole tiles of every sub-grid
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, d, d + padded_w - width, d, d + padded_h - height))
    if d > 1:  # space-to-batch: the d*d sub-grids become images of an undilated conv
        gh, gw = xp.shape[1] // d, xp.shape[2] // d
        xp = xp.reshape(n, gh, d, gw, d, channels).permute(0, 2, 4, 1, 3, 5)
        xp = xp.reshape(n * d * d, gh, gw, channels)
    images, rows, cols = xp.shape[0], (xp.shape[1] - 2) // TILE, (xp.shape[2] - 2) // TILE
    y = x.new_empty(images, rows, TILE, cols, TILE, outputs)
    # bands of tile rows whose transformed tiles fit in about BAND_BYTES (the transforms are
    # passes over memory: out of cache they cost more than the products they save)
    per_row = 36 * images * cols * max(channels, outputs) * x.element_size()
    band = max(1, min(rows, BAND_BYTES // per_row))
    work = _Buffers(x, images * band, cols, xp.shape[2], channels, outputs)
    for first in range(0, rows, band):
        last = min(rows, first + band)
        rows_in = xp[:, TILE * first : TILE * last + 2]
        _tile_band(rows_in, weight_t, bias, y[:, first:last], work)
    y = y.view(images, rows * TILE, cols * TILE, outputs)
    if d > 1:  # batch-to-space
        y = y.view(n, d, d, rows * TILE, cols * TILE, outputs).permute(0, 3, 1, 4, 2, 5)
        y = y.reshape(n, padded_h, padded_w, outputs)
    if padded_h != height or padded_w != width:
        y = y[:, :height, :width].contiguous()
    return y.permute(0, 3, 1, 2)


class _Buffers:
    """The work buffers of one call, sized for its largest band and reused by every band (a
    fresh allocation of tens of MB per band would cost page faults each time)."""

    def __init__(
        self, like: torch.Tensor, tiles_rows: int, cols: int, width: int, channels: int,
        outputs: int,
    ) -> None:  # fmt: skip
        self.v = like.new_empty(36 * tiles_rows * cols * channels)
        self.m = like.new_empty(36 * tiles_rows * cols * outputs)
        stripe = max(tiles_rows * width * channels, 6 * tiles_rows * cols * outputs)
        self.stripe = like.new_empty(stripe)

    @staticmethod
    def take(buffer: torch.Tensor, *shape: int) -> torch.Tensor:
        """A contiguous ``shape`` view of the start of ``buffer``."""
        return buffer[: math.prod(shape)].view(shape)


def _tile_band(
    xp: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    work: _Buffers,
) -> None:
    """One band of tile rows: ``xp`` ``[images, 4 * rows + 2, 4 * cols + 2, C]`` (padded input
    rows), ``y`` ``[images, rows, 4, cols, 4, K]`` (written)."""
    images, channels = xp.shape[0], xp.shape[3]
    rows, cols, outputs = y.shape[1], y.shape[3], y.shape[5]
    # input transform B^T d B, rows then columns, on strided views (no tile copies)
    row_terms = [xp[:, i : i + TILE * rows : TILE] for i in range(6)]
    v = work.take(work.v, 36, images, rows, cols, channels)
    stripe = work.take(work.stripe, images, rows, xp.shape[2], channels)
    for a in range(6):
        _combine(row_terms, B_T[a], stripe)
        col_terms = [stripe[:, :, j : j + TILE * cols : TILE] for j in range(6)]
        for b in range(6):
            _combine(col_terms, B_T[b], v[6 * a + b])
    m = work.take(work.m, 36, images * rows * cols, outputs)
    torch.bmm(v.view(36, -1, channels), weight_t, out=m)
    m = m.view(6, 6, images, rows, cols, outputs)
    # output transform A^T m A (+ bias) into y
    stripe = work.take(work.stripe, 6, images, rows, cols, outputs)
    m_rows = [m[i] for i in range(6)]
    for a in range(TILE):
        _combine(m_rows, A_T[a], stripe)
        col_terms = [stripe[j] for j in range(6)]
        for b in range(TILE):
            out = y[:, :, a, :, b]
            _combine(col_terms, A_T[b], out)
            if bias is not None:
                out.add_(bias)


def eligible(conv: nn.Module, min_channels: int = MIN_CHANNELS) -> bool:
    """Whether ``conv`` is a 3x3, stride-1, 'same'-padded, ungrouped float32 ``nn.Conv2d`` with
    at least ``min_channels`` input and output channels."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.groups == 1
        and conv.dilation[0] == conv.dilation[1]
        and conv.padding == conv.dilation
        and conv.padding_mode == "zeros"
        and conv.weight.dtype == torch.float32
        and min(conv.in_channels, conv.out_channels) >= min_channels
    )


class WinogradConv2d(nn.Module):
    """An inference-only stand-in for an eligible ``nn.Conv2d`` (:func:`eligible`), computed
    with :func:`winograd_conv3x3`."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not eligible(conv, min_channels=1):
            raise ValueError(f"not a 3x3 stride-1 'same' float32 conv: {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.dilation = int(conv.dilation[0])
        self.register_buffer("weight_t", transform_weight(conv.weight))
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"WinogradConv2d computes in float32, got {x.dtype}")
        return winograd_conv3x3(x, self.weight_t, self.bias, self.dilation)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=3, dilation={self.dilation}"


def apply_winograd(model: nn.Module, min_channels: int = MIN_CHANNELS) -> int:
    """Replace every eligible conv of ``model`` (in place) by a :class:`WinogradConv2d`;
    returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if eligible(child, min_channels):
                setattr(module, name, WinogradConv2d(child))
                replaced += 1
    return replaced
