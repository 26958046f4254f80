"""DRNSeg's ``up`` (a fixed grouped ConvTranspose2d) computed as two small matrix products, and
labels (arg-max over classes) at full resolution without materialising all the logits.

The official kernel is an outer product ``u v^T`` per class (bilinear), so the transposed conv is
separable: ``up(low)[c] = A_c @ low[c] @ B_c^T`` with ``A_c[y, i] = u_c[y + p - s*i]`` (zero
outside the kernel) and the same for ``B_c``. Rows and columns beyond the crop are simply left
out of ``A`` and ``B``. A checkpoint's ``up.weight`` is honoured: the matrices are built from it,
and a kernel that is not separable falls back to the transposed conv.

For labels only, the rows are produced in chunks and each chunk is reduced to its arg-max at
once (log-softmax is monotonic, so it is skipped): full-resolution logits never exist at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def separable_factors(
    weight: torch.Tensor, rtol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, v)`` with ``weight[c, 0] == outer(u[c], v[c])`` for a ``[C, 1, K, K]`` kernel.

    Raises ``ValueError`` when some channel's kernel is not (numerically) rank one.
    """
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"expected a [C, 1, K, K] depthwise kernel, got {tuple(weight.shape)}")
    w = weight[:, 0].double()
    flat = w.flatten(1)
    pivot = flat.abs().argmax(1)
    rows, cols = pivot // w.shape[2], pivot % w.shape[2]
    index = torch.arange(w.shape[0])
    peak = w[index, rows, cols]
    if (peak == 0).any():
        raise ValueError("a class has an all-zero up-sampling kernel")
    v = w[index, rows, :]  # the pivot row
    u = w[index, :, cols] / peak[:, None]  # the pivot column, scaled so that u[row] = 1
    rebuilt = u[:, :, None] * v[:, None, :]
    if not torch.allclose(rebuilt, w, rtol=0.0, atol=rtol * float(w.abs().max())):
        raise ValueError("the up-sampling kernel is not separable")
    return u, v


def transposed_conv_matrix(
    profile: torch.Tensor, in_size: int, out_size: int, stride: int, padding: int
) -> torch.Tensor:
    """``[C, out_size, in_size]``: the 1-D transposed conv with ``profile [C, K]`` as a matrix
    (``out[y] = sum_i profile[y + padding - stride*i] * in[i]``), rows past ``out_size`` cropped."""
    kernel = profile.shape[1]
    y = torch.arange(out_size)[:, None]
    i = torch.arange(in_size)[None, :]
    tap = y + padding - stride * i
    valid = (tap >= 0) & (tap < kernel)
    values = profile[:, tap.clamp(0, kernel - 1)]
    return values * valid


class SeparableUpsample(nn.Module):
    """``up(low)[..., :H, :W]`` of a DRNSeg as ``A @ low @ B^T`` (per class)."""

    def __init__(self, up: nn.ConvTranspose2d) -> None:
        super().__init__()
        if up.kernel_size[0] != up.kernel_size[1] or up.stride[0] != up.stride[1]:
            raise ValueError("expected a square up-sampling kernel and stride")
        if up.groups != up.in_channels or up.out_channels != up.in_channels:
            raise ValueError("expected a per-class (grouped) up-sampling conv")
        if up.bias is not None or up.output_padding != (0, 0) or up.dilation != (1, 1):
            raise ValueError("expected no bias, output padding or dilation")
        u, v = separable_factors(up.weight.detach().cpu())
        self.register_buffer("u", u.to(up.weight.dtype), persistent=False)
        self.register_buffer("v", v.to(up.weight.dtype), persistent=False)
        self.stride = up.stride[0]
        self.padding = up.padding[0]
        self.kernel_size = up.kernel_size[0]
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def matrices(
        self, low_size: tuple[int, int], size: tuple[int, int], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``A [C, H, h]`` and ``B^T [C, w, W]`` for low-res ``(h, w)`` and output ``(H, W)``."""
        key = (tuple(low_size), tuple(size), dtype, self.u.device)
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            a = transposed_conv_matrix(self.u, low_size[0], size[0], self.stride, self.padding)
            b = transposed_conv_matrix(self.v, low_size[1], size[1], self.stride, self.padding)
            self._cache[key] = (a.to(dtype).contiguous(), b.transpose(1, 2).to(dtype).contiguous())
        return self._cache[key]

    def forward(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[N, C, H, W]`` (the transposed conv's output cropped to ``size``)."""
        height, width = int(size[0]), int(size[1])
        self._check(low, height, width)
        a, bt = self.matrices(low.shape[-2:], (height, width), low.dtype)
        low = low.contiguous()
        return torch.matmul(a, torch.matmul(low, bt))

    def labels(
        self, low: torch.Tensor, size: tuple[int, int], chunk_rows: int = 64
    ) -> torch.Tensor:
        """``argmax_c`` of :meth:`forward` as ``[N, H, W]`` int64, ``chunk_rows`` rows at a time."""
        height, width = int(size[0]), int(size[1])
        self._check(low, height, width)
        a, bt = self.matrices(low.shape[-2:], (height, width), low.dtype)
        columns = torch.matmul(low.contiguous(), bt)  # [N, C, h, W]: up-sampled along W only
        labels = torch.empty(low.shape[0], height, width, dtype=torch.long, device=low.device)
        for top in range(0, height, chunk_rows):
            bottom = min(height, top + chunk_rows)
            # rows top..bottom only depend on a few low-res rows: slice them to save work
            first = max(0, _ceil_div(top + self.padding - self.kernel_size + 1, self.stride))
            last = min(low.shape[-2], (bottom - 1 + self.padding) // self.stride + 1)
            rows = torch.matmul(a[:, top:bottom, first:last], columns[:, :, first:last])
            labels[:, top:bottom] = rows.argmax(1)
        return labels

    def _check(self, low: torch.Tensor, height: int, width: int) -> None:
        if low.shape[1] != self.u.shape[0]:
            raise ValueError(f"expected {self.u.shape[0]} classes, got {low.shape[1]}")
        limit_h = low.shape[-2] * self.stride
        limit_w = low.shape[-1] * self.stride
        if height > limit_h or width > limit_w:
            raise ValueError(
                f"output {height}x{width} larger than the up-sampled {limit_h}x{limit_w}"
            )


def upsample_labels_reference(
    up: nn.ConvTranspose2d, low: torch.Tensor, size: tuple[int, int], chunk_rows: int = 64
) -> torch.Tensor:
    """Labels through the transposed conv itself, a band of rows at a time (any kernel)."""
    height, width = int(size[0]), int(size[1])
    stride, padding = up.stride[0], up.padding[0]
    kernel = up.kernel_size[0]
    chunk_rows = max(stride, chunk_rows - chunk_rows % stride)
    labels = torch.empty(low.shape[0], height, width, dtype=torch.long, device=low.device)
    for top in range(0, height, chunk_rows):
        bottom = min(height, top + chunk_rows)
        first = max(0, _ceil_div(top + padding - kernel + 1, stride))
        last = min(low.shape[-2], (bottom - 1 + padding) // stride + 1)
        band = F.conv_transpose2d(
            low[:, :, first:last], up.weight, None, stride, 0, groups=up.groups
        )
        offset = top + padding - stride * first
        rows = band[:, :, offset : offset + bottom - top, padding : padding + width]
        labels[:, top:bottom] = rows.argmax(1)
    return labels
