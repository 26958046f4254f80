"""The inference fast path: same math as eager, less time.

:func:`optimize_for_inference` returns an eval-only copy of a :class:`~drnet.models.drn.DRN` or
:class:`~drnet.models.segmentation.DRNSeg` with

- BatchNorm folded into the convolutions (:mod:`drnet.speed.fold`),
- conv + ReLU and conv + residual add + ReLU fused into single oneDNN kernels on CPU
  (:mod:`drnet.speed.fused`),
- the wide 3x3 convolutions (dilated ones included) computed with Winograd's F(4x4, 3x3)
  (:mod:`drnet.speed.winograd`: a quarter of the multiplications, in float32),
- channels_last memory layout, or ONNX Runtime / OpenVINO running the folded model's export:
  with an example input and ``channels_last="auto"`` the candidates are timed against eager with
  BatchNorm folded and one is kept only if it measured faster (:func:`choose_fast_path`,
  :mod:`drnet.speed.chooser`; the decision is cached per machine),
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
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from drnet.errors import DrnetError
from drnet.models.segmentation import DRNSeg
from drnet.speed.fold import fold_batchnorm
from drnet.speed.fused import fuse_model
from drnet.speed.upsample import SeparableUpsample, upsample_labels_reference
from drnet.speed.winograd import apply_winograd
from drnet.speed.winograd import eligible as winograd_eligible


@dataclass
class FastPathChoice:
    """What :func:`optimize_for_inference` applied, and the timings that decided it."""

    fold_bn: bool
    fuse: bool
    channels_last: bool
    separable_upsample: bool
    compile: bool
    dtype: torch.dtype = torch.float32
    #: candidate -> median seconds on the proxy input (``"auto"`` choices only)
    seconds: dict[str, float] = field(default_factory=dict)
    backend: str = "torch"  # what runs the network: torch, onnxruntime or openvino
    cached: bool = False  # the decision came from the cache (nothing was timed)
    candidate: str = ""  # the chooser's name for it (fold, fast_nchw, onnxruntime, ...)
    winograd: bool = False  # the wide 3x3 convs run drnet.speed.winograd's F(4x4, 3x3)

    @property
    def name(self) -> str:
        bf16 = "+bf16" if self.dtype == torch.bfloat16 else ""
        if self.backend != "torch":
            return self.backend + ("+sepup" if self.separable_upsample else "")
        if not (self.fold_bn or self.fuse or self.channels_last or self.separable_upsample):
            return "eager" + ("+compile" if self.compile else "") + bf16
        parts = [
            "fold" if self.fold_bn else "",
            "fuse" if self.fuse else "",
            "winograd" if self.winograd else "",
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
        core: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.choice = choice
        self.upsample = upsample
        #: an execution backend computing the network (drnet.speed.backends.BackendCore)
        self.core = core
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
        if self.core is not None:
            return self.core(x)
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
            if self.core is not None:
                return self.core(x)
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
    winograd: bool = False,
) -> InferenceModel:
    fast = copy.deepcopy(model).eval()
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    if fold_bn:
        fast = fold_batchnorm(fast, inplace=True)
    if fuse and fold_bn:
        fast = fuse_model(fast, inplace=True)
    winograd = winograd and dtype == torch.float32 and apply_winograd(fast) > 0
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    upsample = _separable_upsample(fast) if separable else None  # float32, from the fp32 kernel
    fast = _cast(fast, dtype)  # after folding: BatchNorm is folded in float64, then rounded once
    choice = FastPathChoice(
        fold_bn, fuse and fold_bn, channels_last, upsample is not None, False, dtype
    )
    choice.winograd = winograd
    return InferenceModel(fast, choice, upsample)


def _default_channels_last(device: torch.device) -> bool:
    # Measured on CPUs (oneDNN): the 16/32-channel full-resolution layers run about twice as fast
    # in channels_last and the large convs no slower. On CUDA fp32 NCHW is kept unless measured.
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


TORCH_CANDIDATES = ("fold", "fast_nchw", "fast_channels_last", "winograd")
BACKEND_CANDIDATES = ("onnxruntime", "openvino")


def build_candidate(
    model: nn.Module,
    name: str,
    dtype: torch.dtype = torch.float32,
    fold_bn: bool = True,
    fuse: bool = True,
) -> InferenceModel:
    """One of the fast path's candidates, by the chooser's name: ``"fold"`` (eager with
    BatchNorm folded, NCHW: the baseline), ``"fast_nchw"``/``"fast_channels_last"`` (folded and
    fused oneDNN kernels in either layout), ``"winograd"`` (folded, channels_last, the wide 3x3
    convolutions by Winograd's F(4x4, 3x3): float32 on CPU, :mod:`drnet.speed.winograd`) or
    ``"onnxruntime"``/``"openvino"`` (the folded model's ONNX export run by that backend,
    float32, CPU)."""
    if name == "fold":
        built = _build(model, fold_bn, False, False, True, dtype)
    elif name in ("fast_nchw", "fast_channels_last"):
        built = _build(model, fold_bn, fuse, name == "fast_channels_last", True, dtype)
    elif name == "winograd":
        built = _build(model, True, False, True, True, dtype, winograd=True)
    elif name in BACKEND_CANDIDATES:
        from drnet.speed.backends import build_backend_core

        built = _build(model, True, False, False, True, torch.float32)
        built.core = build_backend_core(built.model, name)
        built.choice.backend = name
    else:
        raise ValueError(f"unknown fast-path candidate {name!r}")
    built.choice.candidate = name
    return built


def _on_backend(fold: InferenceModel, name: str, onnx: list[bytes]) -> InferenceModel:
    """The backend candidate ``name`` sharing the ``fold`` candidate's folded torch model (for
    ``forward_map``) and one export (``onnx``: empty until the first backend exports)."""
    from drnet.speed.backends import BackendCore, export_bytes

    if not onnx:
        onnx.append(export_bytes(fold.model))
    choice = dataclasses.replace(fold.choice, backend=name, candidate=name, seconds={})
    return InferenceModel(fold.model, choice, fold.upsample, core=BackendCore(name, onnx[0]))


def _candidate_names(
    model: nn.Module, backend: str, dtype: torch.dtype, progress: Any = None
) -> list[str]:
    from drnet.speed.backends import installed_backends, supports_backends

    names = [n for n in TORCH_CANDIDATES if n != "winograd" or _winograd_applies(model, dtype)]
    if backend == "torch" or dtype != torch.float32 or not supports_backends(model):
        return names
    wanted = BACKEND_CANDIDATES if backend == "auto" else (backend,)
    return names + [name for name in wanted if name in installed_backends()]


def _winograd_applies(model: nn.Module, dtype: torch.dtype) -> bool:
    # float32 on CPU, with at least one wide 3x3 stride-1 conv (the GPU's cuDNN has its own)
    if dtype != torch.float32:
        return False
    try:
        if next(model.parameters()).device.type != "cpu":
            return False
    except StopIteration:
        return False
    return any(winograd_eligible(m) for m in model.modules())


def choose_fast_path(
    model: nn.Module,
    example_input: torch.Tensor,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    fold_bn: bool = True,
    fuse: bool = True,
    repeats: int = 5,
    use_cache: bool = True,
    progress: Callable[[str], None] | None = None,
) -> InferenceModel:
    """The fastest candidate on this machine for inputs shaped like ``example_input``
    (:mod:`drnet.speed.chooser`): timed on a proxy input, the baseline (eager with BatchNorm
    folded) kept unless another measured at least :data:`~drnet.speed.chooser.MARGIN` faster;
    the decision is cached per machine, versions, model structure and input shape."""
    from drnet.speed import chooser

    names = _candidate_names(model, backend, dtype)
    request = {"backend": backend, "fold_bn": fold_bn, "fuse": fuse, "candidates": names}
    key = chooser.decision_key(model, tuple(example_input.shape), dtype, request)
    cached = chooser.read_decision(key) if use_cache else None
    if cached is not None and cached["choice"] in names:
        try:
            chosen = build_candidate(model, cached["choice"], dtype, fold_bn, fuse)
        except Exception as exc:  # noqa: BLE001 - a candidate that no longer builds: re-measure
            chooser.say(progress, f"fast path: cached choice {cached['choice']} failed ({exc})")
        else:
            chosen.choice.seconds = dict(cached.get("seconds", {}))
            chosen.choice.cached = True
            chooser.say(progress, f"fast path: {cached['choice']} (decided earlier here)")
            return chosen
    start = time.perf_counter()
    proxy = chooser.proxy_input(example_input)
    size = "x".join(str(s) for s in proxy.shape[-2:])
    built: dict[str, InferenceModel] = {}
    onnx: list[bytes] = []  # one export serves every backend
    for name in names:
        chooser.say(progress, f"fast path: preparing {name}")
        try:
            if name in BACKEND_CANDIDATES and chooser.BASELINE in built:
                built[name] = _on_backend(built[chooser.BASELINE], name, onnx)
            else:
                built[name] = build_candidate(model, name, dtype, fold_bn, fuse)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run this model
            if name == chooser.BASELINE:
                raise
            chooser.say(progress, f"fast path: {name} left out: {str(exc).splitlines()[0]}")
    chooser.say(progress, f"fast path: timing {', '.join(built)} on {size}")
    run = _labels_or_forward
    times = chooser.time_candidates(
        {name: (lambda c=candidate: run(c, proxy)) for name, candidate in built.items()},
        rounds=repeats,
        device=example_input.device,
    )
    seconds = chooser.medians(times)
    best = chooser.pick(seconds)
    chosen = built[best]
    chosen.choice.seconds = seconds
    took = time.perf_counter() - start
    timings = ", ".join(f"{name} {value * 1e3:.0f} ms" for name, value in seconds.items())
    chooser.say(progress, f"fast path: chose {best} in {took:.1f} s ({timings} on {size})")
    if use_cache:
        chooser.write_decision(
            key,
            {
                "choice": best,
                "seconds": {name: round(value, 6) for name, value in seconds.items()},
                "proxy": list(proxy.shape),
                "input": list(example_input.shape),
                "rounds": min(len(v) for v in times.values()),
                "choosing_s": round(took, 2),
                "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
    return chosen


def _labels_or_forward(model: InferenceModel, x: torch.Tensor) -> Any:
    # what eval/predict/serve call: a segmenter's labels, a classifier's scores
    return model.labels(x) if model.is_segmentation else model(x)


def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    channels_last: bool | Literal["auto"] = "auto",
    fold_bn: bool = True,
    fuse: bool = True,
    compile: bool = False,  # noqa: A002 - the torch name
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
    progress: Callable[[str], None] | None = None,
    use_cache: bool = True,
) -> InferenceModel:
    """An eval-mode, inference-only copy of ``model`` (``DRN`` or ``DRNSeg``), outputs unchanged.

    Args:
        model: the model (left untouched; its current weights are used).
        example_input: a typical input. With ``channels_last="auto"`` the candidates (eager
            with BatchNorm folded, the fused NCHW and channels_last paths, and the ONNX Runtime
            and OpenVINO backends where installed) are timed on a proxy of it and the fastest is
            returned if it beat the folded eager baseline (:func:`choose_fast_path`), so the
            result is never one measured slower; the decision is cached.
        channels_last: ``True``/``False`` forces the torch layout; ``"auto"`` measures (with an
            example) or uses the measured default for the device (channels_last on CPU).
        fold_bn: fold BatchNorm into the convolutions.
        fuse: fuse conv+ReLU and the residual add (needs ``fold_bn``).
        compile: wrap the backbone in ``torch.compile`` (first calls are slow while it compiles).
        repeats: timed rounds (at most) for ``"auto"``.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (every candidate computes in it; worth it
            only where the device has native bf16, see
            :func:`drnet.engine.precision.inference_dtype`); the ONNX backends are float32 only.
        backend: ``"auto"`` (measure every installed backend), ``"torch"`` (measure the torch
            candidates only), ``"onnxruntime"`` or ``"openvino"`` (use it, unmeasured); default
            ``$DRNET_BACKEND``, else ``"auto"``.
        progress: called with a line for each step of choosing (e.g. ``print``).
        use_cache: read and write the cached decision.
    """
    from drnet.speed.backends import resolve_backend, supports_backends

    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, not {dtype}")
    backend = resolve_backend(backend)
    if model.training:
        model = copy.deepcopy(model).eval()
    device = next(model.parameters()).device
    if backend in BACKEND_CANDIDATES:
        if not supports_backends(model):
            raise DrnetError(
                f"--backend {backend}: runs a CPU classifier or segmenter only "
                f"(this is a {type(model).__name__} on {device})"
            )
        if dtype != torch.float32:
            logging.getLogger("drnet").warning("--backend %s computes in float32", backend)
        from drnet.speed.chooser import say

        say(progress, f"fast path: preparing {backend} (--backend {backend})")
        chosen = build_candidate(model, backend, torch.float32)  # asked for: not measured
    elif channels_last == "auto" and example_input is not None:
        chosen = choose_fast_path(
            model, example_input, backend, dtype, fold_bn, fuse, repeats, use_cache, progress
        )
    else:
        use_cl = _default_channels_last(device) if channels_last == "auto" else bool(channels_last)
        chosen = _build(model, fold_bn, fuse, use_cl, True, dtype)
    if compile and chosen.core is None:
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
    backend: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> nn.Module:
    """The fast path for evaluation/prediction code, with its off switch.

    Returns ``optimize_for_inference(model, example_input)`` when ``enabled`` and the model is a
    DRN or DRNSeg, else ``model`` in eval mode. Without ``example_input`` the choice is made on
    the first input the result is called with (:class:`FastOnFirstCall`): the candidates are
    timed on a proxy of it (:func:`choose_fast_path`), because which one wins depends on the CPU
    and the input size; the decision is cached per machine, so later runs skip the timing. The
    result has the model's output convention, so it can replace the model anywhere it is only
    called (``{"out": ...}``, softmax, multi-scale fusion, sliding windows, ``forward_map``);
    for single-scale label maps use :func:`predict_labels`.

    ``dtype`` is a ``--dtype`` value (``"auto"``, ``"float32"``, ``"bfloat16"``) or a torch dtype,
    resolved by :func:`drnet.engine.precision.inference_dtype` for the model's device: bf16 only
    where the device has it natively, else float32 with a one-line note in the log. With
    ``enabled=False`` a bf16 request still casts the plain eager model.

    ``backend`` is a ``--backend`` value (``auto``, ``torch``, ``onnxruntime``, ``openvino``;
    default ``$DRNET_BACKEND``, else ``auto``: whichever measured fastest). ``progress`` is
    called with a line for each step of choosing (a server prints them while it warms up).
    """
    from drnet.models.drn import DRN
    from drnet.speed.backends import resolve_backend

    if not isinstance(model, (DRN, DRNSeg)):
        return model.eval()
    compute = resolve_inference_dtype(dtype, next(model.parameters()).device)
    if not enabled:
        return _eager(model, compute) if compute != torch.float32 else model.eval()
    backend = resolve_backend(backend)
    if example_input is None:
        return FastOnFirstCall(model, compute, backend, progress)
    return optimize_for_inference(
        model, example_input=example_input, dtype=compute, backend=backend, progress=progress
    )


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
    input the choice is timed on (a cached decision is reused; never a path measured slower)."""

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype = torch.float32,
        backend: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.dtype = dtype
        self.backend = backend
        #: called with each step of choosing (set it before the first call, e.g. to ``print``)
        self.progress = progress
        self.fast: InferenceModel | None = None

    def train(self, mode: bool = True) -> FastOnFirstCall:
        if mode:
            raise RuntimeError("a fast-path model is for inference only")
        return super().train(False)

    def runner(self, x: torch.Tensor) -> InferenceModel:
        """The optimized model, chosen on ``x`` the first time."""
        if self.fast is None:
            self.fast = optimize_for_inference(
                self.model,
                example_input=x,
                dtype=self.dtype,
                backend=self.backend,
                progress=self.progress,
            )
        return self.fast

    def prepare(
        self, example_input: torch.Tensor, progress: Callable[[str], None] | None = None
    ) -> InferenceModel:
        """Choose now, on ``example_input`` (a server's start-up), reporting to ``progress``."""
        if progress is not None:
            self.progress = progress
        return self.runner(example_input)

    def forward(self, x: torch.Tensor) -> Any:
        return self.runner(x)(x)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x).forward_map(x)

    def labels(self, x: torch.Tensor, chunk_rows: int = 64) -> torch.Tensor:
        """Arg-max labels ``[N, H, W]`` of the optimized model."""
        return self.runner(x).labels(x, chunk_rows)

    predict_labels = labels  # its name in earlier releases, kept for one release
