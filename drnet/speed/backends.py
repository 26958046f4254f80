"""ONNX Runtime and OpenVINO as execution backends of the inference fast path.

Both run the model's own ONNX export (BatchNorm folded first, dynamic batch, height and width)
on the CPU, float32: a classifier's scores, or a segmenter's scores at 1/8 resolution (its
up-sampling and arg-max stay in torch, :mod:`drnet.speed.upsample`). :class:`BackendCore` is what
:class:`~drnet.speed.inference.InferenceModel` calls in place of the torch network, so every
caller of :func:`~drnet.speed.inference.fast_inference` gets them without a change.

Optional extras: ``pip install 'drnet[onnx]'`` (onnxruntime) and ``pip install
'drnet[openvino]'``. OpenVINO is asked for float32 explicitly (on CPUs with bf16 it would
otherwise compute in bf16 and change the labels).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drnet.constants import BACKEND_CHOICES
from drnet.errors import DrnetError
from drnet.models.drn import DRN
from drnet.models.segmentation import DRNSeg

#: the execution backends besides torch, and the module each needs
BACKEND_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}


def backend_installed(name: str) -> bool:
    """Whether backend ``name`` (``"onnxruntime"``, ``"openvino"``) can be imported here (and
    onnx, which the export needs)."""
    module = BACKEND_MODULES.get(name)
    if module is None:
        return name == "torch"
    return all(importlib.util.find_spec(name) is not None for name in (module, "onnx"))


def installed_backends() -> list[str]:
    """``["torch", ...]`` and whichever of onnxruntime and OpenVINO are installed."""
    return ["torch"] + [name for name in BACKEND_MODULES if backend_installed(name)]


def backend_versions() -> dict[str, str]:
    """The version of each installed backend (part of the fast-path cache key)."""
    versions = {}
    for name in installed_backends()[1:]:
        try:
            versions[name] = str(__import__(BACKEND_MODULES[name]).__version__)
        except Exception:  # noqa: BLE001 - a broken install counts as absent
            continue
    return versions


def resolve_backend(requested: str | None, where: str = "--backend") -> str:
    """``requested`` or ``$DRNET_BACKEND`` (default ``"auto"``), checked: an unknown name or a
    backend that is not installed is one clear error naming ``where``."""
    source = where
    if requested is None:
        requested = os.environ.get("DRNET_BACKEND") or "auto"
        source = "$DRNET_BACKEND"
    name = str(requested).strip().lower()
    if name not in BACKEND_CHOICES:
        raise DrnetError(f"{source} {requested!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if name in BACKEND_MODULES and not backend_installed(name):
        raise DrnetError(
            f"{source} {name}: {BACKEND_MODULES[name]} (and onnx) are not installed: "
            f"pip install 'drnet[{_EXTRA[name]}]'"
        )
    return name


def supports_backends(model: nn.Module) -> bool:
    """Whether ``model``'s forward is one tensor an ONNX backend can compute (a classifier's
    scores or map, a segmenter's low-resolution scores), on the CPU."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return False
    if device.type != "cpu":
        return False
    if isinstance(model, DRNSeg):
        return True
    return isinstance(model, DRN) and not model.features_only


class _Core(nn.Module):
    """What a backend computes: DRNSeg's ``seg(base(x))``, or the classifier's output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, DRNSeg):
            return self.model.seg(self.model.base(x))
        return self.model(x)


def export_core(model: nn.Module, path: str | os.PathLike) -> Path:
    """Export ``model`` (BatchNorm already folded, eval, CPU) as :class:`BackendCore` computes
    it: one input ``input [N, 3, H, W]``, one output ``out``, batch/height/width dynamic."""
    if importlib.util.find_spec("onnx") is None:
        raise DrnetError("an ONNX backend needs onnx: pip install 'drnet[onnx]'")
    path = Path(path)
    example = torch.randn(1, 3, 64, 64)  # small: the axes are dynamic, tracing is what costs
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "out": {0: "batch"}}
    if isinstance(model, DRNSeg) or getattr(model, "out_map", False):
        axes["out"] = {0: "batch", 2: "out_height", 3: "out_width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(
                _Core(model).eval(),
                (example,),
                str(path),
                input_names=["input"],
                output_names=["out"],
                opset_version=17,
                dynamic_axes=axes,
                dynamo=False,
            )
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise DrnetError(f"ONNX export to {path} failed: {str(exc).splitlines()[0]}") from exc
    return path


class BackendCore:
    """Runs an exported core (the ONNX file's bytes) in ONNX Runtime or OpenVINO; called with
    a float32 CPU tensor ``[N, 3, H, W]``, returns the output as a float32 tensor."""

    def __init__(self, backend: str, onnx: bytes, threads: int | None = None) -> None:
        self.backend = backend
        self.onnx = onnx
        self.threads = threads or torch.get_num_threads()
        if backend == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # no busy-waiting between runs: spinning threads would take the cores from torch
            # (the chooser interleaves candidates) and from the rest of a server
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        elif backend == "openvino":
            import openvino as ov

            self._core = ov.Core()
            with tempfile.TemporaryDirectory(prefix="drnet-openvino-") as folder:
                path = Path(folder) / "core.onnx"
                path.write_bytes(onnx)
                self._model = self._core.read_model(str(path))
            self._config = {
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32",
            }
            # one compiled model per input shape (static shapes ran ~7% faster than dynamic)
            self._compiled: dict[tuple[int, ...], Any] = {}
            self._lock = threading.Lock()
        else:
            raise DrnetError(f"unknown backend {backend!r}: choose onnxruntime or openvino")

    def _openvino_request(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._compiled:
            if len(self._compiled) >= 4:
                self._compiled.pop(next(iter(self._compiled)))
            model = self._model.clone()
            model.reshape({"input": list(shape)})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._compiled[shape] = compiled.create_infer_request()
        return self._compiled[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise DrnetError(f"the {self.backend} backend runs on the CPU, got a {x.device} input")
        array = x.detach().float().contiguous().numpy()
        if self.backend == "onnxruntime":
            return torch.from_numpy(self._session.run(None, {"input": array})[0])
        with self._lock:  # an infer request serves one call at a time (a server's threads)
            request = self._openvino_request(tuple(array.shape))
            request.infer({0: array}, share_inputs=True)
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

    def __repr__(self) -> str:
        size = len(self.onnx) / 2**20
        return f"BackendCore({self.backend}, {size:.0f} MB ONNX, threads={self.threads})"

    def __getstate__(self) -> dict:  # sessions cannot be copied: a copy opens the bytes again
        return {"backend": self.backend, "onnx": self.onnx, "threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["backend"], state["onnx"], state["threads"])


def build_backend_core(folded: nn.Module, backend: str) -> BackendCore:
    """Export the BN-folded ``folded`` and open it in ``backend``."""
    if not backend_installed(backend):
        raise DrnetError(
            f"--backend {backend}: {BACKEND_MODULES.get(backend, backend)} (and onnx) are not "
            f"installed: pip install 'drnet[{_EXTRA.get(backend, backend)}]'"
        )
    return BackendCore(backend, export_bytes(folded))


def export_bytes(folded: nn.Module) -> bytes:
    """:func:`export_core` into memory (the temporary file is removed)."""
    with tempfile.TemporaryDirectory(prefix="drnet-backend-") as folder:
        return export_core(folded, Path(folder) / "core.onnx").read_bytes()
