"""Fold eval-mode BatchNorm into the convolution before it.

``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` (per output channel) and
``b' = (b - m) * g / sqrt(v + eps) + beta``. The pairs are found from the known module structure
of :class:`~drnet.models.drn.DRN` and :class:`~drnet.models.segmentation.DRNSeg` (no tracing):
a conv directly followed by a BN inside a Sequential (DRN-D ``layer0`` and plain levels, the
``downsample`` projections, DRNSeg's ``base``), the ``convK``/``bnK`` pairs of the residual blocks,
and the separate stem ``conv1``/``bn1``. Each folded BN becomes ``nn.Identity``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from drnet.models.blocks import BasicBlock, Bottleneck
from drnet.models.drn import DRN


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """A new conv (with bias) computing ``bn(conv(x))`` for ``bn`` in eval mode."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    fused = copy.deepcopy(conv)
    weight = conv.weight.double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
    new_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - bn.running_mean.double()) * scale + shift
    fused.weight = nn.Parameter(new_weight.to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
    return fused


_BLOCK_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _fold_in_place(module: nn.Module) -> int:
    folded = 0
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = fuse_conv_bn(conv, bn)
                module._modules[second] = nn.Identity()
                folded += 1
    elif isinstance(module, (BasicBlock, Bottleneck, DRN)):
        for conv_name, bn_name in _BLOCK_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    for child in module.children():
        folded += _fold_in_place(child)
    return folded


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An eval-mode model (a copy unless ``inplace``) with every conv+BN pair folded.

    BatchNorms that do not directly follow a conv are left as they are.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    _fold_in_place(model)
    return model


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers ``model`` still has."""
    return sum(isinstance(m, _BatchNorm) for m in model.modules())
