"""The one builder: turns a :class:`~drnet.models.spec.ModelSpec` into a network.

The module names reproduce the official key layouts (docs/design.md, "Checkpoint keys"): DRN-C
and the torchvision ResNets name their stem ``conv1``/``bn1``, DRN-D calls it ``layer0``; levels
are ``layer1`` ... ``layerN``; the classifier is ``fc`` (a 1x1 conv for DRN-B/C/D, a Linear for
ResNet and DRN-A).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from drnet.integrations import hub
from drnet.models.blocks import block_level, conv_level
from drnet.models.pretrained_cfg import make_pretrained_cfg
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
    """Per-feature ``{"num_chs", "reduction", "module"}`` dicts, as in timm (``idx`` picks
    entries, like timm's ``FeatureInfo``)."""

    def _pick(self, key: str, idx: int | Sequence[int] | None) -> Any:
        if idx is None:
            return [info[key] for info in self]
        if isinstance(idx, int):
            return self[idx][key]
        return [self[i][key] for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._pick("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._pick("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._pick("module", idx)

    def get_dicts(self) -> list[dict]:
        return [dict(info) for info in self]


NUM_STAGES = 5  # timm's feature convention: reductions 2, 4, 8, 16, 32 (less where dilated)
GLOBAL_POOLS = ("avg", "max", "")


def _pool(kind: str) -> nn.Module:
    if kind not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of 'avg', 'max', '' (none), got {kind!r}")
    return nn.AdaptiveMaxPool2d(1) if kind == "max" else nn.AdaptiveAvgPool2d(1)


class DRN(nn.Module):
    """A dilated (or plain) residual network built from a spec; follows timm's model protocol.

    Features (``feature_info``, ``out_indices``, :meth:`forward_intermediates`) use timm's
    convention: five stages at nominal reductions 2, 4, 8, 16, 32, each the output of the last
    level at that reduction when the dilated levels are counted as strided (DRN-B/C/D:
    ``layer2``, ``layer3``, ``layer4``, ``layer5``, ``layer8``; DRN-A/ResNet: the stem's ``relu``,
    ``layer1`` ... ``layer4``). In a DRN the last two stages stay at reduction 8 (dilated) unless
    ``output_stride`` is 16 or 32. The stride-1 stem and ``layer1`` of DRN-B/C/D are not stages;
    ``level_info`` lists every level (index 0 the stem, ``i`` = ``layer{i}``).

    Args:
        spec: the architecture.
        num_classes: classifier outputs; 0 builds none (``forward`` returns pooled features).
        out_map: ``forward`` returns the dense class map ``[N, classes, h, w]`` (the classifier
            applied at every position, no global pooling), the paper's localization mode.
        features_only: ``forward`` returns the feature maps of the stages ``out_indices``.
        out_indices: which stages to return (0..4, negative from the end; default all five).
        in_chans: input channels.
        output_stride: 8 (DRNs), 16 or 32: restores strides of the dilated levels (same weights;
            see :meth:`~drnet.models.spec.ModelSpec.with_output_stride`). None keeps the spec's.
        drop_rate: dropout before the classifier (training only).
        global_pool: ``"avg"`` (default), ``"max"`` or ``""`` (none: ``forward_head`` returns the
            dense class map).
    """

    def __init__(
        self,
        spec: ModelSpec,
        num_classes: int = 1000,
        out_map: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        in_chans: int = 3,
        output_stride: int | None = None,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if output_stride is not None and output_stride != spec.output_stride:
            spec = spec.with_output_stride(output_stride)
        self.spec = spec
        self.num_classes = num_classes
        self.out_map = out_map
        self.features_only = features_only
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
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

        level_info = FeatureInfo(
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
            level_info.append({"num_chs": in_channels, "reduction": reduction, "module": name})
        self.num_features = self.out_dim = in_channels
        self.output_stride = reduction
        self.level_info = level_info
        self.stage_levels = _stage_levels(spec, len(level_info))
        stages = FeatureInfo(level_info[i] for i in self.stage_levels)

        out_indices = tuple(range(NUM_STAGES)) if out_indices is None else tuple(out_indices)
        out_indices = tuple(i if i >= 0 else NUM_STAGES + i for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < NUM_STAGES]
        if bad:
            raise ValueError(
                f"out_indices {bad} out of range: features are the {NUM_STAGES} stages 0..4"
            )
        self.out_indices = out_indices
        self.feature_info = FeatureInfo(stages[i] for i in out_indices) if features_only else stages

        if not features_only:
            # Adaptive: the official fixed AvgPool2d(28) is silently wrong at sizes other than 224.
            self.avgpool = _pool(global_pool)
            self._make_classifier(num_classes)
        self._init_weights()
        first_conv = f"{self.stem_names[0]}.0" if stem.layout == "sequential" else "conv1"
        self.pretrained_cfg: dict[str, Any] = make_pretrained_cfg(
            "", num_classes=num_classes, first_conv=first_conv, in_chans=in_chans
        )

    def _make_classifier(self, num_classes: int) -> None:
        if num_classes > 0:
            if self.spec.classifier == "linear":
                self.fc = nn.Linear(self.num_features, num_classes)
            else:
                self.fc = nn.Conv2d(self.num_features, num_classes, kernel_size=1, bias=True)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not getattr(self, "fc", None):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- timm's model protocol -------------------------------------------------------------------

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, value: dict[str, Any]) -> None:
        self.pretrained_cfg = value

    def get_classifier(self) -> nn.Module:
        """The classifier ``fc`` (``nn.Identity`` when there is none)."""
        return getattr(self, "fc", None) or nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier with ``num_classes`` outputs (0: none); optionally another pool."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        if global_pool is not None:
            self.avgpool = _pool(global_pool)
            self.global_pool = global_pool
        if hasattr(self, "fc"):
            del self.fc
        self.num_classes = num_classes
        self._make_classifier(num_classes)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

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

    def save_pretrained(self, directory: Any, **kwargs: Any) -> Any:
        """Write the Hugging Face Hub layout (``model.safetensors``, ``config.json``,
        ``README.md``) into ``directory``; see :func:`drnet.integrations.hub.save_pretrained`."""
        return hub.save_pretrained(self, directory, **kwargs)

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

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the stage maps ``indices`` (an int n: the last n stages; default
        all), and unless ``intermediates_only`` also the final feature map, as
        ``(final, intermediates)``. ``stop_early`` stops after the last stage asked for (the
        "final" map is then that stage's). ``norm`` is accepted for timm's signature: DRNs have
        no final norm layer."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r}: DRN features are NCHW only")
        take = _take_indices(indices)
        wanted = {self.stage_levels[i]: i for i in take}
        last_level = max(wanted) if stop_early and wanted else len(self.level_info) - 1
        found: dict[int, torch.Tensor] = {}
        x = self._stem(x)
        if 0 in wanted:
            found[wanted[0]] = x
        if self.spec.stem.maxpool:
            x = self.maxpool(x)
        for index, level in enumerate(self.levels(), start=1):
            if index > last_level:
                break
            x = self._run_level(level, x)
            if index in wanted:
                found[wanted[index]] = x
        intermediates = [found[i] for i in take]
        return intermediates if intermediates_only else (x, intermediates)

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

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout, classifier; ``pre_logits`` stops before the classifier. With
        ``global_pool=""`` nothing is pooled and the classifier runs at every position."""
        if self.global_pool == "":
            if pre_logits or self.num_classes <= 0:
                return features
            return self.classify_map(F.dropout(features, self.drop_rate, self.training))
        pooled = self.avgpool(features)
        if self.drop_rate:
            pooled = F.dropout(pooled, self.drop_rate, self.training)
        if pre_logits or self.num_classes <= 0:
            return pooled.flatten(1)
        if self.spec.classifier == "linear":
            return self.fc(pooled.flatten(1))
        return self.fc(pooled).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(
                x, self.out_indices, stop_early=True, intermediates_only=True
            )
        if self.out_map:
            return self.forward_map(x)
        return self.forward_head(self.forward_features(x))


def _take_indices(indices: int | Sequence[int] | None) -> list[int]:
    """timm's ``feature_take_indices``: None = all stages, n = the last n, else the list."""
    if indices is None:
        return list(range(NUM_STAGES))
    if isinstance(indices, int):
        if not 0 < indices <= NUM_STAGES:
            raise ValueError(f"indices={indices}: there are {NUM_STAGES} stages")
        return list(range(NUM_STAGES - indices, NUM_STAGES))
    take = [i if i >= 0 else NUM_STAGES + i for i in indices]
    bad = [i for i in take if not 0 <= i < NUM_STAGES]
    if bad:
        raise ValueError(f"indices {bad} out of range: features are the {NUM_STAGES} stages 0..4")
    return take


def _stage_levels(spec: ModelSpec, num_levels: int) -> list[int]:
    """For each stage (nominal reduction 2, 4, ..., 32) the index in ``level_info`` (0 = stem) of
    the last level at that reduction, counting the dilated levels as strided."""
    nominal = spec.with_output_stride(spec.output_stride * 2 ** len(spec.stride_levels()))
    reductions = [nominal.stem.stride]
    reduction = nominal.stem.stride * (2 if nominal.stem.maxpool else 1)
    for level in nominal.levels:
        if level.count:
            reduction *= level.stride
            reductions.append(reduction)
    assert len(reductions) == num_levels
    stages = []
    for target in (2, 4, 8, 16, 32):
        at = [i for i, r in enumerate(reductions) if r == target]
        if not at:
            raise ValueError(f"this model has no level at reduction {target}")
        stages.append(at[-1])
    return stages
