"""Post-training static int8 quantization for CPU inference (the PT2E flow).

torch 2.14 no longer ships ``torch.ao.quantization.quantize_pt2e``; the flow lives in
`torchao <https://github.com/pytorch/ao>`_ (``pip install 'drnet[int8]'``):

1. fold BatchNorm into the convs and give every ReLU its own module (the quantizer's pattern
   matcher needs one call per ReLU module to fuse conv + add + ReLU),
2. ``torch.export.export`` (dynamic batch and spatial size where the exporter allows),
3. ``prepare_pt2e`` with ``X86InductorQuantizer`` (int8 activations per tensor, int8 weights per
   channel), run the calibration images, ``convert_pt2e``,
4. ``torch.compile`` with inductor's freezing, which lowers the quantize/dequantize patterns to
   oneDNN int8 convolutions (VNNI where the CPU has it). The first call at each new input shape
   compiles (tens of seconds).

For DRNSeg only the backbone and ``seg`` are quantized; up-sampling and the arg-max stay in
float32 (:mod:`drnet.speed.upsample`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drnet.errors import DrnetError
from drnet.models.blocks import BasicBlock, Bottleneck
from drnet.models.segmentation import DRNSeg
from drnet.speed.fold import fold_batchnorm
from drnet.speed.upsample import SeparableUpsample, upsample_labels_reference


def _require_torchao() -> Any:
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as exc:
        raise DrnetError(
            "int8 quantization needs torchao (the PT2E flow left torch.ao): "
            "pip install 'drnet[int8]'"
        ) from exc
    return quantize_pt2e, x86_inductor_quantizer


class _ExportBlock(nn.Module):
    """A folded residual block with one ReLU module per call (for the quantizer's patterns)."""

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
        self.convs = nn.ModuleList(convs)
        self.relus = nn.ModuleList([nn.ReLU() for _ in convs])
        self.residual = block.residual
        self.downsample = block.downsample if block.residual else None  # drn_c_58: never used

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv, relu in zip(self.convs[:-1], self.relus[:-1], strict=True):
            out = relu(conv(out))
        out = self.convs[-1](out)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relus[-1](out)


def _split_relus(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        if isinstance(child, (BasicBlock, Bottleneck)):
            setattr(module, name, _ExportBlock(child))
        else:
            _split_relus(child)
    if hasattr(module, "relu") and isinstance(module.relu, nn.ReLU):
        module.relu = nn.ReLU()  # the separate stem's ReLU, not shared with anything else
    return module


class _LowRes(nn.Module):
    def __init__(self, model: DRNSeg) -> None:
        super().__init__()
        self.base = model.base
        self.seg = model.seg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg(self.base(x))


def _export(module: nn.Module, example: torch.Tensor, dynamic: bool) -> nn.Module:
    if dynamic:
        auto = torch.export.Dim.AUTO
        if example.shape[0] == 1:  # a size-1 sample dimension would be specialised to 1
            example = torch.cat([example, example])
        try:
            spec = {"x": {0: auto, 2: auto, 3: auto}}
            return torch.export.export(module, (example,), dynamic_shapes=spec).module()
        except Exception:  # noqa: BLE001 - some shapes cannot be symbolic: export statically
            pass
    return torch.export.export(module, (example,)).module()


class Int8Model(nn.Module):
    """A calibrated int8 model with the original's output convention (CPU only).

    ``forward`` returns what the float model returns (logits; ``{"out": ...}`` or the official
    pair for segmentation); :meth:`labels` gives segmentation labels.
    """

    def __init__(
        self,
        quantized: nn.Module,
        original: nn.Module,
        compile: bool,  # noqa: A002
    ) -> None:
        super().__init__()
        self.quantized = quantized
        self.is_segmentation = isinstance(original, DRNSeg)
        self.output = getattr(original, "output", None)
        self.num_classes = getattr(original, "num_classes", None)
        self.up = copy.deepcopy(original.up) if self.is_segmentation else None
        self.upsample: SeparableUpsample | None = None
        if self.is_segmentation:
            try:
                self.upsample = SeparableUpsample(original.up)
            except ValueError:
                self.upsample = None
        self._runner: Any = torch.compile(quantized) if compile else quantized
        self.compiled = compile

    def train(self, mode: bool = True) -> Int8Model:
        """Inference only: ``eval()`` is a no-op (an exported int8 graph refuses the switch,
        so code that calls ``model.eval()`` on any model, the task evaluation included, can
        take this one); ``train()`` raises."""
        if mode:
            raise RuntimeError("an int8 model is for inference only")
        self.training = False
        return self

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self._runner(x)
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self._runner(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Any:
        out = self._core(x)
        if not self.is_segmentation:
            return out
        size = tuple(x.shape[-2:])
        logits = (
            self.upsample(out, size)
            if self.upsample is not None
            else self.up(out)[..., : size[0], : size[1]]
        )
        if self.output == "official":
            return F.log_softmax(logits, dim=1), out
        return {"out": logits}

    @torch.no_grad()
    def labels(self, x: torch.Tensor, chunk_rows: int = 64) -> torch.Tensor:
        """Segmentation labels ``[N, H, W]``."""
        if not self.is_segmentation:
            raise RuntimeError("labels needs a segmentation model")
        low = self._core(x)
        size = tuple(x.shape[-2:])
        if self.upsample is not None:
            return self.upsample.labels(low, size, chunk_rows)
        return upsample_labels_reference(self.up, low, size, chunk_rows)

    predict_labels = labels  # its name in earlier releases, kept for one release


def quantize_int8(
    model: nn.Module,
    calibration: Iterable[torch.Tensor] | torch.Tensor,
    example_input: torch.Tensor | None = None,
    compile: bool = True,  # noqa: A002
    dynamic: bool = True,
) -> Int8Model:
    """Post-training static int8 quantization of a DRN or DRNSeg for CPU (PT2E + X86 quantizer).

    Args:
        model: a float model on CPU (left untouched).
        calibration: normalised input batches ``[N, 3, H, W]`` (a tensor is one batch), run
            through the observers to choose the activation ranges. A few dozen images of the
            target domain are typical.
        example_input: the input used for export (default: the first calibration batch).
        compile: ``torch.compile`` the result (needed for real int8 kernels; without it the
            quantized graph runs as float reference ops, useful only to check accuracy).
        dynamic: export with symbolic batch/height/width (falls back to static shapes).
    """
    quantize_pt2e, x86 = _require_torchao()
    if next(model.parameters()).device.type != "cpu":
        raise DrnetError("int8 quantization runs on CPU: move the model with .cpu() first")
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches:
        raise DrnetError("int8 calibration needs at least one input batch")
    example = example_input if example_input is not None else batches[0]
    float_model = _split_relus(fold_batchnorm(model))
    core = _LowRes(float_model) if isinstance(float_model, DRNSeg) else float_model
    exported = _export(core.eval(), example, dynamic)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    converted = quantize_pt2e.convert_pt2e(prepared)
    return Int8Model(converted, model, compile)
