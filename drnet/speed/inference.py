"""The inference fast path: same math as eager, less time.

:func:`optimize_for_inference` returns an eval-only copy of a :class:`~drnet.models.drn.DRN` or
:class:`~drnet.models.segmentation.DRNSeg` with

- BatchNorm folded into the convolutions (:mod:`drnet.speed.fold`),
- conv + ReLU and conv + residual add + ReLU fused into single oneDNN kernels on CPU
  (:mod:`drnet.speed.fused`),
- channels_last memory layout, chosen by timing both layouts on an example input when
  ``channels_last="auto"`` (the plain eager model competes too, so the result is never slower
  than it on that input),
- DRNSeg's up-sampling as two small matrix products instead of a grouped transposed conv, and a
  labels-only path (:meth:`InferenceModel.labels`) that up-samples a band of rows at a time
  and keeps only the arg-max (no full-resolution logits, no log-softmax),
- optionally ``torch.compile``,
- optionally bfloat16 weights and activations (``dtype=torch.bfloat16``, for CPUs and GPUs with
  native bf16: about twice the float32 speed there). BatchNorm is folded in float64 before the
  cast; outputs come back in float32, and segmentation scores are up-sampled and arg-maxed in
  float32, so only the network's convolutions run in bf16.

drn_c_58's discarded ``layer7.0.downsample`` is never computed (the builder already skips it).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from drnet.models.segmentation import DRNSeg
from drnet.speed.fold import fold_batchnorm
from drnet.speed.fused import fuse_model
from drnet.speed.timing import measure
from drnet.speed.upsample import SeparableUpsample, upsample_labels_reference


@dataclass
class FastPathChoice:
    """What :func:`optimize_for_inference` applied, and the timings that decided it."""

    fold_bn: bool
    fuse: bool
    channels_last: bool
    separable_upsample: bool
    compile: bool
    dtype: torch.dtype = torch.float32
    seconds: dict[str, float] = field(default_factory=dict)  # candidate -> fastest s (auto only)

    @property
    def name(self) -> str:
        bf16 = "+bf16" if self.dtype == torch.bfloat16 else ""
        if not (self.fold_bn or self.fuse or self.channels_last or self.separable_upsample):
            return "eager" + ("+compile" if self.compile else "") + bf16
        parts = [
            "fold" if self.fold_bn else "",
            "fuse" if self.fuse else "",
            "channels_last" if self.channels_last else "nchw",
            "sepup" if self.separable_upsample else "",
            "compile" if self.compile else "",
            bf16[1:],
        ]
        return "+".join(p for p in parts if p)


class InferenceModel(nn.Module):
    """An eval-only, optimized model with the same outputs as the model it came from.

    ``forward`` follows the original's output convention (logits, feature lists, DRNSeg's
    ``{"out": ...}`` or the official pair). For segmentation, :meth:`labels` returns
    class indices ``[N, H, W]`` at the input size, the cheapest way to get a label map.
    """

    def __init__(
        self,
        model: nn.Module,
        choice: FastPathChoice,
        upsample: SeparableUpsample | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.choice = choice
        self.upsample = upsample
        self.is_segmentation = isinstance(model, DRNSeg) or isinstance(
            getattr(model, "_orig_mod", None), DRNSeg
        )
        self._compiled: Any = None
        for attribute in ("num_classes", "output", "output_stride", "name", "pretrained_cfg"):
            if hasattr(model, attribute):
                setattr(self, attribute, getattr(model, attribute))

    @property
    def channels_last(self) -> bool:
        return self.choice.channels_last

    def train(self, mode: bool = True) -> InferenceModel:
        if mode:
            raise RuntimeError("an InferenceModel is for inference only (BatchNorm is folded)")
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in (its outputs are float32 either way)."""
        return self.choice.dtype

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() and x.dtype != self.choice.dtype:
            x = x.to(self.choice.dtype)
        if self.choice.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _lowres(self, x: torch.Tensor) -> torch.Tensor:
        base = self._compiled if self._compiled is not None else self.model.base
        return self.model.seg(base(x)).float()

    def forward_logits_lowres(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation scores at the backbone's resolution (float32)."""
        return self._lowres(self._prepare(x))

    def upsample_logits(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.upsample is not None:
            return self.upsample(low, size)
        return self.model.upsample(low, size)

    def forward(self, x: torch.Tensor) -> Any:
        if not self.is_segmentation:
            runner = self._compiled if self._compiled is not None else self.model
            return _as_float32(runner(self._prepare(x)))
        size = tuple(x.shape[-2:])
        low = self._lowres(self._prepare(x))
        logits = self.upsample_logits(low, size)
        if getattr(self.model, "output", "dict") == "official":
            return F.log_softmax(logits, dim=1), low
        return {"out": logits}

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """A classifier's dense class map (weakly-supervised localization), on the fast path."""
        if self.is_segmentation:
            raise RuntimeError("forward_map needs a classifier, not a segmentation model")
        return self.model.forward_map(self._prepare(x)).float()

    @torch.no_grad()
    def labels(self, x: torch.Tensor, chunk_rows: int = 64) -> torch.Tensor:
        """Arg-max labels ``[N, H, W]`` (int64) without materialising full-resolution logits."""
        if not self.is_segmentation:
            raise RuntimeError("labels needs a segmentation model")
        size = tuple(x.shape[-2:])
        low = self._lowres(self._prepare(x))
        if self.upsample is not None:
            return self.upsample.labels(low, size, chunk_rows)
        return upsample_labels_reference(self.model.up, low, size, chunk_rows)

    predict_labels = labels  # its name in earlier releases, kept for one release


def _separable_upsample(model: nn.Module) -> SeparableUpsample | None:
    if not isinstance(model, DRNSeg):
        return None
    try:
        return SeparableUpsample(model.up)
    except ValueError:  # a checkpoint's non-bilinear kernel: keep the transposed conv
        return None


def _as_float32(output: Any) -> Any:
    """``output`` (a tensor, or lists/tuples/dicts of them) with bf16/fp16 tensors as float32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, dict):
        return {key: _as_float32(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_as_float32(value) for value in output)
    return output


def _cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` computing in ``dtype``; DRNSeg keeps its up-sampling in float32 (the scores
    are cast back before it, so the arg-max is taken in float32)."""
    if dtype == torch.float32:
        return model
    if isinstance(model, DRNSeg):
        model.base.to(dtype)
        model.seg.to(dtype)
        return model
    return model.to(dtype)


def _eager(model: nn.Module, dtype: torch.dtype) -> InferenceModel:
    plain = _cast(copy.deepcopy(model).eval(), dtype)
    return InferenceModel(plain, FastPathChoice(False, False, False, False, False, dtype))


def _build(
    model: nn.Module,
    fold_bn: bool,
    fuse: bool,
    channels_last: bool,
    separable: bool,
    dtype: torch.dtype = torch.float32,
) -> InferenceModel:
    fast = copy.deepcopy(model).eval()
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    if fold_bn:
        fast = fold_batchnorm(fast, inplace=True)
    if fuse and fold_bn:
        fast = fuse_model(fast, inplace=True)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    upsample = _separable_upsample(fast) if separable else None  # float32, from the fp32 kernel
    fast = _cast(fast, dtype)  # after folding: BatchNorm is folded in float64, then rounded once
    choice = FastPathChoice(
        fold_bn, fuse and fold_bn, channels_last, upsample is not None, False, dtype
    )
    return InferenceModel(fast, choice, upsample)


def _default_channels_last(device: torch.device) -> bool:
    # Measured on CPUs (oneDNN): the 16/32-channel full-resolution layers run about twice as fast
    # in channels_last and the large convs no slower. On CUDA fp32 NCHW is kept unless measured.
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def _run(model: nn.Module, x: torch.Tensor) -> Any:
    return model(x)


def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    channels_last: bool | Literal["auto"] = "auto",
    fold_bn: bool = True,
    fuse: bool = True,
    compile: bool = False,  # noqa: A002 - the torch name
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
) -> InferenceModel:
    """An eval-mode, inference-only copy of ``model`` (``DRN`` or ``DRNSeg``), outputs unchanged.

    Args:
        model: the model (left untouched; its current weights are used).
        example_input: a typical input. With ``channels_last="auto"`` the candidates (plain
            eager, fast NCHW, fast channels_last) are timed on it, interleaved, and the fastest
            is returned, so the result is never slower than plain eager on this input.
        channels_last: ``True``/``False`` forces the layout; ``"auto"`` measures (with an
            example) or uses the measured default for the device (channels_last on CPU).
        fold_bn: fold BatchNorm into the convolutions.
        fuse: fuse conv+ReLU and the residual add (needs ``fold_bn``).
        compile: wrap the backbone in ``torch.compile`` (first calls are slow while it compiles).
        repeats: timed runs per candidate for ``"auto"`` (the fastest run of each counts).
        dtype: ``torch.float32`` or ``torch.bfloat16`` (every candidate computes in it; worth it
            only where the device has native bf16, see
            :func:`drnet.engine.precision.inference_dtype`).
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, not {dtype}")
    if model.training:
        model = copy.deepcopy(model).eval()
    device = next(model.parameters()).device
    if channels_last == "auto" and example_input is not None:
        candidates = {
            "eager": _eager(model, dtype),
            "fast_nchw": _build(model, fold_bn, fuse, False, True, dtype),
            "fast_channels_last": _build(model, fold_bn, fuse, True, True, dtype),
        }
        times: dict[str, list[float]] = {name: [] for name in candidates}
        with torch.inference_mode():
            for candidate in candidates.values():
                _run(candidate, example_input)  # warm-up (oneDNN primitive creation)
            for _ in range(max(1, repeats)):
                for name, candidate in candidates.items():
                    times[name] += measure(
                        lambda c=candidate: _run(c, example_input), 1, 0, example_input.device
                    )
        # the fastest run of each: robust to other processes taking the CPU for a while
        seconds = {name: min(values) for name, values in times.items()}
        best = min(seconds, key=seconds.get)
        chosen = candidates[best]
        chosen.choice.seconds = seconds
    else:
        use_cl = _default_channels_last(device) if channels_last == "auto" else bool(channels_last)
        chosen = _build(model, fold_bn, fuse, use_cl, True, dtype)
    if compile:
        chosen.choice.compile = True
        target = chosen.model.base if chosen.is_segmentation else chosen.model
        chosen._compiled = torch.compile(target)
    return chosen


@torch.no_grad()
def predict_labels(model: nn.Module, x: torch.Tensor, chunk_rows: int = 64) -> torch.Tensor:
    """Segmentation labels ``[N, H, W]`` for a :class:`DRNSeg` or an :class:`InferenceModel`,
    up-sampling ``chunk_rows`` rows at a time and keeping only their arg-max.

    Identical to ``model(x)["out"].argmax(1)`` up to floating-point ties.
    """
    if isinstance(model, (InferenceModel, FastOnFirstCall)):
        return model.labels(x, chunk_rows)
    if isinstance(model, DRNSeg):
        low = model.forward_logits_lowres(x)
        upsample = _separable_upsample(model)
        if upsample is not None:
            return upsample.labels(low, tuple(x.shape[-2:]), chunk_rows)
        return upsample_labels_reference(model.up, low, tuple(x.shape[-2:]), chunk_rows)
    raise TypeError(f"predict_labels needs a DRNSeg or InferenceModel, got {type(model).__name__}")


def fast_inference(
    model: nn.Module,
    enabled: bool = True,
    example_input: torch.Tensor | None = None,
    dtype: torch.dtype | str | None = None,
) -> nn.Module:
    """The fast path for evaluation/prediction code, with its off switch.

    Returns ``optimize_for_inference(model, example_input)`` when ``enabled`` and the model is a
    DRN or DRNSeg, else ``model`` in eval mode. Without ``example_input`` the choice is made on
    the first input the result is called with (:class:`FastOnFirstCall`): the candidates, plain
    eager included, are timed on it, because which one wins depends on the CPU and the input size
    (on an AVX2 CPU the fused path measured 4-6x slower than eager on 64 px images). The result
    has the model's output convention, so it can replace the model anywhere it is only called
    (``{"out": ...}``, softmax, multi-scale fusion, sliding windows, ``forward_map``); for
    single-scale label maps use :func:`predict_labels`.

    ``dtype`` is a ``--dtype`` value (``"auto"``, ``"float32"``, ``"bfloat16"``) or a torch dtype,
    resolved by :func:`drnet.engine.precision.inference_dtype` for the model's device: bf16 only
    where the device has it natively, else float32 with a one-line note in the log. With
    ``enabled=False`` a bf16 request still casts the plain eager model.
    """
    from drnet.models.drn import DRN

    if not isinstance(model, (DRN, DRNSeg)):
        return model.eval()
    compute = resolve_inference_dtype(dtype, next(model.parameters()).device)
    if not enabled:
        return _eager(model, compute) if compute != torch.float32 else model.eval()
    if example_input is None:
        return FastOnFirstCall(model, compute)
    return optimize_for_inference(model, example_input=example_input, dtype=compute)


_NOTED: set[str] = set()


def resolve_inference_dtype(
    requested: torch.dtype | str | None, device: torch.device | str
) -> torch.dtype:
    """:func:`drnet.engine.precision.inference_dtype`, logging its note once per process."""
    from drnet.engine.precision import inference_dtype

    dtype, note = inference_dtype(requested, device)
    if note and note not in _NOTED:
        _NOTED.add(note)
        logging.getLogger("drnet").warning(note)
    return dtype


class FastOnFirstCall(nn.Module):
    """:func:`optimize_for_inference` deferred to the first call, which supplies the example
    input its layout choice is timed on (plain eager competes, so it is never slower there)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model.eval()
        self.dtype = dtype
        self.fast: InferenceModel | None = None

    def train(self, mode: bool = True) -> FastOnFirstCall:
        if mode:
            raise RuntimeError("a fast-path model is for inference only")
        return super().train(False)

    def runner(self, x: torch.Tensor) -> InferenceModel:
        """The optimized model, chosen on ``x`` the first time."""
        if self.fast is None:
            self.fast = optimize_for_inference(self.model, example_input=x, dtype=self.dtype)
        return self.fast

    def forward(self, x: torch.Tensor) -> Any:
        return self.runner(x)(x)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x).forward_map(x)

    def labels(self, x: torch.Tensor, chunk_rows: int = 64) -> torch.Tensor:
        """Arg-max labels ``[N, H, W]`` of the optimized model."""
        return self.runner(x).labels(x, chunk_rows)

    predict_labels = labels  # its name in earlier releases, kept for one release
