"""ONNX export with dynamic batch and spatial size, checked against eager with onnxruntime.

``pip install 'drnet[onnx]'`` brings onnx and onnxruntime. The default exporter is torch's
TorchScript-based one (``dynamo=False``: no further dependency); ``dynamo=True`` uses the
torch.export-based exporter, which also needs ``onnxscript``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drnet.errors import DrnetError
from drnet.models.segmentation import DRNSeg


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise DrnetError(f"ONNX export needs {module}: pip install 'drnet[onnx]'") from exc


class _Logits(nn.Module):
    """One tensor out: DRNSeg's logits at the input size, or the classifier's output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, dict):
            return out["out"]
        if isinstance(out, (tuple, list)):
            return out[0]
        return out


@dataclass
class OnnxCheck:
    """onnxruntime vs eager on one input."""

    input_shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float  # max |ort - eager| / max |eager|
    labels_equal: float | None  # share of equal arg-max labels (segmentation / classification)


@dataclass
class OnnxReport:
    path: str
    opset: int
    exporter: str
    dynamic_axes: dict[str, dict[int, str]]
    checks: list[OnnxCheck] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=float("nan"))

    @property
    def max_rel_diff(self) -> float:
        return max((c.max_rel_diff for c in self.checks), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
        }


def check_onnx(
    path: str | os.PathLike, model: nn.Module, inputs: list[torch.Tensor]
) -> list[OnnxCheck]:
    """Run ``path`` in onnxruntime (CPU) and compare with ``model`` (eager, eval) on ``inputs``."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    wrapper = _Logits(model).eval()
    checks = []
    for x in inputs:
        with torch.inference_mode():
            expected = wrapper(x).float().cpu()
        got = torch.from_numpy(session.run(None, {input_name: x.cpu().numpy()})[0])
        if got.shape != expected.shape:
            raise DrnetError(
                f"{path}: onnxruntime output {tuple(got.shape)} != eager {tuple(expected.shape)}"
            )
        diff = (got - expected).abs()
        labels = None
        if expected.dim() >= 2 and expected.shape[1] > 1:
            labels = float((got.argmax(1) == expected.argmax(1)).float().mean())
        checks.append(
            OnnxCheck(
                input_shape=tuple(x.shape),
                max_abs_diff=float(diff.max()),
                max_rel_diff=float(diff.max() / expected.abs().max().clamp_min(1e-12)),
                labels_equal=labels,
            )
        )
    return checks


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int, int] = (1, 3, 224, 224),
    opset: int = 17,
    dynamic: bool = True,
    check: bool = True,
    check_sizes: list[tuple[int, int, int, int]] | None = None,
    dynamo: bool = False,
) -> OnnxReport:
    """Export ``model`` (DRN or DRNSeg, eval mode, on CPU) to ``path`` and check it.

    The graph has one input ``input [N, 3, H, W]`` and one output: the classifier's scores, or
    for DRNSeg the logits ``out [N, classes, H, W]`` at the input size. With ``dynamic`` the
    batch, height and width are symbolic. With ``check`` onnxruntime runs the file on the export
    size and on ``check_sizes`` (default: another batch and size) and the differences from eager
    are returned in the report.
    """
    _require("onnx")
    model = model.eval().cpu()
    wrapper = _Logits(model).eval()  # a wrapper left in train mode would export BN in train mode
    example = torch.randn(*input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    output_name = "out" if isinstance(model, DRNSeg) else "logits"
    axes = {"input": {0: "batch", 2: "height", 3: "width"}} if dynamic else {}
    if dynamic:
        axes[output_name] = (
            {0: "batch", 2: "height", 3: "width"} if isinstance(model, DRNSeg) else {0: "batch"}
        )
        if getattr(model, "out_map", False):
            axes[output_name] = {0: "batch", 2: "map_height", 3: "map_width"}
    kwargs: dict[str, Any] = {
        "input_names": ["input"],
        "output_names": [output_name],
        "opset_version": opset,
    }
    if dynamo:
        _require("onnxscript")
        if dynamic:
            auto = torch.export.Dim.AUTO
            kwargs["dynamic_shapes"] = {"x": {0: auto, 2: auto, 3: auto}}
    else:
        kwargs["dynamic_axes"] = axes or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(wrapper, (example,), str(path), dynamo=dynamo, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise DrnetError(f"ONNX export to {path} failed: {str(exc).splitlines()[0]}") from exc
    report = OnnxReport(str(path), opset, "dynamo" if dynamo else "torchscript", axes)
    if check:
        sizes = check_sizes
        if sizes is None:
            n, c, h, w = input_size
            sizes = [tuple(input_size)]
            if dynamic:
                sizes.append((n + 1, c, max(16, h - 8 - h // 4), max(16, w + 8)))
        inputs = [torch.randn(*size) for size in sizes]
        report.checks = check_onnx(path, model, inputs)
    return report
