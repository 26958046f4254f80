"""The one builder: turns a :class:`~drnet.models.spec.ModelSpec` into a network.

The module names reproduce the official key layouts (docs/design.md, "Checkpoint keys"): DRN-C
and the torchvision ResNets name their stem ``conv1``/``bn1``, DRN-D calls it ``layer0``; levels
are ``layer1`` ... ``layerN``; the classifier is ``fc`` (a 1x1 conv for DRN-B/C/D, a Linear for
ResNet and DRN-A).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from drnet.models.blocks import block_level, conv_level
from drnet.models.spec import ModelSpec


@contextlib.contextmanager
def _keep_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Undo the running-statistics update of the BatchNorms in ``module`` on exit.

    Gradient checkpointing re-runs a level's forward in backward; in train mode that second pass
    would update running_mean/var (and num_batches_tracked) a second time. The recompute pass is
    run under this context so the buffers end exactly as after one forward pass. (The recomputed
    outputs use batch statistics, so they do not depend on the buffers.)
    """
    saved = [
        (buffer, buffer.clone())
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buffer is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def checkpoint_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its activations recomputed in backward (non-reentrant checkpoint);
    BatchNorm running statistics are updated once, as without checkpointing."""
    return checkpoint(
        module,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _keep_batchnorm_stats(module)),
    )


class FeatureInfo(list):
    """Per-level ``{"num_chs", "reduction", "module"}`` dicts, as in timm."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]


class DRN(nn.Module):
    """A dilated (or plain) residual network built from a spec.

    Args:
        spec: the architecture.
        num_classes: classifier outputs; 0 builds none (``forward`` returns pooled features).
        out_map: ``forward`` returns the dense class map ``[N, classes, h, w]`` (the classifier
            applied at every position, no global pooling), the paper's localization mode.
        features_only: ``forward`` returns the feature maps of ``out_indices``; no classifier.
        out_indices: which feature levels to return (index 0 is the stem, i is ``layer{i}``).
        in_chans: input channels.
    """

    def __init__(
        self,
        spec: ModelSpec,
        num_classes: int = 1000,
        out_map: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.out_map = out_map
        self.features_only = features_only
        self.grad_checkpointing = False

        stem = spec.stem
        stem_conv = nn.Conv2d(
            in_chans,
            stem.channels,
            kernel_size=stem.kernel_size,
            stride=stem.stride,
            padding=stem.kernel_size // 2,
            bias=False,
        )
        if stem.layout == "sequential":
            self.layer0 = nn.Sequential(stem_conv, nn.BatchNorm2d(stem.channels), nn.ReLU(True))
            self.stem_names: list[str] = ["layer0"]
        else:
            self.conv1 = stem_conv
            self.bn1 = nn.BatchNorm2d(stem.channels)
            self.relu = nn.ReLU(inplace=True)
            self.stem_names = ["conv1", "bn1", "relu"]
        if stem.maxpool:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        feature_info = FeatureInfo(
            [{"num_chs": stem.channels, "reduction": stem.stride, "module": self.stem_names[-1]}]
        )
        reduction = stem.stride * (2 if stem.maxpool else 1)
        in_channels = stem.channels
        self.level_names: list[str] = []
        for index, level in enumerate(spec.levels, start=1):
            if level.count == 0:
                continue
            if level.kind == "conv":
                module = conv_level(
                    in_channels, level.channels, level.count, level.stride, level.dilation
                )
            else:
                module = block_level(
                    level.kind,
                    in_channels,
                    level.channels,
                    level.count,
                    level.stride,
                    level.dilation,
                    level.first_dilation,
                    level.residual,
                )
            name = f"layer{index}"
            self.add_module(name, module)
            self.level_names.append(name)
            in_channels = level.out_channels
            reduction *= level.stride
            feature_info.append({"num_chs": in_channels, "reduction": reduction, "module": name})
        self.num_features = self.out_dim = in_channels
        self.output_stride = reduction

        n_features = len(feature_info)
        if out_indices is None:
            out_indices = tuple(range(n_features))
        out_indices = tuple(i if i >= 0 else n_features + i for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < n_features]
        if bad:
            raise ValueError(f"out_indices {bad} out of range: this model has {n_features} levels")
        self.out_indices = out_indices
        self.feature_info = (
            FeatureInfo(feature_info[i] for i in out_indices) if features_only else feature_info
        )

        if not features_only:
            # Adaptive: the official fixed AvgPool2d(28) is silently wrong at sizes other than 224.
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            if num_classes > 0:
                if spec.classifier == "linear":
                    self.fc = nn.Linear(in_channels, num_classes)
                else:
                    self.fc = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=True)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not getattr(self, "fc", None):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- structure -------------------------------------------------------------------------------

    def stem_modules(self) -> list[nn.Module]:
        """The stem's modules in order (with the max-pool when there is one)."""
        modules = [getattr(self, name) for name in self.stem_names]
        if self.spec.stem.maxpool:
            modules.append(self.maxpool)
        return modules

    def levels(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.level_names]

    def body_modules(self) -> list[nn.Module]:
        """Stem then levels: the official ``children()[:-2]`` that DRNSeg keeps as ``base``."""
        return self.stem_modules() + self.levels()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each level's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    # -- forward ---------------------------------------------------------------------------------

    def _run_level(self, level: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint_module(level, x)
        return level(x)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stem_names:
            x = getattr(self, name)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last level's feature map ``[N, num_features, H/os, W/os]``."""
        x = self._stem(x)
        if self.spec.stem.maxpool:
            x = self.maxpool(x)
        for level in self.levels():
            x = self._run_level(level, x)
        return x

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps of ``out_indices`` (0 = stem, i = ``layer{i}``)."""
        wanted = set(self.out_indices)
        features = []
        x = self._stem(x)
        if 0 in wanted:
            features.append(x)
        if self.spec.stem.maxpool:
            x = self.maxpool(x)
        for index, level in enumerate(self.levels(), start=1):
            x = self._run_level(level, x)
            if index in wanted:
                features.append(x)
        return features

    def classify_map(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier applied at every position of a feature map (no pooling)."""
        if self.spec.classifier == "linear":
            return F.conv2d(features, self.fc.weight[:, :, None, None], self.fc.bias)
        return self.fc(features)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """Dense class-response map ``[N, num_classes, ceil(H/os), ceil(W/os)]``."""
        if self.features_only or self.num_classes <= 0:
            raise RuntimeError("forward_map needs a model with a classifier")
        return self.classify_map(self.forward_features(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.avgpool(features)
        if self.num_classes <= 0:
            return pooled.flatten(1)
        if self.spec.classifier == "linear":
            return self.fc(pooled.flatten(1))
        return self.fc(pooled).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x)
        if self.out_map:
            return self.forward_map(x)
        return self.forward_head(self.forward_features(x))
