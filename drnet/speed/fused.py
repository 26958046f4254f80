"""Convolutions fused with their ReLU (and residual add) for inference.

On CPU with oneDNN (``torch.backends.mkldnn``) a conv, its bias, the residual add and the ReLU
run as one kernel (``torch.ops.mkldnn._convolution_pointwise``, the op torch.compile's CPU
backend emits), in float32 or, on CPUs with oneDNN's bf16 kernels, bfloat16. That saves full
passes over memory that the separate eager ops make; this matters most for the 16-channel
full-resolution layers, whose convs are memory-bound. Elsewhere (CUDA, bf16 on CPUs without
oneDNN's bf16 kernels, autograd) the same modules run the plain ops, so the math is the same.

Apply :func:`fuse_model` to a model whose BatchNorms are already folded
(:func:`drnet.speed.fold.fold_batchnorm`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from drnet.engine.precision import onednn_bf16
from drnet.models.blocks import BasicBlock, Bottleneck
from drnet.models.drn import DRN


def _onednn_pointwise_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn, "_convolution_pointwise"
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


ONEDNN_POINTWISE = _onednn_pointwise_available()
PACKED_WEIGHTS = ONEDNN_POINTWISE and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
#: the dtypes the fused oneDNN kernels run in on this CPU (others take the plain ops)
ONEDNN_DTYPES = frozenset(
    {torch.float32} | ({torch.bfloat16} if ONEDNN_POINTWISE and onednn_bf16() else set())
)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, use_onednn: bool) -> bool:
    return (
        use_onednn
        and ONEDNN_POINTWISE
        and x.device.type == "cpu"
        and x.dtype in ONEDNN_DTYPES
        and x.dtype == weight.dtype
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


class ConvAct(nn.Module):
    """``relu(conv(x))`` (or ``conv(x)``) as one oneDNN kernel where possible.

    ``forward(x, residual)`` computes ``relu(conv(x) + residual)``.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool, use_onednn: bool = True) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("ConvAct supports numeric zero padding only")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = (
            nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
            if conv.bias is not None
            else None
        )
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.relu = relu
        self.use_onednn = use_onednn
        self._packed: torch.Tensor | None = None  # oneDNN's blocked copy of the weight
        self._packed_key: tuple[int, int] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # the packed (opaque) weight cannot be copied: repack later
        state["_packed"], state["_packed_key"] = None, None
        return state

    def onednn_weight(self) -> torch.Tensor:
        """The weight reordered once into oneDNN's blocked layout (eager reorders it on every
        call: for the 512-channel 3x3 convs that costs about as much as the conv itself)."""
        if not PACKED_WEIGHTS:
            return self.weight
        weight = self.weight
        key = (weight.data_ptr(), 0 if weight.is_inference() else weight._version)
        if self._packed is None or self._packed_key != key:
            with torch.no_grad():
                self._packed = torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight.detach().contiguous(),
                    self.padding,
                    self.stride,
                    self.dilation,
                    self.groups,
                    None,
                )
            self._packed_key = key
        return self._packed

    def extra_repr(self) -> str:
        c_out, c_in, kh, kw = self.weight.shape
        return (
            f"{c_in * self.groups}, {c_out}, kernel_size=({kh}, {kw}), stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, relu={self.relu}"
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if _use_onednn(x, self.weight, self.use_onednn):
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x,
                    self.onednn_weight(),
                    self.bias,
                    self.padding,
                    self.stride,
                    self.dilation,
                    self.groups,
                    "relu" if self.relu else "none",
                    [],
                    "",
                )
            if residual.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(
                memory_format=torch.channels_last
            ):
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x,
                    residual,
                    self.onednn_weight(),
                    self.bias,
                    self.padding,
                    self.stride,
                    self.dilation,
                    self.groups,
                    "add",
                    1.0,
                    "relu" if self.relu else None,
                    [],
                    "",
                )
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if residual is not None:
            out = out + residual
        return F.relu(out, inplace=True) if self.relu else out


def _conv_act(module: nn.Module, relu: bool, use_onednn: bool) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return ConvAct(module, relu, use_onednn)
    raise TypeError(f"expected a Conv2d, got {type(module).__name__}")


class FusedBlock(nn.Module):
    """A folded :class:`BasicBlock` or :class:`Bottleneck` with fused conv+ReLU and the residual
    add fused into the last conv. A ``downsample`` of a block without residual is dropped (its
    output was discarded anyway: drn_c_58's ``layer7.0``)."""

    def __init__(self, block: BasicBlock | Bottleneck, use_onednn: bool = True) -> None:
        super().__init__()
        convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
        for bn_name in ("bn1", "bn2", "bn3"):
            if isinstance(getattr(block, bn_name, None), nn.BatchNorm2d):
                raise ValueError("fold the BatchNorms (fold_batchnorm) before fusing")
        self.convs = nn.ModuleList(
            [_conv_act(c, relu=True, use_onednn=use_onednn) for c in convs[:-1]]
        )
        self.last = _conv_act(convs[-1], relu=True, use_onednn=use_onednn)
        self.residual = block.residual
        self.downsample = block.downsample if block.residual else None
        if self.downsample is not None:
            _fuse_in_place(self.downsample, use_onednn)  # its conv gains the packed weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.convs:
            out = conv(out)
        if not self.residual:
            return self.last(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.last(out, shortcut)


def _plain_padding(conv: nn.Conv2d) -> bool:
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _fuse_in_place(module: nn.Module, use_onednn: bool) -> None:
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for index, name in enumerate(names):
            child = module._modules[name]
            if isinstance(child, (BasicBlock, Bottleneck)):
                module._modules[name] = FusedBlock(child, use_onednn)
            elif isinstance(child, nn.Conv2d) and not isinstance(child, ConvAct):
                # conv [Identity (folded BN)] ReLU -> one ConvAct
                j = index + 1
                while j < len(names) and isinstance(module._modules[names[j]], nn.Identity):
                    j += 1
                if j < len(names) and isinstance(module._modules[names[j]], nn.ReLU):
                    module._modules[name] = ConvAct(child, relu=True, use_onednn=use_onednn)
                    module._modules[names[j]] = nn.Identity()
    elif isinstance(module, DRN) and module.spec.stem.layout == "separate":
        if isinstance(module.conv1, nn.Conv2d) and isinstance(module.bn1, nn.Identity):
            module.conv1 = ConvAct(module.conv1, relu=True, use_onednn=use_onednn)
            module.relu = nn.Identity()
    for name, child in list(module.named_children()):
        if isinstance(child, (BasicBlock, Bottleneck)):
            setattr(module, name, FusedBlock(child, use_onednn))
        elif isinstance(child, nn.Conv2d) and _plain_padding(child):
            # a conv without ReLU (projection shortcut, DRNSeg's seg, a conv classifier):
            # still gains the once-packed weight
            setattr(module, name, ConvAct(child, relu=False, use_onednn=use_onednn))
        elif not isinstance(child, (ConvAct, FusedBlock)):
            _fuse_in_place(child, use_onednn)


def fuse_model(model: nn.Module, use_onednn: bool = True, inplace: bool = False) -> nn.Module:
    """Replace conv(+folded BN)+ReLU chains and residual blocks by fused modules (eval only)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    _fuse_in_place(model, use_onednn)
    return model
