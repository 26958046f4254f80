"""Data that describes a network: a stem and a list of levels.

Every DRN variant and every ResNet baseline is one :class:`ModelSpec`; a single builder
(:class:`drnet.models.drn.DRN`) turns any spec into modules. Changing the dilation schedule, the
widths or the residual connections is a spec change, not new code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

LevelKind = Literal["basic", "bottleneck", "conv"]


@dataclass(frozen=True)
class StemSpec:
    """The first layer(s).

    ``layout="separate"`` names them ``conv1``/``bn1``/``relu`` (DRN-C, DRN-A, ResNet);
    ``layout="sequential"`` makes one Sequential ``layer0`` (DRN-D).
    """

    channels: int
    layout: Literal["separate", "sequential"] = "separate"
    kernel_size: int = 7
    stride: int = 1
    maxpool: bool = False  # 3x3 stride-2 max-pool after the stem (ResNet, DRN-A)


@dataclass(frozen=True)
class LevelSpec:
    """One level ``layer{i}``: ``count`` blocks (or plain convs) of one kind.

    ``channels`` is the block's inner width (output = channels x expansion for bottlenecks).
    ``first_dilation`` overrides the two dilations of the first block (None: both = ``dilation``).
    ``residual=False`` drops the shortcut (DRN-C levels 7 and 8).
    """

    kind: LevelKind
    count: int
    channels: int
    stride: int = 1
    dilation: int = 1
    first_dilation: tuple[int, int] | None = None
    residual: bool = True

    @property
    def out_channels(self) -> int:
        return self.channels * (4 if self.kind == "bottleneck" else 1)


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: family (for display), stem, levels and classifier type."""

    family: str  # "A", "B", "C", "D", "ResNet"
    stem: StemSpec
    levels: tuple[LevelSpec, ...]
    classifier: Literal["conv", "linear"] = "conv"  # DRN: 1x1 conv `fc`; torchvision: Linear

    @property
    def out_channels(self) -> int:
        return self.levels[-1].out_channels

    @property
    def output_stride(self) -> int:
        stride = self.stem.stride * (2 if self.stem.maxpool else 1)
        for level in self.levels:
            stride *= level.stride
        return stride

    def with_channels(self, channels: tuple[int, ...] | list[int]) -> ModelSpec:
        """The same network with other level widths (the stem takes the first level's width)."""
        channels = tuple(int(c) for c in channels)
        if len(channels) != len(self.levels):
            raise ValueError(
                f"channels must give one width per level ({len(self.levels)} for this model), "
                f"got {len(channels)}: {channels}"
            )
        levels = tuple(
            dataclasses.replace(level, channels=width)
            for level, width in zip(self.levels, channels, strict=True)
        )
        return dataclasses.replace(
            self, stem=dataclasses.replace(self.stem, channels=channels[0]), levels=levels
        )

    def stride_levels(self) -> list[int]:
        """Indices of the levels whose dilation replaced a stride of 2 (DRN levels 5 and 6,
        DRN-A's layer3 and layer4): those whose dilation exceeds every earlier level's."""
        found, highest = [], 1
        for index, level in enumerate(self.levels):
            if level.dilation > highest and level.stride == 1:
                found.append(index)
                highest = level.dilation
        return found

    def with_output_stride(self, output_stride: int) -> ModelSpec:
        """The same weights at a coarser output stride (16 or 32 for the stride-8 DRNs).

        The stride 2 of the first dilated level(s) is restored (level 5, then level 6 for DRNs;
        layer3, then layer4 for DRN-A), and every dilation from there on is divided by the same
        factor (at least 1). Dilation has no parameters: every state_dict key and shape stays.
        """
        native = self.output_stride
        restorable = self.stride_levels()
        allowed = [native * 2**k for k in range(len(restorable) + 1)]
        if output_stride not in allowed:
            raise ValueError(
                f"output_stride {output_stride} is not available for this model "
                f"(one of {', '.join(map(str, allowed))})"
            )
        steps = (output_stride // native).bit_length() - 1
        levels = list(self.levels)
        factor = 1
        for index, level in enumerate(levels):
            stride = level.stride
            if steps and index in restorable[:steps]:
                stride, factor = 2, factor * 2
            if factor > 1:
                first = level.first_dilation
                levels[index] = dataclasses.replace(
                    level,
                    stride=stride,
                    dilation=max(1, level.dilation // factor),
                    first_dilation=tuple(max(1, d // factor) for d in first) if first else None,
                )
        return dataclasses.replace(self, levels=tuple(levels))

    def with_width(self, multiplier: float, minimum: int = 8) -> ModelSpec:
        """All widths scaled by ``multiplier`` (at least ``minimum`` channels each)."""
        return self.with_channels(
            [max(minimum, int(round(level.channels * multiplier))) for level in self.levels]
        )
