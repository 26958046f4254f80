"""Residual blocks and plain convolution levels of DRN and ResNet.

Module names (``conv1``, ``bn1``, ``conv2``, ..., ``downsample.0/1``) are those of the official DRN
code and of torchvision, so their state_dict keys load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 conv, no bias, padding = dilation (keeps the size at stride 1)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        bias=False,
    )


def downsample_projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """The 1x1 projection shortcut (``downsample.0`` conv, ``downsample.1`` BN)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``dilation`` gives the dilation of each of them.

    With ``residual=False`` (DRN-C levels 7 and 8) the shortcut is dropped: the block is two plain
    conv-BN-ReLU layers, and a ``downsample`` it may own is kept for its keys but never computed.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: tuple[int, int] = (1, 1),
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4). Stride sits on the 3x3 conv (torchvision v1.5)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: tuple[int, int] = (1, 1),
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # The official code dilates the 3x3 conv by the block's second dilation.
        self.conv2 = conv3x3(planes, planes, stride, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def conv_level(
    in_channels: int, channels: int, count: int, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """``count`` x (conv3x3, BN, ReLU) as one flat Sequential (DRN-D levels 1, 2, 7, 8).

    Conv ``j`` sits at index ``3j`` and its BN at ``3j+1``, the official key layout.
    """
    modules: list[nn.Module] = []
    for index in range(count):
        modules += [
            conv3x3(in_channels, channels, stride if index == 0 else 1, dilation),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = channels
    return nn.Sequential(*modules)


def block_level(
    kind: str,
    in_channels: int,
    planes: int,
    count: int,
    stride: int = 1,
    dilation: int = 1,
    first_dilation: tuple[int, int] | None = None,
    residual: bool = True,
) -> nn.Sequential:
    """``count`` residual blocks; the first may stride, project and use ``first_dilation``."""
    block = BLOCKS[kind]
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = downsample_projection(in_channels, out_channels, stride)
    blocks = [
        block(
            in_channels,
            planes,
            stride,
            downsample,
            dilation=first_dilation or (dilation, dilation),
            residual=residual,
        )
    ]
    for _ in range(1, count):
        blocks.append(block(out_channels, planes, dilation=(dilation, dilation), residual=residual))
    return nn.Sequential(*blocks)
